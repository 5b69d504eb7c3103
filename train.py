"""Train the VAE on MNIST:  python train.py  (python train.py --help for the flags)

Each epoch it logs the mean train and test BCE, KLD and loss (the negative ELBO, in nats per image) and
the learning rate to TensorBoard in runs/VAE/RUN_NAME/, with a grid of samples and one of reconstructions;
saves the sample grid to out/RUN_NAME/NNN.png; and writes the checkpoint runs/VAE/RUN_NAME/checkpoint.pt
that --resume continues from (runs.py keeps the run: its folder, flags, run.json and checkpoints).
train_CVAE.py trains the conditional VAE with this same loop.

Several processes, on GPUs or CPUs:  torchrun --nproc_per_node=N train.py
"""

import math
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.tensorboard.summary import hparams
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

import cli
import runs
from mnist import BINARIZE, binarize, splits
from models import ARCHS, MODELS, encode_means, loss_function, loss_sums
from pictures import prior_grid, reconstruction_grid

count, positive, at_least_0 = cli.number(int), cli.number(float), cli.number(float, low_ok=True)
# Every flag: its default, its type (or choices) and its help. The defaults are the recipe chosen by measurement
# (runs/recipes/README.md); train_CVAE.py changes a few.
FLAGS = dict(
    epochs=(50, count, "number of epochs to train"),
    batch_size=(256, count, "images per optimizer step"),
    lr=(8e-3, positive, "peak learning rate of AdamW"),
    schedule=("cosine", ["cosine", "constant"], "cosine: decay to zero by the last epoch; constant: keep --lr"),
    warmup_epochs=(1.0, at_least_0, "linear learning-rate warm-up from zero, in epochs"),
    lr_step_size=(0, cli.number(int, low_ok=True), "the original's StepLR: lr times --lr-gamma every N steps"),
    lr_gamma=(0.5, positive, "StepLR's decay factor"),
    weight_decay=(0.0, at_least_0, "AdamW's decoupled weight decay"),
    beta=(1.0, at_least_0, "weight of the KLD in the objective (1: the ELBO); losses logged stay the -ELBO"),
    kl_warmup_epochs=(0.0, at_least_0, "raise the KLD's weight linearly from 0 to --beta over N epochs"),
    ema=(0.0, cli.number(float, low_ok=True, high=1), "decay of the weight average that is tested and saved"),
    bf16=("auto", bool, "bfloat16 matrix products in training; auto: where the hardware has them natively"),
    binarize=("none", BINARIZE, "dynamic: each pixel drawn as Bernoulli(grey level), anew each epoch"),
    latent_dim=(2, count, "size of the latent space z"),
    arch=("original", ARCHS, "the networks (models.ARCHS): the original's, or Davidson et al. 2018's"),
    seed=(0, int, "random seed: the same seed and flags give the same weights on CPU"),
    limit=(None, count, "train on the first N training images only, for quick tries"),
    val=(0, cli.number(int, low_ok=True, high=60000), "hold out the last N training images for validation"),
    images_every=(1, count, "log samples and reconstructions to TensorBoard every N epochs (and the last)"),
    patience=(
        0,
        cli.number(int, low_ok=True),
        "with --val: stop when the validation -ELBO has not improved for N epochs",
    ),
    device=("auto", str, cli.DEVICE_HELP),
    data_dir=("data", str, "the folder that holds MNIST/raw/"),
    out_dir=("out", str, "sample grids go to OUT_DIR/RUN_NAME/NNN.png, one per epoch"),
    runs_dir=("runs", str, "logs, flags and checkpoints go to RUNS_DIR/MODEL/RUN_NAME/"),
    run_name=(None, str, "name of the run (default: the date and time)"),
    resume=(False, "switch", "continue the run RUNS_DIR/MODEL/RUN_NAME with its flags; flags given win"),
    overwrite=(False, "switch", "start a new run in a folder that holds one, emptying it first"),
)
DEFAULTS = {name: default for name, (default, *_) in FLAGS.items()}
SAMPLES, RECONSTRUCTIONS = 64, 32  # images in the grids logged each epoch


