"""What the dashboard keeps between refreshes: one `RunState` per open run and one `RunsIndex` per root.

Both are plain objects (no Streamlit in them: the benchmark and the tests use them directly); the app keeps
them in `st.cache_resource` (`cached_run_state`, `cached_runs_index`) so that a refresh only reads what was
appended since the last one. They are shared by every browser session, hence the locks.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from babysit.monitor import runfile
from babysit.monitor.dashboard.downsample import DEFAULT_POINTS, SeriesBuffer
from babysit.monitor.fastread import FastRunTailer
from babysit.monitor.reader import LineTailer, RunBatch, RunReadError, find_runs, read_meta, read_status
from babysit.monitor.sinks import printable
from babysit.rules import OnlineDiagnoser, findings_of_run
from babysit.rules.base import SEVERITIES, num_classes_of, severity_rank  # re-exported: the dashboard's scale

__all__ = [
    "RunState",
    "RunsIndex",
    "RunSummary",
    "resolve_run",
    "inside",
    "run_name",
    "worst_finding",
    "findings_view",
    "severity_rank",
    "config_value",
    "LAYER_POINTS",
    "SEVERITIES",
    "cached_run_state",
    "cached_runs_index",
]

LAYER_POINTS = 400  # per layer and statistic: small multiples need fewer points than the main charts
LAYER_CHART_STATS = ("g_norm", "update_ratio", "dead_frac", "saturated_frac", "w_norm", "zero_grad_frac")

# A module global: RunState(diagnose=True) builds one per run (tests swap it for a fake, or None for no engine).
_OnlineDiagnoser = OnlineDiagnoser


def worst_finding(findings: list[dict]) -> dict | None:
    """The most severe finding; among equals the latest."""
    best, rank = None, -2
    for f in findings:
        r = severity_rank(f.get("severity"))
        if r >= rank:
            best, rank = f, r
    return best


# What the dashboard's own diagnosis found per run directory (resolved path -> findings, as the run's page shows
# them): the runs table uses it for the runs opened in this server, so a finding the dashboard found is not
# "—" in the table while the run's page shows it. Runs never opened show what they recorded.
_DASHBOARD_FINDINGS: dict[str, list[dict]] = {}
_DASHBOARD_FINDINGS_LOCK = threading.Lock()


def _key(path: Path) -> str:
    try:
        return os.fspath(path.resolve())
    except (OSError, RuntimeError):
        return os.fspath(path)


def findings_view(recorded: list, diagnoser: Any = None, source: str | None = None) -> list[dict]:
    """The findings of a run as dicts: `diagnoser`'s current ones (tagged `source`) and the recorded lines it did
    not reproduce, through the engine's `findings_of_run` (the same as diagnose and the report show)."""
    recorded = runfile.clean_findings(recorded)
    fresh = []
    if diagnoser is not None:
        try:
            fresh = diagnoser.findings
        except Exception:  # noqa: BLE001 - a rule bug costs the dashboard's own findings, not the recorded ones
            fresh = []
    out = []
    for f in findings_of_run(fresh, recorded):
        d = f.to_dict()
        if source is not None and not d.get("recorded"):
            d.setdefault("source", source)
        out.append(d)
    return out


def config_value(config: Any, *names: str) -> float | None:
    """A positive-or-zero number from a run's config under the first of `names` present (lr, reg, ...)."""
    if not isinstance(config, dict):
        return None
    for name in names:
        v = config.get(name)
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)) and math.isfinite(v):
            return float(v)
        if isinstance(v, str):
            try:
                f = float(v)
            except ValueError:
                continue
            if math.isfinite(f):
                return f
    return None


def run_name(root: Path, path: Path) -> str:
    """A run's name: its path relative to the root, with forward slashes ('.' when the root is the run).

    Printable: a directory name that is not UTF-8 (or holds control characters) shows its bytes as backslash
    escapes; the browser could not be sent it otherwise. `resolve_run` maps such a name back to its folder.
    """
    rel = path.relative_to(root)
    return printable(rel.as_posix()) if rel.parts else "."


