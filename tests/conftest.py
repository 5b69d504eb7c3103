"""Shared fixtures: the repo's scripts run as a user runs them, on small subsets, in temporary folders."""

import contextlib
import io
import os
import runpy
import subprocess
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run(script, *flags, check=True, cwd=ROOT):
    """Run ROOT/script with flags from the folder cwd, as `python script flags` would; returns a CompletedProcess.

    It runs in this process (runpy, as __main__), which saves the seconds that a new Python spends importing
    torch: what the script prints, its warnings and its exit status are what the command would give.
    run_process starts a real process, for what only one can show: a stderr of one line, with nothing else in it.
    """
    argv = [os.path.join(ROOT, script), *map(str, flags)]
    out, err, code = io.StringIO(), io.StringIO(), 0
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    sys.argv = argv
    os.chdir(cwd)
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("default")  # as a new interpreter shows them
            try:
                runpy.run_path(argv[0], run_name="__main__")
            except SystemExit as e:  # what the interpreter does with sys.exit's argument
                if isinstance(e.code, str):
                    err.write(e.code + "\n")
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            for w in caught:
                err.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    result = subprocess.CompletedProcess(["python", script, *argv[1:]], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{script} {flags} failed ({code}):\n{result.stdout}\n{result.stderr}")
    return result


def run_process(script, *flags, check=True, cwd=ROOT):
    """Run python ROOT/script with flags in a new process; returns the CompletedProcess."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *map(str, flags)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
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
