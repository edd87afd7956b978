"""Small numpy helpers the rules share: a bounded tail of past values and vectorized windows."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["Tail", "Streak", "rolling_mean", "first_true", "runs_of"]


class Tail:
    """The last `size` values of one or more aligned arrays: O(window) state for rolling checks."""

    def __init__(self, size: int, *dtypes: type):
        self.size = int(size)
        self.parts = [np.array([], dtype=d) for d in (dtypes or (float,))]

    def extend(self, *new: np.ndarray) -> list[np.ndarray]:
        """Return tail+new for each array (to evaluate on), and keep the last `size` as the new tail."""
        joined = []
        for old, n in zip(self.parts, new, strict=True):
            n = np.asarray(n, dtype=old.dtype)
            joined.append(np.concatenate([old, n]) if len(old) else n)  # no copy of a whole run on the first call
        # copies: a view would keep the caller's whole array alive
        self.parts = [j[-self.size :].copy() if self.size else j[:0] for j in joined]
        return joined

    def __len__(self) -> int:
        return len(self.parts[0])


def rolling_mean(x: np.ndarray, w: int) -> np.ndarray:
    """Means of every full window of w values (len(x) - w + 1 of them); NaN-free input expected."""
    if len(x) < w:
        return np.array([], dtype=float)
    x = np.asarray(x, dtype=float)
    big = np.abs(x).max() if len(x) else 0.0
    if big > 1e8 * max(float(np.median(np.abs(x))), 1e-300):
        # a running sum that once held 1e25 has no digits left for 1.0 (an exploded loss that came back):
        # sum such windows directly
        return sliding_window_view(x, w).mean(axis=1)
    c = np.concatenate([[0.0], np.cumsum(x)])
    return (c[w:] - c[:-w]) / w


def first_true(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if len(idx) else None


def runs_of(mask: np.ndarray, prior: int = 0) -> np.ndarray:
    """Length of the run of consecutive True ending at each position, continuing a run of `prior` before."""
    mask = np.asarray(mask, dtype=bool)
    if not len(mask):
        return np.array([], dtype=np.int64)
    idx = np.arange(1, len(mask) + 1)
    last_false = np.maximum.accumulate(np.where(mask, 0, idx))
    runs = idx - last_false
    # positions before the first False continue the prior run
    head = last_false == 0
    runs[head] += prior
    return runs


class Streak:
    """Consecutive records where a condition holds, carried across updates.

    Sustained means `need` records in a row, or at least 2 in a row spanning `min_span` steps: with sparse
    (time-budgeted) layer sampling, two records 100 steps apart are as convincing as five 10 apart.
    """

    def __init__(self) -> None:
        self.count = 0
        self.start: int | None = None

    def feed(self, cond: np.ndarray, steps: np.ndarray, need: int, min_span: float,
             min_steps: float = 0) -> tuple[int | None, int]:
        """(index of the first record where the streak is sustained or None, its length there).

        `min_steps`: the streak must also span this many steps (dense early sampling puts 3 records in 3 steps).
        """
        ok, runs = self.feed_all(cond, steps, need, min_span, min_steps)
        i = first_true(ok)
        return i, (int(runs[i]) if i is not None else self.count)

    def feed_all(self, cond: np.ndarray, steps: np.ndarray, need: int, min_span: float,
                 min_steps: float = 0) -> tuple[np.ndarray, np.ndarray]:
        """(whether the streak is sustained at each record, the streak's length there), carrying the streak.

        Every sustained record, not only the first: a rule that escalates on a later record of the same batch
        then finds the same records whether the run arrives in one batch or in many.
        """
        cond = np.asarray(cond, dtype=bool)
        if not len(cond) or (not self.count and not cond.any()):  # the usual case on a healthy run
            self.count, self.start = (self.count, self.start) if not len(cond) else (0, None)
            return np.zeros(len(cond), dtype=bool), np.zeros(len(cond), dtype=np.int64)
        runs = runs_of(cond, self.count)
        idx = np.arange(len(cond))
        start_idx = idx - runs + 1
        prior_start = self.start if self.start is not None else int(steps[0])
        start_step = np.where(start_idx >= 0, steps[np.clip(start_idx, 0, len(steps) - 1)], prior_start)
        span = steps - start_step
        ok = cond & ((runs >= max(need, 1)) | ((runs >= 2) & (span >= min_span))) & (span >= min_steps)
        self.count = int(runs[-1])
        self.start = int(start_step[-1]) if self.count else None
        return ok, runs
