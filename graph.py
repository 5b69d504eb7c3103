"""Loss curves of the VAE and the CVAE from their TensorBoard logs:  python graph.py

Plots the newest run of each model to images/VAE_loss.png and images/CVAE_loss.png:
BCE, KLD and their sum (the negative ELBO), train and test, per epoch.
python graph.py --table  prints one line per run instead: the README's comparison of recipes.
"""
import argparse
import glob
import os
import sys

import matplotlib
matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from models import MODELS, newest_run
from train import writable_dir

EVENTS = "events.out.tfevents.*"
PANELS = [("bce", "BCE (reconstruction)"), ("kld", "KLD (KL to the prior)"), ("loss", "loss = BCE + KLD (negative ELBO)")]


def find_runs(args):
    """(model name, run folder) pairs: the runs named on the command line, else the newest of each model."""
    if args.run:
        runs = []
        for run in map(os.path.normpath, args.run):
            model = os.path.basename(os.path.dirname(os.path.abspath(run)))
            if model not in MODELS:
                raise ValueError(f"--run {run}: the folder above it must be VAE or CVAE, as in runs/VAE/NAME")
            if not glob.glob(os.path.join(run, EVENTS)):
                raise FileNotFoundError(f"--run {run}: no TensorBoard event files there; pass a run folder like runs/VAE/NAME")
            runs.append((model, run))
        return runs
    if args.run_name:
        runs = [(m, os.path.join(args.runs_dir, m, args.run_name)) for m in MODELS]
        runs = [(m, run) for m, run in runs if glob.glob(os.path.join(run, EVENTS))]
        if not runs:
            raise FileNotFoundError(f"no run named {args.run_name} under {args.runs_dir}/VAE/ or {args.runs_dir}/CVAE/; list them with python graph.py --table")
        return runs
    if args.table:  # every run of both models
        runs = [(m, os.path.dirname(p)) for m in MODELS for p in sorted(glob.glob(os.path.join(args.runs_dir, m, "*", EVENTS)))]
    else:
        runs = [(m, newest_run(args.runs_dir, m, EVENTS)) for m in MODELS]
    runs = list(dict.fromkeys((m, run) for m, run in runs if run))  # a resumed run has several event files
    if not runs:
        raise FileNotFoundError(f"no runs under {args.runs_dir}/; train one with python train.py")
    return runs


def read_scalars(run):
    """({tag: (epochs counted from 1, values)}, seconds from the first event to the last scalar, or None)."""
    acc = EventAccumulator(run, size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    curves = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}
    last = max((events[-1].wall_time for events in curves.values()), default=None)
    seconds = last - acc.FirstEventTimestamp() if last is not None else None
    return {tag: ([e.step + 1 for e in events], [e.value for e in events]) for tag, events in curves.items()}, seconds


def table(runs):
    rows = [("model", "run", "epochs", "test loss", "test bce", "test kld", "train loss", "time s")]
    for model, run in runs:
        curves, seconds = read_scalars(run)
        final = lambda tag: f"{curves[tag][1][-1]:.2f}" if tag in curves else "-"
        rows.append((model, os.path.basename(run), str(len(curves.get("test/loss", ([], []))[0])), final("test/loss"),
                     final("test/bce"), final("test/kld"), final("train/loss"), "-" if seconds is None else f"{seconds:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:  # text left-aligned, numbers right-aligned
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))


def plot(model, runs, images_dir):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for k, run in enumerate(runs):
        curves, _ = read_scalars(run)
        if "test/loss" not in curves:
            raise ValueError(f"{run} has logged no epoch yet; wait for its first epoch or pass another --run")
        prefix = f"{os.path.basename(run)} " if len(runs) > 1 else ""
        for ax, (name, title) in zip(axes, PANELS):
            for split, style in (("train", "--"), ("test", "-")):
                epochs, values = curves.get(f"{split}/{name}", ([], []))
                ax.plot(epochs, values, style, color=f"C{k}" if len(runs) > 1 else ("C0" if split == "train" else "C1"),
                        marker="." if len(epochs) < 30 else None, label=prefix + split)
            ax.set(title=title, xlabel="epoch (counted from 1)", ylabel="nats per image")
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend()
    fig.suptitle(f"{model}: " + ", ".join(runs))
    fig.tight_layout()
    path = os.path.join(images_dir, f"{model}_loss.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(path)


def main():
    p = argparse.ArgumentParser(description="Plot the train and test loss curves of the VAE and CVAE runs, or print a table of runs.")
    p.error = lambda message: sys.exit(f"{p.prog}: error: {message} (see --help)")  # one line, no usage dump
    p.add_argument("--runs-dir", default="runs", help="where train.py writes RUNS_DIR/MODEL/RUN_NAME/ (default: runs)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--run-name", help="plot RUNS_DIR/VAE/NAME and RUNS_DIR/CVAE/NAME, whichever exist (default: the newest run of each)")
    which.add_argument("--run", action="append", metavar="DIR", help="plot this run folder, e.g. runs/VAE/NAME; repeatable")
    p.add_argument("--images-dir", default="images", help="where MODEL_loss.png goes (default: images)")
    p.add_argument("--table", action="store_true", help="print final losses and training time of every run (or the chosen ones) instead of plotting")
    args = p.parse_args()
    try:
        runs = find_runs(args)
        if args.table:
            return table(runs)
        writable_dir(args.images_dir, "--images-dir")
        for model in MODELS:
            chosen = [run for m, run in runs if m == model]
            if chosen:
                plot(model, chosen, args.images_dir)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
