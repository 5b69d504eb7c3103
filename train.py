"""Train the VAE on MNIST:  python train.py  (python train.py --help for the flags)

Each epoch it logs the mean train and test BCE, KLD and loss (the negative ELBO, in
nats per image) and the learning rate to TensorBoard in runs/VAE/RUN_NAME/, with a grid
of samples and one of reconstructions; saves the sample grid to out/RUN_NAME/NNN.png; and
writes the checkpoint runs/VAE/RUN_NAME/checkpoint.pt that --resume continues from.
train_CVAE.py trains the conditional VAE with this same loop.

Several processes, on GPUs or CPUs:  torchrun --nproc_per_node=N train.py
"""

import argparse
import math
import os
import shutil
import subprocess
import time
from datetime import datetime

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

import utils
from mnist import BINARIZE, binarize, load_mnist
from models import ARCHS, MODELS, encode_means, loss_function, loss_sums, read_checkpoint
from pictures import prior_grid, reconstruction_grid

# The default recipe, chosen by measurement (runs/recipes/README.md); train_CVAE.py changes a few.
DEFAULTS = dict(
    epochs=50,
    batch_size=256,
    lr=8e-3,  # peak learning rate of AdamW
    schedule="cosine",  # cosine: decay to zero over the run; constant: keep --lr
    warmup_epochs=1.0,  # linear warm-up from zero, in epochs (ignored with --lr-step-size)
    lr_step_size=0,  # the original's StepLR: multiply the lr by --lr-gamma every this many steps (0: off)
    lr_gamma=0.5,
    weight_decay=0.0,
    beta=1.0,  # weight of the KLD in the objective that is optimised (1: the ELBO)
    kl_warmup_epochs=0.0,  # the KLD's weight rises linearly from 0 to --beta over this many epochs (0: off)
    ema=0.0,  # evaluate and sample an exponential moving average of the weights with this decay (0: off)
    bf16="auto",  # bfloat16 matrix products in training (autocast); auto: where the hardware has them natively
    binarize="none",  # none: the grey levels, as the original; dynamic: each pixel drawn as Bernoulli(grey) each epoch
    latent_dim=2,
    arch="original",  # the networks: the original's, or davidson: the MLPs of Davidson et al. 2018 (models.py)
    seed=0,
    limit=None,  # train on the first N training images only
    val=0,  # hold out the last N training images as a validation set, logged as val/* (0: train on all 60,000)
    device="auto",
    data_dir="data",
    out_dir="out",
    runs_dir="runs",
    run_name=None,  # default: the date and time
    resume=False,
    overwrite=False,
)
# The rule for a run's settings: a flag given on the command line wins; with --resume every other
# flag is the run's own: those it was started with (run.json's "flags"), as later resumes changed
# them (run.json's "resumes"); a new run takes the defaults. The learning rate follows from the
# flags and how far training has got, so --epochs N on a resume re-stretches the schedule to N epochs.
NOT_SAVED = ("runs_dir", "run_name", "resume", "overwrite")  # where to find the run, and what to do with it
FIXED = (
    "latent_dim",
    "arch",
    "binarize",
    "val",
)  # a resumed run cannot change these (nor the model, nor EMA on or off)
SAMPLES, RECONSTRUCTIONS = 64, 32  # images in the grids logged each epoch
SCRIPTS = {"VAE": "train.py", "CVAE": "train_CVAE.py"}  # the script that trains each model


