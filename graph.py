"""Loss curves of the VAE and the CVAE from their TensorBoard logs:  python graph.py

Plots the default run of each model (runs.py: your newest, else reference) to images/VAE_loss.png and
images/CVAE_loss.png:
BCE, KLD and their sum (the negative ELBO), train, validation (runs with --val) and test, per epoch.
python graph.py --table  prints one line per run instead: the README's comparison of recipes.
python graph.py --rate-distortion  draws images/rate_distortion.png from runs trained with several --beta
(by default runs/recipes/VAE/rd-*): each run's final test KLD, the rate, against its test BCE, the distortion.
A run that has logged no epoch yet is left out of the figures, and shows "-" in the table.
"""

import glob
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import cli
import runs

RATE_DISTORTION_RUNS = os.path.join("recipes", "VAE", "rd-*")  # under --runs-dir: the committed beta sweep
PANELS = [
    ("bce", "BCE (reconstruction)"),
    ("kld", "KLD (KL to the prior)"),
    ("loss", "loss = BCE + KLD (negative ELBO)"),
]
CURVES = [f"{split}/{name}" for split in ("train", "test") for name, _ in PANELS]  # the tags a figure plots
FLAGS = dict(
    runs_dir=cli.RUN_FLAGS["runs_dir"],
    run_name=cli.RUN_FLAGS["run_name"],
    run=(
        None,
        str,
        "use this run folder, e.g. runs/VAE/NAME; repeatable",
        dict(action="append", metavar="DIR", group="which"),
    ),
    images_dir=("images", str, "where MODEL_loss.png goes"),
    table=(False, "switch", "print final losses and training time of every run (or the chosen ones) instead"),
    rate_distortion=(
        False,
        "switch",
        "plot the final test KLD (rate) against the test BCE (distortion) of runs trained with several --beta: "
        f"the --run folders, or RUNS_DIR/{RATE_DISTORTION_RUNS}; to IMAGES_DIR/rate_distortion.png",
    ),
)


def read_scalars(run):
    """({tag: (epochs counted from 1, values)}, seconds from the first event to the last scalar, or None)."""
    acc = EventAccumulator(run, size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()  # reads every event file of the folder: a resumed run has several
    curves = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}
    curves = {tag: events for tag, events in curves.items() if events}
    last = max((events[-1].wall_time for events in curves.values()), default=None)
    seconds = last - acc.FirstEventTimestamp() if last is not None else None
    return {tag: ([e.step + 1 for e in events], [e.value for e in events]) for tag, events in curves.items()}, seconds


