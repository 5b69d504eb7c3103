"""graph.py, latent_dist.py, evaluate.py and bench.py on the smoke runs."""

import json

import pytest
from conftest import run
from PIL import Image

pytestmark = pytest.mark.slow  # runs training: not in the quick tier (-m 'not slow')


def test_graph_writes_both_loss_figures(smoke, tmp_path):
    result = run("graph.py", "--runs-dir", smoke / "runs", "--images-dir", tmp_path)
    for name in ("VAE_loss.png", "CVAE_loss.png"):
        assert str(tmp_path / name) in result.stdout
        width, height = Image.open(tmp_path / name).size
        assert width > 500 and height > 200
    table = run("graph.py", "--runs-dir", smoke / "runs", "--table").stdout
    assert "smoke" in table and "test loss" in table


def test_latent_dist_writes_scatter_and_manifold(smoke, tmp_path):
    run("latent_dist.py", "--runs-dir", smoke / "runs", "--images-dir", tmp_path, "--posterior-images", 20)
    for name in ("VAE_dist.png", "CVAE_dist.png", "VAE_manifold.png"):
        assert Image.open(tmp_path / name).size[0] > 300


def test_evaluate_agrees_with_the_logged_test_loss(smoke):
    result = run("evaluate.py", "--runs-dir", smoke / "runs", "--k", 20, "--n", 50, "--json")
    figures = json.loads(result.stdout)
    for name in ("VAE", "CVAE"):
        r = figures[name]
        assert abs(r["test_loss"] - r["logged_test_loss"]) < 1e-3
        assert abs(r["test_loss"] - r["test_bce"] - r["test_kld"]) < 1e-3
        assert r["iwae_nll"] < r["test_loss"]  # 20 importance samples bound -log p(x) more tightly than the ELBO
    assert figures["CVAE"]["classifier_test_accuracy"] > 0.99