def command_line(model_name, defaults, argv=None):
    """The flags given on the command line, as a dict."""
    p = utils.parser(f"Train the {model_name} on MNIST.", defaults)
    number = utils.number
    p.add_argument("--epochs", type=number(int), help="number of epochs to train")
    p.add_argument("--batch-size", type=number(int), help="images per optimizer step")
    p.add_argument("--lr", type=number(float), help="peak learning rate of AdamW")
    p.add_argument("--schedule", choices=["cosine", "constant"], help="learning-rate schedule")
    p.add_argument("--warmup-epochs", type=number(float, low_ok=True), help="linear learning-rate warm-up, in epochs")
    p.add_argument(
        "--lr-step-size",
        type=number(int, low_ok=True),
        help="the original's StepLR instead of the schedule: decay the lr every N optimizer steps; 0 is off",
    )
    p.add_argument("--lr-gamma", type=number(float), help="StepLR's decay factor")
    p.add_argument("--weight-decay", type=number(float, low_ok=True), help="AdamW's decoupled weight decay")
    p.add_argument(
        "--beta",
        type=number(float, low_ok=True),
        help="weight of the KLD in the objective optimised (1: the ELBO); "
        "the logged and reported loss stays the -ELBO, BCE + KLD",
    )
    p.add_argument(
        "--kl-warmup-epochs",
        type=number(float, low_ok=True),
        help="raise the KLD's weight linearly from 0 to --beta over this many epochs (KL warm-up; 0 is off)",
    )
    p.add_argument(
        "--ema",
        type=number(float, low_ok=True, high=1),
        help="decay of the weight average that is evaluated and sampled; 0 is off",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="train with bfloat16 matrix products (autocast); evaluation and samples stay float32; auto: on where "
        "the hardware multiplies bfloat16 natively (CPUs with AVX512-BF16 or AMX, NVIDIA GPUs from Ampere on)",
    )
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32")
    p.add_argument(
        "--binarize",
        choices=BINARIZE,
        help="none: grey-level pixels; dynamic: each training pixel drawn as Bernoulli(grey level) each epoch, "
        "the test set binarised once",
    )
    p.add_argument("--latent-dim", type=number(int), help="size of the latent space z")
    p.add_argument(
        "--arch",
        choices=ARCHS,
        help="the networks: the original's, or davidson, the MLPs of Davidson et al. 2018 (784-256-128, 128-256-784)",
    )
    p.add_argument("--seed", type=int, help="random seed: the same seed and flags give the same weights on CPU")
    p.add_argument("--limit", type=number(int), help="train on the first N training images only, for quick tries")
    p.add_argument(
        "--val",
        type=number(int, low_ok=True, high=60000),
        help="hold out the last N of the 60,000 training images as a validation set, logged as val/*; 0 is off",
    )
    utils.add_device_flag(p)
    utils.add_data_flag(p)
    p.add_argument("--out-dir", help="sample grids go to OUT_DIR/RUN_NAME/NNN.png, one per epoch")
    p.add_argument("--runs-dir", help=f"logs, flags and checkpoint go to RUNS_DIR/{model_name}/RUN_NAME/")
    p.add_argument("--run-name", help="name of the run (default: the date and time)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run RUNS_DIR/MODEL/RUN_NAME with its own flags; flags given again win",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a run folder or grid folder that holds something, emptying both first",
    )
    p.set_defaults(bf16=None)  # None: not given
    return utils.parse(p, defaults, argv)[1]


def settings(defaults, given, saved=None):
    """The run's flags under the rule above; `saved` is the run's run.json (or an old checkpoint's args) on --resume."""
    if saved is None:
        return {**defaults, **given}
    for flag in FIXED:
        if flag in given and given[flag] != saved.get(flag, defaults[flag]):
            theirs = saved.get(flag, defaults[flag])
            raise utils.UserError(
                f"--resume: --{flag.replace('_', '-')} {given[flag]} differs from the run's {theirs}; "
                f"drop it, or start a new run"
            )
    if "ema" in given and bool(given["ema"]) != bool(saved.get("ema")):
        raise utils.UserError(
            f"--resume: the run was trained {'with' if saved.get('ema') else 'without'} --ema; EMA cannot be turned "
            f"{'off' if saved.get('ema') else 'on'} in a run: drop --ema, or start a new run"
        )
    return {**defaults, **{k: v for k, v in saved.items() if k in defaults and k not in NOT_SAVED}, **given}


