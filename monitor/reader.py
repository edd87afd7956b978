"""Read a run directory into pandas, all at once (`load_run`) or incrementally (`RunTailer`).

Torch-free. Reading is offset-based and idempotent: a tailer returns only the records completed since its
last call, keeps a partial last line for later, and counts (never raises on) corrupt lines.
"""

from __future__ import annotations

import json
import math
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from babysit.monitor import runfile

__all__ = [
    "RunReadError",
    "RunBatch",
    "RunData",
    "RunTailer",
    "LineTailer",
    "load_run",
    "read_meta",
    "read_status",
    "effective_state",
    "find_runs",
    "is_run_dir",
    "records_to_batch",
    "STEP_COLUMNS",
    "LAYER_STATS",
    "NONFINITE_METRICS",
    "CHUNK_BYTES",
]

STEP_COLUMNS = ["step", "time", "loss", "lr"]
LAYER_STATS = [
    "w_norm",
    "w_mean",
    "w_std",
    "g_norm",
    "update_ratio",
    "zero_grad_frac",
    "dead_frac",
    "saturated_frac",
]
# A "running" run on another host whose heartbeat is older than this is presumed dead.
STALE_AFTER_S = 120.0
# A line longer than this is garbage, not a record (hooks.Run writes a steps line per flush: well under 1 MB).
# Skipped without being held in memory, and counted as one corrupt line.
MAX_LINE_BYTES = 16 << 20
# How much of a log one poll reads at most: memory follows this and what the caller keeps, not the file size.
CHUNK_BYTES = 4 << 20
# The epochs frame's column of metric names recorded non-finite in that epoch (a tuple per row).
NONFINITE_METRICS = "nonfinite_metrics"


class RunReadError(Exception):
    """A run that cannot be read at all: the message is one line meant for the user."""


@dataclass
class RunBatch:
    """Records completed since the last read (or all of them, for `load_run`)."""

    steps: pd.DataFrame
    epochs: pd.DataFrame
    layers: pd.DataFrame
    snapshots: pd.DataFrame
    events: list[dict] = field(default_factory=list)
    corrupt_lines: int = 0

    def __len__(self) -> int:
        return len(self.steps) + len(self.epochs) + len(self.layers) + len(self.snapshots) + len(self.events)

    # The format's snapshot loader travels with the records: the rules' engine takes it from the first batch it
    # is fed (rules never open files), whoever reads the run (diagnose, report, dashboard, watcher, the hooks).
    load_snapshot = staticmethod(runfile.load_snapshot)


@dataclass
class RunData(RunBatch):
    """A whole run: its records plus meta, status and the findings log."""

    path: Path = Path(".")
    meta: dict = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    findings: list[dict] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # records read per kind, when load_run kept fewer

    @property
    def name(self) -> str:
        return self.path.name


def _empty_steps(extra: list[str] = ()) -> pd.DataFrame:
    cols = {c: np.array([], dtype=np.int64 if c == "step" else float) for c in STEP_COLUMNS}
    cols.update({c: np.array([], dtype=float) for c in extra})
    return pd.DataFrame(cols)


def _floats(values: Any, n: int) -> np.ndarray:
    """A column of n floats; tokens 'NaN'/'Infinity'/'-Infinity' decode, null reads as NaN."""
    if not isinstance(values, list) or len(values) != n:
        raise ValueError("column length mismatch")
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return np.array([runfile.decode_float(v) for v in values], dtype=float)


def _steps_frame(records: list[dict]) -> pd.DataFrame:
    steps, times, losses, lrs = [], [], [], []
    extras: dict[str, list[tuple[int, np.ndarray]]] = {}  # name -> (row offset, values)
    total = 0
    for rec in records:
        n = len(rec["step"])
        steps.append(np.asarray(rec["step"], dtype=np.int64))
        times.append(_floats(rec["time"], n))
        losses.append(_floats(rec["loss"], n))
        lr = rec.get("lr")
        lrs.append(_floats(lr, n) if lr is not None else np.full(n, np.nan))
        for name, vals in (rec.get("scalars") or {}).items():
            extras.setdefault(str(name), []).append((total, _floats(vals, n)))
        total += n
    if not steps:
        return _empty_steps()
    frame = {
        "step": np.concatenate(steps),
        "time": np.concatenate(times),
        "loss": np.concatenate(losses),
        "lr": np.concatenate(lrs),
    }
    for name, parts in extras.items():
        if name in frame:
            continue
        col = np.full(total, np.nan)
        for offset, values in parts:
            col[offset : offset + len(values)] = values
        frame[name] = col
    return pd.DataFrame(frame)


