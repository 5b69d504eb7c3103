"""Train the VAE on MNIST:  python train.py  (python train.py --help for the flags)

Each epoch it logs the mean train and test BCE, KLD and loss (the negative ELBO, in
nats per image) and the learning rate to TensorBoard in runs/VAE/RUN_NAME/, saves a
grid of samples from fixed noise to out/NNN.png, and writes the checkpoint
runs/VAE/RUN_NAME/checkpoint.pt that --resume continues from. train_CVAE.py runs
this same code for the conditional VAE.

Several processes, on GPUs or CPUs:  torchrun --nproc_per_node=N train.py
"""
import argparse
import glob
import math
import os
import sys
import tempfile
import time
from datetime import datetime

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import save_image
from tqdm import tqdm

from mnist import load_mnist
from models import MODELS, loss_function, loss_sums, read_checkpoint

# The default recipe, chosen by measurement (README, "Choosing the defaults"); train_CVAE.py changes a few.
DEFAULTS = dict(
    epochs=50,
    batch_size=256,
    lr=8e-3,  # peak learning rate of AdamW
    schedule="cosine",  # cosine: decay to zero over the run; constant: keep --lr
    warmup_epochs=1.0,  # linear warm-up from zero, in epochs (ignored with --lr-step-size)
    lr_step_size=0,  # the original's StepLR: multiply the lr by --lr-gamma every this many steps (0: off)
    lr_gamma=0.5,
    weight_decay=0.0,
    ema=0.0,  # evaluate and sample an exponential moving average of the weights with this decay (0: off)
    bf16=None,  # bfloat16 matrix products in training (autocast); None: where the hardware has them natively
    latent_dim=2,
    seed=0,
    device="auto",
    data_dir="data",
    runs_dir="runs",
    out_dir="out",
    run_name=None,  # default: the date and time
    limit=None,  # train on the first N training images only
)
# Flags that --resume takes from the checkpoint unless given again: everything but these.
PER_INVOCATION = {"epochs", "device", "data_dir", "runs_dir", "out_dir", "run_name", "resume"}


def number(kind, low=0, low_ok=False, high=None):
    """An argparse type: a number of the given kind above low (or at it if low_ok) and below high."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < low or (value == low and not low_ok) or (high is not None and value >= high):
            bounds = f"{'>=' if low_ok else '>'} {low}" + (f" and < {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value
    return parse


def parse_args(model_name, defaults, argv=None):
    """Parse the flags; returns (args, given): given holds only the flags on the command line."""
    p = argparse.ArgumentParser(description=f"Train the {model_name} on MNIST.", argument_default=argparse.SUPPRESS)
    p.error = lambda message: sys.exit(f"{p.prog}: error: {message} (see --help)")  # one line, no usage dump

    def add(flag, type=None, help="", **kw):
        dest = flag[2:].replace("-", "_")
        p.add_argument(flag, type=type, help=f"{help} (default: {defaults[dest]})", **kw)

    add("--epochs", number(int), "number of epochs to train")
    add("--batch-size", number(int), "images per optimizer step")
    add("--lr", number(float), "peak learning rate of AdamW")
    add("--schedule", str, "learning-rate schedule", choices=["cosine", "constant"])
    add("--warmup-epochs", number(float, low_ok=True), "linear learning-rate warm-up, in epochs")
    add("--lr-step-size", number(int, low_ok=True), "the original's StepLR instead of the schedule: decay the lr every N optimizer steps; 0 is off")
    add("--lr-gamma", number(float), "StepLR's decay factor")
    add("--weight-decay", number(float, low_ok=True), "AdamW's decoupled weight decay")
    add("--ema", number(float, low_ok=True, high=1), "decay of the weight average that is evaluated and sampled; 0 is off")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction,
                   help="train with bfloat16 matrix products (autocast); evaluation and samples stay float32 "
                        "(default: on where the hardware multiplies bfloat16 natively: CPUs with AVX512-BF16 or AMX, NVIDIA GPUs from Ampere on)")
    add("--latent-dim", number(int), "size of the latent space z")
    add("--seed", int, "random seed: the same seed and flags give the same weights on CPU")
    add("--device", str, "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    add("--data-dir", str, "folder that holds MNIST/raw/")
    add("--runs-dir", str, f"TensorBoard logs and checkpoints go to RUNS_DIR/{model_name}/RUN_NAME/")
    add("--out-dir", str, "sample grids go to OUT_DIR/NNN.png, one per epoch")
    add("--run-name", str, "name of the run")
    add("--limit", number(int), "train on the first N training images only, for quick tries")
    p.add_argument("--resume", action="store_true", help=f"continue the run RUNS_DIR/{model_name}/RUN_NAME from its checkpoint")
    given = vars(p.parse_args(argv))
    return argparse.Namespace(**{**defaults, "resume": False, **given}), given


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(device.type, False):
        raise ValueError(f"--device {name} is not available on this machine; use --device cpu, or auto to pick what is there")
    return device


def native_bf16(device):
    """Whether this device multiplies bfloat16 natively; elsewhere bfloat16 is emulated, and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def writable_dir(path, flag):
    """Make the folder and check that a file can be written in it, before any training."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        raise OSError(f"cannot write to {flag} {path} ({e.strerror}); choose a folder you can write to") from None
    return path


def save_atomic(state, path):
    """Write to a temporary file, then rename: a kill at any moment leaves the old checkpoint or the new one."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def epoch_seed(seed, epoch, rank=0):
    """Each epoch's data order and noise follow from (seed, epoch): a resumed run repeats them exactly."""
    return (seed * 100_003 + epoch) * 1_009 + rank


