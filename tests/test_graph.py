"""graph.py on runs whose logs are empty or partial, and on the committed recipe runs (read only)."""

import json
import os
import subprocess

import numpy as np
import pytest
from conftest import ROOT, run
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_errors import fails_with
from torch.utils.tensorboard import SummaryWriter

RECIPES = os.path.join(ROOT, "runs", "recipes")


@pytest.fixture
def young_runs(tmp_path):
    """runs/CVAE/empty: an event file and no scalars (a run that has just started); runs/VAE/partial: train tags
    only."""
    SummaryWriter(tmp_path / "runs" / "CVAE" / "empty").close()
    writer = SummaryWriter(tmp_path / "runs" / "VAE" / "partial")
    for epoch, (bce, kld) in enumerate([(180.0, 4.0), (160.0, 5.0)]):
        writer.add_scalar("train/bce", bce, epoch)
        writer.add_scalar("train/kld", kld, epoch)
        writer.add_scalar("train/loss", bce + kld, epoch)
    writer.close()
    return tmp_path / "runs"


def rows(table):
    """{(model, run name): [cells]} of graph.py --table's output."""
    lines = table.strip().splitlines()
    assert lines[0].split()[:3] == ["model", "run", "epochs"]
    return {tuple(line.split()[:2]): line.split() for line in lines[1:]}


def test_table_shows_a_dash_for_what_is_not_logged(young_runs):
    result = run("graph.py", "--runs-dir", young_runs, "--table")
    assert "Traceback" not in result.stderr
    table = rows(result.stdout)
    # model run epochs | test loss, bce, kld | train loss | time | val loss
    assert sorted(table) == [("CVAE", "empty"), ("VAE", "partial")]
    empty, partial = table["CVAE", "empty"], table["VAE", "partial"]
    assert empty[2] == "0" and empty[3:] == ["-"] * 6
    assert partial[2] == "2" and partial[3:6] == ["-"] * 3 and partial[6] == "165.00"


def test_plot_leaves_out_a_run_with_no_epoch(young_runs, tmp_path):
    images = tmp_path / "images"
    result = run("graph.py", "--runs-dir", young_runs, "--images-dir", images)
    assert "Traceback" not in result.stderr
    assert str(images / "VAE_loss.png") in result.stdout
    assert Image.open(images / "VAE_loss.png").size[0] > 500
    assert not (images / "CVAE_loss.png").exists()
    assert "empty" in result.stderr and "no epoch" in result.stderr  # one note says why CVAE has no figure


def test_plot_with_no_epoch_anywhere_is_one_line(young_runs, tmp_path):
    result = run("graph.py", "--run", young_runs / "CVAE" / "empty", "--images-dir", tmp_path / "images", check=False)
    fails_with(result, "empty", "no epoch logged yet")
    assert not (tmp_path / "images").exists()