def _epochs_frame(records: list[dict]) -> pd.DataFrame:
    # "nonfinite_metrics" tells "measured NaN" (a non-finite value in the file) from "not measured" (absent or
    # null): both read as NaN in the metric's column (contract 3, docs/FORMAT.md).
    rows = []
    for rec in records:
        row = {"epoch": int(rec["epoch"]), "step": int(rec["step"]), "time": runfile.decode_float(rec["time"])}
        bad = []
        for k, v in (rec.get("metrics") or {}).items():
            if k not in row and k != NONFINITE_METRICS:
                row[k] = x = runfile.decode_float(v)
                if v is not None and not math.isfinite(x):
                    bad.append(str(k))
        row[NONFINITE_METRICS] = tuple(bad)
        rows.append(row)
    if not rows:
        return pd.DataFrame({"epoch": np.array([], dtype=np.int64), "step": np.array([], dtype=np.int64),
                             "time": np.array([], dtype=float), NONFINITE_METRICS: np.array([], dtype=object)})
    return pd.DataFrame(rows)


def _layers_frame(records: list[dict]) -> pd.DataFrame:
    # Column by column: a long run has tens of thousands of (record, layer) rows, and a DataFrame built from
    # one dict per row costs several times more than the parsing.
    steps: list[int] = []
    times: list[float] = []
    layers: list[str] = []
    kinds: list[str | None] = []
    stats_cols: dict[str, list[float]] = {}
    n = 0
    for rec in records:
        step, t = int(rec["step"]), runfile.decode_float(rec["time"])
        for layer, stats in rec["stats"].items():
            for k, v in stats.items():
                if k in ("kind", "step", "time", "layer"):
                    continue
                col = stats_cols.get(k)
                if col is None:
                    col = stats_cols[k] = [math.nan] * n
                elif len(col) < n:
                    col.extend([math.nan] * (n - len(col)))
                col.append(v if type(v) is float else runfile.decode_float(v))
            steps.append(step)
            times.append(t)
            layers.append(str(layer))
            kinds.append(str(stats["kind"]) if "kind" in stats else None)
            n += 1
    if not n:
        return pd.DataFrame({"step": np.array([], dtype=np.int64), "time": np.array([], dtype=float),
                             "layer": np.array([], dtype=object)})
    frame: dict[str, object] = {"step": np.array(steps, dtype=np.int64), "time": np.array(times, dtype=float),
                                "layer": np.array(layers, dtype=object)}
    for k, col in stats_cols.items():
        if len(col) < n:
            col.extend([math.nan] * (n - len(col)))
        frame[k] = np.array(col, dtype=float)
    if any(k is not None for k in kinds):
        frame["kind"] = np.array(kinds, dtype=object)
    return pd.DataFrame(frame)


def _snapshots_frame(records: list[dict]) -> pd.DataFrame:
    rows = [
        {
            "step": int(r["step"]),
            "time": runfile.decode_float(r.get("time")),
            "layer": str(r["layer"]),
            "file": str(r["file"]),
            "shape": tuple(int(s) for s in r.get("shape", ())),
        }
        for r in records
    ]
    if not rows:
        return pd.DataFrame({"step": np.array([], dtype=np.int64), "time": np.array([], dtype=float),
                             "layer": np.array([], dtype=object), "file": np.array([], dtype=object),
                             "shape": np.array([], dtype=object)})
    return pd.DataFrame(rows)


_FRAMES = {"steps": _steps_frame, "epoch": _epochs_frame, "layers": _layers_frame, "snapshot": _snapshots_frame}


_EMPTY: dict[str, pd.DataFrame] = {}


def _empty_frame(kind: str) -> pd.DataFrame:
    if kind not in _EMPTY:
        _EMPTY[kind] = _FRAMES[kind]([])
    return _EMPTY[kind].copy(deep=False)


