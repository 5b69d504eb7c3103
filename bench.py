"""How fast training is, and where the time goes:  python bench.py  (--help for the flags)

Times one training epoch of train.py's pipeline (all 60,000 images held in one tensor,
each batch taken by indexing it) and of the classic torchvision pipeline
(datasets.MNIST with transforms.ToTensor through a DataLoader, as pytorch/examples
does), with the same model, optimizer, loop and batch size, in this process, one after
the other, --repeats times each. It prints seconds per epoch, images per second, the
ratio, and the peak memory of each.
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
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

import utils
from mnist import load_mnist
from models import loss_function
from train import DEFAULTS as TRAIN_DEFAULTS, batches, build, learning_rate, train_epoch

DEFAULTS = dict(
    model="VAE",
    batch_size=TRAIN_DEFAULTS["batch_size"],
    repeats=3,  # epochs timed per pipeline; the median is reported
    device="auto",
    data_dir="data",
    limit=None,  # train on the first N training images only
    profile=False,
    full=False,
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


def noise(args, device):
    """The generator of the reparameterisation noise, as train.py seeds it."""
    return torch.Generator(device).manual_seed(args.seed)


def time_epochs(name, make_batches, model_name, args, device, steps, repeats):
    """Train `repeats` epochs from fresh weights; returns the seconds of each and the peak memory."""
    model, optimizer, average = build(model_name, args, device)
    lr_at = lambda step: learning_rate(args, 0, step, steps)  # the first epoch's schedule
    generator = noise(args, device)
    seconds = []
    peak_memory_reset(device)
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        train_epoch(model, optimizer, lr_at, average, make_batches(), args.bf16, generator=generator, desc=name, total=steps)
        synchronize(device)
        seconds.append(time.perf_counter() - t0)
    return seconds, peak_memory_mb(device)


def main():
    p = utils.parser("Time a training epoch of train.py's pipeline against the classic DataLoader pipeline.", DEFAULTS)
    p.add_argument("--model", choices=["VAE", "CVAE"], help="which model to train")
    p.add_argument("--batch-size", type=utils.number(int), help="images per optimizer step")
    p.add_argument("--repeats", type=utils.number(int), help="epochs timed per pipeline")
    utils.add_device_flag(p)
    utils.add_data_flag(p)
    p.add_argument("--limit", type=utils.number(int), help="train on the first N training images only (default: all 60,000)")
    p.add_argument("--profile", action="store_true", help="profile an epoch, and time it against forward and backward alone")
    p.add_argument("--full", action="store_true", help="time `python train.py` and `python train_CVAE.py` with their defaults")
    cli, _ = utils.parse(p, DEFAULTS)
    device = utils.pick_device(cli.device)
    images, labels = load_mnist(cli.data_dir, train=True)
    images, labels = images[:cli.limit], labels[:cli.limit]
    args = argparse.Namespace(**{**TRAIN_DEFAULTS, "batch_size": cli.batch_size, "bf16": utils.native_bf16(device)})
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"{cli.model}, {len(images)} images, batch size {cli.batch_size}, bfloat16 {args.bf16}, on {device} ({where}), torch {torch.__version__}")
    steps = -(-len(images) // cli.batch_size)

    # train.py's pipeline: the data set is one tensor on the device; a batch is one indexing operation
    images_dev, labels_dev = images.to(device), labels.to(device)
    ours = lambda: batches(images_dev, labels_dev, torch.randperm(len(images), device=device), cli.batch_size)
    # the classic pipeline: a PIL image per sample, ToTensor, and the DataLoader's collation
    dataset = Subset(datasets.MNIST(cli.data_dir, train=True, transform=transforms.ToTensor()), range(len(images)))
    extra = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}  # as pytorch/examples/vae
    loader = DataLoader(dataset, batch_size=cli.batch_size, shuffle=True, **extra)
    classic = lambda: ((x.view(len(x), -1).to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in loader)

    results = {}
    for name, make_batches in (("train.py", ours), ("classic", classic)):
        seconds, memory = time_epochs(name, make_batches, cli.model, args, device, steps, cli.repeats)
        results[name] = statistics.median(seconds)
        print(f"{name:9s} {results[name]:6.2f} s/epoch  {len(images) / results[name]:8.0f} images/s  peak memory {memory:6.0f} MB"
              f"  (epochs: {', '.join(f'{s:.2f}' for s in seconds)})")
    print(f"train.py's epoch is {results['classic'] / results['train.py']:.2f} times faster than the classic pipeline's")

    if cli.profile:
        profile_epoch(cli.model, args, device, images_dev, labels_dev, cli.batch_size, steps)
    if cli.full:
        time_full_recipe(cli.device)


def profile_epoch(model_name, args, device, images, labels, batch_size, steps):
    """Where an epoch's time goes, and how close it is to forward and backward alone, on the same batches."""
    model, optimizer, average = build(model_name, args, device)
    lr_at = lambda step: learning_rate(args, 0, step, steps)  # the first epoch's schedule
    order = torch.randperm(len(images), device=device)  # one permutation for all three passes below
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train_epoch(model, optimizer, lr_at, average, batches(images, labels, order, batch_size), args.bf16,
                    generator=noise(args, device))
        synchronize(device)
    print(prof.key_averages().table(sort_by="self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total", row_limit=12))

    # the two timings, both outside the profiler and after the warm-up above, so that their ratio is fair
    t0 = time.perf_counter()
    train_epoch(model, optimizer, lr_at, average, batches(images, labels, order, batch_size), args.bf16,
                generator=noise(args, device))
    synchronize(device)
    epoch = time.perf_counter() - t0
    # forward and backward alone: the same batches, taken out beforehand; no optimizer, no scheduler, no bookkeeping
    same_batches = list(batches(images, labels, order, batch_size))
    generator = noise(args, device)
    synchronize(device)
    t0 = time.perf_counter()
    for x, y in same_batches:
        model.zero_grad(set_to_none=True)  # as in training: backward writes fresh gradients
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits, mu, logvar = model(x, y, generator)
        loss_function(logits, x, mu, logvar)[0].backward()
    synchronize(device)
    bare = time.perf_counter() - t0
    print(f"an epoch: {epoch:.2f} s; forward and backward alone, on the same batches: {bare:.2f} s ({bare / epoch:.0%} of the epoch)")


def time_full_recipe(device):
    """Wall time of `python train.py` and `python train_CVAE.py` with their defaults, start-up included."""
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for script in ("train.py", "train_CVAE.py"):
            cmd = [sys.executable, script, "--device", device, "--run-name", "bench", "--runs-dir", os.path.join(tmp, "runs"),
                   "--out-dir", os.path.join(tmp, script)]
            t0 = time.perf_counter()
            if subprocess.run(cmd, stdout=subprocess.DEVNULL, cwd=os.path.dirname(os.path.abspath(__file__))).returncode:
                raise utils.UserError(f"python {script} failed (its error is above); --full times the default recipe, so fix that first")
            seconds = time.perf_counter() - t0
            total += seconds
            print(f"python {script} (default recipe): {seconds:.1f} s")
    print(f"both default recipes: {total:.1f} s")


if __name__ == "__main__":
    utils.main(main)