def committed_runs():
    files = subprocess.run(
        ["git", "ls-files", "runs/recipes"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return sorted({tuple(path.split("/")[2:4]) for path in files if ".tfevents." in path})  # (model, run name)


def snapshot(folder):
    return sorted((d, f, os.stat(os.path.join(d, f)).st_mtime_ns) for d, _, fs in os.walk(folder) for f in fs)


@pytest.mark.slow
def test_table_lists_every_committed_recipe(tmp_path):
    expected = committed_runs()
    assert len(expected) > 10
    before = snapshot(RECIPES)
    table = rows(run("graph.py", "--runs-dir", RECIPES, "--table").stdout)
    assert sorted(table) == expected
    for cells in table.values():  # every recipe finished: a number in every column
        float(cells[3]), float(cells[6]), int(cells[2])
    assert snapshot(RECIPES) == before


@pytest.mark.slow
def test_figures_of_the_recipes_go_to_the_images_dir(tmp_path):
    before = snapshot(RECIPES)
    result = run("graph.py", "--runs-dir", RECIPES, "--images-dir", tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["CVAE_loss.png", "VAE_loss.png"]
    assert str(tmp_path / "VAE_loss.png") in result.stdout
    assert snapshot(RECIPES) == before


def beta_run(runs, name, beta, kld, bce):
    """A run folder as train.py leaves it: run.json with its --beta, and two epochs of test BCE and KLD."""
    run_dir = runs / "VAE" / name
    writer = SummaryWriter(run_dir)
    for epoch, scale in enumerate((1.5, 1.0)):  # the last epoch's figures are the ones plotted
        writer.add_scalar("test/bce", bce * scale, epoch)
        writer.add_scalar("test/kld", kld * scale, epoch)
    writer.close()
    (run_dir / "run.json").write_text(json.dumps({"model": "VAE", "flags": {"beta": beta}}))
    return run_dir


def test_rate_distortion_prints_and_draws_each_run_at_its_rate_and_distortion(tmp_path):
    import graph

    runs = [
        beta_run(tmp_path / "runs", f"b{b}", b, kld, bce) for b, kld, bce in [(4, 5, 110), (1, 20, 80), (0.25, 40, 70)]
    ]
    result = run("graph.py", "--rate-distortion", *[f"--run={r}" for r in runs], "--images-dir", tmp_path / "images")
    lines = result.stdout.splitlines()
    assert [line.split() for line in lines[1:4]] == [
        ["0.25", "40.00", "70.00", "110.00"],
        ["1", "20.00", "80.00", "100.00"],
        ["4", "5.00", "110.00", "115.00"],
    ]
    assert lines[4] == str(tmp_path / "images" / "rate_distortion.png")

    # the picture: a blue point where each run is (rate up, distortion to the right), a red dashed line
    # BCE + KLD = 100 through the beta = 1 run, which passes through (90, 10) and misses (70, 10)
    points = graph.rate_distortion_points([str(r) for r in runs])
    ax = graph.plot_rate_distortion(points, tmp_path / "rd.png")
    image = np.asarray(Image.open(tmp_path / "rd.png").convert("RGB")).astype(int)

    def colour_near(distortion, rate, rgb, reach=2):
        x, y = ax.transData.transform((distortion, rate))
        row, col = image.shape[0] - int(round(y)), int(round(x))
        patch = image[row - reach : row + reach + 1, col - reach : col + reach + 1]
        return (np.abs(patch - np.array(rgb)).sum(-1) < 60).any()

    blue, red = (31, 119, 180), (214, 39, 40)  # matplotlib's C0 and C3
    for _, rate, distortion in points:
        assert colour_near(distortion, rate, blue)
    assert not colour_near(40, 70, blue)  # rate and distortion the other way round
    assert colour_near(90, 10, red) and colour_near(75, 25, red)
    assert not colour_near(70, 10, red)
    # each point's label names its beta
    labels = {text.get_text(): text.xy for text in ax.texts}
    assert labels == {"β = 4": (110.0, 5.0), "β = 1": (80.0, 20.0), "β = 0.25": (70.0, 40.0)}


def test_loss_figure_draws_each_split_under_its_own_label(tmp_path):
    """Each panel's train, validation and test curves carry their own label, style and values, by epoch from 1."""
    import graph

    logged = {"train": (200.0, 5.0), "val": (190.0, 6.0), "test": (180.0, 7.0)}  # (bce, kld) at epoch 0
    writer = SummaryWriter(tmp_path / "runs" / "VAE" / "r")
    for epoch in range(3):
        for split, (bce, kld) in logged.items():
            bce, kld = bce - 10 * epoch, kld + epoch
            writer.add_scalar(f"{split}/bce", bce, epoch)
            writer.add_scalar(f"{split}/kld", kld, epoch)
            writer.add_scalar(f"{split}/loss", bce + kld, epoch)
    writer.close()
    run_dir = str(tmp_path / "runs" / "VAE" / "r")
    axes = graph.plot("VAE", [(run_dir, graph.read_scalars(run_dir)[0])], tmp_path)
    assert os.path.exists(tmp_path / "VAE_loss.png")
    styles = {"train": "--", "val": ":", "test": "-"}
    for ax, panel in zip(axes, ("bce", "kld", "loss")):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == set(logged)
        for split, (bce, kld) in logged.items():
            expected = {"bce": bce, "kld": kld, "loss": bce + kld}[panel]
            step = {"bce": -10, "kld": 1, "loss": -9}[panel]
            assert list(lines[split].get_xdata()) == [1, 2, 3]  # epochs counted from 1
            assert list(lines[split].get_ydata()) == pytest.approx([expected + step * e for e in range(3)])
            assert lines[split].get_linestyle() == styles[split]
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["train", "val", "test"]


def test_rate_distortion_without_runs_is_one_line(tmp_path):
    result = run("graph.py", "--rate-distortion", "--runs-dir", tmp_path, check=False)
    fails_with(result, "no runs at", "--run")


@pytest.mark.slow
def test_rate_distortion_from_the_committed_sweep(tmp_path):
    """The committed beta sweep gives six points whose rate falls as beta grows, and its beta = 1 run is the
    committed latent10 run again (the same flags, so the same final test -ELBO)."""
    result = run("graph.py", "--rate-distortion", "--images-dir", tmp_path)
    rows = [line.split() for line in result.stdout.splitlines()[1:7]]
    assert [row[0] for row in rows] == ["0.1", "0.25", "0.5", "1", "2", "4"]
    rates = [float(row[1]) for row in rows]
    assert rates == sorted(rates, reverse=True)
    events = EventAccumulator(os.path.join(ROOT, "runs", "VAE", "latent10"), size_guidance={"scalars": 0})
    events.Reload()
    latent10 = events.Scalars("test/loss")[-1].value
    assert rows[3][3] == f"{latent10:.2f}"
    assert (tmp_path / "rate_distortion.png").stat().st_size > 10_000
