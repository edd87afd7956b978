"""The engine of `babysit watch`: file events in, findings out, each announced once per run and rule.

Threads: watchdog's observer only marks runs dirty and wakes the main loop; the main loop does all reading
(offset-based through one `RunTailer` per run, so duplicated or missed events do no harm), runs the rules,
writes the findings log and the STOP file, and feeds the sinks. A slow backstop tick polls every live run,
rescans the roots, and feeds the rules the current status even when nothing was written: that is how a
stalled run (no heartbeat) or a crashed one (its process gone) is noticed. Both are the rules' `stalled_run`
(warning when stalled; critical, with evidence state "crashed", when the process is gone), so the watcher and
`babysit diagnose` say the same thing.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from babysit.monitor import runfile
from babysit.monitor.ratelimit import RateLimit
from babysit.monitor.reader import (
    RunBatch,
    RunReadError,
    RunTailer,
    find_runs,
    is_run_dir,
    read_status,
    records_to_batch,
)
from babysit.monitor.sinks import SEVERITIES, Alert, FindingsLog, printable, severity_rank
from watchdog.events import DirCreatedEvent, DirMovedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserverVFS

__all__ = ["Watcher", "WatchError", "STALL_RULE", "stall_thresholds"]

STALL_RULE = "stalled_run"
NO_STOP_RULES = frozenset({STALL_RULE})  # a stalled or dead process cannot act on a STOP file

# Only what can mean new data: appends (modified), atomic replacements of status.json and meta.json (moved),
# new run directories. Reading a file raises "opened"/"closed_no_write" events: subscribing to those would
# make the watcher's own reads wake it forever. Each flush of the hooks costs two or three events.
_EVENT_FILTER = [FileModifiedEvent, FileMovedEvent, DirCreatedEvent, DirMovedEvent]
_WATCHED_FILES = (runfile.EVENTS, runfile.FINDINGS, runfile.STATUS)


class WatchError(Exception):
    """Bad input for the watcher (a missing path, no rules engine): the message is one line for the user."""


def stall_thresholds(seconds: float) -> dict:
    """Rule thresholds that make `stalled_run` fire after exactly `seconds` without a heartbeat."""
    return {"stalled_min_s": float(seconds), "stalled_factor": 0.0}


def _signature(path: Path) -> tuple:
    """What changes when the writer appends to or replaces a file we read; equal means nothing new to read."""
    sig = []
    for name in _WATCHED_FILES:
        try:
            st = os.stat(path / name)
            sig.append((st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            sig.append(None)
    return tuple(sig)


def _scandir_quiet(path: Any) -> list[os.DirEntry]:
    """Listing for the polling observer: snapshots/ and hidden temp files hold nothing the watcher reads."""
    with os.scandir(path) as it:
        return [e for e in it if e.name != runfile.SNAPSHOTS and not e.name.startswith(".")]


def _as_dict(finding: Any) -> dict:
    return dict(finding.to_dict()) if hasattr(finding, "to_dict") else dict(finding)


def _default_diagnoser_factory() -> Callable[[dict, dict | None, Path], Any]:
    try:
        from babysit.rules import OnlineDiagnoser
    except ImportError:
        raise WatchError("the rules engine is not available (rules.OnlineDiagnoser is missing)") from None
    return lambda meta, thresholds, run_dir: OnlineDiagnoser(meta, thresholds, run_dir=run_dir)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher):
        self.watcher = watcher

    def on_any_event(self, event: Any) -> None:
        dest = getattr(event, "dest_path", "") or ""
        if not dest and not event.is_directory and os.path.basename(event.src_path).startswith("."):
            return  # a temporary file being written; its rename into place is the event that counts
        self.watcher.notify(event.src_path, dest)


class _Run:
    """What the watcher knows about one run."""

    def __init__(self, path: Path, name: str, tailer: RunTailer, diagnoser: Any, quiet: bool):
        self.path = path
        self.name = name
        self.tailer = tailer
        self.diagnoser = diagnoser
        self.quiet = quiet  # ended before the watcher saw it: evaluate, do not announce
        self.signature: tuple | None = None
        self.state = "unknown"  # effective state at the last look
        self.status: dict = {}
        self.announced: dict[str, int] = {}  # rule -> severity rank announced by this watcher
        self.logged: dict[str, int] = {}  # rule -> highest severity rank in findings.jsonl
        self.current: dict[str, dict] = {}  # rule -> worst finding known (for --once's exit status)
        self.pending: list[tuple[float, Alert]] = []  # log writes waiting out the hooks' grace period
        self.stop_requested = False
        self.diagnosed_at = 0.0  # time.monotonic() of the last rules update
        self.warned: set[str] = set()
        self.read_once = False  # a poll has succeeded at least once

    @property
    def running(self) -> bool:
        return self.state in ("running", "unknown")


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
        self.sinks = list(sinks)
        self.log = FindingsLog() if log else None
        if stall_after is not None:
            thresholds = {**(thresholds or {}), **stall_thresholds(stall_after)}
        self.thresholds = thresholds
        self.stop_rank = severity_rank(stop_on) if stop_on else None
        self.rate = RateLimit(rate_limit, rate_window)  # a wrapper around announcing, not part of it
        self.polling = polling
        self.poll_interval = float(poll_interval)
        self.backstop = float(backstop)
        if stall_after is not None:  # a short stall threshold (tests) is seen in time
            self.backstop = min(self.backstop, max(0.25, stall_after / 4))
        self.log_grace = float(log_grace)
        self.announce_ended = announce_ended
        self.errors = errors if errors is not None else sys.stderr
        self._factory = diagnoser_factory or _default_diagnoser_factory()
        self._empty = records_to_batch([])  # fed to the rules on a backstop tick when nothing is new

        self.roots: list[Path] = []
        self.explicit: list[Path] = []
        for t in targets:
            p = Path(os.path.abspath(t))
            if is_run_dir(p):
                self.explicit.append(p)
            elif p.is_dir():
                self.roots.append(p)
            elif p.exists():
                raise WatchError(f"not a directory: {t}")
            else:
                raise WatchError(f"no such directory: {t}")

        self.runs: dict[str, _Run] = {}
        self.bad: dict[str, str] = {}  # path -> the one-line reason it cannot be read
        self.mode = "none"  # "inotify" or "polling" once started
        self.announced_count = 0
        self._observer: Any = None
        self._handler = _Handler(self)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._dirty: set[str] = set()
        self._rescan = False
        self._next_backstop = time.monotonic() + self.backstop
        self._closed = False
        self._initial = True  # the first scan: runs that already ended are history, not news
        self._quiet_explicit = False  # evaluate_once: the caller reports an unreadable explicit run itself

    # ----------------------------------------------------------------- messages
    def warn(self, text: str) -> None:
        try:
            print(f"babysit watch: {printable(' '.join(str(text).split()))}", file=self.errors, flush=True)
        except (OSError, ValueError):
            pass

    def _note(self, text: str) -> None:
        for sink in self.sinks:
            try:
                sink.note(text)
            except Exception as exc:  # noqa: BLE001 - one sink failing never silences the others
                self.warn(f"{type(sink).__name__} failed: {type(exc).__name__}")

    # ----------------------------------------------------------------- observers
    def start(self) -> None:
        """Discover runs, read what they hold, and start observing the filesystem."""
        self.scan()
        self._start_observer()
        self._next_backstop = time.monotonic() + self.backstop

    def _schedule(self, observer: Any) -> None:
        for root in self.roots:
            observer.schedule(self._handler, str(root), recursive=True, event_filter=_EVENT_FILTER)
        for run in self.explicit:
            observer.schedule(self._handler, str(run), recursive=False, event_filter=_EVENT_FILTER)

    def _start_observer(self) -> None:
        if not self.polling:
            observer = Observer()
            try:
                observer.start()
                self._schedule(observer)
            except OSError as e:
                self._stop_observer(observer)
                why = {
                    errno.ENOSPC: "the inotify watch limit is reached (fs.inotify.max_user_watches)",
                    errno.EMFILE: "the inotify instance limit is reached (fs.inotify.max_user_instances)",
                }.get(e.errno, f"inotify failed ({e.strerror or e})")
                self.warn(f"{why}; falling back to polling every {self.poll_interval:g} s")
            else:
                self._observer, self.mode = observer, "inotify"
                return
        observer = PollingObserverVFS(stat=os.stat, listdir=_scandir_quiet, polling_interval=self.poll_interval)
        observer.start()
        self._schedule(observer)
        self._observer, self.mode = observer, "polling"

    @staticmethod
    def _stop_observer(observer: Any) -> None:
        try:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout=2.0)
        except Exception:  # noqa: BLE001 - tearing down a half-started observer
            pass

    def _check_observer(self) -> None:
        """An inotify emitter that died (a watch limit hit while adding a new directory) means polling."""
        obs = self._observer
        if self.mode != "inotify" or obs is None:
            return
        if obs.is_alive() and all(e.is_alive() for e in list(obs.emitters)):
            return
        self._stop_observer(obs)
        self.warn(f"inotify stopped delivering events; falling back to polling every {self.poll_interval:g} s")
        self.polling = True
        self._start_observer()

    def notify(self, src: str, dest: str = "") -> None:
        """Called from the observer thread: mark the run a path belongs to as dirty and wake the loop."""
        with self._lock:
            for p in (src, dest):
                if not p:
                    continue
                key = self._run_key(p)
                if key is None:
                    self._rescan = True  # maybe a new run
                else:
                    self._dirty.add(key)
        self._wake.set()

    def _run_key(self, path: str) -> str | None:
        p = path
        for _ in range(3):  # the run dir itself, a file in it, a file in its snapshots/
            if p in self.runs:
                return p
            p = os.path.dirname(p)
        return None

    # ----------------------------------------------------------------- runs
    def scan(self) -> None:
        """Find runs not seen yet (under the roots, or the given runs) and read each one whole."""
        self._discover()

    def _discover(self) -> None:
        found: list[tuple[Path, Path | None]] = [(p, None) for p in self.explicit]
        for root in self.roots:
            found.extend((p, root) for p in find_runs(root))
        for path, root in found:
            if str(path) not in self.runs and str(path) not in self.bad:
                try:
                    self._add_run(path, root)
                except WatchError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one bad run never takes the others down
                    self._skip(path, self._display(path, root), f"{type(exc).__name__}: {exc}")
        self._initial = False  # runs found from now on are new, even if they already ended (a short run)

    @staticmethod
    def _display(path: Path, root: Path | None) -> str:
        """The run's name as people see it: relative to its root, undecodable bytes and controls escaped."""
        name = path.relative_to(root).as_posix() if root is not None and path != root else path.name
        return printable(name)

    def _skip(self, path: Path, name: str, why: str) -> None:
        """Leave one run out, with one line saying why; the others go on."""
        self.runs.pop(str(path), None)
        self.bad[str(path)] = why
        if str(path) not in map(str, self.explicit) or not self._quiet_explicit:
            self.warn(f"skipped {name}: {why}")

    def _add_run(self, path: Path, root: Path | None) -> None:
        name = self._display(path, root)
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
        run = _Run(path, name, tailer, diagnoser, quiet=ended and self._initial and not self.announce_ended)
        self.runs[str(path)] = run
        self._process(run)
        run.quiet = False  # from now on, what changes is news

    def _process(self, run: _Run) -> bool:
        """Read what is new in one run and act on it. Returns False when nothing had changed on disk."""
        sig = _signature(run.path)
        if sig == run.signature:
            return False
        run.signature = sig
        while True:  # a poll reads a bounded chunk: a big run's first read streams through the rules
            try:
                batch = run.tailer.poll()
            except RunReadError as e:
                if not run.read_once:  # never readable (a FIFO for a log): one "skipped" line, like a bad meta
                    self._skip(run.path, run.name, str(e))
                else:  # it was: a transient state on a shared filesystem, maybe; keep trying, say it once
                    self._warn_run(run, "read", str(e))
                return False
            run.read_once = True
            run.status = run.tailer.status
            error = run.status.get("error")
            if isinstance(error, dict) and error.get("type") == "CorruptStatus":
                self._warn_run(run, "status", f"{run.name}: {error.get('message')}; its state reads as unknown")
            logged = [e for e in batch.events if e.get("type") == "finding"]
            if logged:
                batch.events = [e for e in batch.events if e.get("type") != "finding"]
                for f in logged:  # written by anyone: typed before use
                    self._consider(run, runfile.clean_finding({k: v for k, v in f.items() if k != "type"}),
                                   from_log=True)
            self._diagnose(run, batch)
            run.tailer.findings.clear()  # the watcher keeps what it announced, not the whole findings log
            if not getattr(run.tailer, "behind", False):
                return True

    def _diagnose(self, run: _Run, batch: RunBatch) -> None:
        run.diagnosed_at = time.monotonic()
        if run.diagnoser is not None:
            try:
                new = run.diagnoser.update(batch, run.status)
            except Exception as exc:  # noqa: BLE001 - a rules bug costs this run's rule alerts, not the watcher
                self._warn_run(run, "rules", f"rules failed on {run.name} ({type(exc).__name__}: {exc}); "
                               "its rule alerts are off")
                run.diagnoser = None
                new = []
            for f in new or ():
                self._consider(run, _as_dict(f))
        for e in batch.events:  # on_critical="heal" rollbacks (hooks/heal.py): each one is news
            d = e.get("data") if e.get("name") == "heal" else None
            if isinstance(d, dict) and not run.quiet:
                v = {k: str(d.get(k))[:80] for k in ("finding", "rolled_back_to", "action", "attempt")}  # a file's
                self._note(f"{run.name} healed at step {str(e.get('step'))[:20]}: {v['finding']}, rolled back to "
                           f"step {v['rolled_back_to']}, {v['action']} (attempt {v['attempt']})")
        state = run.status.get("state", "unknown")
        prev, run.state = run.state, state
        if state in ("finished", "stopped") and prev == "running" and not run.quiet:
            reason = run.status.get("reason")
            self._note(f"{run.name} {state} at step {run.status.get('step')}" + (f": {reason}" if reason else ""))

    def _warn_run(self, run: _Run, part: str, text: str) -> None:
        if part not in run.warned:
            run.warned.add(part)
            self.warn(text)

    # ----------------------------------------------------------------- findings
    def _consider(self, run: _Run, f: dict, from_log: bool = False) -> None:
        """One finding, from the rules or from the run's findings log: announce it if it is news."""
        rule = str(f.get("rule", "?"))
        rank = severity_rank(f.get("severity"))
        cur = run.current.get(rule)
        if cur is None or rank >= severity_rank(cur.get("severity")):
            run.current[rule] = f
        if from_log:
            run.logged[rule] = max(run.logged.get(rule, -1), rank)
        prev = run.announced.get(rule, -1)
        if rank <= prev:
            return
        run.announced[rule] = rank
        if run.quiet:
            return
        alert = Alert(run.name, run.path, f, previous=SEVERITIES[prev] if prev >= 0 else None)
        if self.log is not None and not from_log:
            # the hooks' own rules may log the same finding just after the events that caused it: wait for it
            hooks_may_log = run.status.get("recorded_state") == "running" and rule != STALL_RULE
            run.pending.append((time.monotonic() + (self.log_grace if hooks_may_log else 0.0), alert))
        self._announce(alert)
        self._maybe_stop(run, rule, rank, f)

    def _announce(self, alert: Alert) -> None:
        if not self.rate.allow(alert.rule, alert.run):
            return
        self.announced_count += 1
        rank = severity_rank(alert.severity)
        for sink in self.sinks:
            if rank < severity_rank(getattr(sink, "min_severity", "info")):
                continue
            try:
                sink.emit(alert)
            except Exception as exc:  # noqa: BLE001 - one sink failing never silences the others
                self.warn(f"{type(sink).__name__} failed: {type(exc).__name__}")

    def _flush_suppressed(self, force: bool = False) -> None:
        for rule, runs in self.rate.due(force):
            self._note(self.rate.summary(rule, runs))

    def _maybe_stop(self, run: _Run, rule: str, rank: int, f: dict) -> None:
        if self.stop_rank is None or rank < self.stop_rank or rule in NO_STOP_RULES or run.stop_requested:
            return
        if run.status.get("state") != "running":
            return
        run.stop_requested = True
        stop = run.path / runfile.STOP
        if stop.exists():
            return
        reason = f"{rule}: {' '.join(str(f.get('message', '')).split())}"
        try:
            runfile.write_json_atomic(stop, {"reason": reason, "by": "babysit watch", "time": time.time()})
        except OSError as e:
            self.warn(f"cannot write {stop}: {e.strerror or e}")
            return
        self._note(f"{run.name}: asked the run to stop ({rule}); it stops at its next flush")

    def _flush_pending(self, force: bool = False) -> None:
        now = time.monotonic()
        for run in list(self.runs.values()):
            if not run.pending or (not force and min(d for d, _ in run.pending) > now):
                continue
            self._guarded(run, self._process, run)  # catch up: the hooks may have logged the same finding meanwhile
            if str(run.path) not in self.runs:
                continue  # that run was just skipped
            due = [a for d, a in run.pending if force or d <= now]
            run.pending = [(d, a) for d, a in run.pending if not (force or d <= now)]
            for alert in due:
                rule, rank = alert.rule, severity_rank(alert.severity)
                if run.logged.get(rule, -1) >= rank:
                    continue
                try:
                    self.log.write(alert)
                except OSError as e:
                    self._warn_run(run, "log", f"cannot write the findings log of {run.name}: {e.strerror or e}")
                    continue
                run.logged[rule] = rank

    # ----------------------------------------------------------------- loop
    def tick(self, full: bool = False) -> None:
        """Process what the observer reported; every `backstop` seconds (or when `full`), check everything."""
        now = time.monotonic()
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            rescan, self._rescan = self._rescan, False
        backstop = full or now >= self._next_backstop
        if backstop:
            self._next_backstop = now + self.backstop
            self._check_observer()
            rescan = True
        if rescan:
            self._discover()
        for key in dirty:
            run = self.runs.get(key)
            if run is not None:
                self._guarded(run, self._process, run)
        if backstop:
            for run in list(self.runs.values()):
                self._guarded(run, self._check_live, run, now)
        self._flush_pending()
        self._flush_suppressed()

    def _check_live(self, run: _Run, now: float) -> None:
        if run.running and not self._process(run) and now - run.diagnosed_at >= self.backstop * 0.9:
            # silent since the last check: is the writer still alive, still sending heartbeats?
            run.status = read_status(run.path)
            self._diagnose(run, self._empty_batch())

    def _guarded(self, run: _Run, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) for one run; anything it raises drops that run (one line), never the watcher."""
        try:
            return fn(*args)
        except WatchError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad run never takes the others down
            self._skip(run.path, run.name, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
            return None

    def _empty_batch(self) -> RunBatch:
        e = self._empty
        return RunBatch(e.steps, e.epochs, e.layers, e.snapshots, [], 0)

    def _next_wake(self) -> float:
        t = self._next_backstop
        for run in self.runs.values():
            for d, _ in run.pending:
                t = min(t, d)
        held = self.rate.next_due()
        if held is not None:
            t = min(t, held)
        return max(0.005, t - time.monotonic())

    def run_forever(self, stop: threading.Event) -> None:
        """Loop until `stop` is set (the caller turns Ctrl-C into that)."""
        while not stop.is_set():
            self._wake.wait(self._next_wake())
            self._wake.clear()
            if stop.is_set():
                break
            self.tick()

    def wake(self) -> None:
        self._wake.set()

    def evaluate_once(self) -> int:
        """Read everything present, announce, and return the worst severity rank found (-1 for none).

        A run named explicitly that cannot be read is not warned about: it is left in `bad` for the caller
        to report (as its one error line); unreadable runs found under a root are warned about as usual.
        """
        self._quiet_explicit = True
        self._discover()  # reads each run whole and runs the rules, liveness included
        self._flush_pending(force=True)
        self._flush_suppressed(force=True)
        return self.worst()

    @property
    def corrupt_lines(self) -> int:
        """Log lines skipped as corrupt so far, over all runs."""
        return sum(r.tailer.corrupt_lines for r in self.runs.values())

    def worst(self) -> int:
        ranks = [severity_rank(f.get("severity")) for r in self.runs.values() for f in r.current.values()]
        return max(ranks, default=-1)

    def close(self, deadline: float | None = None) -> None:
        """Stop observing, write pending log lines, summarize held-back alerts, drain the sinks until deadline."""
        if self._closed:
            return
        self._closed = True
        if self._observer is not None:
            self._stop_observer(self._observer)
            self._observer = None
        try:
            self._flush_pending(force=True)
            self._flush_suppressed(force=True)
        finally:
            for sink in self.sinks:
                try:
                    sink.close(deadline)
                except Exception:  # noqa: BLE001
                    pass
