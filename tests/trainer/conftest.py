"""Trainer test helpers: a private test-set ledger per test, and a small helper to train quickly in-process."""

from __future__ import annotations

import pytest

from babysit.trainer.config import TrainConfig


@pytest.fixture(autouse=True)
def private_ledger(tmp_path, monkeypatch):
    """Never touch the user's ~/.cache ledger from a test."""
    path = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("BABYSIT_LEDGER", str(path))
    return path


@pytest.fixture
def quick_cfg(tmp_path):
    """A config for a short, cheap run: the mlp on digits for one epoch, no progress bar."""

    def make(name: str = "run", **overrides) -> TrainConfig:
        values = {"model": "mlp", "epochs": 1, "lr": 0.1, "progress": False, "run_dir": str(tmp_path / name),
                  "on_critical": "warn"}
        values.update(overrides)
        return TrainConfig(**values)

    return make
