"""mnist.py unpacks the committed .gz files safely: ordinary permissions, no temporary file left behind, ignored
by git."""

import os
import shutil
import subprocess

import pytest
from conftest import ROOT

import mnist

RAW = os.path.join(ROOT, "data", "MNIST", "raw")


@pytest.fixture
def data_copy(tmp_path):
    """A private copy of the gzipped MNIST files, not yet unpacked."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in mnist.GZ_SHA256:
        shutil.copy(os.path.join(RAW, name + ".gz"), raw / (name + ".gz"))
    return tmp_path / "data"


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_unpacked_files_get_the_permissions_of_any_new_file(data_copy, umask):
    old = os.umask(umask)
    try:
        mnist.prepare(data_copy)
    finally:
        os.umask(old)
    for name in mnist.GZ_SHA256:
        mode = os.stat(data_copy / "MNIST" / "raw" / name).st_mode & 0o777
        assert mode == 0o666 & ~umask, f"{name}: {oct(mode)}"  # not the 0600 of a temporary file


@pytest.fixture
def failing_copy(monkeypatch):
    """Make unpacking fail halfway through the first file; returns the names of the files it was writing to."""
    written = []

    def copy_then_fail(src, dst, *args, **kw):
        written.append(dst.name)
        dst.write(src.read(1000))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_fail)
    return written


def test_an_unpack_that_fails_midway_leaves_nothing_behind(data_copy, failing_copy):
    raw = data_copy / "MNIST" / "raw"
    with pytest.raises(OSError, match="No space left"):
        mnist.prepare(data_copy)
    assert len(failing_copy) == 1
    assert sorted(os.listdir(raw)) == sorted(name + ".gz" for name in mnist.GZ_SHA256)


def test_gitignore_covers_the_temporary_files(data_copy, failing_copy):
    with pytest.raises(OSError):
        mnist.prepare(data_copy)
    name = os.path.basename(failing_copy[0])  # the name unpack gave its temporary file
    assert os.path.dirname(failing_copy[0]) == str(data_copy / "MNIST" / "raw")
    # the same name in the repo's own data folder, where unpack makes it
    result = subprocess.run(["git", "check-ignore", "-q", os.path.join("data", "MNIST", "raw", name)], cwd=ROOT)
    assert result.returncode == 0, f"git does not ignore data/MNIST/raw/{name}"
