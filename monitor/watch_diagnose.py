"""Diagnose, the second part of `babysit watch`: one run's new records through the rules, out as findings.

One `RunDiagnosis` per run: a `RunTailer` (offset-based, so a duplicated or missed file event does no harm)
and the rules' `OnlineDiagnoser`. `read` hands the rules what is new on disk; `check` is the backstop's
liveness feed: when a live run has written nothing, the rules get its current status with no new records,
which is how `stalled_run` notices a run with no heartbeat (warning) or no process (critical, evidence state
"crashed"), the same finding `babysit diagnose` gives. What comes out goes to a `Feed`: findings (the rules'
and the lines other writers put in findings.jsonl) and notes (a heal, a run that finished).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from babysit.monitor import runfile
from babysit.monitor.reader import RunBatch, RunReadError, RunTailer, read_status, records_to_batch

__all__ = ["STALL_RULE", "Feed", "RunDiagnosis", "Unreadable", "signature", "stall_thresholds"]

STALL_RULE = "stalled_run"
_WATCHED_FILES = (runfile.EVENTS, runfile.FINDINGS, runfile.STATUS)


class Unreadable(Exception):
    """The run could never be read (a FIFO where its log should be): the message is one line for the user."""


class Feed(Protocol):
    """Where a run's diagnosis goes (the announce part)."""

    def finding(self, finding: dict, from_log: bool = False) -> None: ...

    def note(self, text: str) -> None: ...


def stall_thresholds(seconds: float) -> dict:
    """Rule thresholds that make `stalled_run` fire after exactly `seconds` without a heartbeat."""
    return {"stalled_min_s": float(seconds), "stalled_factor": 0.0}


def signature(path: Path) -> tuple:
    """What changes when the writer appends to or replaces a file we read; equal means nothing new to read."""
    sig = []
    for name in _WATCHED_FILES:
        try:
            st = os.stat(path / name)
            sig.append((st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            sig.append(None)
    return tuple(sig)


@lru_cache(maxsize=1)
def _empty() -> RunBatch:
    return records_to_batch([])


def _as_dict(finding: Any) -> dict:
    return dict(finding.to_dict()) if hasattr(finding, "to_dict") else dict(finding)


class RunDiagnosis:
    """One run: its tailer, its rules, its status as last read.

    Args:
        diagnoser: an object with update(batch, status) returning findings (rules.OnlineDiagnoser), or None.
        warn: one line for the user; each kind of trouble is said once per run.
    """

    def __init__(self, path: Path, name: str, tailer: RunTailer, diagnoser: Any,
                 warn: Callable[[str], None] = lambda text: None):
        self.path = path
        self.name = name
        self.tailer = tailer
        self.diagnoser = diagnoser
        self.warn = warn
        self.signature: tuple | None = None
        self.state = "unknown"  # effective state at the last look
        self.status: dict = {}
        self.diagnosed_at = 0.0  # time.monotonic() of the last rules update
        self.read_once = False  # a poll has succeeded at least once
        self._warned: set[str] = set()

    @property
    def running(self) -> bool:
        return self.state in ("running", "unknown")

    def read(self, out: Feed) -> bool:
        """Read what is new and diagnose it. Returns False when nothing had changed on disk.

        Raises Unreadable when the run has never been readable; later read errors are one warning and a retry
        at the next event (a transient state on a shared filesystem, maybe).
        """
        sig = signature(self.path)
        if sig == self.signature:
            return False
        self.signature = sig
        while True:  # a poll reads a bounded chunk: a big run's first read streams through the rules
            try:
                batch = self.tailer.poll()
            except RunReadError as e:
                if not self.read_once:  # never readable (a FIFO for a log): one "skipped" line, like a bad meta
                    raise Unreadable(str(e)) from None
                self._warn_once("read", str(e))
                return False
            self.read_once = True
            self.status = self.tailer.status
            error = self.status.get("error")
            if isinstance(error, dict) and error.get("type") == "CorruptStatus":
                self._warn_once("status", f"{self.name}: {error.get('message')}; its state reads as unknown")
            logged = [e for e in batch.events if e.get("type") == "finding"]
            if logged:
                batch.events = [e for e in batch.events if e.get("type") != "finding"]
                for f in logged:  # written by anyone: typed before use
                    out.finding(runfile.clean_finding({k: v for k, v in f.items() if k != "type"}), True)
            self._diagnose(batch, out)
            self.tailer.findings.clear()  # the announcer keeps what it announced, not the whole findings log
            if not getattr(self.tailer, "behind", False):
                return True

    def check(self, out: Feed, now: float, silent_for: float) -> None:
        """The backstop: read what is new; a live run silent for `silent_for` seconds gets a liveness check."""
        if self.running and not self.read(out) and now - self.diagnosed_at >= silent_for:
            self.status = read_status(self.path)  # is the writer still alive, still sending heartbeats?
            e = _empty()
            self._diagnose(RunBatch(e.steps, e.epochs, e.layers, e.snapshots, [], 0), out)

    def _diagnose(self, batch: RunBatch, out: Feed) -> None:
        self.diagnosed_at = time.monotonic()
        if self.diagnoser is not None:
            try:
                new = self.diagnoser.update(batch, self.status)
            except Exception as exc:  # noqa: BLE001 - a rules bug costs this run's rule alerts, not the watcher
                self._warn_once("rules", f"rules failed on {self.name} ({type(exc).__name__}: {exc}); "
                                "its rule alerts are off")
                self.diagnoser = None
                new = []
            for f in new or ():
                out.finding(_as_dict(f))
        for e in batch.events:  # on_critical="heal" rollbacks (hooks/heal.py): each one is news
            d = e.get("data") if e.get("name") == "heal" else None
            if isinstance(d, dict):
                v = {k: str(d.get(k))[:80] for k in ("finding", "rolled_back_to", "action", "attempt")}  # a file's
                out.note(f"{self.name} healed at step {str(e.get('step'))[:20]}: {v['finding']}, rolled back to "
                         f"step {v['rolled_back_to']}, {v['action']} (attempt {v['attempt']})")
        state = self.status.get("state", "unknown")
        prev, self.state = self.state, state
        if state in ("finished", "stopped") and prev == "running":
            reason = self.status.get("reason")
            out.note(f"{self.name} {state} at step {self.status.get('step')}" + (f": {reason}" if reason else ""))

    def _warn_once(self, part: str, text: str) -> None:
        if part not in self._warned:
            self._warned.add(part)
            self.warn(text)