def records_to_batch(records: list[dict]) -> RunBatch:
    """Decoded event records (dicts) to a RunBatch. Malformed records are counted, not raised.

    The hooks call this on what they just wrote, so the online rules see exactly what the reader would.
    """
    by_type: dict[str, list[dict]] = {k: [] for k in _FRAMES}
    events: list[dict] = []
    for rec in records:
        kind = rec.get("type") if isinstance(rec, dict) else None
        if kind in by_type:
            by_type[kind].append(rec)
        elif isinstance(kind, str):
            events.append(rec)
    corrupt = 0
    frames = {}
    for kind, build in _FRAMES.items():
        if not by_type[kind]:  # most polls carry no epochs, layers or snapshots: empty frames are not free
            frames[kind] = _empty_frame(kind)
            continue
        try:
            frames[kind] = build(by_type[kind])
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            # One bad record must not cost the good ones: rebuild record by record.
            good = []
            for rec in by_type[kind]:
                try:
                    build([rec])
                    good.append(rec)
                except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
                    corrupt += 1
            frames[kind] = build(good)
    return RunBatch(frames["steps"], frames["epoch"], frames["layers"], frames["snapshot"], events, corrupt)


class LineTailer:
    """Complete JSON lines appended to one file since the last call. Offset-based, idempotent, bounded.

    `read(max_bytes)` looks at no more than about `max_bytes` of the file (one line longer than that is read
    whole, up to MAX_LINE_BYTES; longer ones are skipped in pieces and counted as one corrupt line); `behind`
    says whether there was more after what was read, so callers loop instead of holding a whole file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.offset = 0
        self.corrupt_lines = 0
        self.behind = False
        self._skipping = False  # inside a line longer than MAX_LINE_BYTES: drop bytes up to its newline

    def read(self, max_bytes: int | None = CHUNK_BYTES) -> list[dict]:
        records = []
        for line in self.complete_lines(max_bytes):
            rec = self.decode(line)
            if rec is not None:
                records.append(rec)
        return records

    def complete_lines(self, max_bytes: int | None = CHUNK_BYTES) -> list[bytes]:
        """The non-blank complete lines appended since the last call; the offset moves past them."""
        try:
            # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            self.behind = False
            return []
        except OSError as e:
            raise RunReadError(f"cannot read {self.path}: {e.strerror or e}") from None
        try:
            with open(fd, "rb", closefd=True) as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise RunReadError(f"cannot read {self.path}: not a regular file")
                return self._lines(f, st.st_size, max_bytes)
        except OSError as e:
            raise RunReadError(f"cannot read {self.path}: {e.strerror or e}") from None

    def _lines(self, f: Any, size: int, max_bytes: int | None) -> list[bytes]:
        if size < self.offset:  # truncated or replaced: start over rather than read garbage
            self.offset, self._skipping = 0, False
        f.seek(self.offset)
        window = size - self.offset if max_bytes is None else min(size - self.offset, max(int(max_bytes), 1))
        data = f.read(window)
        seen = self.offset + len(data)  # bytes looked at; the file may have grown since fstat
        self.behind = seen < size
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                self.offset = seen
                return []
            self._skipping = False
            self.offset += nl + 1
            data = data[nl + 1:]
        end = data.rfind(b"\n")
        if end >= 0:
            self.offset += end + 1
            return [line for line in data[: end + 1].splitlines() if line.strip()]
        if seen < size:  # one line longer than the window: read on to its end, up to the cap
            parts, total = [data], len(data)
            while total <= MAX_LINE_BYTES:
                more = f.read(min(CHUNK_BYTES, MAX_LINE_BYTES + 1 - total))
                if not more:
                    break
                nl = more.find(b"\n")
                if nl >= 0:
                    parts.append(more[: nl + 1])
                    line = b"".join(parts)
                    self.offset += len(line)
                    self.behind = self.offset < size
                    return [line] if line.strip() and len(line) <= MAX_LINE_BYTES + 1 else self._too_long()
                parts.append(more)
                total += len(more)
            if total <= MAX_LINE_BYTES:  # a partial last line still being written: wait for the rest
                self.behind = False
                return []
            self.offset += total
            self.behind = self.offset < size
            self._skipping = True
            return self._too_long()
        if len(data) > MAX_LINE_BYTES:  # an endless last line: garbage, not a record still being written
            self.offset = seen
            self._skipping = True
            return self._too_long()
        return []

    def _too_long(self) -> list[bytes]:
        self.corrupt_lines += 1
        return []

    def decode(self, line: bytes) -> dict | None:
        """One line as a record, or None (counted as corrupt)."""
        try:
            rec = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            self.corrupt_lines += 1
            return None
        if isinstance(rec, dict):
            return rec
        self.corrupt_lines += 1
        return None


def read_meta(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise RunReadError(f"no such run directory: {path}")
    if not path.is_dir():
        raise RunReadError(f"not a directory: {path}")
    try:
        meta = runfile.read_json(path / runfile.META)
    except FileNotFoundError:
        if (path / runfile.EVENTS).exists():
            return {"schema": runfile.SCHEMA_VERSION, "run_id": path.name, "missing_meta": True}
        raise RunReadError(f"not a run directory (no {runfile.META}): {path}") from None
    except (ValueError, UnicodeDecodeError) as e:
        why = ("not UTF-8" if isinstance(e, UnicodeDecodeError) else "not JSON" if isinstance(e, json.JSONDecodeError)
               else str(e))
        raise RunReadError(f"corrupt {runfile.META} in {path} ({why})") from None
    except OSError as e:
        raise RunReadError(f"cannot read {path / runfile.META}: {e.strerror or e}") from None
    if not isinstance(meta, dict):
        raise RunReadError(f"corrupt {runfile.META} in {path}: not an object")
    schema = meta.get("schema", 1)
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise RunReadError(f"corrupt {runfile.META} in {path}: schema must be a whole number, not {schema!r:.40}")
    if schema > runfile.SCHEMA_VERSION:
        raise RunReadError(
            f"{path} was written with run format {schema}; this babysit reads up to {runfile.SCHEMA_VERSION}: "
            "upgrade babysit"
        )
    return _clean_meta(meta)


# ----------------------------------------------------------------------------- fields of the wrong type
# meta.json and status.json may come from a crashed writer or an attacker. Their few fields that code acts on
# (a pid handed to os.kill, a class count turned into ln(C), times subtracted) are checked here, once, so
# that every consumer can trust their types: a bad value reads as absent (None), as the format allows.
STATES = ("running", "finished", "crashed", "stopped", "unknown")
MAX_PID = 2**31 - 1  # os.kill takes a C int: 10**30 raises OverflowError; 0 and negatives address groups
MAX_CLASSES = 10**9


def _whole(v: Any, lo: int, hi: int) -> int | None:
    """v as a whole number in [lo, hi], or None (bools, NaN, inf, 1e400, strings and fractions are not)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
        return None
    return int(v) if lo <= v <= hi else None