def epoch_seed(seed, epoch, stream):
    """Each epoch's random numbers follow from (seed, epoch): a resumed run repeats them exactly.
    Streams: 0 the data order, 1 the binarised pixels, 2 + rank the reparameterisation noise."""
    return (seed * 100_003 + epoch) * 1_009 + stream


def build(model_name, args, device):
    """The model, its optimizer and the weight average, as args ask."""
    torch.manual_seed(args.seed)  # the initial weights
    model = MODELS[model_name](latent_dim=args.latent_dim, arch=args.arch).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=device.type != "mps"
    )
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema)) if args.ema else None
    return model, optimizer, average


def learning_rate(args, epoch, step, steps_per_epoch):
    """The learning rate of step `step` (from 0) of epoch `epoch` (from 0): a function of how far training
    has got, so that a resume with another --batch-size, --limit or --epochs continues at the right place."""
    if args.lr_step_size:  # the original's StepLR: times --lr-gamma every --lr-step-size optimizer steps
        return args.lr * args.lr_gamma ** ((epoch * steps_per_epoch + step) // args.lr_step_size)
    done = epoch + step / steps_per_epoch  # epochs done before this step
    if done < args.warmup_epochs:
        return args.lr * min(1.0, (done + 1 / steps_per_epoch) / args.warmup_epochs)
    if args.schedule == "cosine":  # to zero at the end of --epochs
        return args.lr * 0.5 * (1 + math.cos(math.pi * done / args.epochs))
    return args.lr


def kl_weight(args, epoch, step, steps_per_epoch):
    """The KLD's weight at step `step` of epoch `epoch` (both from 0): --beta, reached linearly from 0 at the
    end of epoch --kl-warmup-epochs. Like the learning rate, a function of how far training has got, so that
    a resume continues it where it was."""
    done = epoch + (step + 1) / steps_per_epoch  # epochs done after this step
    if done >= args.kl_warmup_epochs:
        return args.beta
    return args.beta * done / args.kl_warmup_epochs


def batches(images, labels, order, batch_size, rank=0, world=1):
    """(x, y) for each optimizer step: consecutive slices of `order`, this process's share of each
    (a last batch smaller than the number of processes is dropped: every share must hold an image)."""
    for start in range(0, len(order) - world + 1, batch_size):
        index = order[start : start + batch_size][rank::world]
        yield images[index], labels[index]


def train_epoch(
    model, optimizer, lr_at, average, batches, bf16=False, generator=None, desc="", total=None, show=True, beta_at=None
):
    """One pass over `batches`, step i at learning rate lr_at(i), minimising BCE + beta_at(i) * KLD (default:
    the -ELBO); returns the sums [bce, kld, images, objective], the last learning rate and the last KLD weight."""
    model.train()
    sums = None
    bar = tqdm(batches, desc=desc, total=total, leave=False, disable=None if show else True)  # None: only on a terminal
    for step, (x, y) in enumerate(bar):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, mu, logvar = model(x, y, generator)  # the VAE ignores y
        loss, bce, kld = loss_function(logits, x, mu, logvar)
        beta = beta_at(step) if beta_at else 1.0
        objective = loss if beta == 1.0 else bce + beta * kld
        check = loss.detach().clone()
        if dist.is_initialized():  # a non-finite loss in any process stops every process, with the same message
            dist.all_reduce(check)
        if not torch.isfinite(check):
            raise FloatingPointError(f"the loss became {check.item()} in {desc}, step {step + 1}")
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        if average:
            average.update_parameters(model)  # under DDP, model.parameters() are the wrapped model's
        batch_sums = torch.stack([bce.detach(), kld.detach(), torch.ones_like(bce), objective.detach()]) * len(x)
        sums = batch_sums if sums is None else sums + batch_sums
        if step % 50 == 0:
            bar.set_postfix(loss=f"{(sums[0] + sums[1]).item() / sums[2].item():.2f}")
    return sums, lr, beta


def open_run(model_name, defaults, given):
    """The run's folder, settings, record and checkpoint (None for a run that starts from epoch 1).

    It only reads: nothing is deleted or written until the run is known to be valid (run_training).
    """
    runs_dir, run_name = given.get("runs_dir", defaults["runs_dir"]), given.get("run_name")
    if given.get("resume") and given.get("overwrite"):
        raise utils.UserError("--resume continues a run and --overwrite empties it: pass one of them")
    if given.get("resume") and not run_name:
        raise utils.UserError("--resume needs the --run-name of the run to continue")
    run_name = run_name or datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = os.path.join(runs_dir, model_name, run_name)
    checkpoint_path = os.path.join(run_dir, utils.CHECKPOINT)
    record = utils.read_run(run_dir) if os.path.isdir(run_dir) else None
    checkpoint = None

    if given.get("resume"):
        if os.path.exists(checkpoint_path):
            checkpoint = read_checkpoint(checkpoint_path)
        if not record and not checkpoint:
            raise utils.UserError(
                f"--resume: {run_dir} holds neither a checkpoint nor the flags of a run; "
                f"check --run-name and --runs-dir, or start a new run without --resume"
            )
        kind = (record or checkpoint)["model"]
        if kind != model_name:
            raise utils.UserError(
                f"--resume: {run_dir} holds a {kind}, not a {model_name}; resume it with {SCRIPTS[kind]}"
            )
        # runs from before run.json kept their flags in the checkpoint
        saved = (
            utils.current_flags(record)
            if record
            else {k: v for k, v in checkpoint["args"].items() if k in defaults and k not in NOT_SAVED}
        )
        args = settings(defaults, given, saved)
        changed = {k: v for k, v in args.items() if k not in NOT_SAVED and saved.get(k, defaults[k]) != v}
        record = record or {"model": model_name, "started": time.time(), "flags": saved}
        record = dict(record, resumes=record.get("resumes", []) + [{"at": time.time(), "changed": changed}])
    else:
        args = settings(defaults, given)
        grid_dir = os.path.join(args["out_dir"], run_name)
        for folder in (run_dir, grid_dir):
            if os.path.isdir(folder) and os.listdir(folder) and not args["overwrite"]:
                raise utils.UserError(
                    f"{folder} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                    f"or choose another --run-name"
                )
        record = {
            "model": model_name,
            "started": time.time(),
            "flags": {k: v for k, v in args.items() if k not in NOT_SAVED},
        }
    return run_dir, dict(args, runs_dir=runs_dir, run_name=run_name), record, checkpoint


def what_ran(device, bf16):
    """What actually ran, beside the flags that asked for it (--device auto, --bf16 auto)."""
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=os.path.dirname(os.path.abspath(__file__)),
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"device": str(device), "bf16": bf16, "torch": torch.__version__, "git_commit": commit}


