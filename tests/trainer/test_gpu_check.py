"""The GPU check script: its CPU smoke run exercises every table; without CUDA it skips cleanly."""

from __future__ import annotations

import pytest
import torch

from benchmarks import gpu_check


def test_cpu_smoke_run_prints_the_three_tables(capsys):
    assert gpu_check.main(["--cpu"]) == 0
    out = capsys.readouterr().out
    assert "1. hook overhead" in out and "2. the trainer" in out and "3. DDP" in out
    rows = [line for line in out.splitlines() if line.startswith("amp=")]
    assert len(rows) == 2 and all(float(r.split()[2]) > 0 for r in rows)  # images/s measured from the run


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the real check runs instead")
def test_without_cuda_it_skips(capsys):
    assert gpu_check.main([]) == 0
    assert "skipping" in capsys.readouterr().out
