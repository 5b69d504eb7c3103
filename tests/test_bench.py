"""bench.py on a tiny subset: what it prints parses, bad flags get one line, and its profile compares like with like."""

import re

import pytest
import torch
from conftest import run
from test_errors import fails_with

import bench
from models import CVAE, VAE

NUMBER = r"(\d+(?:\.\d+)?)"


@pytest.mark.slow
def test_tiny_bench_prints_numbers():
    out = run("bench.py", "--repeats", 1, "--limit", 2000, "--device", "cpu", "--profile", "--no-bf16").stdout
    assert re.search(r"^VAE, 2000 images, batch size \d+, bfloat16 False, on cpu", out, re.M), out
    # the roofline: the FLOPs of 2000 training and 10,000 test images, the float32 peak, and train.py's fraction of it
    train_flops, test_flops = bench.flops_per_image(VAE())
    assert f"an epoch: {(train_flops * 2000 + test_flops * 10000) / 1e9:.1f} GFLOP" in out
    peak = float(re.search(rf"^matmul peak, float32: {NUMBER} GFLOP/s \(2048 x 2048 x 2048\)", out, re.M).group(1))
    after = float(
        re.search(
            rf"^matmul peak again after the epochs: float32 {NUMBER} GFLOP/s(, bfloat16 {NUMBER} GFLOP/s)?$", out, re.M
        ).group(1)
    )
    m = re.search(
        rf"^python train.py --no-bf16: {NUMBER} s per epoch \(median of {NUMBER}\), {NUMBER} GFLOP/s: "
        rf"(\d+)% of the float32 peak \((\d+)% of it after\)",
        out,
        re.M,
    )
    assert m, out
    seconds, only, rate, percent, percent_after = map(float, m.groups())
    assert (
        seconds == only
        and abs(rate - (train_flops * 2000 + test_flops * 10000) / 1e9 / seconds) <= rate * 0.005 / seconds + 0.05
    )
    assert abs(percent - 100 * rate / peak) <= 1 and abs(percent_after - 100 * rate / after) <= 1
    for name in ("train.py", "classic"):
        m = re.search(
            rf"^{re.escape(name)}\s+{NUMBER} s/epoch\s+{NUMBER} images/s\s+"
            rf"peak memory\s+{NUMBER} MB\s+\(epochs: {NUMBER}\)$",
            out,
            re.M,
        )
        assert m, out
        seconds, rate, memory, epoch = map(float, m.groups())
        assert seconds > 0 and memory > 0 and seconds == epoch  # one repeat: the median is that epoch
        # images/s is of the 2000 images, with the seconds as printed, to 0.005 s
        assert 2000 / (seconds + 0.005) - 1 <= rate <= 2000 / max(seconds - 0.005, 1e-9) + 1
    assert float(re.search(rf"epoch is {NUMBER} times faster than the classic", out).group(1)) > 0
    m = re.search(
        rf"an epoch: {NUMBER} s; forward and backward alone, on batches of the same size: {NUMBER} s "
        rf"\((\d+)% of the epoch\)",
        out,
    )
    assert m, out
    epoch, bare, percent = map(float, m.groups())
    # the percentage is of the two times, which are printed to 0.005 s
    assert 100 * (bare - 0.005) / (epoch + 0.005) - 1 <= percent <= 100 * (bare + 0.005) / max(epoch - 0.005, 1e-9) + 1


def test_flops_per_image_from_the_layer_shapes():
    """By hand, from the layers: forward 2 * in * out each; training three times that, less the first layer's
    input gradient."""
    vae = [(784, 256), (256, 512), (512, 2), (512, 2), (2, 256), (256, 784)]
    cvae = [(794, 256), (256, 512), (512, 2), (512, 2), (12, 512), (512, 784)]
    for Model, layers in ((VAE, vae), (CVAE, cvae)):
        forward = sum(2 * i * o for i, o in layers)
        assert bench.flops_per_image(Model()) == (3 * forward - 2 * layers[0][0] * layers[0][1], forward)
    assert bench.flops_per_image(VAE()) == (2_808_832, 1_070_080)  # the 2.81 and 1.07 MFLOP


@pytest.mark.parametrize(
    "flag, value", [("--batch-size", 0), ("--repeats", 0), ("--repeats", -2), ("--limit", 0), ("--batch-size", "many")]
)
def test_bad_numbers(flag, value):
    fails_with(run("bench.py", flag, value, "--device", "cpu", check=False), flag)


def test_profile_times_train_py_s_epoch_outside_the_profiler(monkeypatch):
    """The profiled epoch and the timed one are train.py's epoch 0, and only the first runs under the profiler."""
    seen = []  # whether the profiler was on, for each epoch
    train_epoch = bench.train_epoch

    def watched(model, optimizer, average, images, labels, args, epoch, bf16):
        seen.append((epoch, torch.autograd.profiler._is_profiler_enabled))
        return train_epoch(model, optimizer, average, images, labels, args, epoch, bf16)

    monkeypatch.setattr(bench, "train_epoch", watched)
    torch.manual_seed(0)
    images, labels = torch.rand(300, 784), torch.randint(0, 10, (300,))
    args = bench.argparse.Namespace(**{**bench.TRAIN_DEFAULTS, "batch_size": 64, "bf16": False})
    bench.profile_epoch("CVAE", args, torch.device("cpu"), images, labels, 64)
    assert seen == [(0, True), (0, False)]


def test_bfloat16_is_not_native_where_avx512_is_turned_off(monkeypatch):
    # ATEN_CPU_CAPABILITY=avx2 runs a CPU's AVX2 code paths, as a CPU without AVX-512 would: bfloat16 is emulated there
    import cli

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert cli.use_bf16("auto", torch.device("cpu"))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not cli.use_bf16("auto", torch.device("cpu"))
    assert cli.use_bf16(True, torch.device("cpu")) and not cli.use_bf16(False, torch.device("cpu"))


def test_the_fraction_is_of_the_peak_before_and_of_the_peak_after_the_epochs(monkeypatch, capsys):
    """On a shared machine the matmul rate drifts: each fraction is of its own measurement, with epoch FLOPs /
    median seconds."""
    rates = iter([100e9, 80e9, 50e9])  # float32 2048^2 before, the model's shape before, 2048^2 after
    monkeypatch.setattr(bench, "matmul_rate", lambda *a, **k: next(rates))
    monkeypatch.setattr(bench.cli, "use_bf16", lambda flag, device: False)
    monkeypatch.setattr(bench, "train_py_epochs", lambda *a: [9.0, 2.0, 3.0, 1.0])  # the first warms up: median 2.0 s
    cli = bench.argparse.Namespace(device="cpu", batch_size=256, limit=None, repeats=3)
    bench.roofline("VAE", torch.device("cpu"), cli, False, 60000, 10000)
    out = capsys.readouterr().out
    train_flops, test_flops = bench.flops_per_image(VAE())
    rate = (train_flops * 60000 + test_flops * 10000) / 2.0  # 89.6 GFLOP/s
    assert "matmul peak again after the epochs: float32 50.0 GFLOP/s\n" in out
    assert (
        f"python train.py --no-bf16: 2.00 s per epoch (median of 2.00, 3.00, 1.00), {rate / 1e9:.1f} GFLOP/s: "
        f"{rate / 100e9:.0%} of the float32 peak ({rate / 50e9:.0%} of it after)\n"
    ) in out
