"""train.py and train_CVAE.py: what a run writes, exact resume, and a run's folder that nothing overwrites."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, run, train_flags
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist import load_mnist
from models import CVAE, VAE, load_checkpoint, loss_sums
from runs import read_checkpoint

pytestmark = pytest.mark.slow  # runs training: not in the quick tier (-m 'not slow')

TAGS = {
    *("train/bce", "train/kld", "train/loss", "train/objective", "test/bce", "test/kld", "test/loss"),
    *("lr", "beta", "time/epoch_seconds"),
}
CPU = ["--device", "cpu"]  # the tests compare numbers, so they pick their device


def events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(run_dir):
    acc = events(run_dir)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("model_name, Model, out, height", [("VAE", VAE, "out", 242), ("CVAE", CVAE, "out_CVAE", 302)])
def test_one_epoch_writes_logs_pictures_grid_and_checkpoint(smoke, model_name, Model, out, height):
    run_dir = smoke / "runs" / model_name / "smoke"
    logged = scalars(run_dir)
    assert set(logged) == TAGS
    assert all(len(v) == 1 and v[0][0] == 0 for v in logged.values())
    assert logged["train/loss"][0][1] == pytest.approx(logged["train/bce"][0][1] + logged["train/kld"][0][1], rel=1e-5)
    assert 100 < logged["test/loss"][0][1] < 300  # nats per image, after one epoch on 2,000 images

    # the grid belongs to its run: OUT_DIR/RUN_NAME/NNN.png
    assert os.listdir(smoke / out / "smoke") == ["000.png"]
    assert Image.open(smoke / out / "smoke" / "000.png").size == (242, height)
    # TensorBoard's pictures: the same sample grid, and 32 test images with their reconstructions in row pairs
    images = events(run_dir).Images
    assert (images("samples")[0].width, images("samples")[0].height) == (242, height)
    assert (images("reconstructions")[0].width, images("reconstructions")[0].height) == (242, 242)
    # the Projector's embedding: the 10,000 test images' latent means with their labels
    [step_dir] = [d for d in os.listdir(run_dir) if d.isdigit()]
    embedding = run_dir / step_dir / "test_latent_means"
    assert len((embedding / "tensors.tsv").read_text().splitlines()) == 10000
    assert (embedding / "metadata.tsv").read_text().splitlines()[:3] == ["7", "2", "1"]  # the first test labels
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(
        events(run_dir).PluginTagToContent("hparams")
    )

    model = load_checkpoint(run_dir / "checkpoint.pt")
    assert isinstance(model, Model) and model.latent_dim == 2
    # the checkpoint's weights give the test loss that the run logged, with the same noise
    checkpoint = read_checkpoint(run_dir / "checkpoint.pt")
    test_x, test_y = load_mnist(os.path.join(ROOT, "data"), train=False)
    generator = torch.Generator().manual_seed(checkpoint["args"]["seed"])
    test_loss = loss_sums(model, test_x, test_y, generator).sum().item() / len(test_x)
    assert test_loss == pytest.approx(logged["test/loss"][0][1], abs=1e-4)

    record = json.loads((run_dir / "run.json").read_text())
    assert record["model"] == model_name and record["flags"]["epochs"] == 1 and record["flags"]["bf16"] == "auto"


def weights(tmp, name, model_name="VAE"):
    return read_checkpoint(tmp / "runs" / model_name / name / "checkpoint.pt")["weights"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_seed_gives_identical_weights_and_resume_restores_the_flags(tmp_path):
    flags = ["--limit", 1000, "--batch-size", 100, "--seed", 3, *CPU]
    run("train.py", "--epochs", 2, *train_flags(tmp_path, "a"), *flags)
    run("train.py", "--epochs", 2, *train_flags(tmp_path, "b"), *flags)
    assert_same_weights(weights(tmp_path, "a"), weights(tmp_path, "b"))
    # a run folder with its flags but no checkpoint starts again from epoch 1 with those flags
    run("train.py", "--epochs", 2, *train_flags(tmp_path, "c", out="other"), *flags)
    os.remove(tmp_path / "runs" / "VAE" / "c" / "checkpoint.pt")
    result = run("train.py", "--run-name", "c", "--runs-dir", tmp_path / "runs", "--resume", *CPU)
    assert "starting it again from epoch 1" in result.stdout
    assert_same_weights(weights(tmp_path, "a"), weights(tmp_path, "c"))
    assert sorted(os.listdir(tmp_path / "other" / "c")) == ["000.png", "001.png"]
    assert all([step for step, _ in values] == [0, 1] for values in scalars(tmp_path / "runs" / "VAE" / "c").values())


def kill_during_epoch(cmd, run_dir, epoch, sig, settle=0.3):
    """Start cmd, wait until it is training `epoch` (counted from 1), then `settle` seconds more (into the epoch),
    then send it `sig`."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    checkpoint = run_dir / "checkpoint.pt"
    while time.time() < deadline:  # epoch 1 has begun once run.json exists, epoch N > 1 once checkpoint N-1 does
        if epoch == 1 and (run_dir / "run.json").exists():
            break
        if epoch > 1 and checkpoint.exists() and read_checkpoint(checkpoint)["epoch"] == epoch - 2:
            break
        time.sleep(0.05)
    time.sleep(settle)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    if checkpoint.exists():
        assert read_checkpoint(checkpoint)["epoch"] < epoch - 1 + (epoch == 1), (
            "the run got past that epoch before the signal"
        )
    return proc.returncode, out, err


