"""Announce, the third part of `babysit watch`: which findings are news, the findings log, Alerts for the sinks.

A finding is news once per run and rule, and again only when its severity rises (info -> warning ->
critical). News becomes an `Alert` for the sink (in the watcher: stop-on around the rate limit around the
sinks). The watcher's findings also go into the run's findings.jsonl (source "watch"), but not at once: the
hooks' own rules may log the same finding just after the events that caused it, so a line waits out a grace
period and is written only if nobody logged that rule at that severity meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from babysit.monitor.sinks import SEVERITIES, Alert, FindingsLog, severity_rank
from babysit.monitor.watch_diagnose import STALL_RULE

__all__ = ["Announcer", "LogQueue", "News"]


class News:
    """Which findings of one run are news: once per rule, again only when the severity rises.

    `quiet` (a run that had ended before the watcher saw it): findings are remembered, nothing is announced.
    """

    def __init__(self, name: str, path: Path, quiet: bool = False):
        self.name = name
        self.path = path
        self.quiet = quiet
        self.announced: dict[str, int] = {}  # rule -> severity rank announced by this watcher
        self.current: dict[str, dict] = {}  # rule -> worst finding known (for --once's exit status)

    def consider(self, finding: dict) -> Alert | None:
        """The Alert to send when `finding` is news, else None."""
        rule = str(finding.get("rule", "?"))
        rank = severity_rank(finding.get("severity"))
        cur = self.current.get(rule)
        if cur is None or rank >= severity_rank(cur.get("severity")):
            self.current[rule] = finding
        prev = self.announced.get(rule, -1)
        if rank <= prev:
            return None
        self.announced[rule] = rank
        if self.quiet:
            return None
        return Alert(self.name, self.path, finding, previous=SEVERITIES[prev] if prev >= 0 else None)

    def worst(self) -> int:
        """The highest severity rank known for this run, -1 for none."""
        return max((severity_rank(f.get("severity")) for f in self.current.values()), default=-1)


class LogQueue:
    """The watcher's findings for one run's findings.jsonl, each written once it is due and only if the log
    does not already hold that rule at that severity (from the hooks, or from an earlier watcher)."""

    def __init__(self, writer: Any = None, warn: Callable[[str], None] = lambda text: None):
        self.writer = writer if writer is not None else FindingsLog()
        self.warn = warn
        self.pending: list[tuple[float, Alert]] = []  # (due time.monotonic(), alert)
        self.logged: dict[str, int] = {}  # rule -> highest severity rank in findings.jsonl
        self._warned = False

    def seen(self, finding: dict) -> None:
        """A line read from the run's findings.jsonl."""
        rule = str(finding.get("rule", "?"))
        self.logged[rule] = max(self.logged.get(rule, -1), severity_rank(finding.get("severity")))

    def add(self, alert: Alert, due: float) -> None:
        self.pending.append((due, alert))

    def next_due(self) -> float | None:
        return min((d for d, _ in self.pending), default=None)

    def is_due(self, now: float, force: bool = False) -> bool:
        return bool(self.pending) and (force or min(d for d, _ in self.pending) <= now)

    def flush(self, now: float, force: bool = False) -> int:
        """Write what is due (everything when `force`); returns how many lines were written."""
        due = [a for d, a in self.pending if force or d <= now]
        self.pending = [(d, a) for d, a in self.pending if not (force or d <= now)]
        written = 0
        for alert in due:
            rank = severity_rank(alert.severity)
            if self.logged.get(alert.rule, -1) >= rank:
                continue
            try:
                self.writer.write(alert)
            except OSError as e:
                if not self._warned:
                    self._warned = True
                    self.warn(f"cannot write the findings log of {alert.run}: {e.strerror or e}")
                continue
            self.logged[alert.rule] = rank
            written += 1
        return written


class Announcer:
    """One run's feed from the diagnose part: news goes to `sink` (and into `log`, after `grace` seconds when
    the hooks may log it themselves); notes go to `sink` unless the run is quiet.

    Args:
        sink: an object with emit(Alert) and note(str).
        log: the run's LogQueue, or None to leave findings.jsonl alone.
        status: the run's status as last read (its recorded state says whether the hooks are still logging).
    """

    def __init__(self, news: News, sink: Any, log: LogQueue | None = None, grace: float = 1.0,
                 status: Callable[[], dict] = dict):
        self.news = news
        self.sink = sink
        self.log = log
        self.grace = float(grace)
        self.status = status

    def finding(self, finding: dict, from_log: bool = False) -> None:
        """One finding, from the rules or from the run's findings log: announce it if it is news."""
        if from_log and self.log is not None:
            self.log.seen(finding)
        alert = self.news.consider(finding)
        if alert is None:
            return
        if self.log is not None and not from_log:
            hooks_may_log = self.status().get("recorded_state") == "running" and alert.rule != STALL_RULE
            self.log.add(alert, time.monotonic() + (self.grace if hooks_may_log else 0.0))
        self.sink.emit(alert)

    def note(self, text: str) -> None:
        if not self.news.quiet:
            self.sink.note(text)