def train(model_name, defaults, given):
    # processes: torchrun sets RANK and WORLD_SIZE; plain `python train.py` is one process
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    run_dir, flags, record, checkpoint = open_run(model_name, defaults, given)
    args = argparse.Namespace(**flags)
    device = utils.pick_device(args.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        run_training(model_name, args, record, checkpoint, run_dir, device, rank, world)
    finally:
        if world > 1:
            dist.destroy_process_group()


def run_training(model_name, args, record, checkpoint, run_dir, device, rank, world):
    master = rank == 0  # only this process writes logs, grids and checkpoints
    bf16 = utils.use_bf16(args.bf16, device)  # auto is resolved where the run runs
    grid_dir = os.path.join(args.out_dir, args.run_name)
    (train_x, train_y), (test_x, test_y), (val_x, val_y) = load_data(args, device)

    # `model` holds the weights that the optimizer trains, and the training step calls it through `step_model`
    # (under torchrun DistributedDataParallel, which averages the gradients over the processes); `tested` holds
    # the weights that are tested, sampled and saved as "weights": the moving average with --ema, else `model`
    model, optimizer, average = build(model_name, args, device)
    step_model = DistributedDataParallel(model) if world > 1 else model
    tested = average.module if average else model
    noise = torch.randn(SAMPLES, args.latent_dim, generator=torch.Generator().manual_seed(args.seed)).to(device)
    start_epoch = restore(checkpoint, model, optimizer, average, args, run_dir, model_name)
    if start_epoch >= args.epochs:
        if master:
            print(f"{run_dir} has trained {start_epoch} epochs already; pass a larger --epochs to train further")
        return

    if master:  # the run is valid: only now are folders emptied (--overwrite) and run.json written
        open_folders(args, record, checkpoint, run_dir, grid_dir, dict(epoch=start_epoch, ran=what_ran(device, bf16)))
        held_out = f", {len(val_x)} held out for validation" if args.val else ""
        print(
            f"{model_name}: {len(train_x)} training images{held_out}, "
            f"{sum(p.numel() for p in model.parameters())} parameters, {world} process(es) on {device}, "
            f"bfloat16 {bf16}; logs in {run_dir}, samples in {grid_dir}/"
        )
    # purge_step: a reader drops what an interrupted attempt logged from the first epoch this one redoes
    writer = SummaryWriter(run_dir, purge_step=start_epoch if args.resume else None) if master else None

    epoch = start_epoch
    try:
        for epoch in range(start_epoch, args.epochs):
            t0 = time.time()
            sums, lr, beta = train_one_epoch(
                step_model, optimizer, average, train_x, train_y, args, epoch, bf16, rank, world
            )
            # evaluate.py repeats this test loss with the same generator
            test_sums = loss_sums(tested, test_x[rank::world], test_y[rank::world], eval_noise(args, device, rank))
            val_sums = loss_sums(tested, val_x[rank::world], val_y[rank::world], eval_noise(args, device, rank))
            if world > 1:
                for tensor in (sums, test_sums, val_sums):
                    dist.all_reduce(tensor)
            if not master:
                continue
            means = {"train": sums[:2] / sums[2], "test": test_sums / len(test_x)}
            if args.val:
                means["val"] = val_sums / len(val_x)
            objective = sums[3].item() / sums[2].item()
            log_scalars(writer, epoch, means, {"lr": lr, "beta": beta, "train/objective": objective})
            log_pictures(writer, tested, epoch, noise, test_x, test_y, grid_dir)
            test_loss = test_sums.sum().item() / len(test_x)
            val_loss = val_sums.sum().item() / len(val_x) if args.val else None
            save_checkpoint(model_name, args, epoch, model, optimizer, average, run_dir, test_loss, val_loss)
            writer.add_scalar("time/epoch_seconds", time.time() - t0, epoch)  # the whole epoch: bench.py reads it
            val = f"  val {val_loss:7.2f}" if args.val else ""
            tqdm.write(
                f"epoch {epoch + 1:3d}/{args.epochs}  train {(sums[0] + sums[1]).item() / sums[2].item():7.2f}{val}  "
                f"test {test_loss:7.2f}  lr {lr:.2e}  {time.time() - t0:5.1f}s"
            )
    except KeyboardInterrupt:
        kept = f"the checkpoint of epoch {epoch} is kept" if epoch > 0 else "nothing was saved yet"
        resume = resume_command(model_name, args)
        raise utils.UserError(f"interrupted in epoch {epoch + 1}; {kept}: continue with {resume}") from None
    except FloatingPointError as e:
        if epoch > start_epoch or checkpoint:
            raise utils.UserError(
                f"{e}; training stopped and the checkpoint of epoch {epoch} in {run_dir} is kept: "
                f"continue with {resume_command(model_name, args)} --lr SMALLER"
            ) from None
        raise utils.UserError(
            f"{e}; training stopped before any checkpoint: start again with a lower --lr and --overwrite"
        ) from None
    if master:
        log_run(writer, tested, args, test_x, test_y, epoch)
        writer.close()
    if world > 1:
        check_same_weights(model, world, device, run_dir, master)


def load_data(args, device):
    """(train_x, train_y), (test_x, test_y), (val_x, val_y): the whole of MNIST as tensors on the device.
    --val holds out the last training images, --limit keeps the first N of the rest; binarised runs
    (--binarize dynamic) see binarised test and validation images, drawn once."""
    dynamic = utils.binarized(args.binarize)
    train_x, train_y = load_mnist(args.data_dir, train=True)
    test_x, test_y = load_mnist(args.data_dir, train=False, binarized=dynamic)
    kept = len(train_x) - args.val
    val_x, val_y = train_x[kept:], train_y[kept:]
    if dynamic:  # drawn once, as the test images are
        val_x = binarize(val_x, torch.Generator().manual_seed(0))
    train_x, train_y = train_x[:kept][: args.limit], train_y[:kept][: args.limit]
    return [(x.to(device), y.to(device)) for x, y in ((train_x, train_y), (test_x, test_y), (val_x, val_y))]


def restore(checkpoint, model, optimizer, average, args, run_dir, model_name):
    """Load a resumed run's checkpoint into the model, its average and the optimizer; the epoch to start from."""
    if not checkpoint:
        return 0
    try:
        model.load_state_dict(checkpoint.get("trained_weights", checkpoint["weights"]))
        if average:
            average.load_state_dict(checkpoint["average_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
    except (RuntimeError, KeyError, ValueError):
        raise utils.UserError(
            f"--resume: {os.path.join(run_dir, utils.CHECKPOINT)} does not fit the {model_name} of its flags "
            f"(latent size {args.latent_dim}); it is damaged or from other code: start a new run"
        ) from None
    for group in optimizer.param_groups:  # the saved state brings the old hyperparameters: the run's flags win
        group["weight_decay"] = args.weight_decay
    return checkpoint["epoch"] + 1


def open_folders(args, record, checkpoint, run_dir, grid_dir, what):
    """Empty the run's folders on --overwrite, make them, and write run.json with `what` (epoch, what ran)."""
    if args.resume and not checkpoint:
        print(f"{run_dir} stopped before its first checkpoint: starting it again from epoch 1 with its own flags")
    if args.overwrite:
        for folder in (run_dir, grid_dir):
            if os.path.isdir(folder):
                shutil.rmtree(folder)
    utils.writable_dir(run_dir, "--runs-dir")
    utils.writable_dir(grid_dir, "--out-dir")
    (record["resumes"][-1] if record.get("resumes") else record).update(what)
    utils.write_run(run_dir, record)


def train_one_epoch(step_model, optimizer, average, train_x, train_y, args, epoch, bf16, rank, world):
    """Epoch `epoch` of training, its random numbers from (seed, epoch): train_epoch's sums, lr and beta."""
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    device = train_x.device
    images = train_x
    if utils.binarized(args.binarize):  # the same pixels in every process, and on a resume
        images = binarize(train_x, torch.Generator(device).manual_seed(epoch_seed(args.seed, epoch, 1)))
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(epoch_seed(args.seed, epoch, 0)))
    return train_epoch(
        step_model,
        optimizer,
        lambda step: learning_rate(args, epoch, step, steps_per_epoch),
        average,
        batches(images, train_y, order.to(device), args.batch_size, rank, world),
        bf16,
        torch.Generator(device).manual_seed(epoch_seed(args.seed, epoch, 2 + rank)),
        desc=f"epoch {epoch + 1}/{args.epochs}",
        total=steps_per_epoch,
        show=rank == 0,
        beta_at=lambda step: kl_weight(args, epoch, step, steps_per_epoch),
    )


def eval_noise(args, device, rank):
    """The generator of the test and validation losses' noise: the same every epoch, and in evaluate.py."""
    return torch.Generator(device).manual_seed(args.seed + rank)


def save_checkpoint(model_name, args, epoch, model, optimizer, average, run_dir, test_loss, val_loss=None):
    """Write the epoch's checkpoint atomically, with its test (and validation) -ELBO."""
    tested = average.module if average else model
    state = {
        "model": model_name,
        "args": vars(args),
        "epoch": epoch,
        "weights": tested.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "test_loss": test_loss,
    }
    if val_loss is not None:
        state["val_loss"] = val_loss
    if average:
        state.update(trained_weights=model.state_dict(), average_state=average.state_dict())
    utils.save_atomic(state, os.path.join(run_dir, utils.CHECKPOINT))


def check_same_weights(model, world, device, run_dir, master):
    """Every process must end with the same weights: a difference is a bug, and fails the run."""
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    reference = weights.clone()
    dist.broadcast(reference, 0)
    same = torch.tensor([float(torch.equal(weights, reference))], device=device)
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    if not same.item():
        raise utils.UserError(
            f"the weights differ between the {world} processes after training; the run in {run_dir} "
            f"is not to be trusted: report this with the command you ran"
        )
    if master:
        print(f"weights identical on all {world} processes: True")


def resume_command(model_name, args):
    script = SCRIPTS[model_name]
    runs_dir = f" --runs-dir {args.runs_dir}" if args.runs_dir != DEFAULTS["runs_dir"] else ""
    return f"python {script} --run-name {args.run_name}{runs_dir} --resume"


def log_scalars(writer, epoch, means, extra):
    """The epoch's mean BCE and KLD of each split and their sum, the -ELBO, as SPLIT/bce, SPLIT/kld and SPLIT/loss,
    after `extra` (lr, beta, and train/objective: what was minimised, BCE + beta * KLD)."""
    scalars = dict(extra)
    for split, (bce, kld) in means.items():
        scalars.update(
            {f"{split}/bce": bce.item(), f"{split}/kld": kld.item(), f"{split}/loss": bce.item() + kld.item()}
        )
    for tag, value in scalars.items():
        writer.add_scalar(tag, value, epoch)


@torch.no_grad()
def log_pictures(writer, model, epoch, noise, test_x, test_y, grid_dir):
    """The epoch's samples and reconstructions to TensorBoard, and its sample grid to GRID_DIR/NNN.png."""
    samples = prior_grid(model, noise)
    save_image(samples, os.path.join(grid_dir, f"{epoch:03d}.png"), nrow=8, padding=2)
    writer.add_image("samples", make_grid(samples, nrow=8, padding=2), epoch)
    reconstructions = reconstruction_grid(model, test_x[:RECONSTRUCTIONS], test_y[:RECONSTRUCTIONS])
    writer.add_image("reconstructions", make_grid(reconstructions, nrow=8, padding=2), epoch)
    writer.flush()  # before the checkpoint: what a checkpoint covers is always logged


@torch.no_grad()
def log_run(writer, model, args, test_x, test_y, epoch):
    """At the end of a run: the test images' latent means in the Projector, and in HParams the flags beside the
    final test loss."""
    writer.add_embedding(
        encode_means(model, test_x, test_y).cpu(),
        metadata=test_y.tolist(),
        label_img=test_x.view(-1, 1, 28, 28).cpu(),
        global_step=epoch,
        tag="test_latent_means",
    )
    flags = {
        k: v if isinstance(v, (int, float, str, bool)) else str(v)
        for k, v in vars(args).items()
        if k not in ("resume", "overwrite")
    }
    final = writer.file_writer  # into the run's own folder, not a sub-run: TensorBoard lists one run per training run
    for summary in hparams(flags, {"test/loss": None}):  # the metric's values are read from the run's test/loss scalars
        final.add_summary(summary)


def main(model_name="VAE", defaults=DEFAULTS, argv=None):
    given = command_line(model_name, defaults, argv)
    utils.main(lambda: train(model_name, defaults, given))


if __name__ == "__main__":
    main()
