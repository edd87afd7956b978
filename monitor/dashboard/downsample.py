"""Downsample long series for charting so that spikes and non-finite steps survive.

A chart of a million steps cannot ship a million points to the browser, and random sampling (TensorBoard's
reservoir) loses exactly the spike a person is looking for. We keep, per bucket of consecutive rows, the row
with the smallest and the row with the largest finite value (the envelope), the bucket's mean (for the
smoothed line), and every run of NaN/inf rows as an interval, so no downsampling can hide them.

`SeriesBuffer` does this incrementally: buckets are aligned at multiples of a power-of-two width, and when
there would be more than `max_points // 2` of them, neighbours merge pairwise (min of mins, max of maxes, sum
of sums). Appending k rows costs O(k) amortized, so a live refresh costs what arrived, not the run's length,
and the result is identical to downsampling the whole series at once (`minmax_downsample`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["DEFAULT_POINTS", "Downsampled", "SeriesBuffer", "minmax_downsample", "nonfinite_runs", "ema"]

DEFAULT_POINTS = 2000

# Codes for the kind of value in a row; runs of equal non-zero codes become intervals.
_FINITE, _NAN, _POSINF, _NEGINF = 0, 1, 2, 3
KIND_NAMES = {_NAN: "NaN", _POSINF: "+inf", _NEGINF: "-inf"}


@dataclass
class Downsampled:
    """What a chart needs of one series.

    x, y: the envelope (each bucket's min and max rows, in row order; every row when the series is short).
    mean_x, mean_y: one point per bucket (x of its last row, mean of its finite values) for smoothing.
    nonfinite: one row per run of consecutive NaN/inf rows: start, end (x values), kind, count.
    width: rows per bucket (1 = nothing dropped).
    """

    x: np.ndarray
    y: np.ndarray
    mean_x: np.ndarray
    mean_y: np.ndarray
    nonfinite: pd.DataFrame
    width: int = 1
    n: int = 0

    def frame(self, x: str = "step", y: str = "value") -> pd.DataFrame:
        return pd.DataFrame({x: self.x, y: self.y})


def _kind_codes(y: np.ndarray) -> np.ndarray:
    codes = np.zeros(len(y), dtype=np.int8)
    bad = ~np.isfinite(y)
    if bad.any():
        codes[np.isnan(y)] = _NAN
        codes[np.isposinf(y)] = _POSINF
        codes[np.isneginf(y)] = _NEGINF
    return codes


def nonfinite_runs(y: np.ndarray, offset: int = 0) -> list[list[int]]:
    """Runs of consecutive non-finite rows as [first_row, last_row, code] (row numbers + offset)."""
    codes = _kind_codes(np.asarray(y, dtype=float))
    if not codes.any():
        return []
    # A run starts where the code changes to a non-zero value and ends before the next change.
    change = np.flatnonzero(np.diff(codes, prepend=np.int8(0), append=np.int8(0)))
    starts, ends = change[:-1], change[1:] - 1
    bad = codes[starts] != _FINITE
    return np.stack([starts[bad] + offset, ends[bad] + offset, codes[starts[bad]]], axis=1).tolist()


class SeriesBuffer:
    """An append-only (x, y) series that keeps a bounded min/max/mean summary up to date as rows arrive."""

    def __init__(self, max_points: int = DEFAULT_POINTS):
        self.max_buckets = max(1, int(max_points) // 2)
        self.n = 0
        self.width = 1
        self._x = np.empty(1024, dtype=float)
        self._y = np.empty(1024, dtype=float)
        cap = 2 * self.max_buckets + 2
        self._min_i = np.empty(cap, dtype=np.int64)  # row of each bucket's smallest finite value, -1 if none
        self._max_i = np.empty(cap, dtype=np.int64)
        self._sum = np.empty(cap, dtype=float)
        self._cnt = np.empty(cap, dtype=np.int64)
        self._nb = 0  # completed buckets: rows [0, _nb * width)
        self._runs: list[list[int]] = []  # non-finite runs: [first_row, last_row, code]
        self._view: tuple | None = None  # (n, x_name, Downsampled): a refresh without new rows reuses it

    # ----------------------------------------------------------------- raw data
    @property
    def x(self) -> np.ndarray:
        return self._x[: self.n]

    @property
    def y(self) -> np.ndarray:
        return self._y[: self.n]

    def last(self) -> tuple[float, float] | None:
        return (float(self._x[self.n - 1]), float(self._y[self.n - 1])) if self.n else None

    def first_finite(self) -> float | None:
        """The first finite value (the initial loss), found without scanning past it."""
        for start in range(0, self.n, 4096):
            chunk = self._y[start : min(self.n, start + 4096)]
            ok = np.flatnonzero(np.isfinite(chunk))
            if len(ok):
                return float(chunk[ok[0]])
        return None

    # ----------------------------------------------------------------- appending
    def extend(self, x, y) -> SeriesBuffer:
        x = np.asarray(x, dtype=float).reshape(-1)
        y = np.asarray(y, dtype=float).reshape(-1)
        if len(x) != len(y):
            raise ValueError("x and y differ in length")
        k = len(x)
        if k == 0:
            return self
        start = self.n
        if start + k > len(self._x):
            cap = max(start + k, 2 * len(self._x))
            self._x = np.resize(self._x, cap)
            self._y = np.resize(self._y, cap)
        self._x[start : start + k] = x
        self._y[start : start + k] = y
        self.n = start + k
        self._add_runs(nonfinite_runs(y, offset=start))
        while self.n // self.width > self.max_buckets:
            self._double()
        self._complete()
        return self

    def _add_runs(self, runs: list[list[int]]) -> None:
        if runs and self._runs:
            last, first = self._runs[-1], runs[0]
            if last[1] + 1 == first[0] and last[2] == first[2]:  # continues across appends
                last[1] = first[1]
                runs = runs[1:]
        self._runs.extend(runs)

    def _complete(self) -> None:
        """Summarize every whole bucket not yet summarized (vectorized over the new rows only)."""
        w, done = self.width, self._nb * self.width
        k = (self.n - done) // w
        if k <= 0:
            return
        block = self._y[done : done + k * w].reshape(k, w)
        finite = np.isfinite(block)
        lo = np.where(finite, block, np.inf).argmin(axis=1)
        hi = np.where(finite, block, -np.inf).argmax(axis=1)
        base = done + np.arange(k, dtype=np.int64) * w
        any_finite = finite.any(axis=1)
        sl = slice(self._nb, self._nb + k)
        self._min_i[sl] = np.where(any_finite, base + lo, -1)
        self._max_i[sl] = np.where(any_finite, base + hi, -1)
        self._sum[sl] = np.where(finite, block, 0.0).sum(axis=1)
        self._cnt[sl] = finite.sum(axis=1)
        self._nb += k

    def _pick(self, a: np.ndarray, b: np.ndarray, smaller: bool) -> np.ndarray:
        """Per pair of buckets, the row holding the smaller (or larger) value; ties keep the earlier row."""
        fill = np.inf if smaller else -np.inf
        va = np.where(a >= 0, self._y[np.maximum(a, 0)], fill)
        vb = np.where(b >= 0, self._y[np.maximum(b, 0)], fill)
        take_a = va <= vb if smaller else va >= vb
        out = np.where(take_a, a, b)
        return np.where((a < 0) & (b >= 0), b, out)

    def _double(self) -> None:
        """Merge neighbouring buckets pairwise; an unpaired last bucket is redone at the new width."""
        pairs = self._nb // 2
        a, b = slice(0, 2 * pairs, 2), slice(1, 2 * pairs, 2)
        self._min_i[:pairs] = self._pick(self._min_i[a], self._min_i[b], smaller=True)
        self._max_i[:pairs] = self._pick(self._max_i[a], self._max_i[b], smaller=False)
        self._sum[:pairs] = self._sum[a] + self._sum[b]
        self._cnt[:pairs] = self._cnt[a] + self._cnt[b]
        self._nb = pairs
        self.width *= 2

    # ----------------------------------------------------------------- reading
    def view(self, x_name: str = "step") -> Downsampled:
        """The summary: O(buckets + rows in the last, partial bucket). Treat the result as read-only."""
        if self._view is not None and self._view[:2] == (self.n, x_name):
            return self._view[2]
        result = self._compute_view(x_name)
        self._view = (self.n, x_name, result)
        return result

    def rows(self) -> np.ndarray:
        """The rows the envelope keeps, in order: each bucket's min and max finite rows, and the partial
        bucket's extremes and last row."""
        nb, w, n = self._nb, self.width, self.n
        idx = np.stack([self._min_i[:nb], self._max_i[:nb]], axis=1)
        idx.sort(axis=1)
        idx = idx.reshape(-1)
        done = nb * w
        tail = np.arange(done, n, dtype=np.int64)
        if len(tail) > 3:  # the partial bucket: its extremes and its last row (so the line reaches "now")
            ty = self._y[done:n]
            fin = np.isfinite(ty)
            if fin.any():
                tail = np.array(
                    sorted({done + int(np.where(fin, ty, np.inf).argmin()),
                            done + int(np.where(fin, ty, -np.inf).argmax()), n - 1}),
                    dtype=np.int64,
                )
            else:
                tail = np.array([n - 1], dtype=np.int64)
        idx = np.concatenate([idx, tail])
        idx = idx[idx >= 0]
        if len(idx) > 1:
            keep = np.ones(len(idx), dtype=bool)
            keep[1:] = idx[1:] != idx[:-1]
            idx = idx[keep]
        return idx[np.isfinite(self._y[idx])]

    def _compute_view(self, x_name: str) -> Downsampled:
        nb, w, n = self._nb, self.width, self.n
        idx = self.rows()
        done = nb * w
        cnt = self._cnt[:nb]
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(cnt > 0, self._sum[:nb] / np.maximum(cnt, 1), np.nan)
        mean_x = self._x[np.arange(1, nb + 1, dtype=np.int64) * w - 1] if nb else np.empty(0)
        if n > done:
            ty = self._y[done:n]
            fin = np.isfinite(ty)
            means = np.append(means, ty[fin].mean() if fin.any() else np.nan)
            mean_x = np.append(mean_x, self._x[n - 1])

        return Downsampled(
            x=self._x[idx].copy(),
            y=self._y[idx].copy(),
            mean_x=np.asarray(mean_x, dtype=float),
            mean_y=np.asarray(means, dtype=float),
            nonfinite=self._nonfinite_frame(x_name),
            width=w,
            n=n,
        )

    def _nonfinite_frame(self, x_name: str) -> pd.DataFrame:
        if not self._runs:
            return pd.DataFrame({"start": np.empty(0), "end": np.empty(0), "kind": np.empty(0, dtype=object),
                                 "count": np.empty(0, dtype=np.int64)})
        runs = np.asarray(self._runs, dtype=np.int64)
        return pd.DataFrame({
            "start": self._x[runs[:, 0]],
            "end": self._x[runs[:, 1]],
            "kind": [KIND_NAMES[int(c)] for c in runs[:, 2]],
            "count": runs[:, 1] - runs[:, 0] + 1,
        })

    def window(self, lo: float, hi: float, max_points: int | None = None) -> Downsampled:
        """The rows with lo <= x <= hi, downsampled afresh (for zooming in on a finding's step)."""
        x = self.x
        if self._sorted_hint():
            a, b = np.searchsorted(x, lo, "left"), np.searchsorted(x, hi, "right")
            xs, ys = x[a:b], self.y[a:b]
        else:
            mask = (x >= lo) & (x <= hi)
            xs, ys = x[mask], self.y[mask]
        return minmax_downsample(xs, ys, max_points or 2 * self.max_buckets)

    def _sorted_hint(self) -> bool:
        # Steps are written in order; checking a sample keeps a zoom O(window) instead of O(run).
        x = self.x
        sample = x[:: max(1, self.n // 4096)] if self.n > 4096 else x
        return bool(np.all(sample[1:] >= sample[:-1]))


def minmax_downsample(x, y, max_points: int = DEFAULT_POINTS) -> Downsampled:
    """Downsample a whole series at once (the same result as appending it to a SeriesBuffer in pieces)."""
    return SeriesBuffer(max_points).extend(x, y).view()


def ema(values, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average. NaN/inf values do not enter the average, and the
    output is NaN where the input is (a smoothed line must not paper over a NaN stretch)."""
    values = np.asarray(values, dtype=float)
    out = np.full(len(values), np.nan)
    weight = float(min(max(weight, 0.0), 0.999))
    acc, norm = 0.0, 0.0
    for i, v in enumerate(values.tolist()):
        if v == v and abs(v) != float("inf"):
            acc = acc * weight + (1 - weight) * v
            norm = norm * weight + (1 - weight)
            out[i] = acc / norm
    return out