def _time(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        v = float(v)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


def _text(v: Any, limit: int = 2000) -> str | None:
    return None if v is None else str(v)[:limit] if isinstance(v, str) else None


def _clean_meta(meta: dict) -> dict:
    meta = dict(meta)
    if "num_classes" in meta:
        meta["num_classes"] = _whole(meta["num_classes"], 2, MAX_CLASSES)
    config = meta.get("config")
    if isinstance(config, dict) and "num_classes" in config:  # the rules fall back on the config's
        meta["config"] = {**config, "num_classes": _whole(config["num_classes"], 2, MAX_CLASSES)}
    for key in ("pid",):
        if key in meta:
            meta[key] = _whole(meta[key], 1, MAX_PID)
    for key in ("start_time",):
        if key in meta:
            meta[key] = _time(meta[key])
    for key in ("host", "name", "run_id"):
        if key in meta and not isinstance(meta[key], str):
            meta[key] = None
    return meta


def _clean_status(raw: dict) -> dict:
    status = dict(raw)
    state = raw.get("state", "unknown")
    status["state"] = state if state in STATES else "unknown"
    status["recorded_state"] = state[:200] if isinstance(state, str) else None
    status["pid"] = _whole(raw.get("pid"), 1, MAX_PID)
    status["host"] = _text(raw.get("host"), 255)
    for key in ("heartbeat", "start_time", "end_time"):
        status[key] = _time(raw.get(key))
    for key in ("step", "epoch", "optimizer_steps"):
        if key in raw:
            status[key] = _whole(raw[key], 0, 2**63 - 1)
    if "reason" in raw:
        status["reason"] = None if raw["reason"] is None else " ".join(str(raw["reason"])[:2000].split())
    error = raw.get("error")
    if error is not None:
        status["error"] = ({"type": str(error.get("type", "error"))[:200],
                            "message": str(error.get("message", ""))[:2000]} if isinstance(error, dict) else
                           {"type": "error", "message": str(error)[:2000]})
    return status


def _pid_alive(pid: Any) -> bool:
    """Whether process `pid` exists on this host; a pid that cannot be a process (0, -1, 10**30) does not."""
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid <= MAX_PID:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError, ValueError):
        return True
    return True