def table(folders):
    rows = [("model", "run", "epochs", "test loss", "test bce", "test kld", "train loss", "time s", "val loss")]
    for model, run in folders:
        curves, seconds = read_scalars(run)
        final = lambda tag, curves=curves: f"{curves[tag][1][-1]:.2f}" if tag in curves else "-"
        epochs = max((curves[tag][0][-1] for tag in CURVES if tag in curves), default=0)
        rows.append(
            (
                model,
                os.path.basename(run),
                str(epochs),
                final("test/loss"),
                final("test/bce"),
                final("test/kld"),
                final("train/loss"),
                "-" if seconds is None else f"{seconds:.0f}",
                final("val/loss"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:  # text left-aligned, numbers right-aligned
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))


def rate_distortion_points(folders):
    """[(beta, rate, distortion)] of the runs, sorted by beta: the final test KLD and BCE, beta from run.json."""
    points = []
    for run in folders:
        record = runs.read_run(run)
        if not record:
            raise cli.UserError(f"{run}: no run.json, so its --beta is unknown; pass runs that train.py wrote")
        flags = runs.current_flags(record)
        curves, _ = read_scalars(run)
        if "test/kld" not in curves:
            raise cli.UserError(f"{run}: no epoch logged yet; wait for it, or leave it out")
        points.append((flags.get("beta", 1.0), curves["test/kld"][1][-1], curves["test/bce"][1][-1]))
    return sorted(points)


def plot_rate_distortion(points, path):
    """Rate (test KLD) against distortion (test BCE), a point per beta, and the line of constant -ELBO = BCE + KLD
    through the beta = 1 run (Alemi et al. 2018): runs below it have a better ELBO. Returns the figure's axes."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    betas, rates, distortions = zip(*points)
    ax.plot(distortions, rates, "o", color="C0", markersize=7, label="a run (final test figures)")
    for beta, rate, distortion in points:
        ax.annotate(f"β = {beta:g}", (distortion, rate), textcoords="offset points", xytext=(7, 4))
    if 1.0 in betas:
        _, rate, distortion = points[betas.index(1.0)]
        elbo = rate + distortion
        d = [min(distortions) - 2, min(max(distortions) + 2, elbo)]  # the rate cannot go below 0
        ax.plot(d, [elbo - x for x in d], "--", color="C3", label=f"-ELBO = {elbo:.2f} (β = 1)")
    ax.set(xlabel="distortion: test BCE, nats per image", ylabel="rate: test KLD, nats per image")
    ax.set_ylim(bottom=0)
    ax.set_title("rate against distortion, β-VAE")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return ax


def rate_distortion(runs_dir, chosen, images_dir):
    folders = chosen or sorted(glob.glob(os.path.join(runs_dir, RATE_DISTORTION_RUNS)))
    if not folders:
        raise cli.UserError(
            f"no runs at {os.path.join(runs_dir, RATE_DISTORTION_RUNS)}; pass runs trained with --beta as --run DIR"
        )
    points = rate_distortion_points(folders)
    print(f"{'beta':>6}  {'rate (KLD)':>10}  {'distortion (BCE)':>16}  {'-ELBO':>7}")
    for beta, rate, distortion in points:
        print(f"{beta:6g}  {rate:10.2f}  {distortion:16.2f}  {rate + distortion:7.2f}")
    path = os.path.join(runs.writable_dir(images_dir, "--images-dir"), "rate_distortion.png")
    plot_rate_distortion(points, path)
    print(path)


def plot(model, folders, images_dir):
    """One figure of the runs of a model: [(run folder, curves)], to IMAGES_DIR/MODEL_loss.png; returns its three
    axes (BCE, KLD, loss)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for k, (run, curves) in enumerate(folders):
        prefix = f"{os.path.basename(run)} " if len(folders) > 1 else ""
        for ax, (name, title) in zip(axes, PANELS):
            for split, style, color in (("train", "--", "C0"), ("val", ":", "C2"), ("test", "-", "C1")):
                if f"{split}/{name}" not in curves and split == "val":
                    continue
                epochs, values = curves.get(f"{split}/{name}", ([], []))
                ax.plot(
                    epochs,
                    values,
                    style,
                    color=f"C{k}" if len(folders) > 1 else color,
                    marker="." if len(epochs) < 30 else None,
                    label=prefix + split,
                )
            ax.set(title=title, xlabel="epoch (counted from 1)", ylabel="nats per image")
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend()
    fig.suptitle(f"{model}: " + ", ".join(run for run, _ in folders))
    fig.tight_layout()
    path = os.path.join(images_dir, f"{model}_loss.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(path)
    return axes


def main():
    description = "Plot the train and test loss curves of the VAE and CVAE runs, or print a table of runs."
    args, _ = cli.parse(cli.parser(description, FLAGS))

    if args.rate_distortion:
        return rate_distortion(args.runs_dir, args.run, args.images_dir)

    if args.table and not (args.run or args.run_name):
        folders = runs.all_runs(args.runs_dir)
        if not folders:
            raise cli.UserError(
                f"no runs under {args.runs_dir}/VAE/ or {args.runs_dir}/CVAE/; train one with python train.py"
            )
        return table(folders)
    folders = runs.choose_runs(args.runs_dir, args.run_name, args.run, need=runs.EVENTS)
    if args.table:
        return table(folders)

    # a run that has logged no epoch yet (only just started, say) is left out, with a note
    logged = [(model, run, read_scalars(run)[0]) for model, run in folders]
    ready = [(model, run, curves) for model, run, curves in logged if any(tag in curves for tag in CURVES)]
    waiting = [run for model, run, curves in logged if not any(tag in curves for tag in CURVES)]
    if not ready:
        raise cli.UserError(
            f"{', '.join(waiting)}: no epoch logged yet; wait for the first epoch to end, or pass another --run"
        )
    runs.writable_dir(args.images_dir, "--images-dir")
    for run in waiting:
        print(f"note: {run} has logged no epoch yet; left out of the figures", file=sys.stderr)
    for model in runs.SCRIPTS:
        chosen = [(run, curves) for m, run, curves in ready if m == model]
        if chosen:
            plot(model, chosen, args.images_dir)


if __name__ == "__main__":
    with cli.one_line_errors():
        main()