def main(model_name="VAE", changes=None, argv=None):
    """Train `model_name` with the flags of the command line (`argv`), and `changes` to FLAGS' defaults."""
    defaults = DEFAULTS | (changes or {})
    _, given = cli.parse(cli.parser(f"Train the {model_name} on MNIST.", FLAGS, defaults), argv)
    cli.reuse_freed_memory()  # a CPU speed-up (its docstring says why)
    with cli.one_line_errors():
        run = runs.open_run(model_name, defaults, given)  # checks --resume and the folders; writes nothing yet
        args = run.args
        # processes: torchrun sets RANK and WORLD_SIZE; plain `python train.py` is one process
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        device = cli.pick_device(args.device)
        if world > 1:
            if device.type == "cuda":
                device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        bf16 = cli.use_bf16(args.bf16, device)  # auto is resolved where the run runs

        # data: the whole of MNIST as tensors on the device, the training images split as --val and --limit say
        data = splits(args.data_dir, args.val, args.limit, args.binarize == "dynamic", device)
        (train_x, train_y), (val_x, val_y), (test_x, test_y) = data

        # the model and its optimizer; `tested` are the weights tested, sampled and saved: the moving average with
        # --ema, else the trained ones. Under torchrun DistributedDataParallel averages the processes' gradients.
        torch.manual_seed(args.seed)  # the initial weights
        model = MODELS[model_name](latent_dim=args.latent_dim, arch=args.arch).to(device)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=device.type != "mps"
        )
        average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema)) if args.ema else None
        tested = average.module if average else model
        step_model = DistributedDataParallel(model) if world > 1 else model
        start_epoch = run.restore(model, optimizer, average)  # 0, or where a resumed run stopped
        if start_epoch >= args.epochs or (start_epoch and run.out_of_patience(start_epoch - 1)):
            more = "--epochs" if start_epoch >= args.epochs else f"--patience (it stopped early at {args.patience})"
            print(f"{run.dir} has trained {start_epoch} epochs already; pass a larger {more} to train further")
            return
        writer = run.start(start_epoch, device, bf16)  # makes the folders, writes run.json (the first process only)
        if writer:
            held_out = f", {len(val_x)} held out for validation" if args.val else ""
            print(
                f"{model_name}: {len(train_x)} training images{held_out}, "
                f"{sum(p.numel() for p in model.parameters())} parameters, {world} process(es) on {device}, "
                f"bfloat16 {bf16}; logs in {run.dir}, samples in {run.grid_dir}/"
            )
        noise = torch.randn(SAMPLES, args.latent_dim, generator=torch.Generator().manual_seed(args.seed)).to(device)

        with run.stopping_cleanly():  # Ctrl-C or a non-finite loss: one line that says what is kept
            for epoch in range(start_epoch, args.epochs):
                t0 = time.time()
                sums, lr, beta = train_epoch(
                    step_model, optimizer, average, train_x, train_y, args, epoch, bf16, rank, world
                )
                # the test and validation -ELBO, one z per image, the same noise every epoch (and in evaluate.py)
                test_sums = loss_sums(tested, test_x[rank::world], test_y[rank::world], eval_noise(device, args, rank))
                val_sums = loss_sums(tested, val_x[rank::world], val_y[rank::world], eval_noise(device, args, rank))
                for tensor in (sums, test_sums, val_sums) if world > 1 else ():  # the sums over every process
                    dist.all_reduce(tensor)
                test_loss = test_sums.sum().item() / len(test_x)
                val_loss = val_sums.sum().item() / len(val_x) if args.val else None
                if writer:  # the first process logs, and draws the epoch's grid, before the checkpoint
                    sums_of = {"train": sums, "test": test_sums} | ({"val": val_sums} if args.val else {})
                    log_scalars(writer, epoch, sums_of, (len(test_x), len(val_x)), lr, beta)
                    log_pictures(writer, tested, args, epoch, noise, test_x, test_y, run.grid_dir)
                run.save(epoch, model, optimizer, average, test_loss, val_loss)  # atomic; the first process writes
                if writer:
                    writer.add_scalar("time/epoch_seconds", time.time() - t0, epoch)  # bench.py reads it
                    val = f"  val {val_loss:7.2f}" if args.val else ""
                    tqdm.write(
                        f"epoch {epoch + 1:3d}/{args.epochs}  train {(sums[0] + sums[1]).item() / sums[2].item():7.2f}"
                        f"{val}  test {test_loss:7.2f}  lr {lr:.2e}  {time.time() - t0:5.1f}s"
                    )
                if run.out_of_patience(epoch):  # early stopping: best.pt holds the best epoch
                    print(f"stopped early: no better validation -ELBO since epoch {run.best_epoch + 1}, in best.pt")
                    break
        if writer:
            log_run(writer, tested, args, test_x, test_y, run.last_saved)
            writer.close()
        if world > 1:
            check_same_weights(model, world, device, run.dir)


