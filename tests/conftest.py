"""Shared fixtures. Tests run real (small) training on the CPU; one thread keeps them steady on 2 cores."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # rules/ and the reader are tested without torch too
    torch = None


@pytest.fixture
def run_dir(tmp_path):
    """A fresh path for one run directory."""
    return tmp_path / "run"
