"""evaluate.py: the -ELBO it prints is the one train.py logged; the CVAE's samples show their digit; one-line errors."""

import json
import math
import os

import pytest
import torch
from conftest import ROOT, run

import mnist
from evaluate import active_units
from mnist import load_mnist
from models import load_model


def fails_in_one_line(result, *phrases):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    run(
        "train.py",
        "--epochs",
        1,
        "--limit",
        500,
        "--runs-dir",
        tmp / "runs",
        "--run-name",
        "t",
        "--out-dir",
        tmp / "out",
    )
    return tmp / "runs" / "VAE" / "t"


def test_elbo_is_the_logged_test_loss(trained):
    r = json.loads(run("evaluate.py", "--checkpoint", trained, "--k", 10, "--json").stdout)["VAE"]
    assert r["n_images"] == 10000
    assert abs(r["test_loss"] - r["logged_test_loss"]) < 1e-3  # the same noise as train.py's test/loss
    assert abs(r["test_loss"] - r["test_bce"] - r["test_kld"]) < 1e-6
    assert r["iwae_nll"] < r["test_loss"]


def test_limit_evaluates_the_first_images(trained):
    r = json.loads(run("evaluate.py", "--checkpoint", trained, "--k", 10, "--limit", 200, "--json").stdout)["VAE"]
    assert r["n_images"] == 200
    assert abs(r["test_loss"] - r["logged_test_loss"]) > 1e-3  # 200 images are not the 10,000 of the logged loss


@pytest.mark.parametrize(
    "flags, phrase",
    [
        (["--k", 0], "--k: must be > 0"),
        (["--k", "many"], "--k: 'many' is not a int"),
        (["--n", -5], "--n: must be > 0"),
        (["--limit", 0], "--limit: must be > 0"),
        (["--limit", 1.5], "--limit: '1.5' is not a int"),
    ],
)
def test_flags_out_of_range_give_one_line(flags, phrase):
    fails_in_one_line(run("evaluate.py", "--checkpoint", "runs/VAE/reference", *flags, check=False), phrase)


def test_latent_dist_flag_out_of_range_gives_one_line():
    fails_in_one_line(
        run("latent_dist.py", "--checkpoint", "runs/VAE/reference", "--posterior-images", 7, check=False),
        "--posterior-images: must be >= 8",
    )


@pytest.fixture
def misshapen(tmp_path):
    """The reference VAE's checkpoint with one weight tensor replaced by one of another shape."""
    checkpoint = torch.load("runs/VAE/reference/checkpoint.pt", weights_only=True)
    weights = checkpoint["weights" if "weights" in checkpoint else "model_state"]
    weights["decoder.body.2.weight"] = torch.zeros(10, 10)
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("script", ["evaluate.py", "latent_dist.py"])
def test_weights_that_do_not_fit_give_one_line(script, misshapen, tmp_path):
    result = run(
        script,
        "--checkpoint",
        misshapen,
        "--images-dir" if script == "latent_dist.py" else "--k",
        tmp_path if script == "latent_dist.py" else 10,
        check=False,
    )
    fails_in_one_line(result, str(misshapen), "do not fit")


def test_cvae_samples_show_their_digit():
    r = json.loads(
        run(
            "evaluate.py", "--checkpoint", "runs/CVAE/reference", "--n", 100, "--k", 10, "--limit", 1000, "--json"
        ).stdout
    )["CVAE"]
    assert r["classifier_test_accuracy"] > 0.98
    assert r["label_agreement"] > 0.95, r["label_agreement_per_digit"]  # the digit asked for is the digit drawn
    assert min(r["label_agreement_per_digit"]) > 0.8


def test_each_measurement_has_its_own_noise():
    """The CVAE's label agreement does not change with the IWAE's --k or --limit, nor the IWAE bound with --n."""

    def figures(*flags):
        return json.loads(
            run("evaluate.py", "--checkpoint", "runs/CVAE/reference", "--n", 30, "--json", *flags).stdout
        )["CVAE"]

    a, b, c = (
        figures("--k", 1, "--limit", 5),
        figures("--k", 3, "--limit", 9),
        figures("--k", 3, "--limit", 9, "--n", 40),
    )
    assert a["label_agreement_per_digit"] == b["label_agreement_per_digit"]
    assert b["iwae_nll"] == c["iwae_nll"] and a["iwae_nll"] != b["iwae_nll"]


def test_several_k_in_one_pass_give_each_k_alone():
    """--k 2 5 gives the bound of --k 2 and that of --k 5, each as a run with that k alone gives it."""

    def figures(*ks):
        return json.loads(run("evaluate.py", "--run-name", "reference", "--limit", 50, "--json", "--k", *ks).stdout)

    both, two, five = figures(2, 5), figures(2), figures(5)
    for model in ("VAE", "CVAE"):
        assert both[model]["iwae"] == {"2": two[model]["iwae_nll"], "5": five[model]["iwae_nll"]}
        assert both[model]["k"] == 5 and both[model]["iwae_nll"] == five[model]["iwae_nll"]
        assert both[model]["iwae"]["5"] < both[model]["iwae"]["2"]  # on average the bound tightens as k grows


def test_active_units_counts_the_means_that_vary():
    """Dimensions whose mean of q(z|x) varies over the images by a variance above 0.01, about any centre."""
    signs = torch.tensor([1.0, -1.0]).repeat(50)  # a * signs has the variance a^2 over the 100 images
    means = 5 + torch.stack([signs * math.sqrt(v) for v in (1.0, 0.0102, 0.0098)], 1)
    assert active_units(means) == 2  # not the last, just below 0.01
    assert active_units(means[:, 2:]) == 0
    assert active_units(means, threshold=0.005) == 3
    assert active_units(torch.full((100, 4), 3.0)) == 0  # the same mean for every image: inactive, at any offset
    assert active_units(means[:1]) == 0  # one image: no variance (and no nan)


def counted_active_units(checkpoint_path, limit):
    """The active units of a checkpoint on the first `limit` test images, counted here from its encoder's means."""
    model, checkpoint = load_model(os.path.join(ROOT, checkpoint_path))
    binarized = mnist.binarized(checkpoint["args"].get("binarize"))
    x, y = load_mnist(os.path.join(ROOT, "data"), train=False, binarized=binarized)
    with torch.no_grad():
        mu = model.encode(x[:limit], y[:limit] if model.conditional else None)[0].double()
    variance = (mu - mu.mean(0)).square().mean(0)
    return int((variance > 0.01).sum()), variance


@pytest.mark.parametrize("model_name", ["VAE", "CVAE"])
def test_json_has_the_active_units(trained, model_name):
    run_dir = trained if model_name == "VAE" else "runs/CVAE/reference"  # a 1-epoch VAE; the committed CVAE
    flags = ["--checkpoint", run_dir, "--k", 2, "--n", 10, "--limit", 2000, "--json"]
    r = json.loads(run("evaluate.py", *flags).stdout)[model_name]
    count, variance = counted_active_units(r["checkpoint"], 2000)
    assert r["latent_dim"] == len(variance) and 0 <= r["active_units"] <= r["latent_dim"]
    assert r["active_units"] == count, variance


def test_report_shows_the_active_units():
    result = run("evaluate.py", "--checkpoint", "runs/CVAE/reference", "--k", 2, "--n", 10, "--limit", 500)
    count, variance = counted_active_units("runs/CVAE/reference/checkpoint.pt", 500)
    line = next(line for line in result.stdout.splitlines() if "active units" in line)
    assert line.split()[2:5] == [str(count), "of", str(len(variance))], line
    assert "E[z|x,y]" in line and "> 0.01" in line, line
