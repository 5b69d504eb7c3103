"""--beta, the KLD's weight in what is optimised, and --kl-warmup-epochs, its linear warm-up: the logged weight,
across a killed and resumed run too, and the losses that stay the -ELBO whatever the weight."""

import argparse
import signal
import sys

import pytest
from conftest import ROOT, run, train_flags
from test_train import CPU, assert_same_weights, kill_during_epoch, scalars, weights

import train

pytestmark = pytest.mark.slow  # runs training: not in the quick tier (-m 'not slow')


def test_the_weight_rises_linearly_to_beta_at_the_end_of_the_warm_up():
    args = argparse.Namespace(beta=0.5, kl_warmup_epochs=2.0)
    assert train.kl_weight(args, 0, 0, 8) == 0.5 * (1 / 8) / 2  # after the first step
    assert train.kl_weight(args, 0, 7, 8) == 0.25  # the end of epoch 1: half way
    assert train.kl_weight(args, 1, 3, 8) == 0.5 * (1 + 4 / 8) / 2
    assert train.kl_weight(args, 1, 7, 8) == 0.5  # the end of epoch 2: beta
    assert train.kl_weight(args, 5, 0, 8) == 0.5
    assert train.kl_weight(argparse.Namespace(beta=2.0, kl_warmup_epochs=0.0), 0, 0, 8) == 2.0  # no warm-up


def test_warm_up_is_logged_and_the_losses_stay_the_elbo(tmp_path):
    run(
        "train.py",
        "--epochs",
        3,
        "--limit",
        2000,
        "--beta",
        0.5,
        "--kl-warmup-epochs",
        2,
        *CPU,
        *train_flags(tmp_path, "w"),
    )
    logged = scalars(tmp_path / "runs" / "VAE" / "w")
    assert [value for _, value in logged["beta"]] == [0.25, 0.5, 0.5]
    for split in ("train", "test"):
        for (_, loss), (_, bce), (_, kld) in zip(
            logged[f"{split}/loss"], logged[f"{split}/bce"], logged[f"{split}/kld"], strict=True
        ):
            assert loss == pytest.approx(bce + kld, rel=1e-6)
    # what was minimised weighs the KLD by at most beta = 0.5: below the -ELBO by at least half the KLD
    for (_, objective), (_, loss), (_, kld) in zip(
        logged["train/objective"], logged["train/loss"], logged["train/kld"], strict=True
    ):
        assert objective <= loss - 0.5 * kld + 1e-3


def test_a_killed_and_resumed_warm_up_logs_the_weights_of_an_uninterrupted_one(tmp_path):
    flags = ["--epochs", 3, "--limit", 20000, "--beta", 0.5, "--kl-warmup-epochs", 2.5, *CPU]
    run("train.py", *flags, *train_flags(tmp_path, "whole"))
    cmd = [sys.executable, str(ROOT + "/train.py"), *map(str, [*flags, *train_flags(tmp_path, "b")])]
    run_dir = tmp_path / "runs" / "VAE" / "b"
    kill_during_epoch(cmd, run_dir, 2, signal.SIGKILL)
    run("train.py", "--run-name", "b", "--resume", "--runs-dir", tmp_path / "runs", *CPU)
    whole = scalars(tmp_path / "runs" / "VAE" / "whole")
    resumed = scalars(run_dir)
    assert [v for _, v in resumed["beta"]] == [v for _, v in whole["beta"]] == pytest.approx([0.2, 0.4, 0.5], rel=1e-6)
    assert_same_weights(weights(tmp_path, "whole", "VAE"), weights(tmp_path, "b", "VAE"))


def test_a_smaller_beta_buys_a_larger_kld(tmp_path):
    common = ["--epochs", 2, "--limit", 5000, "--latent-dim", 10, *CPU]
    for beta in (0.1, 1):
        run("train.py", *common, "--beta", beta, *train_flags(tmp_path, f"beta{beta}"))
    kld = {beta: scalars(tmp_path / "runs" / "VAE" / f"beta{beta}")["test/kld"][-1][1] for beta in (0.1, 1)}
    assert kld[0.1] > kld[1] + 5, kld
