"""Read a run directory into pandas, all at once (`load_run`) or incrementally (`RunTailer`).

Torch-free. Reading is offset-based and idempotent: a tailer returns only the records completed since its
last call, keeps a partial last line for later, and counts (never raises on) corrupt lines.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
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
# A line longer than this without a newline is garbage, not a record still being written.
MAX_LINE_BYTES = 64 << 20


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


@dataclass
class RunData(RunBatch):
    """A whole run: its records plus meta, status and the findings log."""

    path: Path = Path(".")
    meta: dict = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    findings: list[dict] = field(default_factory=list)

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
    rows = []
    for rec in records:
        row = {"epoch": int(rec["epoch"]), "step": int(rec["step"]), "time": runfile.decode_float(rec["time"])}
        for k, v in (rec.get("metrics") or {}).items():
            if k not in row:
                row[k] = runfile.decode_float(v)
        rows.append(row)
    if not rows:
        return pd.DataFrame({"epoch": np.array([], dtype=np.int64), "step": np.array([], dtype=np.int64),
                             "time": np.array([], dtype=float)})
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
    """Complete JSON lines appended to one file since the last call. Offset-based, idempotent."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.offset = 0
        self.corrupt_lines = 0

    def read(self) -> list[dict]:
        records = []
        for line in self.complete_lines():
            rec = self.decode(line)
            if rec is not None:
                records.append(rec)
        return records

    def complete_lines(self) -> list[bytes]:
        """The non-blank complete lines appended since the last call; the offset moves past them."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:  # truncated or replaced: start over rather than read garbage
                    self.offset = 0
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise RunReadError(f"cannot read {self.path}: {e.strerror or e}") from None
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) > MAX_LINE_BYTES:
                self.offset += len(data)
                self.corrupt_lines += 1
            return []
        self.offset += end + 1
        return [line for line in data[: end + 1].splitlines() if line.strip()]

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
    except (ValueError, UnicodeDecodeError):
        raise RunReadError(f"corrupt {runfile.META} in {path}") from None
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
    return meta


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def effective_state(status: dict, now: float | None = None, stale_after: float = STALE_AFTER_S) -> str:
    """The state a person should see: a 'running' run whose process is gone (or silent too long) crashed."""
    state = status.get("state", "unknown")
    if state != "running":
        return state
    pid, host = status.get("pid"), status.get("host")
    if isinstance(pid, int) and host == socket.gethostname():
        return "running" if _pid_alive(pid) else "crashed"
    heartbeat = status.get("heartbeat")
    now = time.time() if now is None else now
    if isinstance(heartbeat, (int, float)) and now - heartbeat > stale_after:
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
    """status.json with `state` replaced by the effective state (`recorded_state` keeps the file's)."""
    path = Path(path)
    try:
        status = runfile.read_json(path / runfile.STATUS)
        if not isinstance(status, dict):
            raise ValueError
    except FileNotFoundError:
        status = _status_from_meta(path)
    except (ValueError, UnicodeDecodeError, OSError):
        status = {"state": "unknown", "error": {"type": "CorruptStatus", "message": "status.json unreadable"}}
    status["recorded_state"] = status.get("state")
    status["state"] = effective_state(status, now)
    if status["state"] == "crashed" and status["recorded_state"] == "running":
        status["reason"] = status.get("reason") or "the training process stopped without closing the run"
    return status


class RunTailer:
    """Incremental reader of one run: `poll()` returns a RunBatch of only what was added since the last call.

    Keep one per run (the dashboard holds them in st.cache_resource): the cost of a poll grows with new data,
    not with the run's length.
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

    def poll(self) -> RunBatch:
        if self.meta.get("missing_meta"):
            try:
                self.meta = read_meta(self.path)
            except RunReadError:
                pass
        batch = records_to_batch(self._events.read())
        self._events.corrupt_lines += batch.corrupt_lines
        batch.corrupt_lines = self._events.corrupt_lines
        new_findings = self._findings.read()
        self.findings.extend(new_findings)
        batch.events.extend({"type": "finding", **f} for f in new_findings)
        self.status = read_status(self.path)
        return batch


def load_run(path: str | os.PathLike) -> RunData:
    """The whole run. Raises RunReadError (one-line message) when it cannot be read at all."""
    from babysit.monitor.fastread import FastRunTailer  # same records, step arrays parsed in C: 1M steps in ~1 s

    tailer = FastRunTailer(path)
    batch = tailer.poll()
    events = [e for e in batch.events if e.get("type") != "finding"]
    return RunData(
        steps=batch.steps,
        epochs=batch.epochs,
        layers=batch.layers,
        snapshots=batch.snapshots,
        events=events,
        corrupt_lines=tailer.corrupt_lines,
        path=tailer.path,
        meta=tailer.meta,
        status=tailer.status,
        findings=tailer.findings,
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
