"""First-layer weights as one picture: filters (or a Linear layer's rows read as images) tiled in a grid,
each on its own range, non-finite weights painted. The report (as a PNG) and the dashboard both draw it.

numpy only: the report stays dependency-light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Grid", "filter_grid", "RED"]

RED = (214, 39, 40)  # the report's colour for anything non-finite


@dataclass
class Grid:
    """A picture of a layer's weights: pixels, how it was drawn, and how many values were not finite."""

    pixels: np.ndarray
    caption: str
    nonfinite: int = 0
    notes: list[str] = field(default_factory=list)


def _as_filters(w: np.ndarray) -> tuple[np.ndarray | None, str]:
    """(n, channels, h, w) filters and how they were read, or None for a plain matrix."""
    if w.ndim == 4:
        return w, "filters"
    if w.ndim == 3:
        return w[:, None], "filters"
    if w.ndim == 2:
        n, d = w.shape
        side = int(round(math.sqrt(d)))
        if side * side == d and side >= 3:
            return w.reshape(n, 1, side, side), f"rows as {side}x{side} images"
        side = int(round(math.sqrt(d / 3)))
        if 3 * side * side == d and side >= 3:
            return w.reshape(n, 3, side, side), f"rows as {side}x{side} RGB images"
    return None, "matrix"


def _normalize(a: np.ndarray) -> np.ndarray:
    """To [0, 255], each filter on its own range (as CS231n shows filters); NaN/inf set aside."""
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, dtype=np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    scaled = (np.where(finite, a, lo) - lo) / ((hi - lo) or 1.0)
    return np.round(255 * scaled).astype(np.uint8)


def filter_grid(w: np.ndarray, max_filters: int = 256, max_side: int = 512, *, gap: int = 1,
                background: int = 235, bad: tuple[int, int, int] = RED) -> Grid:
    """Filters tiled in a near-square grid (`gap` pixels of `background` grey between them), each normalized
    on its own; a matrix that is not filters as one heat map. Non-finite weights are painted `bad`."""
    w = np.asarray(w, dtype=float)
    filters, how = _as_filters(w)
    nonfinite = int((~np.isfinite(w)).sum())
    notes = []
    if filters is None:
        m = w.reshape(w.shape[0], -1) if w.ndim >= 2 else w.reshape(1, -1)
        if m.shape[0] > max_side or m.shape[1] > max_side:
            rows, cols = m.shape
            notes.append(f"first {min(rows, max_side)} x {min(cols, max_side)} of {rows} x {cols}")
            m = m[:max_side, :max_side]
        grey = _normalize(m)
        rgb = np.stack([grey] * 3, axis=-1)
        rgb[~np.isfinite(m)] = bad
        return Grid(rgb, f"{w.shape[0]} x {int(np.prod(w.shape[1:]))} matrix", nonfinite, notes)
    n, c, h, wd = filters.shape
    if n > max_filters:
        notes.append(f"first {max_filters} of {n} filters")
        filters = filters[:max_filters]
        n = max_filters
    if c == 3:
        how += " (RGB)"
        tiles = filters
    else:
        if c > 1:
            how += f" (input channel 1 of {c})"
        tiles = filters[:, :1]
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + gap) + gap, cols * (wd + gap) + gap, 3), background, dtype=np.uint8)
    for i in range(n):
        r, cidx = divmod(i, cols)
        y0, x0 = gap + r * (h + gap), gap + cidx * (wd + gap)
        tile = tiles[i]
        img = np.stack([_normalize(tile[k]) for k in range(tile.shape[0])], axis=-1)
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        if tile.shape[0] == 3:  # RGB filters share one range, else the colours lie
            img = np.moveaxis(_normalize(tile), 0, -1)
        nonfinite_px = ~np.isfinite(tile).all(axis=0)
        img[nonfinite_px] = bad
        out[y0 : y0 + h, x0 : x0 + wd] = img
    return Grid(out, f"{n} {how}, {h}x{wd}" if how.startswith("filters") else f"{n} {how}", nonfinite, notes)
