"""--resume: the flags given again win, read back from what trained (the optimizer, the logged lr), and run.json keeps
what a run was started with; --overwrite deletes nothing before the run is known to be valid; --val."""

import argparse
import json
import math
import os

import pytest
import torch
from conftest import ROOT, run, train_flags
from test_errors import fails_with, snapshot
from test_train import CPU, scalars

import train

pytestmark = pytest.mark.slow  # runs training: not in the quick tier (-m 'not slow')


def started_run(tmp, name, *flags):
    run(
        "train.py",
        "--epochs",
        1,
        "--limit",
        1000,
        "--batch-size",
        250,
        "--weight-decay",
        0,
        *CPU,
        *train_flags(tmp, name),
        *flags,
    )
    return tmp / "runs" / "VAE" / name


def optimizer_state(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["optimizer_state"]


def test_flags_given_on_a_resume_reach_the_optimizer_and_run_json_keeps_the_started_ones(tmp_path):
    run_dir = started_run(tmp_path, "a")
    assert optimizer_state(run_dir)["param_groups"][0]["weight_decay"] == 0.0
    started = json.loads((run_dir / "run.json").read_text())
    run(
        "train.py",
        "--resume",
        "--epochs",
        2,
        "--weight-decay",
        0.1,
        "--batch-size",
        500,
        "--schedule",
        "constant",
        "--lr",
        3e-3,
        "--run-name",
        "a",
        "--runs-dir",
        tmp_path / "runs",
        *CPU,
    )
    state = optimizer_state(run_dir)
    assert [g["weight_decay"] for g in state["param_groups"]] == [0.1]
    assert [g["lr"] for g in state["param_groups"]] == [3e-3]  # constant schedule at the new peak
    # 4 steps of 250 images in epoch 1, then 2 of 500 in epoch 2: AdamW counted every one
    assert {float(s["step"]) for s in state["state"].values()} == {6.0}
    assert scalars(run_dir)["lr"][1] == (1, pytest.approx(3e-3))
    record = json.loads((run_dir / "run.json").read_text())
    assert (
        record["flags"] == started["flags"]
        and record["flags"]["weight_decay"] == 0.0
        and record["flags"]["epochs"] == 1
    )
    (resume,) = record["resumes"]
    assert resume["changed"] == {
        "epochs": 2,
        "weight_decay": 0.1,
        "batch_size": 500,
        "schedule": "constant",
        "lr": 3e-3,
    }
    assert resume["epoch"] == 1 and resume["ran"]["device"] == "cpu" and resume["ran"]["torch"] == torch.__version__
    assert record["ran"]["bf16"] in (True, False)  # what "auto" was on the machine that ran it
    # a second resume keeps the first one's changes unless it changes them again
    run("train.py", "--resume", "--epochs", 3, "--run-name", "a", "--runs-dir", tmp_path / "runs", *CPU)
    assert optimizer_state(run_dir)["param_groups"][0]["weight_decay"] == 0.1
    assert json.loads((run_dir / "run.json").read_text())["resumes"][1]["changed"] == {"epochs": 3}


def schedule(**flags):
    return argparse.Namespace(**{**train.DEFAULTS, **flags})


def test_the_schedule_is_a_function_of_how_far_training_has_got():
    args = schedule(epochs=10, warmup_epochs=1.0, lr=1e-2)
    # the same point of training gives the same learning rate whatever the steps per epoch (--batch-size, --limit)
    for steps in (7, 100, 235):
        assert train.learning_rate(args, 4, 0, steps) == pytest.approx(
            1e-2 * 0.5 * (1 + math.cos(math.pi * 4 / 10)), rel=1e-12
        )
        assert train.learning_rate(args, 0, steps - 1, steps) == pytest.approx(
            1e-2
        )  # the warm-up's last step reaches the peak
    assert train.learning_rate(args, 0, 0, 100) == pytest.approx(1e-4)
    # --epochs 16 on a finished 10-epoch run stretches the cosine: epoch 11 starts at 0.5 (1 + cos(pi 10/16))
    # of the peak
    assert train.learning_rate(schedule(epochs=16, lr=1e-2), 10, 0, 50) == pytest.approx(
        1e-2 * 0.5 * (1 + math.cos(math.pi * 10 / 16))
    )
    # the original's StepLR counts optimizer steps over the epochs
    assert train.learning_rate(schedule(lr=1.0, lr_step_size=100, lr_gamma=0.5), 2, 10, 45) == 0.5 ** (
        (2 * 45 + 10) // 100
    )
    assert train.learning_rate(schedule(schedule="constant", warmup_epochs=0.0, lr=3e-3), 7, 3, 10) == 3e-3


def test_a_resume_with_more_epochs_logs_the_stretched_schedule(tmp_path):
    run_dir = started_run(tmp_path, "s", "--warmup-epochs", 0, "--lr", 1e-2)
    run("train.py", "--resume", "--epochs", 4, "--run-name", "s", "--runs-dir", tmp_path / "runs", *CPU)
    logged = dict(scalars(run_dir)["lr"])
    # the lr logged is that of each epoch's last step (4 steps an epoch), on the 4-epoch cosine
    for epoch in (1, 2, 3):
        assert logged[epoch] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * (epoch + 0.75) / 4)), rel=1e-6)


