"""The committed reference runs reach the test -ELBO that the README reports."""
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from classifier import load_classifier
from conftest import ROOT
from mnist import load_mnist
from models import load_checkpoint, loss_sums, read_checkpoint


def readme_test_elbo(model_name):
    """The test -ELBO in the README's results table, row `| MODEL | runs/MODEL/reference | -ELBO | ...`."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    match = re.search(rf"^\| {model_name} \| `runs/{model_name}/reference` \| ([\d.]+) \|", text, re.MULTILINE)
    assert match, f"no results row for runs/{model_name}/reference in README.md"
    return float(match.group(1))


@pytest.mark.parametrize("model_name, bar", [("VAE", 142.5), ("CVAE", 129.5)])
def test_reference_checkpoint_matches_the_readme(model_name, bar):
    path = os.path.join(ROOT, "runs", model_name, "reference", "checkpoint.pt")
    model = load_checkpoint(path)
    checkpoint = read_checkpoint(path)
    assert checkpoint["epoch"] + 1 == (50 if model_name == "VAE" else 20)
    test_x, test_y = load_mnist(os.path.join(ROOT, "data"), train=False)
    torch.manual_seed(checkpoint["args"]["seed"])
    test_elbo = loss_sums(model, test_x, test_y).sum().item() / len(test_x)
    assert test_elbo == pytest.approx(readme_test_elbo(model_name), abs=0.5)
    assert test_elbo <= bar


def grid_cells(path, rows, columns=8):
    """The 28 x 28 images of a save_image grid (padding 2), as (rows * columns, 784)."""
    image = torch.from_numpy(np.array(Image.open(path).convert("L"))).float() / 255
    return torch.stack([image[2 + r * 30:30 + r * 30, 2 + c * 30:30 + c * 30] for r in range(rows) for c in range(columns)]).view(-1, 784)


def test_reference_grids_show_the_digits():
    classifier = load_classifier(os.path.join(ROOT, "data", "classifier.pt"))
    with torch.no_grad():
        cvae = classifier(grid_cells(os.path.join(ROOT, "out_CVAE", "019.png"), rows=10)).argmax(1)
        vae = classifier(grid_cells(os.path.join(ROOT, "out", "049.png"), rows=8)).argmax(1)
    assert (cvae == torch.arange(10).repeat_interleave(8)).float().mean() >= 0.95  # row r shows digit r
    counts = torch.bincount(vae, minlength=10)
    assert (counts > 0).sum() >= 8 and counts.max() <= 0.3 * len(vae)