@pytest.mark.parametrize("script, model_name, epoch", [("train.py", "VAE", 2), ("train_CVAE.py", "CVAE", 1)])
def test_kill_then_resume_with_only_the_name_matches_an_uninterrupted_run(tmp_path, script, model_name, epoch):
    flags = ["--epochs", 2, "--limit", 30000, "--seed", 7, *CPU]
    runs = ["--runs-dir", tmp_path / "runs"]
    run(script, *flags, *runs, "--out-dir", tmp_path / "whole", "--run-name", "whole")
    cmd = [
        sys.executable,
        os.path.join(ROOT, script),
        *map(str, [*flags, *runs, "--out-dir", tmp_path / "ob", "--run-name", "b"]),
    ]
    run_dir = tmp_path / "runs" / model_name / "b"
    kill_during_epoch(cmd, run_dir, epoch, signal.SIGKILL)
    run(
        script, "--run-name", "b", "--resume", *runs, *CPU
    )  # --epochs 2, --seed 7, --limit and --out-dir come from run.json
    assert_same_weights(weights(tmp_path, "whole", model_name), weights(tmp_path, "b", model_name))
    assert sorted(os.listdir(tmp_path / "ob" / "b")) == ["000.png", "001.png"]
    for name in ("000.png", "001.png"):  # each grid is the one the uninterrupted run drew
        assert (tmp_path / "ob" / "b" / name).read_bytes() == (tmp_path / "whole" / "whole" / name).read_bytes()
    logged = scalars(run_dir)
    assert set(logged) == TAGS and all([step for step, _ in values] == [0, 1] for values in logged.values())


def test_ctrl_c_exits_with_one_line_and_keeps_the_last_checkpoint(tmp_path):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        *map(str, ["--epochs", 3, "--limit", 30000, *CPU, *train_flags(tmp_path, "i")]),
    ]
    run_dir = tmp_path / "runs" / "VAE" / "i"
    code, out, err = kill_during_epoch(cmd, run_dir, 2, signal.SIGINT)
    assert code != 0 and "Traceback" not in err
    [line] = err.strip().splitlines()
    assert (
        "interrupted in epoch 2" in line
        and "checkpoint of epoch 1 is kept" in line
        and "--run-name i" in line
        and "--resume" in line
    )
    assert read_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 0
    assert isinstance(load_checkpoint(run_dir / "checkpoint.pt"), VAE)


def test_resume_from_a_checkpoint_written_before_run_json(tmp_path):
    """The committed runs from before run.json keep their flags in the checkpoint: they still resume."""
    run_dir = tmp_path / "runs" / "VAE" / "old"
    run_dir.mkdir(parents=True)
    checkpoint = torch.load(os.path.join(ROOT, "runs", "VAE", "reference", "checkpoint.pt"), weights_only=True)
    old = {
        "model": "VAE",
        "args": dict(checkpoint["args"], epochs=1, limit=300, bf16=None),
        "epoch": 0,
        "test_loss": 0.0,
    }
    model = VAE()
    optimizer = torch.optim.AdamW(model.parameters())
    old.update(
        model_state=model.state_dict(),
        optimizer_state=optimizer.state_dict(),
        scheduler_state=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0).state_dict(),
    )
    torch.save(old, run_dir / "checkpoint.pt")
    result = run(
        "train.py",
        "--run-name",
        "old",
        "--resume",
        "--epochs",
        2,
        "--runs-dir",
        tmp_path / "runs",
        "--out-dir",
        tmp_path / "out",
        *CPU,
    )
    assert "epoch   2/2" in result.stdout
    assert read_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1
    assert os.listdir(tmp_path / "out" / "old") == ["001.png"]


