"""Shared fixtures: the repo's scripts run as a user runs them, on small subsets, in temporary folders."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run(script, *flags, check=True, **kw):
    """Run python ROOT/script with flags from ROOT; returns the CompletedProcess."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, flags)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} {flags} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def train_flags(tmp, name, *extra, out="out"):
    return ["--run-name", name, "--runs-dir", tmp / "runs", "--out-dir", tmp / out, *extra]


def train_both(tmp, name, limit):
    """One epoch of each model on `limit` images: TMP/runs/VAE/NAME and TMP/runs/CVAE/NAME, grids in TMP/out*."""
    run("train.py", "--epochs", 1, "--limit", limit, "--device", "cpu", *train_flags(tmp, name))
    run("train_CVAE.py", "--epochs", 1, "--limit", limit, "--device", "cpu", *train_flags(tmp, name, out="out_CVAE"))
    return tmp


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    return train_both(tmp_path_factory.mktemp("smoke"), "smoke", 2000)
