"""sample.py: each command's grid has its layout, shows the right images, and every user mistake is one line.

The committed reference runs (runs/VAE/reference, runs/CVAE/reference) are read only; pictures go to tmp_path.
"""

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, run, run_process
from PIL import Image

import cli
from mnist import load_mnist
from models import VAE, load_model
from runs import read_checkpoint

VAE_RUN = os.path.join(ROOT, "runs", "VAE", "reference")
CVAE_RUN = os.path.join(ROOT, "runs", "CVAE", "reference")
DATA = os.path.join(ROOT, "data")


def picture(tmp_path, *flags, name="picture.png"):
    """Run sample.py with flags and --out TMP/name; the picture it wrote as a uint8 array (height, width)."""
    out = tmp_path / name
    result = run("sample.py", *flags, "--out", out)
    assert result.stdout.strip() == str(out)
    return np.asarray(Image.open(out).convert("L"))


def size(rows, columns):
    """(height, width) of a save_image grid of 28 x 28 cells with padding 2."""
    return 2 + 30 * rows, 2 + 30 * columns


def cell(grid, row, column):
    return grid[2 + 30 * row : 30 + 30 * row, 2 + 30 * column : 30 + 30 * column]


def as_saved(images):
    """Images in [0, 1], (N, 784), as save_image writes them: uint8 (N, 28, 28)."""
    return images.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).view(-1, 28, 28).numpy()


def close(a, b):
    """Equal to 1/255, as a picture saves them."""
    return np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.fixture(scope="module")
def test_set():
    return load_mnist(DATA, train=False)


@pytest.fixture(scope="module")
def classify():
    from cnn import load_classifier

    classifier = load_classifier(os.path.join(DATA, "classifier.pt"))

    def digits(cells):
        """The classifier's digit for each 28 x 28 uint8 cell."""
        x = torch.tensor(np.stack(cells), dtype=torch.float32).div(255)
        with torch.no_grad():
            return classifier(x).argmax(1).numpy()

    return digits


