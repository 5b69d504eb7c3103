"""evaluate.py: the -ELBO it prints is the one train.py logged; the CVAE's samples show their digit; one-line errors."""

import json

import pytest
import torch
from conftest import run


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