def inside(root: str | os.PathLike, rel: str) -> Path | None:
    """root/rel if `rel` is a harmless relative path that stays inside root (symlinks included), else None.

    Names come from the URL (?run=...) and from files, so they are untrusted: absolute paths, '..',
    backslashes and control characters are refused before the file system is touched.
    """
    if not isinstance(rel, str) or not rel or len(rel) > 1000:
        return None
    if ("\\" in rel and (os.sep == "\\" or os.altsep)) or any(ord(c) < 32 for c in rel):
        return None  # a backslash is a separator only on Windows; on POSIX it is an ordinary character
    p = PurePosixPath(rel)
    if p.is_absolute() or rel.startswith("~") or ".." in p.parts or (len(rel) > 1 and rel[1] == ":"):
        return None
    root_path = Path(root)
    path = root_path if rel == "." else root_path.joinpath(*p.parts)
    try:
        if not path.resolve().is_relative_to(root_path.resolve()):
            return None
    except (OSError, RuntimeError, ValueError):
        return None
    return path


def resolve_run(root: str | os.PathLike, name: str) -> Path | None:
    """The run directory `name` names under `root`, or None: never a path outside the root."""
    path = inside(root, name)
    if path is not None and path.is_dir():
        return path
    if isinstance(name, str) and "\\" in name and len(name) <= 1000 and Path(root).is_dir():
        # a printable name standing for bytes that are not UTF-8: look it up among the runs under root
        for p in find_runs(root):
            if run_name(Path(root), p) == name:
                return p
    return None