def save_checkpoint(path, model_name, weights, **args):
    """A checkpoint.pt in the current format, with `args` over a 2-d latent."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"model": model_name, "args": {"latent_dim": 2, **args}, "epoch": 0, "weights": weights}, path)
    return path


def reference_weights(run_dir):
    return read_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["weights"]


# --- layouts and contents -----------------------------------------------------------------------------


def test_prior_layout_and_seed(tmp_path):
    grid = picture(tmp_path, "prior", "--checkpoint", VAE_RUN, name="a.png")
    assert grid.shape == size(8, 8)  # 64 samples, 8 per row
    again = picture(tmp_path, "prior", "--checkpoint", VAE_RUN, "--seed", 0, name="b.png")
    other = picture(tmp_path, "prior", "--checkpoint", VAE_RUN, "--seed", 1, name="c.png")
    assert (grid == again).all()
    assert (grid != other).mean() > 0.1
    assert picture(tmp_path, "prior", "-n", 12, "--checkpoint", VAE_RUN).shape == size(2, 8)


def test_cvae_prior_rows_are_the_digits(tmp_path, classify):
    grid = picture(tmp_path, "prior", "-n", 3, "--checkpoint", CVAE_RUN)  # -n does not apply without --digit
    assert grid.shape == size(10, 8)
    for digit in range(10):
        assert (classify([cell(grid, digit, c) for c in range(8)]) == digit).mean() >= 0.75, digit


@pytest.mark.parametrize("digit", [3, 9])
def test_prior_digit_is_read_as_that_digit(tmp_path, classify, digit):
    grid = picture(tmp_path, "prior", "--digit", digit, "--checkpoint", CVAE_RUN)
    assert grid.shape == size(8, 8)
    cells = [cell(grid, r, c) for r in range(8) for c in range(8)]
    assert (classify(cells) == digit).mean() >= 0.9


@pytest.mark.parametrize("run_dir", [VAE_RUN, CVAE_RUN])
def test_reconstruct_pairs_inputs_and_reconstructions(tmp_path, test_set, run_dir):
    grid = picture(tmp_path, "reconstruct", "-n", 12, "--checkpoint", run_dir)
    assert grid.shape == size(4, 8)  # two row pairs, the second padded to 8 columns
    images, labels = test_set[0][:12], test_set[1][:12]
    model, _ = load_model(os.path.join(run_dir, "checkpoint.pt"))
    y = labels if model.conditional else None
    with torch.no_grad():
        reconstructions = as_saved(model.decode(model.encode(images, y)[0], y))  # from the means, with the labels
    for i in range(12):
        row, column = 2 * (i // 8), i % 8
        assert close(cell(grid, row, column), as_saved(images)[i])
        assert close(cell(grid, row + 1, column), reconstructions[i])
    for column in range(4, 8):
        assert (cell(grid, 2, column) == 0).all() and (cell(grid, 3, column) == 0).all()


@pytest.mark.parametrize("run_dir", [VAE_RUN, CVAE_RUN])
def test_interpolate_ends_are_the_inputs(tmp_path, test_set, run_dir):
    grid = picture(tmp_path, "interpolate", "--between", 3, 17, "--steps", 5, "--checkpoint", run_dir)
    assert grid.shape == size(1, 7)
    inputs = as_saved(test_set[0][[3, 17]])
    assert close(cell(grid, 0, 0), inputs[0]) and close(cell(grid, 0, 6), inputs[1])
    assert not close(cell(grid, 0, 1), cell(grid, 0, 5))  # the decoded line moves
    # from image 3's latent mean (next to it) to image 17's (next to that), decoded as image 3's digit
    model, _ = load_model(os.path.join(run_dir, "checkpoint.pt"))
    x, y = test_set[0][[3, 17]], test_set[1][[3, 17]]
    with torch.no_grad():
        mu, _ = model.encode(x, y if model.conditional else None)
        ends = as_saved(model.decode(mu, y[[0, 0]] if model.conditional else None))
    assert close(cell(grid, 0, 1), ends[0]) and close(cell(grid, 0, 5), ends[1])
    assert not close(cell(grid, 0, 1), ends[1])


def test_traverse_2d_orientation(tmp_path):
    grid = picture(tmp_path, "traverse", "--steps", 5, "--range", 2, "--checkpoint", VAE_RUN)
    assert grid.shape == size(5, 5)
    model, _ = load_model(os.path.join(VAE_RUN, "checkpoint.pt"))
    corners = {(0, 0): (-2, 2), (0, 4): (2, 2), (4, 0): (-2, -2), (4, 4): (2, -2)}  # (row, column): (z1, z2)
    with torch.no_grad():
        for (row, column), z in corners.items():
            assert close(cell(grid, row, column), as_saved(model.decode(torch.tensor([z], dtype=torch.float32)))[0])


def test_traverse_larger_latent_sweeps_each_dimension(tmp_path):
    torch.manual_seed(0)
    model = VAE(latent_dim=3).eval()
    path = save_checkpoint(
        str(tmp_path / "runs" / "VAE" / "wide" / "checkpoint.pt"), "VAE", model.state_dict(), latent_dim=3
    )
    grid = picture(tmp_path, "traverse", "--steps", 4, "--checkpoint", path)
    assert grid.shape == size(3, 4)  # a row per dimension
    with torch.no_grad():
        for d in range(3):
            z = torch.zeros(1, 3)
            z[0, d] = 3.0  # the last column is +range (default 3)
            assert close(cell(grid, d, 3), as_saved(model.decode(z))[0])


def test_traverse_cvae_draws_the_digit(tmp_path, classify):
    grid = picture(tmp_path, "traverse", "--steps", 6, "--digit", 4, "--checkpoint", CVAE_RUN)
    assert grid.shape == size(6, 6)
    assert (classify([cell(grid, r, c) for r in range(6) for c in range(6)]) == 4).mean() >= 0.8


def test_restyle_columns_are_the_digits(tmp_path, test_set, classify):
    grid = picture(tmp_path, "restyle", "-n", 10, "--checkpoint", CVAE_RUN)
    assert grid.shape == size(10, 11)
    inputs = as_saved(test_set[0][:10])
    assert all(close(cell(grid, r, 0), inputs[r]) for r in range(10))
    for digit in range(10):
        assert (classify([cell(grid, r, digit + 1) for r in range(10)]) == digit).mean() > 0.5, digit


def test_binarized_run_shows_binarized_test_images(tmp_path):
    path = save_checkpoint(
        str(tmp_path / "runs" / "VAE" / "bin" / "checkpoint.pt"), "VAE", reference_weights(VAE_RUN), binarize="dynamic"
    )
    grid = picture(tmp_path, "reconstruct", "-n", 8, "--checkpoint", path)
    binarized = as_saved(load_mnist(DATA, train=False, binarized=True)[0][:8])
    assert all(close(cell(grid, 0, c), binarized[c]) for c in range(8))
    assert set(np.unique(cell(grid, 0, 0))) <= {0, 255}


# --- which run, and where the picture goes --------------------------------------------------------------


def test_picks_the_newest_run_of_the_model_it_needs(tmp_path):
    runs = tmp_path / "runs"
    torch.manual_seed(0)
    for name, weights, started in [("old", reference_weights(VAE_RUN), 1), ("new", VAE().state_dict(), 2)]:
        save_checkpoint(str(runs / "VAE" / name / "checkpoint.pt"), "VAE", weights)
        (runs / "VAE" / name / "run.json").write_text(json.dumps({"started": started}))
    save_checkpoint(str(runs / "CVAE" / "c" / "checkpoint.pt"), "CVAE", reference_weights(CVAE_RUN))

    newest = picture(tmp_path, "prior", "--runs-dir", runs, name="newest.png")
    assert (newest == picture(tmp_path, "prior", "--checkpoint", runs / "VAE" / "new")).all()
    old = picture(tmp_path, "prior", "--runs-dir", runs, "--run-name", "old")
    assert (old == picture(tmp_path, "prior", "--checkpoint", VAE_RUN)).all() and (old != newest).any()
    # the CVAE: a VAE would draw 8 x 8, and fail on --digit and restyle
    assert picture(tmp_path, "prior", "--runs-dir", runs, "--model", "CVAE").shape == size(10, 8)
    picture(tmp_path, "prior", "--runs-dir", runs, "--digit", 2)
    picture(tmp_path, "restyle", "--runs-dir", runs)

    shutil.rmtree(runs / "CVAE")
    result = run("sample.py", "restyle", "--runs-dir", runs, "--out", tmp_path / "x.png", check=False)
    assert result.returncode != 0 and "no CVAE checkpoint" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "flags, name",
    [
        (["prior", "--checkpoint", VAE_RUN], "VAE_prior.png"),
        (["prior", "-n", 8, "--digit", 7, "--checkpoint", CVAE_RUN], "CVAE_prior_7.png"),
        (["traverse", "--steps", 3, "--checkpoint", CVAE_RUN], "CVAE_traverse.png"),
    ],
)
def test_default_out_is_images_model_command(tmp_path, flags, name):
    # run from tmp_path, so that the default images/ is TMP/images and not the repo's
    result = run("sample.py", *flags, "--data-dir", DATA, cwd=tmp_path)
    assert result.stdout.strip() == os.path.join("images", name)
    assert os.listdir(tmp_path / "images") == [name]


# --- the command line -----------------------------------------------------------------------------------


def test_help_lists_commands_and_defaults():
    text = run("sample.py", "--help").stdout
    assert all(command in text for command in ["prior", "reconstruct", "interpolate", "traverse", "restyle"])
    assert "(default: 64)" in run("sample.py", "prior", "--help").stdout
    traverse = run("sample.py", "traverse", "--help").stdout
    assert "(default: 20)" in traverse and "(default: 3.0)" in traverse


@pytest.mark.parametrize(
    "flags",
    [
        [],  # no command
        ["draw"],  # not a command
        ["prior", "--digit", 3, "--checkpoint", VAE_RUN],  # a VAE has no digits
        ["restyle", "--checkpoint", VAE_RUN],
        ["restyle", "--model", "VAE"],
        ["prior", "--model", "CVAE", "--checkpoint", VAE_RUN],  # the checkpoint is a VAE
        ["prior", "--checkpoint", VAE_RUN, "--checkpoint", CVAE_RUN],
        ["interpolate", "--between", 0, 10000, "--checkpoint", VAE_RUN],  # outside the test set
        ["interpolate", "--between", -1, 2, "--checkpoint", VAE_RUN],
        ["interpolate", "--checkpoint", VAE_RUN],  # --between is required
        ["reconstruct", "-n", 10001, "--checkpoint", VAE_RUN],
        ["prior", "-n", 0, "--checkpoint", VAE_RUN],
        ["restyle", "-n", -2, "--checkpoint", CVAE_RUN],
        ["interpolate", "--between", 0, 1, "--steps", 0, "--checkpoint", VAE_RUN],
        ["traverse", "--range", 0, "--checkpoint", VAE_RUN],
        ["traverse", "--range", "wide", "--checkpoint", VAE_RUN],
        ["prior", "--digit", 10, "--checkpoint", CVAE_RUN],
        ["prior", "--run-name", "no-such-run"],
        ["prior", "--checkpoint", "no/such/run"],
    ],
)
def test_errors_are_one_line(tmp_path, monkeypatch, capsys, flags):
    # in this process, to keep the test quick
    import sample

    out = tmp_path / "x.png"
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["sample.py", *map(str, flags), "--out", str(out)])
    with pytest.raises(SystemExit) as exit, cli.one_line_errors():
        sample.main()
    assert exit.value.code == 1
    err = capsys.readouterr().err
    assert err.endswith("\n") and len(err.splitlines()) == 1 and "error" in err
    assert not out.exists()


@pytest.mark.slow
def test_an_error_is_one_line_on_stderr_of_a_real_process(tmp_path):
    result = run_process(
        "sample.py",
        "interpolate",
        "--between",
        0,
        10000,
        "--checkpoint",
        VAE_RUN,
        "--out",
        tmp_path / "x.png",
        check=False,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr


def test_unwritable_out_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    result = run("sample.py", "prior", "--checkpoint", VAE_RUN, "--out", tmp_path / "file" / "x.png", check=False)
    assert result.returncode != 0 and "--out" in result.stderr and len(result.stderr.strip().splitlines()) == 1
