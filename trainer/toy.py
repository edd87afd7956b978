"""The lecture demo's 2-D toy sets (playground.tensorflow.org): circle, xor, gauss, spiral.

The generators follow the playground's dataset.ts: points live in [-6, 6]^2 there, and `noise` is its slider
divided by 100 (the slider's 0..50 is 0..0.5 here). Coordinates are divided by 5 so features are about unit size.
"""

from __future__ import annotations

import numpy as np

__all__ = ["make_toy", "TOY"]


def _circle(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    radius = 5.0
    inner = n // 2
    r = np.concatenate([rng.uniform(0, radius * 0.5, inner), rng.uniform(radius * 0.7, radius, n - inner)])
    angle = rng.uniform(0, 2 * np.pi, n)
    xy = np.stack([r * np.sin(angle), r * np.cos(angle)], 1)
    noisy = xy + rng.uniform(-radius, radius, (n, 2)) * noise  # the label is taken at a jittered point
    label = (np.hypot(noisy[:, 0], noisy[:, 1]) < radius * 0.5).astype(np.int64)
    return xy, label


def _xor(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    xy = rng.uniform(-5, 5, (n, 2))
    xy += np.where(xy > 0, 0.3, -0.3)  # the playground's padding keeps points off the axes
    noisy = xy + rng.uniform(-5, 5, (n, 2)) * noise  # the label is taken at a jittered point
    label = (noisy[:, 0] * noisy[:, 1] >= 0).astype(np.int64)
    return xy, label


def _gauss(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    variance = 0.5 + (4.0 - 0.5) * noise  # the playground interpolates the spread between 0.5 and 4
    half = n // 2
    label = np.concatenate([np.ones(half, np.int64), np.zeros(n - half, np.int64)])
    centers = np.where(label[:, None] == 1, 2.0, -2.0)
    return centers + rng.normal(0, np.sqrt(variance), (n, 2)), label


def _spiral(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    half = n // 2
    parts, labels = [], []
    for delta, label, count in ((0.0, 1, half), (np.pi, 0, n - half)):
        i = np.arange(count)
        r = i / count * 5
        t = 1.75 * i / count * 2 * np.pi + delta
        xy = np.stack([r * np.sin(t), r * np.cos(t)], 1) + rng.uniform(-1, 1, (count, 2)) * noise
        parts.append(xy)
        labels.append(np.full(count, label, np.int64))
    return np.concatenate(parts), np.concatenate(labels)


TOY = {"circle": _circle, "xor": _xor, "gauss": _gauss, "spiral": _spiral}


def make_toy(name: str, n: int = 500, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 of shape (n, 2), y int64 in {0, 1}), seeded."""
    if name not in TOY:
        raise ValueError(f"unknown toy dataset {name!r}; choose from {', '.join(TOY)}")
    xy, y = TOY[name](n, noise, np.random.default_rng(seed))
    return (xy / 5.0).astype(np.float32), y
