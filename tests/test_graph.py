"""graph.py on runs whose logs are empty or partial, and on the committed recipe runs (read only)."""

import os
import subprocess

import pytest
from conftest import ROOT, run
from PIL import Image
from test_errors import fails_with
from torch.utils.tensorboard import SummaryWriter

RECIPES = os.path.join(ROOT, "runs", "recipes")


@pytest.fixture
def young_runs(tmp_path):
    """runs/CVAE/empty: an event file and no scalars (a run that has just started); runs/VAE/partial: train tags only."""
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


def test_table_lists_every_committed_recipe(tmp_path):
    expected = committed_runs()
    assert len(expected) > 10
    before = snapshot(RECIPES)
    table = rows(run("graph.py", "--runs-dir", RECIPES, "--table").stdout)
    assert sorted(table) == expected
    for cells in table.values():  # every recipe finished: a number in every column
        float(cells[3]), float(cells[6]), int(cells[2])
    assert snapshot(RECIPES) == before


def test_figures_of_the_recipes_go_to_the_images_dir(tmp_path):
    before = snapshot(RECIPES)
    result = run("graph.py", "--runs-dir", RECIPES, "--images-dir", tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["CVAE_loss.png", "VAE_loss.png"]
    assert str(tmp_path / "VAE_loss.png") in result.stdout
    assert snapshot(RECIPES) == before
