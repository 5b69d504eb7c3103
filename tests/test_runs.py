"""runs.py: the run a script picks when none is named, and the weights of the code before the layout change."""

import hashlib
import json
import os
import subprocess

import pytest
import torch
from conftest import ROOT, run, train_flags

import cli
import runs

pytestmark = pytest.mark.slow  # runs training: not in the quick tier (-m 'not slow')


def make_run(runs_dir, model, name, started):
    folder = runs_dir / model / name
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"model": model, "started": started, "flags": {}}))
    (folder / "checkpoint.pt").write_bytes(b"")
    return folder


def chosen(runs_dir):
    return {model: os.path.basename(os.path.dirname(path)) for model, path in runs.choose_runs(str(runs_dir))}


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_the_newest_run_you_trained_else_reference(tmp_path):
    runs_dir = tmp_path / "runs"
    make_run(runs_dir, "VAE", "reference", started=100.0)
    make_run(runs_dir, "VAE", "long10", started=200.0)  # committed after the reference: newer, and not the default
    make_run(runs_dir, "CVAE", "reference", started=100.0)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "runs")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "runs")
    assert chosen(runs_dir) == {"VAE": "reference", "CVAE": "reference"}
    make_run(runs_dir, "VAE", "mine", started=50.0)  # yours, though it started before the committed ones
    make_run(runs_dir, "VAE", "mine2", started=60.0)
    assert chosen(runs_dir) == {"VAE": "mine2", "CVAE": "reference"}
    (runs_dir / "CVAE" / "reference").rename(runs_dir / "CVAE" / "other")  # no reference: the newest committed
    git(tmp_path, "add", "-A", "runs")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "renamed")
    assert chosen(runs_dir)["CVAE"] == "other"


def test_outside_a_git_checkout_every_run_is_yours_and_the_newest_is_picked(tmp_path):
    runs_dir = tmp_path / "runs"
    make_run(runs_dir, "VAE", "reference", started=100.0)
    make_run(runs_dir, "VAE", "later", started=200.0)
    assert chosen(runs_dir) == {"VAE": "later"}


def test_in_this_repository_the_scripts_default_to_the_reference_runs():
    """In a fresh clone, where no run of yours exists: graph.py, latent_dist.py, sample.py and explore.py read
    runs/VAE/reference and runs/CVAE/reference, whatever the start times of the other committed runs."""
    listed = subprocess.run(["git", "ls-files", "runs/VAE", "runs/CVAE"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode:
        pytest.skip("not a git checkout")
    committed = {os.path.join(*path.split("/")[:3]) for path in listed.stdout.split()}
    here = {
        os.path.join("runs", m, name) for m in ("VAE", "CVAE") for name in os.listdir(os.path.join(ROOT, "runs", m))
    }
    if here - committed:
        pytest.skip(f"runs of yours are here ({', '.join(sorted(here - committed))}): the default is the newest")
    newest = max(committed, key=lambda run: runs.started(os.path.join(ROOT, run)))
    assert os.path.basename(newest) != "reference", "the rule would not matter: the reference runs are the newest"
    assert chosen(os.path.join(ROOT, "runs")) == {"VAE": "reference", "CVAE": "reference"}


def weights_digest(path):
    digest = hashlib.sha256()
    for name, tensor in torch.load(path, weights_only=True)["weights"].items():
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


# SHA256 of the weights after `--epochs 1 --limit 2000 --device cpu` (seed 0), trained by the code before the layout
# change (commit 8b84da7) on this project's CPU (AVX-512 with AVX512-BF16): the new train.py changed no bit
BEFORE_THE_LAYOUT_CHANGE = [
    ("train.py", "VAE", "--no-bf16", "8740d565c501d8314d3a66999344b1829e3aa4193fdd2af4394a8b7e648332d3"),
    ("train.py", "VAE", "--bf16", "ebac4bfcb1aaeed24ec34731872cb45b1d185d97f6bca67940b9a348e7bb4beb"),
    ("train_CVAE.py", "CVAE", "--no-bf16", "bbb6bd59f306c6bed3249bfc3d00d0508546e68a4a430e9cfac4cfe5998ee343"),
]


@pytest.mark.skipif(
    not torch.backends.cpu.get_cpu_capability().startswith("AVX512"), reason="the digests are of AVX-512 kernels"
)
@pytest.mark.parametrize("script, model, precision, digest", BEFORE_THE_LAYOUT_CHANGE)
def test_one_epoch_gives_the_weights_of_the_code_before_the_layout_change(tmp_path, script, model, precision, digest):
    if precision == "--bf16" and not cli.use_bf16("auto", torch.device("cpu")):
        pytest.skip("bfloat16 is not native on this CPU")
    run(script, "--epochs", 1, "--limit", 2000, precision, "--device", "cpu", *train_flags(tmp_path, "pin"))
    assert weights_digest(tmp_path / "runs" / model / "pin" / "checkpoint.pt") == digest
