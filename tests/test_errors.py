"""A user's mistake gets one line that names the problem and the fix, a non-zero exit, no traceback, and loses
nothing."""

import os
import shutil
import sys

import pytest
import torch
from conftest import ROOT, run, train_both, train_flags

import cli
from runs import read_checkpoint


def fails_with(result, *phrases):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def data_copy(tmp_path):
    """A private copy of the gzipped MNIST files, free to break."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in os.listdir(os.path.join(ROOT, "data", "MNIST", "raw")):
        if name.endswith(".gz"):
            shutil.copy(os.path.join(ROOT, "data", "MNIST", "raw", name), raw / name)
    return tmp_path / "data"


def test_missing_data_file(tmp_path, data_copy):
    os.remove(data_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz")
    result = run("train.py", "--epochs", 1, "--data-dir", data_copy, *train_flags(tmp_path, "x"), check=False)
    fails_with(result, "t10k-labels-idx1-ubyte.gz is missing", "git checkout")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_data_file(tmp_path, data_copy, damage):
    path = data_copy / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[5000] ^= 0xFF
    path.write_bytes(bytes(data))
    result = run("train_CVAE.py", "--epochs", 1, "--data-dir", data_copy, *train_flags(tmp_path, "x"), check=False)
    fails_with(result, "train-images-idx3-ubyte.gz is corrupt")


@pytest.mark.slow
def test_corrupt_unpacked_file_without_its_gz(tmp_path, data_copy):
    raw = data_copy / "MNIST" / "raw"
    run("train.py", "--epochs", 1, "--limit", 100, "--data-dir", data_copy, *train_flags(tmp_path, "ok"))  # unpacks
    os.remove(raw / "t10k-images-idx3-ubyte.gz")
    (raw / "t10k-images-idx3-ubyte").write_bytes(b"\x00" * 100)
    result = run("train.py", "--epochs", 1, "--data-dir", data_copy, *train_flags(tmp_path, "x"), check=False)
    fails_with(result, "t10k-images-idx3-ubyte is corrupt")


def test_data_dir_that_does_not_exist(tmp_path):
    result = run("train.py", "--data-dir", tmp_path / "nowhere", *train_flags(tmp_path, "x"), check=False)
    fails_with(result, "does not exist", "--data-dir")


@pytest.mark.parametrize(
    "flag, value", [("--epochs", 0), ("--batch-size", -1), ("--lr", 0), ("--limit", 0), ("--epochs", "ten")]
)
def test_bad_numbers(tmp_path, flag, value):
    fails_with(run("train.py", flag, value, *train_flags(tmp_path, "x"), check=False), flag)


@pytest.mark.parametrize("device", ["cuda:7", "tpu", "banana"])
def test_device_that_is_not_there(tmp_path, device):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    fails_with(run("train.py", "--device", device, *train_flags(tmp_path, "x"), check=False), f"--device {device}")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch run of each model, to resume, break and protect."""
    return train_both(tmp_path_factory.mktemp("finished"), "done", 500)


def snapshot(folder):
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read() for d, _, fs in os.walk(folder) for f in fs}


def test_resume_without_checkpoint(tmp_path):
    fails_with(
        run("train.py", "--resume", *train_flags(tmp_path, "never"), check=False),
        "neither a checkpoint nor the flags",
        "--run-name",
    )


