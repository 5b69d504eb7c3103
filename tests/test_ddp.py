import glob
import os
import subprocess
import sys

from conftest import ROOT, train_flags


def test_two_processes_with_gloo(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"), "--epochs", "1", "--limit", "2000", "--device", "cpu", *map(str, train_flags(tmp_path, "ddp"))]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 process(es)" in result.stdout
    assert "weights identical on all 2 processes: True" in result.stdout  # each process compares its weights with rank 0's
    assert len(glob.glob(str(tmp_path / "runs" / "VAE" / "ddp" / "events.out.tfevents.*"))) == 1
    assert os.listdir(tmp_path / "out" / "ddp") == ["000.png"]