class RunState:
    """One run as the dashboard shows it, kept current by `update()` at the cost of what was appended."""

    def __init__(self, path: str | os.PathLike, max_points: int = DEFAULT_POINTS, diagnose: bool = True):
        self.path = Path(path)
        self.lock = threading.RLock()
        self.tailer = FastRunTailer(self.path)
        self.max_points = max_points
        self.loss = SeriesBuffer(max_points)
        self.lr = SeriesBuffer(max_points)
        self.scalars: dict[str, SeriesBuffer] = {}
        self._epoch_parts: list[pd.DataFrame] = []
        self._epochs: pd.DataFrame | None = None
        self.layers: dict[tuple[str, str], SeriesBuffer] = {}
        self.layer_kinds: dict[str, str] = {}
        self.layer_order: list[str] = []
        self.snapshots: list[dict] = []
        self.events: list[dict] = []
        self.diagnoser = None
        self.diagnoser_error: str | None = None
        self.version = 0  # bumps whenever new data arrived; lets callers skip work
        self.polled_at = 0.0
        self._rate: tuple[float, int] | None = None  # (time, step) at the previous update, for steps/s
        self.steps_per_s: float | None = None
        if diagnose and _OnlineDiagnoser is not None:
            try:
                self.diagnoser = _OnlineDiagnoser(meta=dict(self.tailer.meta), run_dir=self.path)  # snapshots
            except Exception as exc:  # noqa: BLE001
                self.diagnoser_error = f"{type(exc).__name__}: {exc}"

    # ----------------------------------------------------------------- reading
    @property
    def meta(self) -> dict:
        return self.tailer.meta

    @property
    def status(self) -> dict:
        return self.tailer.status

    @property
    def corrupt_lines(self) -> int:
        return self.tailer.corrupt_lines

    def update(self) -> int:
        """Read what was appended since the last call; returns the number of new rows (steps, epochs, ...)."""
        with self.lock:
            n = 0
            while True:  # a poll reads a bounded chunk: a big run's first view streams into the buffers
                batch = self.tailer.poll()
                self.polled_at = time.time()
                self._add(batch)
                n += len(batch)
                self._diagnose(batch)
                if not getattr(self.tailer, "behind", False):
                    break
            if n:
                self.version += 1
            last = self.loss.last()
            if last is not None:
                now = time.monotonic()
                if self._rate is not None and now > self._rate[0] and last[0] > self._rate[1]:
                    rate = (last[0] - self._rate[1]) / (now - self._rate[0])
                    self.steps_per_s = rate if self.steps_per_s is None else 0.5 * self.steps_per_s + 0.5 * rate
                if self._rate is None or last[0] != self._rate[1]:
                    self._rate = (now, int(last[0]))
            return n

    def _add(self, batch: RunBatch) -> None:
        steps = batch.steps
        if len(steps):
            x = steps["step"].to_numpy(dtype=float)
            self.loss.extend(x, steps["loss"].to_numpy(dtype=float))
            self.lr.extend(x, steps["lr"].to_numpy(dtype=float))
            for col in steps.columns:
                if col in ("step", "time", "loss", "lr"):
                    continue
                buf = self.scalars.get(col)
                if buf is None:
                    buf = self.scalars[col] = SeriesBuffer(self.max_points)
                buf.extend(x, steps[col].to_numpy(dtype=float))
        if len(batch.epochs):
            self._epoch_parts.append(batch.epochs)
            self._epochs = None
        if len(batch.layers):
            self._add_layers(batch.layers)
        if len(batch.snapshots):
            self.snapshots.extend(batch.snapshots.to_dict("records"))
        for e in batch.events:
            if e.get("type") != "finding":
                self.events.append(e)

    def _add_layers(self, frame: pd.DataFrame) -> None:
        if "kind" in frame.columns:
            kinds = frame.drop_duplicates("layer", keep="last")
            for layer, kind in zip(kinds["layer"], kinds["kind"], strict=True):
                if isinstance(kind, str):
                    self.layer_kinds[str(layer)] = kind
        stats = [c for c in LAYER_CHART_STATS if c in frame.columns]
        for layer, group in frame.groupby("layer", sort=False):
            layer = str(layer)
            if layer not in self.layer_order:
                self.layer_order.append(layer)
            x = group["step"].to_numpy(dtype=float)
            for stat in stats:
                y = group[stat].to_numpy(dtype=float)
                buf = self.layers.get((layer, stat))
                if buf is None:
                    if np.all(np.isnan(y)):
                        continue  # this layer does not have this statistic (a ReLU has no gradient norm)
                    buf = self.layers[(layer, stat)] = SeriesBuffer(LAYER_POINTS)
                buf.extend(x, y)

    def _diagnose(self, batch: RunBatch) -> None:
        if self.diagnoser is None:
            return
        try:  # the current findings are read from the diagnoser when shown (findings())
            self.diagnoser.update(batch, status=self.status)
        except Exception as exc:  # noqa: BLE001 - a rule bug must not take the dashboard down
            self.diagnoser = None
            self.diagnoser_error = f"{type(exc).__name__}: {exc}"

    # ----------------------------------------------------------------- views
    @property
    def epochs(self) -> pd.DataFrame:
        with self.lock:
            if self._epochs is None:
                if self._epoch_parts:
                    self._epochs = pd.concat(self._epoch_parts, ignore_index=True)
                    self._epoch_parts = [self._epochs]
                else:
                    self._epochs = pd.DataFrame({"epoch": np.empty(0, dtype=np.int64),
                                                 "step": np.empty(0, dtype=np.int64)})
            return self._epochs

    def findings(self) -> list[dict]:
        """The run's findings as `babysit diagnose` and the report show them, newest first.

        The dashboard's own diagnosis plus what the run recorded (findings.jsonl) that it did not find, with a
        healed blow-up shown as history (rules.findings_of_run). Without a diagnoser: the recorded ones.
        """
        with self.lock:
            merged = findings_view(self.tailer.findings, self.diagnoser, "dashboard")
        with _DASHBOARD_FINDINGS_LOCK:
            _DASHBOARD_FINDINGS.pop(_key(self.path), None)  # re-inserted last: the oldest go first
            _DASHBOARD_FINDINGS[_key(self.path)] = merged
            while len(_DASHBOARD_FINDINGS) > 1000:
                del _DASHBOARD_FINDINGS[next(iter(_DASHBOARD_FINDINGS))]
        order = {id(f): i for i, f in enumerate(merged)}

        def key(f: dict) -> tuple:
            step = f.get("step")
            return (step if isinstance(step, (int, float)) and math.isfinite(step) else -1, order[id(f)])

        return sorted(merged, key=key, reverse=True)

    def initial_loss(self) -> float | None:
        return self.loss.first_finite()

    def num_classes(self) -> int | None:
        return num_classes_of(self.meta)

    def layer_frame(self, stat: str, lo: float | None = None, hi: float | None = None) -> pd.DataFrame:
        """Long-form (step, layer, value) of one statistic, downsampled per layer, in layer order."""
        steps, names, values = [], [], []
        with self.lock:
            for layer in self.layer_order:
                buf = self.layers.get((layer, stat))
                if buf is None or buf.n == 0:
                    continue
                d = buf.view() if lo is None else buf.window(lo, hi, LAYER_POINTS)
                if len(d.x):
                    steps.append(d.x)
                    values.append(d.y)
                    names.append(np.full(len(d.x), layer, dtype=object))
        if not steps:
            return pd.DataFrame({"step": np.empty(0), "layer": np.empty(0, dtype=object), "value": np.empty(0)})
        return pd.DataFrame({"step": np.concatenate(steps), "layer": np.concatenate(names),
                             "value": np.concatenate(values)})

    def snapshot_layers(self) -> list[str]:
        seen: list[str] = []
        for s in self.snapshots:
            if s["layer"] not in seen:
                seen.append(s["layer"])
        return seen

    def load_snapshot(self, record: dict) -> np.ndarray | None:
        """A snapshot's array, read without pickle, and only from inside this run's directory."""
        return runfile.load_snapshot(self.path, record.get("file"))


