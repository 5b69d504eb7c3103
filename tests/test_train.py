import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, run, train_flags
from mnist import load_mnist
from models import CVAE, VAE, load_checkpoint, loss_sums, read_checkpoint

TAGS = {"train/bce", "train/kld", "train/loss", "test/bce", "test/kld", "test/loss", "lr"}


def scalars(run_dir):
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("model_name, Model, out, height", [("VAE", VAE, "out", 242), ("CVAE", CVAE, "out_CVAE", 302)])
def test_one_epoch_writes_logs_grid_and_checkpoint(smoke, model_name, Model, out, height):
    run_dir = smoke / "runs" / model_name / "smoke"
    logged = scalars(run_dir)
    assert set(logged) == TAGS
    assert all(len(v) == 1 and v[0][0] == 0 for v in logged.values())
    assert logged["train/loss"][0][1] == pytest.approx(logged["train/bce"][0][1] + logged["train/kld"][0][1], rel=1e-5)
    assert 100 < logged["test/loss"][0][1] < 300  # nats per image, after one epoch on 2,000 images

    assert Image.open(smoke / out / "000.png").size == (242, height)

    model = load_checkpoint(run_dir / "checkpoint.pt")
    assert isinstance(model, Model) and model.latent_dim == 2
    # the checkpoint's weights give the test loss that the run logged
    test_x, test_y = load_mnist(os.path.join(ROOT, "data"), train=False)
    torch.manual_seed(read_checkpoint(run_dir / "checkpoint.pt")["args"]["seed"])
    test_loss = loss_sums(model, test_x, test_y).sum().item() / len(test_x)
    assert test_loss == pytest.approx(logged["test/loss"][0][1], abs=1e-3)


def final_weights(tmp, name, model_name="VAE"):
    return read_checkpoint(tmp / "runs" / model_name / name / "checkpoint.pt")["model_state"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_seed_gives_identical_weights_and_resume_is_exact(tmp_path):
    flags = ["--limit", 1000, "--batch-size", 100, "--seed", 3, "--schedule", "constant"]  # constant: 1 + 1 epochs = 2
    run("train.py", "--epochs", 2, *train_flags(tmp_path, "a"), *flags)
    run("train.py", "--epochs", 2, *train_flags(tmp_path, "b"), *flags)
    run("train.py", "--epochs", 1, *train_flags(tmp_path, "c"), *flags)
    run("train.py", "--epochs", 2, "--resume", *train_flags(tmp_path, "c"))  # the run's own flags come from its checkpoint
    assert_same_weights(final_weights(tmp_path, "a"), final_weights(tmp_path, "b"))
    assert_same_weights(final_weights(tmp_path, "a"), final_weights(tmp_path, "c"))
    logged = scalars(tmp_path / "runs" / "VAE" / "c")
    assert [step for step, _ in logged["test/loss"]] == [0, 1]
    assert sorted(os.listdir(tmp_path / "out")) == ["000.png", "001.png"]


@pytest.mark.parametrize("script, model_name, kill_in", [("train_CVAE.py", "CVAE", "second epoch"), ("train.py", "VAE", "first epoch")])
def test_kill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, script, model_name, kill_in):
    flags = ["--epochs", 3, "--limit", 20000, "--batch-size", 64]
    run(script, *train_flags(tmp_path, "whole"), *flags)
    run_dir = tmp_path / "runs" / model_name / "killed"
    cmd = [sys.executable, os.path.join(ROOT, script), *map(str, train_flags(tmp_path, "killed", out="out2")), *map(str, flags)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the first epoch has begun once the logs exist, the second once the first checkpoint does
    wait_for = "events.out.tfevents.*" if kill_in == "first epoch" else "checkpoint.pt"
    deadline = time.time() + 120
    while not list(run_dir.glob(wait_for)) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (run_dir / "checkpoint.pt").exists():
        assert read_checkpoint(run_dir / "checkpoint.pt")["epoch"] < 2, "the run finished before it was killed"
    run(script, "--resume", *train_flags(tmp_path, "killed", out="out2"), *flags)
    assert_same_weights(final_weights(tmp_path, "whole", model_name), final_weights(tmp_path, "killed", model_name))
    logged = scalars(run_dir)
    assert all([step for step, _ in values] == [0, 1, 2] for values in logged.values())
