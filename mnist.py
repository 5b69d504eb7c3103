"""MNIST as in-memory tensors.

The four gzipped IDX files ship with the repo in data/MNIST/raw/. On first use
they are checked against their SHA256, unpacked next to themselves, and read
with torchvision.datasets.MNIST (which reads the unpacked files).

Binarised MNIST (--binarize dynamic): each pixel is drawn as Bernoulli(grey level).
train.py draws the training images anew each epoch; the test images are drawn once,
the same for every run and script, with the generator seeded by TEST_BINARIZE_SEED.
"""

import gzip
import hashlib
import os
import shutil
import tempfile

import torch
from torchvision import datasets

# SHA256 of the canonical files: the .gz ones are in data/MNIST/raw/SHA256SUMS
GZ_SHA256 = {
    "train-images-idx3-ubyte": "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
    "train-labels-idx1-ubyte": "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
    "t10k-images-idx3-ubyte": "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
    "t10k-labels-idx1-ubyte": "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
}
RAW_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
TEST_BINARIZE_SEED = 0
BINARIZE = ["none", "dynamic"]  # the choices of --binarize
RESTORE = "restore it with `git checkout -- data/MNIST/raw` or copy a good one from a fresh clone"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepare(data_dir):
    """Check the files under data_dir/MNIST/raw and unpack the .gz ones where needed."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"--data-dir {data_dir} does not exist; point it at the folder that holds MNIST/raw/ (default: data)"
        )
    raw_dir = os.path.join(data_dir, "MNIST", "raw")
    for name in GZ_SHA256:
        raw, gz = os.path.join(raw_dir, name), os.path.join(raw_dir, name + ".gz")
        if os.path.exists(gz):
            if sha256(gz) != GZ_SHA256[name]:
                raise ValueError(f"{gz} is corrupt or truncated (SHA256 mismatch); {RESTORE}")
            if os.path.exists(raw) and sha256(raw) == RAW_SHA256[name]:
                continue
            unpack(gz, raw)
        elif not os.path.exists(raw):
            raise FileNotFoundError(f"MNIST file {gz} is missing; {RESTORE}, or pass --data-dir")
        elif sha256(raw) != RAW_SHA256[name]:
            raise ValueError(f"{raw} is corrupt or truncated (SHA256 mismatch); delete it and {RESTORE}")


def unpack(gz, raw):
    """Unpack to a temporary file, then rename: a killed run never leaves half a file (nor, short of SIGKILL,
    a temporary one)."""
    raw_dir = os.path.dirname(raw)
    try:
        tmp = tempfile.NamedTemporaryFile(dir=raw_dir, prefix=os.path.basename(raw) + ".", suffix=".tmp", delete=False)
    except PermissionError:
        raise PermissionError(
            f"cannot unpack {gz} in {raw_dir}: the folder is read-only; copy the data folder somewhere writable "
            f"and pass that as --data-dir"
        ) from None
    try:
        with gzip.open(gz, "rb") as src, tmp as dst:
            shutil.copyfileobj(src, dst)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp.name, 0o666 & ~umask)  # the permissions of any new file, not the private 0600 of a temporary one
        os.replace(tmp.name, raw)
    except BaseException:
        os.remove(tmp.name)
        raise


def binarized(flag):
    """Whether a run's --binarize flag means binarised images (runs from before the flag have None: grey levels)."""
    return flag == "dynamic"


def binarize(images, generator=None):
    """Each pixel drawn as Bernoulli(grey level): 0.0 or 1.0."""
    return torch.bernoulli(images, generator=generator)


def splits(data_dir, val=0, limit=None, binarized=False, device="cpu"):
    """((train_x, train_y), (val_x, val_y), (test_x, test_y)) as train.py uses them: the last `val` training images
    held out for validation, the first `limit` of the rest for training; binarised runs (--binarize dynamic) see
    the test and validation images binarised once (the training images are drawn anew each epoch). On `device`."""
    train_x, train_y = load_mnist(data_dir, train=True)
    kept = len(train_x) - val
    val_x, val_y = train_x[kept:], train_y[kept:]
    if binarized:
        val_x = binarize(val_x, torch.Generator().manual_seed(0))
    test_x, test_y = load_mnist(data_dir, train=False, binarized=binarized)
    pairs = (train_x[:kept][:limit], train_y[:kept][:limit]), (val_x, val_y), (test_x, test_y)
    return [(x.to(device), y.to(device)) for x, y in pairs]


def load_mnist(data_dir="data", train=True, binarized=False):
    """Return (images, labels): float32 (N, 784) in [0, 1] and int64 (N,).

    binarized=True gives the test set as binarised once for every run (train=False only).
    """
    prepare(data_dir)
    ds = datasets.MNIST(data_dir, train=train, download=False)
    images = ds.data.reshape(len(ds.data), 784).float().div_(255)  # the same values as transforms.ToTensor()
    if binarized:
        assert not train, "training images are binarised anew each epoch by train.py"
        images = binarize(images, torch.Generator().manual_seed(TEST_BINARIZE_SEED))
    return images, ds.targets.long()