@pytest.mark.parametrize("content", [os.urandom(5000), "truncated"])
def test_resume_from_a_broken_checkpoint(tmp_path, finished, content):
    run_dir = tmp_path / "runs" / "VAE" / "broken"
    run_dir.mkdir(parents=True)
    good = (finished / "runs" / "VAE" / "done" / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(good[: len(good) // 2] if content == "truncated" else content)
    before = snapshot(tmp_path)
    fails_with(run("train.py", "--resume", *train_flags(tmp_path, "broken"), check=False), "not a readable checkpoint")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("script, other", [("train.py", "CVAE"), ("train_CVAE.py", "VAE")])
def test_resume_with_the_other_models_checkpoint(tmp_path, finished, script, other):
    mine = "VAE" if other == "CVAE" else "CVAE"
    run_dir = tmp_path / "runs" / mine / "swapped"
    run_dir.mkdir(parents=True)
    shutil.copy(finished / "runs" / other / "done" / "checkpoint.pt", run_dir / "checkpoint.pt")
    result = run(script, "--resume", "--epochs", 2, *train_flags(tmp_path, "swapped"), check=False)
    fails_with(result, f"holds a {other}", "train_CVAE.py" if other == "CVAE" else "train.py")


def test_resume_with_another_latent_size(finished):
    before = snapshot(finished)
    result = run("train.py", "--resume", "--epochs", 2, "--latent-dim", 8, *train_flags(finished, "done"), check=False)
    fails_with(result, "--latent-dim 8", "the run's 2")
    assert snapshot(finished) == before


def test_a_new_run_does_not_overwrite_an_old_one(finished):
    before = snapshot(finished)
    result = run("train.py", "--epochs", 1, "--limit", 100, *train_flags(finished, "done"), check=False)
    fails_with(result, "already holds a run", "--resume")
    assert snapshot(finished) == before


def test_output_folder_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    fails_with(
        run("train.py", "--epochs", 1, *train_flags(tmp_path, "x"), "--out-dir", blocker / "out", check=False),
        "--out-dir",
        "cannot write",
    )
    fails_with(
        run("train.py", "--epochs", 1, "--run-name", "x", "--runs-dir", blocker, check=False),
        "--runs-dir",
        "cannot write",
    )


def test_loss_that_turns_non_finite_stops_and_keeps_the_last_checkpoint(finished):
    checkpoint = finished / "runs" / "VAE" / "done" / "checkpoint.pt"
    before = checkpoint.read_bytes()
    result = run("train.py", "--resume", "--epochs", 3, "--lr", 1e12, *train_flags(finished, "done"), check=False)
    line = fails_with(result, "epoch 2/3, step", "checkpoint of epoch 1", "--resume")
    assert "nan" in line or "inf" in line
    assert checkpoint.read_bytes() == before


def test_graph_with_no_runs(tmp_path):
    fails_with(run("graph.py", "--runs-dir", tmp_path, check=False), "no runs", "python train.py")


def test_latent_dist_with_no_checkpoint(tmp_path):
    fails_with(run("latent_dist.py", "--runs-dir", tmp_path, check=False), "no checkpoint", "python train.py")


def test_loss_that_turns_non_finite_before_any_checkpoint(tmp_path):
    result = run("train.py", "--epochs", 1, "--limit", 500, "--lr", 1e12, *train_flags(tmp_path, "nan"), check=False)
    fails_with(result, "before any checkpoint", "--overwrite")
    assert not (tmp_path / "runs" / "VAE" / "nan" / "checkpoint.pt").exists()


def test_a_committed_run_with_logs_only_is_neither_overwritten_nor_resumed(tmp_path):
    runs = tmp_path / "recipes"
    shutil.copytree(os.path.join(ROOT, "runs", "recipes", "VAE", "b256-lr5e-3"), runs / "VAE" / "b256-lr5e-3")
    before = snapshot(runs)
    flags = ["--runs-dir", runs, "--run-name", "b256-lr5e-3", "--epochs", 1, "--out-dir", tmp_path / "out"]
    fails_with(run("train.py", *flags, check=False), "already holds a run", "--overwrite")
    fails_with(run("train.py", *flags, "--resume", check=False), "neither a checkpoint nor the flags")
    assert snapshot(runs) == before and not (tmp_path / "out").exists()


def test_a_grid_folder_in_use_is_refused_and_overwrite_empties_both(tmp_path):
    grids = tmp_path / "out" / "mine"
    grids.mkdir(parents=True)
    (grids / "000.png").write_bytes(b"someone else's grid")
    flags = ["--epochs", 1, "--limit", 300, *train_flags(tmp_path, "mine")]
    fails_with(run("train.py", *flags, check=False), str(grids), "--overwrite")
    assert (grids / "000.png").read_bytes() == b"someone else's grid"
    (tmp_path / "runs" / "VAE" / "mine").mkdir(parents=True)
    (tmp_path / "runs" / "VAE" / "mine" / "stale.txt").write_text("old")
    run("train.py", *flags, "--overwrite")
    assert os.listdir(grids) == ["000.png"] and (grids / "000.png").read_bytes() != b"someone else's grid"
    assert not (tmp_path / "runs" / "VAE" / "mine" / "stale.txt").exists()


@pytest.mark.parametrize(
    "flag, value, phrase", [("--ema", 0.99, "without --ema"), ("--binarize", "dynamic", "--binarize dynamic")]
)
def test_resume_cannot_change_what_a_run_is(finished, flag, value, phrase):
    before = snapshot(finished)
    result = run("train.py", "--resume", "--epochs", 2, flag, value, *train_flags(finished, "done"), check=False)
    fails_with(result, phrase, "start a new run")
    assert snapshot(finished) == before


def test_resume_from_a_checkpoint_whose_weights_do_not_fit(tmp_path, finished):
    run_dir = tmp_path / "runs" / "VAE" / "misfit"
    shutil.copytree(finished / "runs" / "VAE" / "done", run_dir)
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    checkpoint["weights"]["decoder.body.0.weight"] = torch.zeros(3, 3)
    torch.save(checkpoint, run_dir / "checkpoint.pt")
    result = run("train.py", "--resume", "--epochs", 2, *train_flags(tmp_path, "misfit"), check=False)
    fails_with(result, "does not fit", "start a new run")


def test_resume_and_overwrite_together(tmp_path):
    fails_with(
        run("train.py", "--resume", "--overwrite", *train_flags(tmp_path, "x"), check=False),
        "--resume",
        "--overwrite",
        "one of them",
    )


def test_resume_without_a_run_name(tmp_path):
    fails_with(run("train.py", "--resume", "--runs-dir", tmp_path, check=False), "--resume needs the --run-name")


def test_an_unreadable_run_json(tmp_path, finished):
    run_dir = tmp_path / "runs" / "VAE" / "done"
    shutil.copytree(finished / "runs" / "VAE" / "done", run_dir)
    (run_dir / "run.json").write_text("{not json")
    before = snapshot(tmp_path)
    fails_with(
        run("train.py", "--resume", "--epochs", 2, *train_flags(tmp_path, "done"), check=False),
        "run.json is not readable JSON",
    )
    assert snapshot(tmp_path) == before


def test_out_of_memory_says_to_lower_the_batch_size(tmp_path, monkeypatch, capsys):
    import train

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "train_epoch", no_memory)
    with pytest.raises(SystemExit) as exit:
        train.main(argv=["--epochs", "1", "--limit", "100", "--device", "cpu", *map(str, train_flags(tmp_path, "oom"))])
    assert exit.value.code == 1
    assert (
        capsys.readouterr().err
        == "error: out of memory on the device; lower --batch-size (or the number of images or samples at once)\n"
    )


def test_an_error_line_goes_to_stderr_in_one_write(monkeypatch):
    # torchrun's processes share one stderr: a line written in two parts (text, then newline) can be split by another's
    writes = []

    class Recorder:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Recorder())

    def mistake():
        raise cli.UserError("no such run; pass --run-name")

    with pytest.raises(SystemExit) as exit, cli.one_line_errors():
        mistake()
    assert exit.value.code == 1
    assert writes == ["error: no such run; pass --run-name\n"]


# --- failure paths, made to happen ---------------------------------------------------------------


def copy_run(finished, tmp_path, name="done"):
    """A private copy of the finished VAE run (its folder and grids) under TMP/runs, free to break."""
    shutil.copytree(finished / "runs" / "VAE" / name, tmp_path / "runs" / "VAE" / name)
    shutil.copytree(finished / "out" / name, tmp_path / "out" / name)
    return tmp_path / "runs" / "VAE" / name


def test_a_checkpoint_write_that_fails_midway_keeps_the_old_checkpoint(finished, tmp_path, monkeypatch):
    run_dir = copy_run(finished, tmp_path)
    before = (run_dir / "checkpoint.pt").read_bytes()
    save = torch.save

    def disk_full(state, f, *args, **kwargs):  # writes part of the file, then the disk is full
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    # --lr: an earlier test resumed the shared run with --lr 1e12, which its run.json keeps
    result = run("train.py", "--resume", "--epochs", 2, "--lr", 1e-3, *train_flags(tmp_path, "done"), check=False)
    monkeypatch.setattr(torch, "save", save)
    fails_with(result, "could not write", "No space left on device", "checkpoint of epoch 1 is kept", "--resume")
    assert (run_dir / "checkpoint.pt").read_bytes() == before  # untouched, and still readable
    assert read_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 0
    assert not (run_dir / "checkpoint.pt.tmp").exists()


def test_a_resume_that_cannot_restore_the_optimizer_is_one_line(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    checkpoint["optimizer_state"]["param_groups"][0]["params"] = [0]  # the state of one tensor, not of the model's
    torch.save(checkpoint, run_dir / "checkpoint.pt")
    before = snapshot(tmp_path)
    result = run("train.py", "--resume", "--epochs", 2, *train_flags(tmp_path, "done"), check=False)
    fails_with(result, "--resume", "does not fit", "start a new run")
    assert snapshot(tmp_path) == before  # nothing written


def train_in_process(tmp_path, name, capsys):
    """train.main on 300 images for one epoch, here, where monkeypatch reaches the train module; its exit status
    and stderr, as run() gives them."""
    import train

    with pytest.raises(SystemExit) as exit:
        train.main(argv=["--epochs", "1", "--limit", "300", *map(str, train_flags(tmp_path, name))])
        sys.exit(0)
    return type("Result", (), {"returncode": exit.value.code, "stderr": capsys.readouterr().err})


def test_weights_that_turn_non_finite_are_never_saved(tmp_path, monkeypatch, capsys):
    """The last step of an epoch leaves a nan in the weights (its objective was still finite): no checkpoint."""
    import train

    train_epoch = train.train_epoch

    def poisoned(model, *args, **kwargs):
        out = train_epoch(model, *args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(train, "train_epoch", poisoned)
    fails_with(train_in_process(tmp_path, "nan", capsys), "non-finite", "before any checkpoint")
    assert not (tmp_path / "runs" / "VAE" / "nan" / "checkpoint.pt").exists()


def test_the_objective_is_checked_not_only_the_elbo(tmp_path, monkeypatch, capsys):
    """A KLD weight that makes the objective non-finite stops training, though the -ELBO stays finite."""
    import train

    monkeypatch.setattr(train, "kl_weight", lambda *args: float("inf"))
    line = fails_with(train_in_process(tmp_path, "inf", capsys), "in epoch 1/1, step 1", "before any checkpoint")
    assert "the loss became inf" in line or "the loss became nan" in line
    assert not (tmp_path / "runs" / "VAE" / "inf" / "checkpoint.pt").exists()


def numeric_flags():
    """(script, subcommand, flag) for every flag of every script that takes a number."""
    import bench
    import classifier
    import evaluate
    import latent_dist
    import sample
    import train

    def numbers(flags):
        return [name for name, (_, kind, *_) in flags.items() if callable(kind) and kind not in (str, bool)]

    found = [(script, None, name) for script, module in [("train.py", train), ("evaluate.py", evaluate),
             ("latent_dist.py", latent_dist), ("bench.py", bench), ("classifier.py", classifier)]
             for name in numbers(module.FLAGS)]  # fmt: skip
    for command, (_, _, flags) in sample.COMMANDS.items():
        found += [("sample.py", command, name) for name in numbers({**flags, **sample.FLAGS})]
    return found


NUMERIC_FLAGS = numeric_flags()


def test_every_script_s_numbers_are_found():
    names = {(script, name) for script, _, name in NUMERIC_FLAGS}
    assert {("train.py", "beta"), ("train.py", "lr"), ("train.py", "ema"), ("train.py", "seed")} <= names
    assert {("evaluate.py", "k"), ("sample.py", "range"), ("classifier.py", "lr"), ("bench.py", "repeats")} <= names


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("script, command, name", NUMERIC_FLAGS)
def test_every_numeric_flag_refuses_nan_and_inf(tmp_path, script, command, name, value):
    flag = "-n" if (script, name) == ("sample.py", "n") else "--" + name.replace("_", "-")
    values = [value, 1] if name == "between" else [value]
    result = run(script, *([command] if command else []), flag, *values, "--runs-dir", tmp_path, check=False)
    fails_with(result, flag)
    assert not os.listdir(tmp_path)  # no run was started
