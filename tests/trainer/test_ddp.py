"""DDP under torchrun: two gloo processes on the CPU, sharded batches, rank 0 records."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import torch

from babysit.monitor.reader import load_run
from babysit.trainer.checkpoint import load_checkpoint
from babysit.trainer.distributed import Dist, shard


def test_shards_are_disjoint_equal_and_cover_the_permutation():
    perm = torch.randperm(11)
    parts = [shard(perm, Dist(rank=r, world=3)) for r in range(3)]
    assert all(len(p) == 3 for p in parts)
    joined = torch.cat(parts)
    assert len(set(joined.tolist())) == 9 and set(joined.tolist()) <= set(perm.tolist())
    assert torch.equal(shard(perm, Dist()), perm)


def test_torchrun_two_processes(tmp_path):
    run_dir = tmp_path / "ddp"
    # Robust under load: gloo on the loopback interface, and a rendezvous port chosen by torchrun itself
    # (--standalone) rather than a free port that another process may take between our check and its bind.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "babysit", "train", "--model", "mlp", "--epochs", "2",
            "--lr", "0.1", "--device", "cpu", "--run-dir", str(run_dir), "--no-progress", "--threads", "1"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("run written to") == 1  # rank 0 reports, rank 1 stays quiet
    run = load_run(run_dir)
    # 1079 training examples: 539 per rank, global batch 64 = 32 per rank -> 17 steps per epoch
    assert run.status["state"] == "finished" and run.status["step"] == 2 * math.ceil(539 / 32)
    assert list(run.epochs["epoch"]) == [1, 2] and run.epochs["val_acc"].iloc[-1] > 0.8
    assert not any(p.name.startswith("rank") for p in run_dir.iterdir())  # only rank 0 wrote
    assert "fc1.weight" in load_checkpoint(run_dir / "checkpoint.pt")["model"]  # unwrapped: no "module."