class RunSummary:
    """What the runs table shows about one run, kept current cheaply: it parses only epoch records."""

    def __init__(self, root: Path, path: Path):
        self.path = path
        self.name = run_name(root, path)
        self.meta: dict = {}
        self.meta_error: str | None = None
        self.status: dict = {}
        self.best_val_acc: float | None = None
        self.last_val_acc: float | None = None
        self.epoch: int | None = None
        self._offset = 0
        self._findings = LineTailer(path / runfile.FINDINGS)
        self.findings: list[dict] = []
        self.mtime = 0.0
        self.read_error: str | None = None

    def refresh(self) -> None:
        if not self.meta or self.meta.get("missing_meta"):
            try:
                self.meta = read_meta(self.path)
                self.meta_error = None
            except RunReadError as e:
                self.meta, self.meta_error = {}, str(e)
        self.status = read_status(self.path)
        self._scan_epochs()
        try:
            self.findings.extend(runfile.clean_finding(f) for f in self._findings.read())
        except RunReadError as e:
            self.read_error = str(e)

    @property
    def error(self) -> str | None:
        """Why this run cannot be shown (whole or in part), in one line; None when it reads fine."""
        status_error = self.status.get("error") if isinstance(self.status.get("error"), dict) else {}
        if self.meta_error or self.read_error:
            return self.meta_error or self.read_error
        if status_error.get("type") == "CorruptStatus":
            return str(status_error.get("message"))
        return None

    _EPOCH_MARKS = (b'"type":"epoch"', b'"type": "epoch"')

    def _scan_epochs(self) -> None:
        """Find epoch lines in the bytes appended since the last scan without parsing the step lines."""
        try:
            with os.fdopen(runfile.open_regular(self.path / runfile.EVENTS), "rb") as f:  # a FIFO never blocks
                st = os.fstat(f.fileno())
                self.mtime = st.st_mtime
                if st.st_size < self._offset:
                    self._offset, self.best_val_acc, self.last_val_acc, self.epoch = 0, None, None, None
                f.seek(self._offset)
                data = f.read()
        except OSError as e:
            if not isinstance(e, FileNotFoundError):
                self.read_error = f"cannot read {runfile.EVENTS}: {e.strerror or e}"
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        data = data[: end + 1]
        self._offset += end + 1
        for mark in self._EPOCH_MARKS:
            i = data.find(mark)
            while i >= 0:
                a = data.rfind(b"\n", 0, i) + 1
                b = data.find(b"\n", i)
                self._take_epoch(data[a:b])
                i = data.find(mark, b)

    def _take_epoch(self, line: bytes) -> None:
        try:
            rec = json.loads(line)
            epoch = int(rec["epoch"])  # 1e400 reads as inf: OverflowError
            metrics = rec.get("metrics") or {}
            if not isinstance(metrics, dict):
                return
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError, AttributeError):
            return
        self.epoch = max(self.epoch or 0, epoch)
        try:
            acc = runfile.decode_float(metrics.get("val_acc")) if "val_acc" in metrics else math.nan
        except (ValueError, TypeError):
            acc = math.nan
        if math.isfinite(acc):
            self.last_val_acc = acc
            self.best_val_acc = acc if self.best_val_acc is None else max(self.best_val_acc, acc)

    @property
    def updated(self) -> float | None:
        """When the run last wrote anything (heartbeat, end, or the event log's mtime)."""
        times = [t for t in (self.status.get("heartbeat"), self.status.get("end_time"), self.mtime or None)
                 if isinstance(t, (int, float))]
        return max(times) if times else None

    def row(self) -> dict:
        with _DASHBOARD_FINDINGS_LOCK:  # the run's page diagnosed it: show what the page shows
            seen = _DASHBOARD_FINDINGS.get(_key(self.path))
        # else what it recorded, as the run's page would merge it: a healed blow-up is history
        findings = list(seen) if seen is not None else findings_view(self.findings)
        worst = worst_finding(findings)
        config = self.meta.get("config") if isinstance(self.meta.get("config"), dict) else {}
        error = self.error
        return {
            "run": self.name,
            "state": "unreadable" if error else str(self.status.get("state", "unknown")),
            "error": error,
            "step": int(self.status["step"]) if isinstance(self.status.get("step"), int) else None,
            "epoch": self.epoch,
            "best_val_acc": self.best_val_acc,
            "last_val_acc": self.last_val_acc,
            "worst_severity": worst.get("severity") if worst else None,
            "worst_finding": (worst.get("title") or worst.get("rule")) if worst else None,
            "findings": len(findings),
            "started": self.status.get("start_time") or self.meta.get("start_time"),
            "updated": self.updated,
            "lr": config_value(config, "lr", "learning_rate"),
            "reg": config_value(config, "reg", "weight_decay", "l2", "wd"),
            "model": config.get("model") if isinstance(config.get("model"), str) else None,
        }


