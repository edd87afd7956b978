"""Synthetic run records (the real record format) for unit tests of the rules."""

from __future__ import annotations

import numpy as np

from babysit.monitor.reader import records_to_batch

__all__ = ["steps", "epoch", "layers", "batch", "curve"]


def curve(n: int, start: float = 2.3, end: float = 0.1, tau: float = 100.0, noise: float = 0.03, seed: int = 0,
          first_step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A healthy-looking loss curve: exponential decay with multiplicative batch noise."""
    rng = np.random.default_rng(seed)
    s = np.arange(first_step, first_step + n)
    loss = end + (start - end) * np.exp(-(s - first_step) / tau)
    return s, loss * (1 + noise * rng.standard_normal(n))


def steps(step, loss, lr=0.01, t0: float = 1000.0, dt: float = 0.01) -> dict:
    step = [int(x) for x in step]
    loss = [float(x) for x in loss]
    lrs = [float(lr)] * len(step) if np.isscalar(lr) else [float(x) for x in lr]
    return {"type": "steps", "step": step, "time": [t0 + s * dt for s in step], "loss": loss, "lr": lrs}


def epoch(k: int, step: int, t: float | None = None, **metrics) -> dict:
    return {"type": "epoch", "epoch": k, "step": step, "time": 1000.0 + step * 0.01 if t is None else t,
            "metrics": metrics}


def layers(step: int, **stats) -> dict:
    """layers(10, fc1=dict(kind="weight", g_norm=...), ...)"""
    return {"type": "layers", "step": step, "time": 1000.0 + step * 0.01, "stats": stats}


def batch(*records: dict):
    return records_to_batch(list(records))
