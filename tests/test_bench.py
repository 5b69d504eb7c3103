"""bench.py on a tiny subset: what it prints parses, bad flags get one line, and its profile compares like with like."""
import re

import pytest
import torch

import bench
from conftest import run
from test_errors import fails_with

NUMBER = r"(\d+(?:\.\d+)?)"


def test_tiny_bench_prints_numbers():
    out = run("bench.py", "--repeats", 1, "--limit", 2000, "--device", "cpu", "--profile").stdout
    assert re.search(r"^VAE, 2000 images, batch size \d+, bfloat16 (True|False), on cpu", out, re.M), out
    for name in ("train.py", "classic"):
        m = re.search(rf"^{re.escape(name)}\s+{NUMBER} s/epoch\s+{NUMBER} images/s\s+peak memory\s+{NUMBER} MB\s+\(epochs: {NUMBER}\)$", out, re.M)
        assert m, out
        seconds, rate, memory, epoch = map(float, m.groups())
        assert seconds > 0 and memory > 0 and seconds == epoch  # one repeat: the median is that epoch
        # images/s is of the 2000 images, with the seconds as printed, to 0.005 s
        assert 2000 / (seconds + 0.005) - 1 <= rate <= 2000 / max(seconds - 0.005, 1e-9) + 1
    assert float(re.search(rf"epoch is {NUMBER} times faster than the classic", out).group(1)) > 0
    m = re.search(rf"an epoch: {NUMBER} s; forward and backward alone, on the same batches: {NUMBER} s \((\d+)% of the epoch\)", out)
    assert m, out
    epoch, bare, percent = map(float, m.groups())
    # the percentage is of the two times, which are printed to 0.005 s
    assert 100 * (bare - 0.005) / (epoch + 0.005) - 1 <= percent <= 100 * (bare + 0.005) / max(epoch - 0.005, 1e-9) + 1


@pytest.mark.parametrize("flag, value", [("--batch-size", 0), ("--repeats", 0), ("--repeats", -2), ("--limit", 0), ("--batch-size", "many")])
def test_bad_numbers(flag, value):
    fails_with(run("bench.py", flag, value, "--device", "cpu", check=False), flag)


def test_profile_times_the_same_batches_both_ways(monkeypatch):
    """The epoch and forward-and-backward alone see the same permutation, and neither runs under the profiler."""
    seen = []  # (the order of the images, whether the profiler was on) of each pass over the data
    batches = bench.batches

    def watched_batches(images, labels, order, batch_size):
        seen.append((order.clone(), torch.autograd.profiler._is_profiler_enabled))
        return batches(images, labels, order, batch_size)

    monkeypatch.setattr(bench, "batches", watched_batches)
    torch.manual_seed(0)
    images, labels = torch.rand(300, 784), torch.randint(0, 10, (300,))
    args = bench.argparse.Namespace(**{**bench.TRAIN_DEFAULTS, "batch_size": 64, "bf16": False})
    bench.profile_epoch("CVAE", args, torch.device("cpu"), images, labels, 64, steps=5)
    profiled, epoch, bare = seen
    assert profiled[1] and not epoch[1] and not bare[1]
    assert torch.equal(profiled[0], epoch[0]) and torch.equal(epoch[0], bare[0])