MEASURE_PAGE_FAULTS = """
import argparse, resource, sys, torch
import cli, train
from models import VAE

cli.reuse_freed_memory()  # as train.py, before any allocation
args = argparse.Namespace(**{**train.DEFAULTS, "bf16": False})
torch.manual_seed(0)
model = VAE()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
images, labels = torch.rand(256 * 20, 784), torch.zeros(256 * 20, dtype=torch.long)
epoch = lambda: train.train_epoch(model, optimizer, None, images, labels, args, 0)
epoch()
per_step = []
# the median of 5 epochs: a rare epoch grows the heap once by a block (~200 faults), then reuses it
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    epoch()
    per_step.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
print(sorted(per_step)[2])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_script_reuses_freed_memory_instead_of_faulting_in_fresh_pages():
    # a fresh process, for a fresh malloc; without cli.reuse_freed_memory a step faults in ~200 new pages
    # (its 800 KB gradients)
    result = subprocess.run(
        [sys.executable, "-c", MEASURE_PAGE_FAULTS], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert float(result.stdout) < 20


# a run that overfits within seconds: 200 training images, a constant high learning rate, 1,000 validation images
OVERFIT = ["--limit", 200, "--batch-size", 32, "--val", 1000, "--lr", 1e-2, "--schedule", "constant"]
OVERFIT += ["--warmup-epochs", 0, "--no-bf16", "--patience", 2, *CPU]


def test_patience_stops_early_and_best_pt_holds_the_epoch_of_the_lowest_validation_loss(tmp_path):
    run("train.py", "--epochs", 40, *OVERFIT, *train_flags(tmp_path, "whole"))
    run_dir = tmp_path / "runs" / "VAE" / "whole"
    last, best = read_checkpoint(run_dir / "checkpoint.pt"), read_checkpoint(run_dir / "best.pt")
    val = [value for _, value in scalars(run_dir)["val/loss"]]
    assert len(val) == last["epoch"] + 1 < 40  # stopped early, after the epoch it logged last
    lowest = min(range(len(val)), key=val.__getitem__)
    assert best["epoch"] == last["best_epoch"] == lowest == len(val) - 1 - 2  # 2 epochs without a lower one
    assert best["val_loss"] == pytest.approx(val[lowest], abs=1e-4) and best["val_loss"] < min(val[lowest + 1 :])
    assert "optimizer_state" not in best  # best.pt is for evaluating, not for resuming
    model = load_checkpoint(run_dir / "best.pt")  # evaluate.py and sample.py load it as they load checkpoint.pt
    assert_same_weights(model.state_dict(), best["weights"])
    # resumed, the stopped run trains nothing more, unless --patience grows
    assert "stopped early" in run("train.py", "--run-name", "whole", "--resume", "--runs-dir", tmp_path / "runs").stdout
    assert read_checkpoint(run_dir / "checkpoint.pt")["epoch"] == last["epoch"]


def test_a_killed_and_resumed_run_stops_at_the_same_epoch_with_the_same_best_pt(tmp_path):
    run("train.py", "--epochs", 40, *OVERFIT, *train_flags(tmp_path, "whole"))
    stopped = read_checkpoint(tmp_path / "runs" / "VAE" / "whole" / "checkpoint.pt")["epoch"]
    # the same run, killed (SIGKILL: no clean-up) as soon as its third epoch begins (its epochs take about 0.3 s,
    # so no time to settle), then resumed
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        *map(str, ["--epochs", 40, *OVERFIT, *train_flags(tmp_path, "b")]),
    ]
    run_dir = tmp_path / "runs" / "VAE" / "b"
    code, _, _ = kill_during_epoch(cmd, run_dir, 3, signal.SIGKILL, settle=0)
    assert code == -signal.SIGKILL and read_checkpoint(run_dir / "checkpoint.pt")["epoch"] < stopped  # in mid-run
    assert "stopped early" in run("train.py", "--run-name", "b", "--resume", "--runs-dir", tmp_path / "runs").stdout
    for name in ("checkpoint.pt", "best.pt"):
        whole = read_checkpoint(tmp_path / "runs" / "VAE" / "whole" / name)
        resumed = read_checkpoint(tmp_path / "runs" / "VAE" / "b" / name)
        assert whole["epoch"] == resumed["epoch"] and whole["val_loss"] == resumed["val_loss"], name
        assert_same_weights(whole["weights"], resumed["weights"])


def test_patience_needs_a_validation_set(tmp_path):
    result = run("train.py", "--patience", 3, *train_flags(tmp_path, "x"), check=False)
    assert result.returncode == 1 and result.stderr.startswith("error: --patience") and "--val" in result.stderr


def test_images_every_logs_the_tensorboard_grids_every_n_epochs_and_the_last(tmp_path):
    run("train.py", "--epochs", 4, "--limit", 300, "--images-every", 3, *CPU, *train_flags(tmp_path, "sparse"))
    logged = events(tmp_path / "runs" / "VAE" / "sparse")
    for tag in ("samples", "reconstructions"):
        assert [e.step for e in logged.Images(tag)] == [2, 3]  # epoch 3, and the last
    assert sorted(os.listdir(tmp_path / "out" / "sparse")) == ["000.png", "001.png", "002.png", "003.png"]


def test_ema_tests_and_saves_the_average_and_resumes_the_trained_weights(tmp_path):
    run("train.py", "--epochs", 2, "--limit", 1000, "--ema", 0.9, *CPU, *train_flags(tmp_path, "ema"))
    checkpoint = read_checkpoint(tmp_path / "runs" / "VAE" / "ema" / "checkpoint.pt")
    averaged, trained = checkpoint["weights"], checkpoint["trained_weights"]
    assert any(not torch.equal(averaged[k], trained[k]) for k in averaged)  # the average is not the last step
    # the logged test loss is the average's: evaluate.py, which loads "weights", gives it again
    result = run("evaluate.py", "--checkpoint", tmp_path / "runs" / "VAE" / "ema", "--k", 1, "--json")
    r = json.loads(result.stdout)["VAE"]
    assert abs(r["test_loss"] - r["logged_test_loss"]) < 1e-3