def sample_grid(model, noise):
    """Images decoded from fixed noise: 8 x 8 for the VAE; for the CVAE row r is digit r, columns share noise."""
    if model.conditional:
        z = noise[:8].repeat(10, 1)
        y = torch.arange(10, device=noise.device).repeat_interleave(8)
    else:
        z, y = noise, None
    return model.decode(z, y).view(-1, 1, 28, 28)


def build(model_name, args, steps_per_epoch, device):
    """The model, its optimizer, the learning-rate schedule and the weight average, as args ask."""
    torch.manual_seed(args.seed)
    model = MODELS[model_name](latent_dim=args.latent_dim).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=device.type != "mps")
    total_steps, warmup_steps = args.epochs * steps_per_epoch, args.warmup_epochs * steps_per_epoch

    def lr_factor(step):
        if args.lr_step_size:  # the original's StepLR, stepped per optimizer step
            return args.lr_gamma ** (step // args.lr_step_size)
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * step / total_steps)) if args.schedule == "cosine" else 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema)) if args.ema else None
    return model, optimizer, scheduler, average


def batches(images, labels, order, batch_size, rank=0, world=1):
    """(x, y) for each optimizer step: consecutive slices of `order`, this process's share of each
    (a last batch smaller than the number of processes is dropped: every share must hold an image)."""
    for start in range(0, len(order) - world + 1, batch_size):
        index = order[start:start + batch_size][rank::world]
        yield images[index], labels[index]


def train_epoch(model, optimizer, scheduler, average, batches, bf16=False, desc="", total=None, show=True):
    """One pass over `batches`; returns the sums [bce, kld, images] and the last learning rate."""
    model.train()
    sums = None
    bar = tqdm(batches, desc=desc, total=total, leave=False, disable=None if show else True)  # None: only on a terminal
    for step, (x, y) in enumerate(bar):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            recon, mu, logvar = model(x, y)  # the VAE ignores y
        loss, bce, kld = loss_function(recon, x, mu, logvar)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at {desc}, step {step + 1}")
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if average:
            average.update_parameters(model)  # under DDP, model.parameters() are the wrapped model's
        batch_sums = torch.stack([bce.detach(), kld.detach(), torch.ones_like(bce)]) * len(x)
        sums = batch_sums if sums is None else sums + batch_sums
        if step % 50 == 0:
            bar.set_postfix(loss=f"{(sums[0] + sums[1]).item() / sums[2].item():.2f}")
    return sums, lr