class RunsIndex:
    """Every run under a root, rediscovered on each refresh (new runs appear by themselves)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.lock = threading.RLock()
        self.summaries: dict[str, RunSummary] = {}

    def refresh(self) -> list[RunSummary]:
        """Rescan the root and bring every run's summary up to date; returns them newest activity first."""
        with self.lock:
            paths = find_runs(self.root) if self.root.is_dir() else []
            current = {}
            for p in paths:
                name = run_name(self.root, p)
                current[name] = self.summaries.get(name) or RunSummary(self.root, p)
            self.summaries = current
            for s in current.values():
                try:
                    s.refresh()
                except Exception as exc:  # noqa: BLE001 - one bad run is one greyed row, never the whole view
                    s.meta_error = f"cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"
            return self.ordered()

    def discover(self) -> list[str]:
        """The names of the runs under the root now (cheap: a directory scan, no file is read)."""
        paths = find_runs(self.root) if self.root.is_dir() else []
        return sorted(run_name(self.root, p) for p in paths)

    def ordered(self) -> list[RunSummary]:
        return sorted(self.summaries.values(), key=lambda s: (-(s.updated or 0.0), s.name))

    def names(self) -> list[str]:
        return sorted(self.summaries)

    def frame(self) -> pd.DataFrame:
        rows = [s.row() for s in self.ordered()]
        cols = ["run", "state", "error", "step", "epoch", "best_val_acc", "last_val_acc", "worst_severity",
                "worst_finding", "findings", "started", "updated", "lr", "reg", "model"]
        return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------- Streamlit caches
# st.cache_resource, not st.cache_data: the tailers' file offsets must persist, and cache_data would hand
# every rerun a fresh copy that starts reading from byte 0 again.
# Keyed by the path's bytes: Streamlit hashes a str key as UTF-8, which a non-UTF-8 folder name is not.
@st.cache_resource(max_entries=32, show_spinner=False)
def _state_at(path: bytes) -> RunState:
    return RunState(os.fsdecode(path))


@st.cache_resource(max_entries=8, show_spinner=False)
def _index_at(root: bytes) -> RunsIndex:
    return RunsIndex(os.fsdecode(root))


def cached_run_state(root: str, name: str) -> RunState | None:
    """The shared RunState of run `name` under `root` (None when the name does not resolve inside root)."""
    path = resolve_run(root, name)
    if path is None:
        return None
    return _state_at(os.fsencode(path.resolve()))


def cached_runs_index(root: str) -> RunsIndex:
    return _index_at(os.fsencode(Path(root).resolve()))
