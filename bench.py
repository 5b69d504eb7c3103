"""How fast training is, and where the time goes:  python bench.py  (--help for the flags)

First the roofline: the FLOPs of an epoch of `python train.py` (from the model's layer
shapes), the rate of this machine's matrix products (float32, and bfloat16 where native),
measured in the same run before and after the epochs, and the fraction of each which whole
train.py epochs reach (training, test pass, pictures and checkpoint: the epoch seconds it
logs). Then it times one training epoch of train.py's pipeline (all 60,000 images held in
one tensor, each batch taken by indexing it) and of the classic torchvision pipeline
(datasets.MNIST with transforms.ToTensor through a DataLoader, as pytorch/examples does),
with the same model, optimizer, loop and batch size, in this process, one after the other,
--repeats times each. It prints seconds per epoch, images per second, the ratio, and the
peak memory of each.
  --profile  also profiles an epoch (torch.profiler), and times an epoch against forward
             and backward alone on the same batches
  --full     also times the whole default recipe of both scripts, start-up included
"""

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

import cli
from mnist import load_mnist
from models import MODELS, loss_function
from runs import SCRIPTS
from train import DEFAULTS as TRAIN_DEFAULTS
from train import FLAGS as TRAIN_FLAGS
from train import train_epoch

FLAGS = dict(
    model=("VAE", ["VAE", "CVAE"], "which model to train"),
    batch_size=TRAIN_FLAGS["batch_size"],
    repeats=(3, cli.number(int), "epochs timed per pipeline; the median is reported"),
    device=TRAIN_FLAGS["device"],
    data_dir=TRAIN_FLAGS["data_dir"],
    limit=(None, cli.number(int), "train on the first N training images only (default: all 60,000)"),
    bf16=TRAIN_FLAGS["bf16"],
    profile=(False, "switch", "profile an epoch, and time it against forward and backward alone"),
    full=(False, "switch", "time `python train.py` and `python train_CVAE.py` with their defaults"),
)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_reset(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets the peak resident set size
            f.write("5")


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if os.path.exists("/proc/self/status"):
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fresh(model_name, args, device):
    """The model with its initial weights, and its optimizer, as train.py makes them."""
    torch.manual_seed(args.seed)
    model = MODELS[model_name](latent_dim=args.latent_dim, arch=args.arch).to(device)
    return model, torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=True)


