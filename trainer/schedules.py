"""Learning-rate schedules: the lecture's five plus cosine, each times an optional linear warmup.

Factors multiply the base lr; t counts epochs (fractional, per step), T is the whole run:
    constant  1
    step      gamma^floor(t / lr_step)       gamma 0.1 (x0.1 every N epochs; Krizhevsky 2012)
    exp       gamma^floor(t)                 gamma 0.97 per epoch (GoogLeNet)
    sqrt      sqrt(1 - t / T)                (BVLC's GoogLeNet)
    inv       1 / (1 + k t)                  ("1/t"; k = lr_decay)
    expt      exp(-k t)
    cosine    (1 + cos(pi t / T)) / 2
The scheduler steps once per optimizer step and writes a Python float into the optimizer: no device sync.
"""

from __future__ import annotations

import math

import torch

__all__ = ["lr_factor", "make_scheduler"]

DEFAULT_GAMMA = {"step": 0.1, "exp": 0.97}


def lr_factor(kind: str, step: int, steps_per_epoch: int, total_steps: int, *, gamma: float | None = None,
              lr_step: int = 10, decay: float = 1.0, warmup: int = 0) -> float:
    """The lr multiplier before optimizer step number `step` (0-based)."""
    t = step / steps_per_epoch
    frac = min(step / max(total_steps, 1), 1.0)
    g = DEFAULT_GAMMA.get(kind, 1.0) if gamma is None else gamma
    if kind == "constant":
        f = 1.0
    elif kind == "step":
        f = g ** (int(t) // lr_step)
    elif kind == "exp":
        f = g ** int(t)
    elif kind == "sqrt":
        f = math.sqrt(1.0 - frac)
    elif kind == "inv":
        f = 1.0 / (1.0 + decay * t)
    elif kind == "expt":
        f = math.exp(-decay * t)
    elif kind == "cosine":
        f = 0.5 * (1.0 + math.cos(math.pi * frac))
    else:
        raise ValueError(f"unknown schedule {kind!r}")
    if warmup > 0 and step < warmup:
        f *= (step + 1) / warmup
    return f


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, steps_per_epoch: int, total_steps: int,
                   **kwargs) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(kind, step, steps_per_epoch, total_steps, **kwargs)
    )