def test_a_finished_run_resumed_without_more_epochs_changes_nothing(tmp_path):
    started_run(tmp_path, "f")
    before = snapshot(tmp_path)
    result = run(
        "train.py",
        "--resume",
        "--epochs",
        1,
        "--weight-decay",
        0.5,
        "--run-name",
        "f",
        "--runs-dir",
        tmp_path / "runs",
        *CPU,
    )
    assert "has trained 1 epochs already; pass a larger --epochs" in result.stdout
    assert snapshot(tmp_path) == before  # run.json is not rewritten: it records no resume that trained nothing


@pytest.mark.parametrize("device", ["cuda:7", "mps", "nonsense"])
def test_overwrite_deletes_nothing_before_the_run_is_known_to_be_valid(tmp_path, device):
    started_run(tmp_path, "keep")
    before = snapshot(tmp_path)
    fails_with(
        run("train.py", "--overwrite", "--device", device, *train_flags(tmp_path, "keep"), check=False), "--device"
    )
    fails_with(
        run(
            "train.py",
            "--overwrite",
            "--data-dir",
            tmp_path / "nowhere",
            *CPU,
            *train_flags(tmp_path, "keep"),
            check=False,
        )
    )
    assert snapshot(tmp_path) == before


def test_overwrite_deletes_nothing_of_the_committed_reference_run():
    """The issue's command, on the real committed folders (a machine without a GPU 7: every machine here)."""
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a GPU 7")
    folders = [os.path.join(ROOT, "runs", "VAE", "reference"), os.path.join(ROOT, "out", "reference")]
    before = [snapshot(folder) for folder in folders]
    fails_with(
        run("train.py", "--run-name", "reference", "--overwrite", "--device", "cuda:7", check=False), "--device cuda:7"
    )
    assert [snapshot(folder) for folder in folders] == before


def test_val_holds_out_the_last_training_images(tmp_path):
    result = run("train.py", "--epochs", 1, "--val", 58000, *CPU, *train_flags(tmp_path, "v"))
    assert "2000 training images, 58000 held out for validation" in result.stdout
    logged = scalars(tmp_path / "runs" / "VAE" / "v")
    assert {"val/bce", "val/kld", "val/loss"} <= set(logged)
    checkpoint = torch.load(tmp_path / "runs" / "VAE" / "v" / "checkpoint.pt", weights_only=True)
    assert logged["val/loss"] == [(0, pytest.approx(checkpoint["val_loss"], abs=1e-3))]
    assert checkpoint["val_loss"] != checkpoint["test_loss"]
    fails_with(
        run(
            "train.py",
            "--resume",
            "--epochs",
            2,
            "--val",
            100,
            "--run-name",
            "v",
            "--runs-dir",
            tmp_path / "runs",
            check=False,
        ),
        "--val 100 differs from the run's 58000",
    )
    fails_with(run("train.py", "--val", 60000, check=False), "--val")
