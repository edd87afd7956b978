"""A RunTailer whose step records are parsed by pandas' C parser instead of Python's json module.

A million steps are four million numbers in JSON; `json.loads` turns them into Python floats at about a
microsecond each, which alone would blow the dashboard's 2-second first view. The step records
({"type":"steps","step":[...],"time":[...],"loss":[...],"lr":[...]}, one per flush of hooks.Run) are plain
arrays of numbers and the strings "NaN"/"Infinity"/"-Infinity", which `pd.read_csv` parses in C, exactly
(same doubles as json) and 3-4x faster. Any line that does not have exactly that shape, and any chunk where
the fast path fails, goes through `json.loads` and `records_to_batch` like in `monitor.reader`, so results,
ordering and corrupt-line counts are the reader's.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd

from babysit.monitor import runfile
from babysit.monitor.reader import CHUNK_BYTES, LineTailer, RunBatch, RunTailer

__all__ = ["FastRunTailer", "parse_steps_lines"]

_PREFIX = b'{"type":"steps","step":['
_KEYS = (b'"step":[', b'"time":[', b'"loss":[', b'"lr":[')
_COLUMNS = ("step", "time", "loss", "lr")


def _segments(line: bytes) -> list[bytes]:
    """The four arrays of a step record, as the bytes between their brackets; ValueError if not that shape."""
    out, pos = [], 0
    for key in _KEYS:
        i = line.index(key, pos) + len(key)
        j = line.index(b"]", i)
        out.append(line[i:j])
        pos = j
    if line[pos:].rstrip() != b"]}":  # anything else after lr (scalars, other keys): not for the fast path
        raise ValueError("not a plain step record")
    return out


def _numbers(blob: bytes) -> np.ndarray:
    if not blob:
        return np.empty(0)
    col = pd.read_csv(io.BytesIO(blob.replace(b",", b"\n")), header=None, dtype=float, engine="c",
                      na_filter=True, keep_default_na=False, na_values=["NaN", "null"], quotechar='"')
    return col.iloc[:, 0].to_numpy(dtype=float)


def _steps(segments: list[bytes]) -> np.ndarray:
    """Step numbers: a flush of consecutive steps (the usual case) is first..last, no need to parse them all."""
    out = []
    for seg in segments:
        first, _, rest = seg.partition(b",")
        last = rest.rpartition(b",")[2] if rest else first
        n = seg.count(b",") + 1
        try:
            a, b = int(first), int(last)
        except ValueError:
            a, b = 0, -1
        out.append(np.arange(a, b + 1, dtype=float) if b - a + 1 == n else _numbers(seg))
    return np.concatenate(out) if out else np.empty(0)


def parse_steps_lines(lines: list[bytes]) -> pd.DataFrame:
    """The steps frame of plain step-record lines (the reader's columns and dtypes). Raises ValueError."""
    parts: list[list[bytes]] = [[], [], [], []]
    total = 0
    for line in lines:
        segs = _segments(line)
        counts = {s.count(b",") + 1 if s.strip() else 0 for s in segs}
        if len(counts) != 1:
            raise ValueError("column length mismatch")
        total += counts.pop()
        for k, s in enumerate(segs):
            if s.strip():
                parts[k].append(s)
    cols = {name: _numbers(b",".join(p)) for name, p in zip(_COLUMNS[1:], parts[1:], strict=True)}
    cols = {"step": _steps(parts[0]), **cols}
    if any(len(v) != total for v in cols.values()):
        raise ValueError("column length mismatch")
    step = cols["step"]
    if not np.all(np.isfinite(step)) or not np.array_equal(step, np.round(step)):
        raise ValueError("steps must be integers")
    cols["step"] = step.astype(np.int64)
    return pd.DataFrame(cols)


class _EventsTailer(LineTailer):
    """LineTailer semantics (offsets, partial last line, truncation, corrupt counts) with the fast path."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        self.steps: pd.DataFrame | None = None  # the fast-parsed steps of the last read, if any

    def read(self, max_bytes: int | None = CHUNK_BYTES) -> list[dict]:
        self.steps = None
        entries: list[bytes | dict] = []  # in file order: fast-path lines as bytes, the rest decoded
        fast: list[bytes] = []
        slow_steps = False
        for line in self.complete_lines(max_bytes):
            if line.startswith(_PREFIX) and not line.rstrip().endswith(b"}}"):
                entries.append(line)
                fast.append(line)
                continue
            rec = self.decode(line)
            if rec is not None:
                slow_steps |= rec.get("type") == "steps"
                entries.append(rec)
        if fast and not slow_steps:
            try:
                self.steps = parse_steps_lines(fast)
                return [e for e in entries if isinstance(e, dict)]
            except (ValueError, pd.errors.ParserError):
                self.steps = None
        # Mixed or unusual step records: decode everything in order, exactly like the reader.
        out = []
        for e in entries:
            rec = self.decode(e) if isinstance(e, bytes) else e
            if rec is not None:
                out.append(rec)
        return out


class FastRunTailer(RunTailer):
    """`monitor.reader.RunTailer` with step records parsed in C; same batches, same counts."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        self._events = _EventsTailer(self.path / runfile.EVENTS)

    def poll(self, max_bytes: int | None = CHUNK_BYTES) -> RunBatch:
        batch = super().poll(max_bytes)
        if self._events.steps is not None:
            batch.steps = self._events.steps
            self._events.steps = None
        return batch
