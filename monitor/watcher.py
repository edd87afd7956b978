"""The engine of `babysit watch`: observe -> diagnose -> announce -> sinks, composed.

- observe (watch_observe.py): watchdog's observer marks runs dirty and wakes the loop; a backstop tick every
  `backstop` seconds checks everything (new runs, liveness, missed events).
- diagnose (watch_diagnose.py): one RunDiagnosis per run, a RunTailer and the rules' OnlineDiagnoser; the
  backstop feeds the rules the current status even when nothing was written, so a stalled or crashed run is
  the rules' `stalled_run`, as in `babysit diagnose`.
- announce (watch_announce.py): each finding once per run and rule, again when it escalates; the findings log.
- sinks (sinks.py), behind two wrappers: --stop-on (watch_stop.py) around the rate limit (ratelimit.py)
  around the sinks.

All reading happens in the loop's thread (`tick`); the observer thread only marks. This class holds the runs
and the loop; what each part does is in its module, testable alone.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from babysit.monitor.ratelimit import RateLimit, RateLimited
from babysit.monitor.reader import RunReadError, RunTailer, read_status
from babysit.monitor.sinks import Fanout, FindingsLog, warn_line
from babysit.monitor.watch_announce import Announcer, LogQueue, News
from babysit.monitor.watch_diagnose import STALL_RULE, RunDiagnosis, Unreadable, stall_thresholds
from babysit.monitor.watch_observe import Observe, WatchError, discover, split_targets
from babysit.monitor.watch_stop import StopOn

__all__ = ["Watcher", "WatchError", "STALL_RULE", "stall_thresholds"]


def _default_diagnoser_factory() -> Callable[[dict, dict | None, Path], Any]:
    try:
        from babysit.rules import OnlineDiagnoser
    except ImportError:
        raise WatchError("the rules engine is not available (rules.OnlineDiagnoser is missing)") from None
    return lambda meta, thresholds, run_dir: OnlineDiagnoser(meta, thresholds, run_dir=run_dir)


class _Run:
    """One watched run: its diagnosis, what of it was announced, its log queue, and the feed joining them."""

    def __init__(self, diagnosis: RunDiagnosis, news: News, log: LogQueue | None, feed: Announcer):
        self.diagnosis, self.news, self.log, self.feed = diagnosis, news, log, feed

    path = property(lambda self: self.diagnosis.path)
    name = property(lambda self: self.diagnosis.name)
    tailer = property(lambda self: self.diagnosis.tailer)
    status = property(lambda self: self.diagnosis.status)
    running = property(lambda self: self.diagnosis.running)
    current = property(lambda self: self.news.current)  # rule -> worst finding known (--once's summary)


class Watcher:
    """Watch run directories (or roots holding them) and announce findings on the sinks.

    Args:
        targets: run directories and/or roots (a root is any directory that is not itself a run).
        sinks: objects with emit(Alert), note(str), close(deadline) and optionally `min_severity`.
        log: append the watcher's findings to each run's findings.jsonl (source "watch").
        thresholds: rule threshold overrides, passed to each run's OnlineDiagnoser.
        stop_on: "critical" or "warning": write the STOP file of a running run whose finding reaches it.
        stall_after: seconds without a heartbeat that make a running run stalled (default: the rules', from
            the run's own rhythm and at least a minute).
        rate_limit, rate_window: at most this many announcements per rule in any window (seconds); the rest
            are summarized in one line when the window frees up.
        polling: use a polling observer (network filesystems); otherwise inotify, falling back to polling.
        poll_interval: the polling observer's interval (seconds).
        backstop: seconds between full checks of every live run (liveness, stalls, missed events, new runs).
        log_grace: seconds a watcher finding waits before going into the log, so that the hooks' copy of the
            same finding (written just after the events that caused it) is not duplicated.
        announce_ended: also announce findings of runs that had already ended at the first scan (--once).
        diagnoser_factory: (meta, thresholds, run_dir) -> object with update(batch, status) returning
            findings; default rules.OnlineDiagnoser.
    """

    def __init__(
        self,
        targets: Iterable[str | os.PathLike],
        *,
        sinks: Iterable[Any] = (),
        log: bool = True,
        thresholds: dict | None = None,
        stop_on: str | None = None,
        stall_after: float | None = None,
        rate_limit: int = 5,
        rate_window: float = 60.0,
        polling: bool = False,
        poll_interval: float = 1.0,
        backstop: float = 5.0,
        log_grace: float = 1.0,
        announce_ended: bool = False,
        diagnoser_factory: Callable[[dict, dict | None, Path], Any] | None = None,
        errors: IO[str] | None = None,
    ):
        if stop_on not in (None, "warning", "critical"):
            raise WatchError(f"stop_on must be 'warning' or 'critical', not {stop_on!r}")
        self.errors = errors if errors is not None else sys.stderr
        if stall_after is not None:
            thresholds = {**(thresholds or {}), **stall_thresholds(stall_after)}
            backstop = min(float(backstop), max(0.25, stall_after / 4))  # a short stall (tests) is seen in time
        self.thresholds = thresholds
        self.log = FindingsLog() if log else None
        self.log_grace = float(log_grace)
        self.announce_ended = announce_ended
        self._factory = diagnoser_factory or _default_diagnoser_factory()

        # sinks, with the wrappers around them: stop-on sees every alert, the rate limit decides who gets it
        self.fanout = Fanout(sinks, self.warn)
        self.rate = RateLimited(self.fanout, RateLimit(rate_limit, rate_window))
        self.out = StopOn(self.rate, stop_on, self._is_running, self.warn) if stop_on else self.rate

        self.roots, self.explicit = split_targets(targets)
        self.runs: dict[str, _Run] = {}
        self.bad: dict[str, str] = {}  # path -> the one-line reason it cannot be read
        self.observe = Observe(self.roots, self.explicit, self.runs, polling=polling, poll_interval=poll_interval,
                               backstop=backstop, warn=self.warn)
        self._closed = False
        self._initial = True  # the first scan: runs that already ended are history, not news
        self._quiet_explicit = False  # evaluate_once: the caller reports an unreadable explicit run itself

    # ----------------------------------------------------------------- the public face
    @property
    def sinks(self) -> list:
        return self.fanout.sinks

    @sinks.setter
    def sinks(self, sinks: Iterable[Any]) -> None:
        self.fanout.sinks = list(sinks)

    @property
    def mode(self) -> str:
        """"inotify" or "polling" once started."""
        return self.observe.mode

    @property
    def corrupt_lines(self) -> int:
        """Log lines skipped as corrupt so far, over all runs."""
        return sum(r.tailer.corrupt_lines for r in self.runs.values())

    def worst(self) -> int:
        """The highest severity rank known over all runs, -1 for none."""
        return max((r.news.worst() for r in self.runs.values()), default=-1)

    def warn(self, text: str) -> None:
        warn_line(text, self.errors)

    # ----------------------------------------------------------------- runs
    def start(self) -> None:
        """Discover runs, read what they hold, and start observing the filesystem."""
        self.scan()
        self.observe.start()

    def scan(self) -> None:
        """Find runs not seen yet (under the roots, or the given runs) and read each one whole."""
        for path, name in discover(self.roots, self.explicit):
            if str(path) not in self.runs and str(path) not in self.bad:
                try:
                    self._add_run(path, name)
                except WatchError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one bad run never takes the others down
                    self._skip(path, name, f"{type(exc).__name__}: {exc}")
        self._initial = False  # runs found from now on are new, even if they already ended (a short run)

    def _add_run(self, path: Path, name: str) -> None:
        try:
            tailer = RunTailer(path)
        except RunReadError as e:
            self._skip(path, name, str(e))
            return
        try:
            diagnoser = self._factory(tailer.meta, self.thresholds, path)
        except ValueError as e:  # bad threshold overrides: bad input for every run alike
            raise WatchError(str(e)) from None
        ended = read_status(path).get("state") not in ("running", "unknown")
        diagnosis = RunDiagnosis(path, name, tailer, diagnoser, warn=self.warn)
        news = News(name, path, quiet=ended and self._initial and not self.announce_ended)
        log = LogQueue(self.log, warn=self.warn) if self.log is not None else None
        run = _Run(diagnosis, news, log, Announcer(news, self.out, log, self.log_grace, lambda: diagnosis.status))
        self.runs[str(path)] = run
        self._read(run)
        news.quiet = False  # from now on, what changes is news

    def _skip(self, path: Path, name: str, why: str) -> None:
        """Leave one run out, with one line saying why; the others go on."""
        self.runs.pop(str(path), None)
        self.bad[str(path)] = why
        if str(path) not in map(str, self.explicit) or not self._quiet_explicit:
            self.warn(f"skipped {name}: {why}")

    def _is_running(self, run_dir: Path) -> bool:
        run = self.runs.get(str(run_dir))
        return run is not None and run.status.get("state") == "running"

    def _read(self, run: _Run, now: float | None = None) -> None:
        """Read what is new in one run (with `now`: the backstop's check, liveness included)."""
        try:
            if now is None:
                run.diagnosis.read(run.feed)
            else:
                run.diagnosis.check(run.feed, now, self.observe.backstop * 0.9)
        except Unreadable as e:
            self._skip(run.path, run.name, str(e))

    def _guarded(self, run: _Run, now: float | None = None) -> None:
        """_read for one run; anything it raises drops that run (one line), never the watcher."""
        try:
            self._read(run, now)
        except WatchError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad run never takes the others down
            self._skip(run.path, run.name, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")

    def _flush_logs(self, force: bool = False) -> None:
        now = time.monotonic()
        for run in list(self.runs.values()):
            if run.log is None or not run.log.is_due(now, force):
                continue
            self._guarded(run)  # catch up: the hooks may have logged the same finding meanwhile
            if str(run.path) in self.runs:  # unless that run was just skipped
                run.log.flush(now, force)

    # ----------------------------------------------------------------- loop
    def notify(self, src: str, dest: str = "") -> None:
        """A path changed (the observer thread calls this): mark its run dirty and wake the loop."""
        self.observe.notify(src, dest)

    def wake(self) -> None:
        self.observe.wake()

    def tick(self, full: bool = False) -> None:
        """Process what the observer reported; every `backstop` seconds (or when `full`), check everything."""
        due = self.observe.take(full)
        if due.rescan:
            self.scan()
        for key in due.dirty:
            run = self.runs.get(key)
            if run is not None:
                self._guarded(run)
        if due.backstop:
            for run in list(self.runs.values()):
                self._guarded(run, due.now)
        self._flush_logs()
        self.rate.flush()

    def _next_wake(self) -> float:
        times = [self.observe.next_backstop, self.rate.next_due()]
        times += [r.log.next_due() for r in self.runs.values() if r.log is not None]
        return max(0.005, min(t for t in times if t is not None) - time.monotonic())

    def run_forever(self, stop: threading.Event) -> None:
        """Loop until `stop` is set (the caller turns Ctrl-C into that)."""
        while not stop.is_set():
            self.observe.wait(self._next_wake())
            if stop.is_set():
                break
            self.tick()

    def evaluate_once(self) -> int:
        """Read everything present, announce, and return the worst severity rank found (-1 for none).

        A run named explicitly that cannot be read is not warned about: it is left in `bad` for the caller
        to report (as its one error line); unreadable runs found under a root are warned about as usual.
        """
        self._quiet_explicit = True
        self.scan()  # reads each run whole and runs the rules, liveness included
        self._flush_logs(force=True)
        self.rate.flush(force=True)
        return self.worst()

    def close(self, deadline: float | None = None) -> None:
        """Stop observing, write pending log lines, summarize held-back alerts, drain the sinks until deadline."""
        if self._closed:
            return
        self._closed = True
        self.observe.stop()
        try:
            self._flush_logs(force=True)
        finally:
            self.out.close(deadline)  # the rate limit's summaries, then each sink