def train_epoch(model, optimizer, average, train_x, train_y, args, epoch, bf16=False, rank=0, world=1):
    """One pass over the training images, minimising BCE + beta * KLD (the -ELBO where beta is 1): the sums over the
    images of [bce, kld, 1, objective], and the last step's learning rate and beta. Its random numbers follow from
    (seed, epoch), so that a resumed run repeats them exactly; under torchrun each process takes its share."""
    model.train()
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    # the epoch's random numbers, a stream each, follow from (seed, epoch): a resumed run repeats them exactly
    seed = lambda stream: (args.seed * 100_003 + epoch) * 1_009 + stream
    images = train_x
    if args.binarize == "dynamic":  # drawn anew each epoch, the same in every process
        images = binarize(train_x, torch.Generator(train_x.device).manual_seed(seed(1)))
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed(0)))
    order = order.to(train_x.device)
    noise = torch.Generator(train_x.device).manual_seed(seed(2 + rank))  # of the reparameterisation
    # the batches: consecutive slices of `order`, and of each this process's share (a last batch smaller than the
    # number of processes is dropped: every share must hold an image)
    starts = range(0, len(order) - world + 1, args.batch_size)
    bar = tqdm(starts, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, disable=None if rank == 0 else True)
    sums = torch.zeros(4, device=train_x.device)  # [bce, kld, images, objective], summed over the images
    for step, start in enumerate(bar):  # tqdm shows a bar only on a terminal
        index = order[start : start + args.batch_size][rank::world]
        x, y = images[index], train_y[index]

        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, mu, logvar = model(x, y, noise)  # the VAE ignores y
        loss, bce, kld = loss_function(logits, x, mu, logvar)
        beta = kl_weight(args, epoch, step, steps_per_epoch)
        objective = loss if beta == 1.0 else bce + beta * kld
        check = objective.detach().clone()
        if dist.is_initialized():  # a non-finite loss in any process stops every process, with the same message
            dist.all_reduce(check)
        if not torch.isfinite(check):
            raise FloatingPointError(
                f"the loss became {check.item()} in epoch {epoch + 1}/{args.epochs}, step {step + 1}"
            )
        lr = learning_rate(args, epoch, step, steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        if average:
            average.update_parameters(model)  # under DDP, model.parameters() are the wrapped model's

        sums += torch.stack([bce.detach(), kld.detach(), torch.ones_like(bce), objective.detach()]) * len(x)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{(sums[0] + sums[1]).item() / sums[2].item():.2f}")
    return sums, lr, beta


def learning_rate(args, epoch, step, steps_per_epoch):
    """The learning rate of step `step` (from 0) of epoch `epoch` (from 0): a function of how far training has got,
    so that a resume with another --batch-size, --limit or --epochs continues at the right place."""
    if args.lr_step_size:  # the original's StepLR: times --lr-gamma every --lr-step-size optimizer steps
        return args.lr * args.lr_gamma ** ((epoch * steps_per_epoch + step) // args.lr_step_size)
    done = epoch + step / steps_per_epoch  # epochs done before this step
    if done < args.warmup_epochs:
        return args.lr * min(1.0, (done + 1 / steps_per_epoch) / args.warmup_epochs)
    if args.schedule == "cosine":  # to zero at the end of --epochs
        return args.lr * 0.5 * (1 + math.cos(math.pi * done / args.epochs))
    return args.lr


def kl_weight(args, epoch, step, steps_per_epoch):
    """The KLD's weight at step `step` of epoch `epoch` (both from 0): --beta, reached linearly from 0 at the end
    of epoch --kl-warmup-epochs; like the learning rate, a function of how far training has got."""
    done = epoch + (step + 1) / steps_per_epoch  # epochs done after this step
    if done >= args.kl_warmup_epochs:
        return args.beta
    return args.beta * done / args.kl_warmup_epochs


def eval_noise(device, args, rank):
    """The generator of the test and validation losses' noise: the same every epoch, and in evaluate.py."""
    return torch.Generator(device).manual_seed(args.seed + rank)


def log_scalars(writer, epoch, sums, counts, lr, beta):
    """The epoch's mean BCE and KLD of each split and their sum, the -ELBO, as SPLIT/bce, SPLIT/kld and SPLIT/loss;
    lr, beta, and train/objective, what was minimised (BCE + beta * KLD). `sums` holds each split's sums over its
    images, and the training sums count their images themselves; `counts` are the test and validation images."""
    n = {"train": sums["train"][2].item(), "test": counts[0], "val": counts[1]}
    scalars = {"lr": lr, "beta": beta, "train/objective": sums["train"][3].item() / n["train"]}
    for split, split_sums in sums.items():
        bce, kld = (split_sums[:2] / (split_sums[2] if split == "train" else n[split])).tolist()
        scalars.update({f"{split}/bce": bce, f"{split}/kld": kld, f"{split}/loss": bce + kld})
    for tag, value in scalars.items():
        writer.add_scalar(tag, value, epoch)


@torch.no_grad()
def log_pictures(writer, model, args, epoch, noise, test_x, test_y, grid_dir):
    """The epoch's sample grid to GRID_DIR/NNN.png, and its samples and reconstructions to TensorBoard every
    --images-every epochs and at the last (in a long run they are most of the event file)."""
    samples = prior_grid(model, noise)
    save_image(samples, os.path.join(grid_dir, f"{epoch:03d}.png"), nrow=8, padding=2)
    if (epoch + 1) % args.images_every == 0 or epoch + 1 == args.epochs:
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
    flags = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}
    flags = {k: v for k, v in flags.items() if k not in ("resume", "overwrite")}
    final = writer.file_writer  # into the run's own folder, not a sub-run: TensorBoard lists one run per training run
    for summary in hparams(flags, {"test/loss": None}):  # the metric's values are read from the run's test/loss
        final.add_summary(summary)


def check_same_weights(model, world, device, run_dir):
    """Every process must end with the same weights: a difference is a bug, and fails the run."""
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    reference = weights.clone()
    dist.broadcast(reference, 0)
    same = torch.tensor([float(torch.equal(weights, reference))], device=device)
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    if not same.item():
        raise cli.UserError(
            f"the weights differ between the {world} processes after training; the run in {run_dir} "
            f"is not to be trusted: report this with the command you ran"
        )
    if dist.get_rank() == 0:
        print(f"weights identical on all {world} processes: True")


if __name__ == "__main__":
    main()