def classic_epoch(model, optimizer, loader, args, device):
    """An epoch of the classic pipeline, as pytorch/examples' vae/main.py writes it: each batch from the
    DataLoader to the device, then train.py's step (forward, loss, backward, optimizer step)."""
    model.train()
    for x, y in loader:
        x, y = x.view(len(x), -1).to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits, mu, logvar = model(x, y)
        loss = loss_function(logits, x, mu, logvar)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def flops_per_image(model):
    """(training, test) FLOPs per image of the model's matrix products. A Linear layer's forward pass is
    2 * in * out; training adds the weight gradient (as much again) and the gradient of its input (again),
    except for the encoder's first layer, whose input is the data, which needs no gradient."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    forward = sum(2 * m.in_features * m.out_features for m in layers)
    first = model.encoder.body[0]
    return 3 * forward - 2 * first.in_features * first.out_features, forward


def matmul_rate(dtype, device, n=2048, m=None, k=None, seconds=1.0):
    """FLOP/s of an (n x k) @ (k x m) matrix product (square by default), the median of several timed bursts."""
    m, k = m or n, k or n
    a, b = torch.randn(n, k, dtype=dtype, device=device), torch.randn(k, m, dtype=dtype, device=device)
    a @ b  # warm-up
    rates = []
    for _ in range(5):
        calls = 0
        synchronize(device)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds / 5:
            a @ b
            calls += 1
            synchronize(device) if calls % 8 == 0 else None
        synchronize(device)
        rates.append(2 * n * m * k * calls / (time.perf_counter() - t0))
    return statistics.median(rates)


def train_py_epochs(model_name, device_name, bf16, batch_size, limit, epochs):
    """The seconds of each epoch of a real `python train.py` run (training, test pass, pictures, checkpoint),
    as it logs them."""
    script = SCRIPTS[model_name]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            script,
            "--device",
            device_name,
            "--bf16" if bf16 else "--no-bf16",
            "--epochs",
            str(epochs),
            "--batch-size",
            str(batch_size),
            "--run-name",
            "bench",
            "--runs-dir",
            tmp,
            "--out-dir",
            tmp,
        ]
        cmd += ["--limit", str(limit)] if limit else []
        if subprocess.run(cmd, stdout=subprocess.DEVNULL, cwd=os.path.dirname(os.path.abspath(__file__))).returncode:
            raise cli.UserError(
                f"python {script} failed (its error is above); the roofline times its epochs, so fix that first"
            )
        events = EventAccumulator(os.path.join(tmp, model_name, "bench"))
        events.Reload()
        return [e.value for e in events.Scalars("time/epoch_seconds")]


def roofline(model_name, device, flags, bf16, n_train, n_test):
    """Print the epoch's FLOPs, the measured matmul rates and the fraction of them that train.py's epochs reach."""
    train_flops, test_flops = flops_per_image(MODELS[model_name]())
    epoch_flops = train_flops * n_train + test_flops * n_test
    print(
        f"an epoch: {epoch_flops / 1e9:.1f} GFLOP in matrix products "
        f"(training {train_flops / 1e6:.2f} MFLOP per image x {n_train}, "
        f"test {test_flops / 1e6:.2f} MFLOP x {n_test})"
    )
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16) if cli.use_bf16("auto", device) else (torch.float32,):
        name = str(dtype).removeprefix("torch.")
        peaks[name] = matmul_rate(dtype, device)
        shape = matmul_rate(
            dtype, device, flags.batch_size, 256, 784
        )  # the model's own shape: a batch through a 784 x 256 layer
        print(
            f"matmul peak, {name}: {peaks[name] / 1e9:.1f} GFLOP/s (2048 x 2048 x 2048); {shape / 1e9:.1f} GFLOP/s "
            f"({flags.batch_size} x 784 x 256)"
        )
    seconds = train_py_epochs(model_name, flags.device, bf16, flags.batch_size, flags.limit, 1 + flags.repeats)[
        1:
    ]  # the first warms up
    # measured again after the epochs: on a shared machine the rate drifts, and the two show by how much
    after = {name: matmul_rate(getattr(torch, name), device) for name in peaks}
    print(
        "matmul peak again after the epochs: "
        + ", ".join(f"{name} {rate / 1e9:.1f} GFLOP/s" for name, rate in after.items())
    )
    epoch = statistics.median(seconds)
    fractions = ", ".join(
        f"{epoch_flops / epoch / rate:.0%} of the {name} peak ({epoch_flops / epoch / after[name]:.0%} of it after)"
        for name, rate in peaks.items()
    )
    print(
        f"python {SCRIPTS[model_name]} --{'' if bf16 else 'no-'}bf16: {epoch:.2f} s per epoch "
        f"(median of {', '.join(f'{s:.2f}' for s in seconds)}), {epoch_flops / epoch / 1e9:.1f} GFLOP/s: {fractions}"
    )


def time_epochs(name, one_epoch, model_name, args, device, repeats):
    """Train `repeats` epochs, one_epoch(model, optimizer) each, from fresh weights; the seconds of each epoch and
    the peak memory."""
    model, optimizer = fresh(model_name, args, device)
    seconds = []
    peak_memory_reset(device)
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        one_epoch(model, optimizer)
        synchronize(device)
        seconds.append(time.perf_counter() - t0)
    return seconds, peak_memory_mb(device)


def main():
    description = "Time a training epoch of train.py's pipeline against the classic DataLoader pipeline."
    flags, _ = cli.parse(cli.parser(description, FLAGS))
    device = cli.pick_device(flags.device)
    images, labels = load_mnist(flags.data_dir, train=True)
    images, labels = images[: flags.limit], labels[: flags.limit]
    bf16 = cli.use_bf16(flags.bf16, device)
    args = argparse.Namespace(**{**TRAIN_DEFAULTS, "batch_size": flags.batch_size, "bf16": bf16})
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(
        f"{flags.model}, {len(images)} images, batch size {flags.batch_size}, bfloat16 {args.bf16}, "
        f"on {device} ({where}), torch {torch.__version__}"
    )
    roofline(flags.model, device, flags, bf16, len(images), len(load_mnist(flags.data_dir, train=False)[0]))

    # train.py's pipeline: the data set is one tensor on the device; a batch is one indexing operation
    images_dev, labels_dev = images.to(device), labels.to(device)
    ours = lambda model, optimizer: train_epoch(model, optimizer, None, images_dev, labels_dev, args, 0, bf16)
    # the classic pipeline: a PIL image per sample, ToTensor, and the DataLoader's collation
    dataset = Subset(datasets.MNIST(flags.data_dir, train=True, transform=transforms.ToTensor()), range(len(images)))
    extra = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}  # as pytorch/examples/vae
    loader = DataLoader(dataset, batch_size=flags.batch_size, shuffle=True, **extra)
    classic = lambda model, optimizer: classic_epoch(model, optimizer, loader, args, device)

    results = {}
    for name, one_epoch in (("train.py", ours), ("classic", classic)):
        seconds, memory = time_epochs(name, one_epoch, flags.model, args, device, flags.repeats)
        results[name] = statistics.median(seconds)
        print(
            f"{name:9s} {results[name]:6.2f} s/epoch  {len(images) / results[name]:8.0f} images/s  "
            f"peak memory {memory:6.0f} MB"
            f"  (epochs: {', '.join(f'{s:.2f}' for s in seconds)})"
        )
    print(
        f"train.py's epoch is {results['classic'] / results['train.py']:.2f} times faster than the classic pipeline's"
    )

    if flags.profile:
        profile_epoch(flags.model, args, device, images_dev, labels_dev, flags.batch_size)
    if flags.full:
        time_full_recipe(flags.device)


def profile_epoch(model_name, args, device, images, labels, batch_size):
    """Where an epoch's time goes, and how close it is to forward and backward alone."""
    model, optimizer = fresh(model_name, args, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])

    def one_epoch():  # epoch 0 of train.py each time: the same batches, in the same order
        train_epoch(model, optimizer, None, images, labels, args, 0, args.bf16)
        synchronize(device)

    with profile(activities=activities) as prof:
        one_epoch()
    print(
        prof.key_averages().table(
            sort_by="self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total", row_limit=12
        )
    )

    # the two timings, both outside the profiler and after the warm-up above, so that their ratio is fair
    t0 = time.perf_counter()
    one_epoch()
    epoch = time.perf_counter() - t0
    # forward and backward alone: batches of the same size, taken out beforehand; no optimizer, no schedule
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed)).to(device)
    same_batches = [(images[i], labels[i]) for i in order.split(batch_size)]
    generator = torch.Generator(device).manual_seed(args.seed)
    synchronize(device)
    t0 = time.perf_counter()
    for x, y in same_batches:
        model.zero_grad(set_to_none=True)  # as in training: backward writes fresh gradients
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits, mu, logvar = model(x, y, generator)
        loss_function(logits, x, mu, logvar)[0].backward()
    synchronize(device)
    bare = time.perf_counter() - t0
    print(
        f"an epoch: {epoch:.2f} s; forward and backward alone, on batches of the same size: {bare:.2f} s "
        f"({bare / epoch:.0%} of the epoch)"
    )


def time_full_recipe(device):
    """Wall time of `python train.py` and `python train_CVAE.py` with their defaults, start-up included."""
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for script in ("train.py", "train_CVAE.py"):
            cmd = [
                sys.executable,
                script,
                "--device",
                device,
                "--run-name",
                "bench",
                "--runs-dir",
                os.path.join(tmp, "runs"),
                "--out-dir",
                os.path.join(tmp, script),
            ]
            t0 = time.perf_counter()
            if subprocess.run(
                cmd, stdout=subprocess.DEVNULL, cwd=os.path.dirname(os.path.abspath(__file__))
            ).returncode:
                raise cli.UserError(
                    f"python {script} failed (its error is above); --full times the default recipe, so fix that first"
                )
            seconds = time.perf_counter() - t0
            total += seconds
            print(f"python {script} (default recipe): {seconds:.1f} s")
    print(f"both default recipes: {total:.1f} s")


if __name__ == "__main__":
    cli.reuse_freed_memory()  # as train.py
    with cli.one_line_errors():
        main()
