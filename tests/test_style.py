"""The code's style is ruff's, as pyproject.toml configures it: a style slip fails the tests, and so CI."""

import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

RUFF = shutil.which("ruff", path=f"{sys.prefix}/bin") or shutil.which("ruff")


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff(command):
    assert RUFF, "ruff is not installed: pip install -r requirements.txt"
    result = subprocess.run([RUFF, *command], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"ruff {' '.join(command)}:\n{result.stdout}{result.stderr}"