def train(model_name, args, given):
    # processes: torchrun sets RANK and WORLD_SIZE; plain `python train.py` is one process
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    device = pick_device(args.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    master = rank == 0  # only this process writes logs, grids and checkpoints
    if args.bf16 is None:
        args.bf16 = native_bf16(device)

    run_dir = os.path.join(args.runs_dir, model_name, args.run_name)
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    checkpoint = None
    if args.resume and not os.path.exists(checkpoint_path):
        # a run stopped in its first epoch has its logs but no checkpoint yet: it starts again
        if not glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path}; check --run-name and --runs-dir, or start a new run without --resume")
        if master:
            print(f"{run_dir} stopped before its first checkpoint: starting it again from epoch 1")
    elif args.resume:
        checkpoint = read_checkpoint(checkpoint_path, device)
        if checkpoint["model"] != model_name:
            script = "train.py" if checkpoint["model"] == "VAE" else "train_CVAE.py"
            raise ValueError(f"--resume: {checkpoint_path} holds a {checkpoint['model']}, not a {model_name}; resume it with {script}")
        saved = checkpoint["args"]
        if "latent_dim" in given and given["latent_dim"] != saved["latent_dim"]:
            raise ValueError(f"--resume: --latent-dim {given['latent_dim']} differs from the checkpoint's {saved['latent_dim']}; drop --latent-dim or start a new run")
        # the run's own flags, except those given again on this command line
        args = argparse.Namespace(**{**vars(args), **{k: v for k, v in saved.items() if k not in PER_INVOCATION and k not in given}})
    elif os.path.exists(checkpoint_path):
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --run-name")
    if master:
        writable_dir(run_dir, "--runs-dir")
        writable_dir(args.out_dir, "--out-dir")

    train_x, train_y = load_mnist(args.data_dir, train=True)
    test_x, test_y = load_mnist(args.data_dir, train=False)
    train_x, train_y = train_x[:args.limit].to(device), train_y[:args.limit].to(device)
    test_x, test_y = test_x.to(device), test_y.to(device)

    # with --batch-size a multiple of the world size, every process takes the same share of each batch
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    model, optimizer, scheduler, average = build(model_name, args, steps_per_epoch, device)
    ddp_model = DistributedDataParallel(model) if world > 1 else model  # averages the gradients over processes
    eval_model = average.module if average else model  # the weights that are tested, sampled and loaded
    noise = torch.randn(64, args.latent_dim, generator=torch.Generator().manual_seed(args.seed)).to(device)

    start_epoch = 0
    if checkpoint:
        model.load_state_dict(checkpoint["train_state"] if average else checkpoint["model_state"])
        if average:
            average.load_state_dict(checkpoint["average_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        scheduler.load_state_dict(checkpoint["scheduler_state"])
        scheduler.base_lrs = [args.lr]  # a --lr given again replaces the run's own
        optimizer.param_groups[0]["lr"] = args.lr * scheduler.lr_lambdas[0](scheduler.last_epoch)
        start_epoch = checkpoint["epoch"] + 1
        if start_epoch >= args.epochs:
            print(f"{run_dir} has trained {start_epoch} epochs already; pass a larger --epochs to train further")
            return
    # purge_step: a reader drops what an interrupted attempt logged from start_epoch on
    writer = SummaryWriter(run_dir, purge_step=start_epoch) if master else None
    if master:
        print(f"{model_name}: {len(train_x)} training images, {sum(p.numel() for p in model.parameters())} parameters, "
              f"{world} process(es) on {device}; logs in {run_dir}, samples in {args.out_dir}/")

    for epoch in range(start_epoch, args.epochs):
        t0 = time.time()
        torch.manual_seed(epoch_seed(args.seed, epoch, rank))  # the reparameterisation noise
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(epoch_seed(args.seed, epoch))).to(device)
        sums, lr = train_epoch(ddp_model, optimizer, scheduler, average, batches(train_x, train_y, order, args.batch_size, rank, world),
                               args.bf16, desc=f"epoch {epoch + 1}/{args.epochs}", total=steps_per_epoch, show=master)
        torch.manual_seed(args.seed + rank)  # evaluate.py repeats this test loss exactly
        test_sums = loss_sums(eval_model, test_x[rank::world], test_y[rank::world])
        if world > 1:
            dist.all_reduce(sums)
            dist.all_reduce(test_sums)
        train_bce, train_kld = (sums[:2] / sums[2]).tolist()
        test_bce, test_kld = (test_sums / len(test_x)).tolist()
        if not master:
            continue
        scalars = {"train/bce": train_bce, "train/kld": train_kld, "train/loss": train_bce + train_kld,
                   "test/bce": test_bce, "test/kld": test_kld, "test/loss": test_bce + test_kld, "lr": lr}
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, epoch)
        writer.flush()  # before the checkpoint: what a checkpoint covers is always logged
        with torch.no_grad():
            save_image(sample_grid(eval_model, noise), os.path.join(args.out_dir, f"{epoch:03d}.png"), nrow=8, padding=2)
        state = {"model": model_name, "args": vars(args), "epoch": epoch, "model_state": eval_model.state_dict(),
                 "optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
                 "test_loss": scalars["test/loss"]}
        if average:
            state.update(train_state=model.state_dict(), average_state=average.state_dict())
        save_atomic(state, checkpoint_path)
        tqdm.write(f"epoch {epoch + 1:3d}/{args.epochs}  train {scalars['train/loss']:7.2f}  test {scalars['test/loss']:7.2f}  "
                   f"(bce {test_bce:6.2f} kld {test_kld:5.2f})  lr {lr:.2e}  {time.time() - t0:5.1f}s")
    if writer:
        writer.close()
    if world > 1:  # every process must end with the same weights
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        reference = weights.clone()
        dist.broadcast(reference, 0)
        same = torch.tensor([float(torch.equal(weights, reference))], device=device)
        dist.all_reduce(same, op=dist.ReduceOp.MIN)
        if master:
            print(f"weights identical on all {world} processes: {bool(same.item())}")
        dist.destroy_process_group()


def main(model_name="VAE", **overrides):
    defaults = {**DEFAULTS, **overrides}
    args, given = parse_args(model_name, defaults)
    if args.run_name is None:
        args.run_name = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    try:
        train(model_name, args, given)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    except FloatingPointError as e:
        run_dir = os.path.join(args.runs_dir, model_name, args.run_name)
        sys.exit(f"error: {e}; training stopped, the last good checkpoint in {run_dir} is kept: resume it with a lower --lr")


if __name__ == "__main__":
    main("VAE")
