"""Observe, the first part of `babysit watch`: which runs exist, which have new data, when to check everything.

watchdog's observer thread only marks runs dirty and wakes the loop; it never reads. Events may come twice or
never (the readers downstream are offset-based, so either costs nothing): a backstop every `backstop` seconds
says "check everything": the observer's health, new runs under the roots, the liveness of every live run.
inotify is the default; polling is for network filesystems, where inotify sees nothing, and the fallback when
inotify refuses (a watch or instance limit) or its emitter dies.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog.events import DirCreatedEvent, DirMovedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserverVFS

from babysit.monitor import runfile
from babysit.monitor.reader import find_runs, is_run_dir
from babysit.monitor.sinks import printable

__all__ = ["Due", "Observe", "WatchError", "discover", "display_name", "split_targets"]

# Only what can mean new data: appends (modified), atomic replacements of status.json and meta.json (moved),
# new run directories. Reading a file raises "opened"/"closed_no_write" events: subscribing to those would
# make the watcher's own reads wake it forever. Each flush of the hooks costs two or three events.
_EVENT_FILTER = [FileModifiedEvent, FileMovedEvent, DirCreatedEvent, DirMovedEvent]


class WatchError(Exception):
    """Bad input for the watcher (a missing path, no rules engine): the message is one line for the user."""


def split_targets(targets: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """(roots, runs): a target that is a run directory is watched alone, any other directory is a root."""
    roots: list[Path] = []
    explicit: list[Path] = []
    for t in targets:
        p = Path(os.path.abspath(t))
        if is_run_dir(p):
            explicit.append(p)
        elif p.is_dir():
            roots.append(p)
        elif p.exists():
            raise WatchError(f"not a directory: {t}")
        else:
            raise WatchError(f"no such directory: {t}")
    return roots, explicit


def display_name(path: Path, root: Path | None) -> str:
    """The run's name as people see it: relative to its root, undecodable bytes and controls escaped."""
    name = path.relative_to(root).as_posix() if root is not None and path != root else path.name
    return printable(name)


def discover(roots: Iterable[Path], explicit: Iterable[Path]) -> list[tuple[Path, str]]:
    """(path, display name) of every run: the ones given by name, then those under each root."""
    found = [(p, display_name(p, None)) for p in explicit]
    for root in roots:
        found.extend((p, display_name(p, root)) for p in find_runs(root))
    return found


def _scandir_quiet(path: Any) -> list[os.DirEntry]:
    """Listing for the polling observer: snapshots/ and hidden temp files hold nothing the watcher reads."""
    with os.scandir(path) as it:
        return [e for e in it if e.name != runfile.SNAPSHOTS and not e.name.startswith(".")]


@dataclass
class Due:
    """What one tick of the loop has to do."""

    now: float  # time.monotonic() when it was asked
    dirty: set[str] = field(default_factory=set)  # runs (their path as str) the observer saw change
    rescan: bool = False  # look for new runs
    backstop: bool = False  # check every live run, whether or not an event came


class _Handler(FileSystemEventHandler):
    def __init__(self, observe: Observe):
        self.observe = observe

    def on_any_event(self, event: Any) -> None:
        dest = getattr(event, "dest_path", "") or ""
        if not dest and not event.is_directory and os.path.basename(event.src_path).startswith("."):
            return  # a temporary file being written; its rename into place is the event that counts
        self.observe.notify(event.src_path, dest)


class Observe:
    """Filesystem events for `roots` (recursive) and `runs` (one level), turned into `Due` work.

    Args:
        known: the runs being watched, by str(path) (the watcher's own dict): an event under one of them marks
            it dirty, any other event asks for a rescan (maybe a new run).
        polling, poll_interval: use the polling observer (seconds between polls) instead of inotify.
        backstop: seconds between "check everything" ticks.
        warn: one line for the user (the fallback to polling).
    """

    def __init__(
        self,
        roots: list[Path],
        runs: list[Path],
        known: Container[str],
        *,
        polling: bool = False,
        poll_interval: float = 1.0,
        backstop: float = 5.0,
        warn: Callable[[str], None] = lambda text: None,
    ):
        self.roots, self.runs, self.known = roots, runs, known
        self.polling = polling
        self.poll_interval = float(poll_interval)
        self.backstop = float(backstop)
        self.warn = warn
        self.mode = "none"  # "inotify" or "polling" once started
        self.next_backstop = time.monotonic() + self.backstop
        self._observer: Any = None
        self._handler = _Handler(self)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._dirty: set[str] = set()
        self._rescan = False

    # ----------------------------------------------------------------- the observer thread's side
    def notify(self, src: str, dest: str = "") -> None:
        """A path changed (called from the observer thread): mark its run dirty and wake the loop."""
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
            if p in self.known:
                return p
            p = os.path.dirname(p)
        return None

    # ----------------------------------------------------------------- the loop's side
    def wake(self) -> None:
        self._wake.set()

    def wait(self, timeout: float) -> None:
        """Sleep until an event (or `wake`) or `timeout` seconds."""
        self._wake.wait(timeout)
        self._wake.clear()

    def take(self, full: bool = False) -> Due:
        """The work piled up since the last call; every `backstop` seconds (or when `full`) everything."""
        due = Due(time.monotonic())
        with self._lock:
            due.dirty, self._dirty = self._dirty, set()
            due.rescan, self._rescan = self._rescan, False
        if full or due.now >= self.next_backstop:
            self.next_backstop = due.now + self.backstop
            self._check_observer()
            due.backstop = due.rescan = True
        return due

    # ----------------------------------------------------------------- starting and stopping
    def start(self) -> None:
        """Start observing; the first backstop is `backstop` seconds from now."""
        self._start_observer()
        self.next_backstop = time.monotonic() + self.backstop

    def _start_observer(self) -> None:
        if not self.polling:
            observer = Observer()
            try:
                observer.start()
                self._schedule(observer)
            except OSError as e:
                _stop(observer)
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

    def _schedule(self, observer: Any) -> None:
        for root in self.roots:
            observer.schedule(self._handler, str(root), recursive=True, event_filter=_EVENT_FILTER)
        for run in self.runs:
            observer.schedule(self._handler, str(run), recursive=False, event_filter=_EVENT_FILTER)

    def _check_observer(self) -> None:
        """An inotify emitter that died (a watch limit hit while adding a new directory) means polling."""
        obs = self._observer
        if self.mode != "inotify" or obs is None:
            return
        if obs.is_alive() and all(e.is_alive() for e in list(obs.emitters)):
            return
        _stop(obs)
        self.warn(f"inotify stopped delivering events; falling back to polling every {self.poll_interval:g} s")
        self.polling = True
        self._start_observer()

    def stop(self) -> None:
        if self._observer is not None:
            _stop(self._observer)
            self._observer = None


def _stop(observer: Any) -> None:
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=2.0)
    except Exception:  # noqa: BLE001 - tearing down a half-started observer
        pass
