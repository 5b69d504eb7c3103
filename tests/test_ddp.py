import glob
import os
import subprocess
import sys

import pytest
from conftest import ROOT, train_flags

pytestmark = pytest.mark.slow  # runs training: not in the quick tier (-m 'not slow')


def torchrun(script, tmp_path, name, limit):
    """Two processes of `script` on gloo, under torchrun, for one epoch on `limit` images."""
    flags = ["--epochs", 1, "--limit", limit, "--device", "cpu", *train_flags(tmp_path, name)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    return subprocess.run([*cmd, *map(str, flags)], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_two_processes_with_gloo(tmp_path):
    result = torchrun(os.path.join(ROOT, "train.py"), tmp_path, "ddp", 2000)
    assert result.returncode == 0, result.stderr
    assert "2 process(es)" in result.stdout
    # each process compares its weights with rank 0's
    assert "weights identical on all 2 processes: True" in result.stdout
    assert len(glob.glob(str(tmp_path / "runs" / "VAE" / "ddp" / "events.out.tfevents.*"))) == 1
    assert os.listdir(tmp_path / "out" / "ddp") == ["000.png"]


def torchrun_with(tmp_path, patch, name):
    """torchrun of train.py with two processes on gloo, process 1 changed by `patch` (Python run before train.main)."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        f"import os, sys\nsys.path.insert(0, {ROOT!r})\nimport torch, train\n"
        f"if os.environ['RANK'] == '1':\n"
        + "".join(f"    {line}\n" for line in patch.splitlines())
        + "train.main(argv=sys.argv[1:])\n"
    )
    return torchrun(driver, tmp_path, name, 1000)


def test_a_non_finite_loss_in_one_process_stops_every_process_with_the_same_line(tmp_path):
    # process 1 alone sees an infinite loss at its third step
    patch = (
        "loss_function, calls = train.loss_function, []\n"
        "def bad(*args):\n"
        "    calls.append(1)\n"
        "    total, bce, kld = loss_function(*args)\n"
        "    return (total * float('inf') if len(calls) == 3 else total), bce, kld\n"
        "train.loss_function = bad"
    )
    result = torchrun_with(tmp_path, patch, "nan")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 2 and lines[0] == lines[1], result.stderr  # both processes, the same message
    assert "the loss became inf in epoch 1/1, step 3" in lines[0] and "before any checkpoint" in lines[0]


def test_weights_that_differ_between_processes_fail_the_run(tmp_path):
    # process 1 nudges one weight after its epoch, as a bug in the averaging would
    patch = (
        "train_epoch = train.train_epoch\n"
        "def nudged(model, *args, **kw):\n"
        "    out = train_epoch(model, *args, **kw)\n"
        "    with torch.no_grad():\n"
        "        next(model.parameters()).view(-1)[0] += 1e-3\n"
        "    return out\n"
        "train.train_epoch = nudged"
    )
    result = torchrun_with(tmp_path, patch, "differ")
    assert result.returncode != 0
    assert "error: the weights differ between the 2 processes after training" in result.stderr, result.stderr
    assert "weights identical" not in result.stdout