def effective_state(status: dict, now: float | None = None, stale_after: float = STALE_AFTER_S) -> str:
    """The state a person should see: a 'running' run whose process is gone (or silent too long) crashed."""
    if not isinstance(status, dict):
        return "unknown"
    state = status.get("state", "unknown")
    if state != "running":
        return state if state in STATES else "unknown"
    pid, host = _whole(status.get("pid"), 1, MAX_PID), status.get("host")
    if pid is not None and host == socket.gethostname():
        return "running" if _pid_alive(pid) else "crashed"
    heartbeat = _time(status.get("heartbeat"))
    now = time.time() if now is None else now
    if heartbeat is not None and now - heartbeat > stale_after:
        return "crashed"
    return "running"


def _status_from_meta(path: Path) -> dict:
    """A run killed between writing meta.json and status.json: meta still says who was writing it."""
    try:
        meta = runfile.read_json(path / runfile.META)
        return {"state": "running", "pid": meta.get("pid"), "host": meta.get("host"),
                "start_time": meta.get("start_time"), "heartbeat": meta.get("start_time"), "step": 0}
    except (OSError, ValueError, AttributeError):
        return {"state": "unknown"}


def read_status(path: str | os.PathLike, now: float | None = None) -> dict:
    """status.json with `state` replaced by the effective state (`recorded_state` keeps the file's).

    A status.json that cannot be read (garbage, nested too deep, a FIFO) reads as state "unknown" with an
    `error` of type "CorruptStatus" saying why; fields of the wrong type read as None (see _clean_status).
    """
    path = Path(path)
    try:
        status = runfile.read_json(path / runfile.STATUS)
        if not isinstance(status, dict):
            raise ValueError("not an object")
    except FileNotFoundError:
        status = _status_from_meta(path)
    except (ValueError, OSError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        status = {"state": "unknown", "error": {"type": "CorruptStatus",
                                                "message": f"status.json is not a run status ({why[:200]})"}}
    status = _clean_status(status)
    status["state"] = effective_state(status, now)
    if status["state"] == "crashed" and status["recorded_state"] == "running":
        status["reason"] = status.get("reason") or "the training process stopped without closing the run"
    return status


class RunTailer:
    """Incremental reader of one run: `poll()` returns a RunBatch of only what was added since the last call.

    Keep one per run (the dashboard holds them in st.cache_resource): the cost of a poll grows with new data,
    not with the run's length. A poll reads at most about `max_bytes` of each log; while `behind` is true there
    is more to read right away (a big run's first read takes several polls, each of bounded memory).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.meta = read_meta(self.path)
        self.status: dict = {}
        self._events = LineTailer(self.path / runfile.EVENTS)
        self._findings = LineTailer(self.path / runfile.FINDINGS)
        self.findings: list[dict] = []

    @property
    def corrupt_lines(self) -> int:
        return self._events.corrupt_lines + self._findings.corrupt_lines

    @property
    def behind(self) -> bool:
        """Whether the last poll stopped at its byte budget with more already written: poll again now."""
        return self._events.behind or self._findings.behind

    def poll(self, max_bytes: int | None = CHUNK_BYTES) -> RunBatch:
        if self.meta.get("missing_meta"):
            try:
                self.meta = read_meta(self.path)
            except RunReadError:
                pass
        batch = records_to_batch(self._events.read(max_bytes))
        self._events.corrupt_lines += batch.corrupt_lines
        batch.corrupt_lines = self._events.corrupt_lines
        new_findings = self._findings.read(max_bytes)
        self.findings.extend(new_findings)
        batch.events.extend({"type": "finding", **f} for f in new_findings)
        self.status = read_status(self.path)
        return batch


# ----------------------------------------------------------------------------- what load_run keeps
# Events and logged findings kept by a bounded load_run (a real run has tens; a hostile log millions).
MAX_KEPT = 10_000
_ROW = "__row"  # a frame's row number within its group, while it is being reduced
# Layers kept by a bounded load_run: more than any real model's probed layers, fewer than a hostile log names.
MAX_GROUPS = 4096


def _first_per_key(key: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Of the rows idx (sorted by key, stably), the first of each key."""
    k = key[idx]
    return idx[np.r_[True, k[1:] != k[:-1]]] if len(idx) else idx


def _last_per_key(key: np.ndarray, idx: np.ndarray) -> np.ndarray:
    k = key[idx]
    return idx[np.r_[k[1:] != k[:-1], True]] if len(idx) else idx


class _Series:
    """One frame kept in at most `max_points` buckets of consecutive rows per group (e.g. per layer).

    Reduction is exact under merging (the min of a bucket's kept rows is the bucket's min), like the
    dashboard's SeriesBuffer: the bucket width doubles when there are too many, and re-reducing what was kept
    gives what reducing the whole series at that width would.
    """

    def __init__(self, max_points: int | None, group: str | None = None):
        self.max_points = None if max_points is None else max(int(max_points), 1)
        self.group = group
        self.width = 1
        self.parts: list[pd.DataFrame] = []
        self.counts: dict[Any, int] = {}  # rows seen per group
        self.pending = 0

    def add(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        if self.max_points is None:
            self.parts.append(frame)
            return
        if self.group is None:
            n0 = self.counts.get(None, 0)
            rows = np.arange(n0, n0 + len(frame), dtype=np.int64)
            self.counts[None] = n0 + len(frame)
        else:
            keys = frame[self.group]
            known = keys.isin(self.counts.keys())
            if not known.all() and len(self.counts) + keys[~known].nunique() > MAX_GROUPS:
                room = max(MAX_GROUPS - len(self.counts), 0)  # a log naming a million layers: the first ones
                allowed = [*self.counts.keys(), *keys[~known].unique()[:room]]
                frame = frame[keys.isin(allowed).to_numpy()]
                keys = frame[self.group]
                if not len(frame):
                    return
            rows = keys.groupby(keys, sort=False).cumcount().to_numpy(dtype=np.int64, copy=True)
            rows += keys.map(self.counts).fillna(0).to_numpy(dtype=np.int64)
            for k, n in keys.value_counts(sort=False).items():
                self.counts[k] = self.counts.get(k, 0) + int(n)
        self.parts.append(frame.assign(**{_ROW: rows}))
        self.pending += len(frame)
        if self.pending >= 4 * self.max_points:
            self._reduce()

    def _reduce(self) -> None:
        if len(self.parts) == 0:
            return
        most = max(self.counts.values(), default=0)
        while -(-most // self.width) > self.max_points:
            self.width *= 2
        frame = pd.concat(self.parts, ignore_index=True) if len(self.parts) > 1 else self.parts[0]
        bucket = frame[_ROW].to_numpy(dtype=np.int64) // self.width
        if self.group is not None:
            codes = pd.factorize(frame[self.group])[0].astype(np.int64)
            bucket = codes * (int(bucket.max()) + 1) + bucket
        order = np.argsort(bucket, kind="stable")
        keep = np.zeros(len(frame), dtype=bool)
        keep[_first_per_key(bucket, order)] = True
        keep[_last_per_key(bucket, order)] = True
        skip = {_ROW, "step", "time", "epoch", self.group}
        for col in frame.columns:
            if col in skip or frame[col].dtype.kind != "f":
                continue
            v = frame[col].to_numpy(dtype=float)
            fin = np.isfinite(v)
            good = np.flatnonzero(fin)
            if len(good):
                by_value = good[np.lexsort((v[good], bucket[good]))]
                keep[_first_per_key(bucket, by_value)] = True  # each bucket's min
                keep[_last_per_key(bucket, by_value)] = True  # and max
            bad = np.flatnonzero(~fin)
            if len(bad):
                bad = bad[np.argsort(bucket[bad], kind="stable")]
                keep[_first_per_key(bucket, bad)] = True  # NaN/inf never averaged away
                keep[_last_per_key(bucket, bad)] = True
        self.parts = [frame[keep].reset_index(drop=True)]
        self.pending = 0

    def frame(self, empty: pd.DataFrame) -> pd.DataFrame:
        if self.max_points is not None:
            self._reduce()
        if not self.parts:
            return empty
        frame = pd.concat(self.parts, ignore_index=True) if len(self.parts) > 1 else self.parts[0]
        return frame.drop(columns=[_ROW], errors="ignore")


class _Kept:
    """What load_run keeps of the batches it reads: everything, or bounded series (`max_points`)."""

    def __init__(self, max_points: int | None):
        self.bounded = max_points is not None
        self.steps = _Series(max_points)
        self.epochs = _Series(max_points)
        self.layers = _Series(max_points, group="layer")
        self.snapshots = _Series(max_points, group="layer")
        self.events: list[dict] = []
        self.findings: list[dict] = []
        self.rows = {"steps": 0, "epochs": 0, "layers": 0, "snapshots": 0, "events": 0, "findings": 0}

    def add(self, batch: RunBatch, findings: list[dict]) -> None:
        for name in ("steps", "epochs", "layers", "snapshots"):
            frame = getattr(batch, name)
            self.rows[name] += len(frame)
            getattr(self, name).add(frame)
        events = [e for e in batch.events if e.get("type") != "finding"]
        self.rows["events"] += len(events)
        self.rows["findings"] += len(findings)
        room = MAX_KEPT if self.bounded else len(events) + len(findings)
        self.events.extend(events[: max(room - len(self.events), 0)])
        self.findings.extend(findings[: max(room - len(self.findings), 0)])

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        return (self.steps.frame(_empty_frame("steps")), self.epochs.frame(_empty_frame("epoch")),
                self.layers.frame(_empty_frame("layers")), self.snapshots.frame(_empty_frame("snapshot")))


def load_run(
    path: str | os.PathLike,
    max_points: int | None = None,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    on_batch: Callable[[RunBatch, RunTailer], None] | None = None,
) -> RunData:
    """The whole run, read in chunks of about `chunk_bytes`. Raises RunReadError (one-line message).

    `max_points=None` keeps every record. With `max_points`, memory follows what is kept, not the file: each
    series keeps at most that many buckets of consecutive rows (per layer for the layers frame), and of each
    bucket the rows holding every column's min and max, its first and last non-finite value, and its first
    and last row, so spikes and NaN survive (`RunData.rows` counts what was read). Events and the findings
    log keep their first MAX_KEPT records. `on_batch(batch, tailer)` sees every chunk whole before reduction:
    that is how post-hoc diagnosis streams a run through the online rules (monitor/summarize.py).
    """
    from babysit.monitor.fastread import FastRunTailer  # same records, step arrays parsed in C: 1M steps in ~1 s

    tailer = FastRunTailer(path)
    kept = _Kept(max_points)
    while True:
        batch = tailer.poll(chunk_bytes)
        if on_batch is not None:
            on_batch(batch, tailer)
        kept.add(batch, tailer.findings)
        tailer.findings = []
        if not tailer.behind:
            break
    steps, epochs, layers, snapshots = kept.frames()
    return RunData(
        steps=steps,
        epochs=epochs,
        layers=layers,
        snapshots=snapshots,
        events=kept.events,
        corrupt_lines=tailer.corrupt_lines,
        path=tailer.path,
        meta=tailer.meta,
        status=tailer.status,
        findings=kept.findings,
        rows=dict(kept.rows),
    )


def is_run_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / runfile.META).is_file() or (path / runfile.EVENTS).is_file()


def find_runs(root: str | os.PathLike, max_depth: int = 3) -> list[Path]:
    """Run directories under root (root itself if it is one), sorted by path; never follows symlinks out."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    found: list[Path] = []
    root_real = root.resolve()

    def walk(d: Path, depth: int) -> None:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            if not e.is_dir(follow_symlinks=False) or e.name.startswith("."):
                continue
            p = Path(e.path)
            if is_run_dir(p):
                found.append(p)
            elif depth < max_depth and p.resolve().is_relative_to(root_real):
                walk(p, depth + 1)

    walk(root, 1)
    return found
