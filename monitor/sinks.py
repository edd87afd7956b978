"""Where `babysit watch` sends an alert: the terminal, the run's findings log, a webhook, a command.

A sink has `emit(alert)`, `note(text)` (a line that is not a finding: a suppression summary) and
`close(deadline)`; `Fanout` makes several sinks one (the watcher wraps that in the rate limit and --stop-on,
monitor/ratelimit.py and monitor/watch_stop.py). The terminal and the log are written inline (microseconds);
the webhook and the command run in a background thread behind a bounded queue, so a slow or dead endpoint never
delays the watcher or the other sinks. The webhook URL is a secret (it is the credential): it is never printed
or logged.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from babysit.monitor import runfile
from babysit.rules.base import SEVERITIES, severity_rank  # the one scale; re-exported

__all__ = [
    "SEVERITIES",
    "severity_rank",
    "Alert",
    "TerminalSink",
    "Fanout",
    "FindingsLog",
    "WebhookSink",
    "ExecSink",
    "printable",
    "warn_line",
]

_COLOURS = {"info": "\033[36m", "warning": "\033[33m", "critical": "\033[1;31m"}
_DIM, _RESET = "\033[2m", "\033[0m"


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}


def printable(text: Any) -> str:
    """Text safe for a terminal: control characters (an ANSI escape in a run name could rewrite the screen)
    and undecodable bytes of a non-UTF-8 file name are shown as backslash escapes, never sent raw."""
    s = str(text)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode's surrogates: show the original bytes
        s = s.encode("utf-8", "surrogateescape" if _escapable(s) else "backslashreplace").decode("utf-8",
                                                                                                  "backslashreplace")
    return s.translate(_CONTROL)


def warn_line(text: Any, stream: IO[str] | None = None) -> None:
    """`babysit watch: <text>` as one printable line on stderr (or `stream`): the watcher's own troubles.
    A closed or broken stream is not an error: the watcher goes on."""
    line = f"babysit watch: {printable(' '.join(str(text).split()))}"
    try:
        print(line, file=stream if stream is not None else sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _escapable(s: str) -> bool:
    try:
        s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def _one_line(text: Any, limit: int = 400) -> str:
    s = printable(" ".join(str(text).split()))
    return s if len(s) <= limit else s[: limit - 3] + "..."


@dataclass
class Alert:
    """One finding about one run, as the watcher announces it."""

    run: str  # the name shown to people (path relative to the watched root)
    run_dir: Path
    finding: dict
    previous: str | None = None  # the severity announced before, when this is an escalation
    time: float = field(default_factory=time.time)

    @property
    def rule(self) -> str:
        return str(self.finding.get("rule", "?"))

    @property
    def severity(self) -> str:
        s = self.finding.get("severity")
        return s if s in SEVERITIES else "info"

    @property
    def first_fix(self) -> str | None:
        fix = self.finding.get("fix")
        if isinstance(fix, (list, tuple)):
            fix = fix[0] if fix else None
        return _one_line(fix, 200) if fix else None

    def text(self) -> str:
        """The plain one-line form: `CRITICAL exp1 nonfinite_loss: loss is NaN at step 212 | fix: ...`."""
        return self._line(color=False)

    def _line(self, color: bool) -> str:
        """The one-line form, with ANSI colours for a terminal when `color`."""
        c, dim, reset = (_COLOURS[self.severity], _DIM, _RESET) if color else ("", "", "")
        severity = f"{self.severity.upper():<8}" if color else self.severity.upper()  # aligned on a terminal
        line = (f"{c}{severity}{reset} {_one_line(self.run)} {c}{_one_line(self.rule, 200)}{reset}: "
                f"{_one_line(self.finding.get('message', ''))}")
        if self.previous:
            line += f" (was {self.previous})"
        if self.first_fix:
            line += f" {dim}|{reset} fix: {self.first_fix}"
        return line

    def record(self) -> dict:
        """The finding as the log and the command get it: the rule's dict plus where and who."""
        return {**self.finding, "run": self.run, "run_dir": str(self.run_dir), "source": "watch",
                "time": self.time}

    def payload(self) -> dict:
        """JSON for a Slack-compatible incoming webhook: `text` for people, structured fields for programs."""
        return {
            "text": f"babysit: {self.text()}",
            "run": self.run,
            "run_dir": str(self.run_dir),
            "host": socket.gethostname(),
            "rule": self.rule,
            "severity": self.severity,
            "step": self.finding.get("step"),
            "message": self.finding.get("message"),
            "fix": self.finding.get("fix"),
            "finding": runfile.encode(self.finding),
        }


class TerminalSink:
    """One line per alert on stdout; coloured only when the stream is a terminal (and NO_COLOR is unset)."""

    def __init__(self, stream: IO[str] | None = None, color: bool | None = None):
        self.stream = stream if stream is not None else sys.stdout
        if color is None:
            isatty = getattr(self.stream, "isatty", None)
            color = bool(isatty and isatty()) and not os.environ.get("NO_COLOR")
        self.color = color

    def _write(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not take the watcher down
            pass

    def emit(self, alert: Alert) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(alert.time))
        self._write(f"{_DIM}{stamp}{_RESET} {alert._line(True)}" if self.color else f"{stamp} {alert.text()}")

    def note(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        text = printable(text)
        self._write(f"{_DIM}{stamp} {text}{_RESET}" if self.color else f"{stamp} {text}")

    def close(self, deadline: float | None = None) -> None:
        pass


class Fanout:
    """The sinks as one: each gets every note and the alerts at or above its `min_severity` (default info);
    one sink failing (one line on stderr) never silences the others."""

    def __init__(self, sinks: Iterable[Any] = (), warn: Callable[[str], None] = lambda text: None):
        self.sinks = list(sinks)
        self.warn = warn

    def emit(self, alert: Alert) -> None:
        rank = severity_rank(alert.severity)
        for sink in self.sinks:
            if rank >= severity_rank(getattr(sink, "min_severity", "info")):
                self._call(sink, sink.emit, alert)

    def note(self, text: str) -> None:
        for sink in self.sinks:
            self._call(sink, sink.note, text)

    def _call(self, sink: Any, method: Callable[[Any], None], arg: Any) -> None:
        try:
            method(arg)
        except Exception as exc:  # noqa: BLE001 - one sink failing never silences the others
            self.warn(f"{type(sink).__name__} failed: {type(exc).__name__}")

    def close(self, deadline: float | None = None) -> None:
        for sink in self.sinks:
            try:
                sink.close(deadline)
            except Exception:  # noqa: BLE001 - closing is best effort: the others still get their deadline
                pass


class FindingsLog:
    """Appends the watcher's findings to the run's findings.jsonl (source "watch"), one write per line.

    Only to a regular file that is really inside the run: a findings.jsonl that is a symlink (to ~/.bashrc, say)
    or a FIFO is refused with an OSError, never written through or waited on.
    """

    def write(self, alert: Alert) -> None:
        rec = alert.record()
        rec.pop("run_dir", None)
        runfile.append_findings(alert.run_dir, [rec])  # refuses a symlink or a FIFO with an OSError


class _Worker:
    """A daemon thread draining a bounded queue; `close(deadline)` waits for it at most until the deadline."""

    def __init__(self, name: str, errors: IO[str] | None, maxsize: int = 1000):
        self.name = name
        self.errors = errors if errors is not None else sys.stderr
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.closing = threading.Event()
        self.dropped = 0
        self._idle = threading.Condition()
        self._busy = 0
        self._thread = threading.Thread(target=self._loop, name=f"babysit-{name}", daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                self.warn(f"{self.name} is not keeping up; dropping alerts for it (the terminal still has them)")

    def warn(self, text: str) -> None:
        warn_line(text, self.errors)

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            try:
                self.handle(item)
            except Exception as exc:  # noqa: BLE001 - a sink must never kill its thread
                self.warn(f"{self.name} failed: {type(exc).__name__}")
            finally:
                self.queue.task_done()

    def handle(self, item: Any) -> None:
        raise NotImplementedError

    def pending(self) -> int:
        return self.queue.unfinished_tasks

    def close(self, deadline: float | None = None) -> None:
        """Deliver what is queued until `deadline` (time.monotonic()), then give up on the rest."""
        self.closing.set()
        while self.pending() and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.01)
        left = self.pending()
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass
        if left:
            self.warn(f"{self.name}: {left} alert(s) not delivered before exit")


class WebhookSink(_Worker):
    """POST each alert as JSON to an incoming webhook, with a timeout and retries with exponential backoff.

    4xx answers other than 429 are not retried (the request itself is wrong); 429 honours Retry-After.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 1.0,
        errors: IO[str] | None = None,
    ):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("--webhook must be an http:// or https:// URL")  # never echo the URL: it is a secret
        self._url = url
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.delivered = 0
        self.failed = 0
        super().__init__("webhook", errors)

    def __repr__(self) -> str:  # keep the secret out of any debug output
        return "WebhookSink(<redacted>)"

    def emit(self, alert: Alert) -> None:
        self.put((alert.payload(), f"{alert.rule} on {alert.run}"))

    def note(self, text: str) -> None:
        self.put(({"text": f"babysit: {text}"}, "a note"))

    def _post(self, body: bytes) -> None:
        req = urllib.request.Request(
            self._url, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "babysit-watch"},
        )
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - scheme checked above
            resp.read(65536)

    def handle(self, item: tuple[dict, str]) -> None:
        payload, what = item
        body = json.dumps(payload, allow_nan=False).encode("utf-8")
        why = "unknown error"
        for attempt in range(self.retries + 1):
            wait = self.backoff * (2**attempt)
            try:
                self._post(body)
                self.delivered += 1
                return
            except urllib.error.HTTPError as e:
                why = f"HTTP {e.code}"
                if e.code == 429:
                    try:
                        wait = max(wait, min(float(e.headers.get("Retry-After", wait)), 30.0))
                    except (TypeError, ValueError):
                        pass
                elif 400 <= e.code < 500:
                    break
            except urllib.error.URLError as e:
                why = "timed out" if isinstance(e.reason, TimeoutError) else "connection failed"
            except TimeoutError:
                why = "timed out"
            except (OSError, ValueError) as e:
                why = type(e).__name__
            if attempt < self.retries and not self.closing.wait(wait):
                continue
            if self.closing.is_set():
                break
        self.failed += 1
        self.warn(f"webhook delivery of {what} failed ({why})")


class ExecSink(_Worker):
    """Run a shell command per alert with the finding as JSON on stdin; its output goes to stderr.

    Commands run one at a time in a background thread, each killed (with its process group) after `timeout`.
    The environment carries BABYSIT_RUN, BABYSIT_RUN_DIR, BABYSIT_RULE and BABYSIT_SEVERITY.
    """

    def __init__(self, command: str, *, timeout: float = 30.0, errors: IO[str] | None = None):
        if not command.strip():
            raise ValueError("--exec needs a command")
        self.command = command
        self.timeout = float(timeout)
        self.ran = 0
        super().__init__("--exec command", errors)

    def emit(self, alert: Alert) -> None:
        self.put(alert)

    def note(self, text: str) -> None:
        pass  # a command is per finding

    def handle(self, alert: Alert) -> None:
        # The webhook URL is a credential: the command (the user's, but it may log its environment) never gets it.
        env = {k: v for k, v in os.environ.items() if k != "BABYSIT_WEBHOOK"}
        env |= {"BABYSIT_RUN": printable(alert.run), "BABYSIT_RUN_DIR": os.fspath(alert.run_dir),
                "BABYSIT_RULE": printable(alert.rule), "BABYSIT_SEVERITY": alert.severity}
        data = runfile.dumps_line(alert.record()).encode("utf-8")
        try:
            stdout = self.errors.fileno()
        except (AttributeError, OSError, ValueError):
            stdout = subprocess.DEVNULL
        proc = subprocess.Popen(  # noqa: S602 - the user's own command line; the finding goes on stdin only
            self.command, shell=True, stdin=subprocess.PIPE, stdout=stdout, stderr=stdout, env=env,
            start_new_session=True,
        )
        try:
            proc.communicate(data, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            self.warn(f"--exec command killed after {self.timeout:g} s for {alert.rule} on {alert.run}")
            return
        except BrokenPipeError:
            proc.wait()
        self.ran += 1
        if proc.returncode:
            self.warn(f"--exec command exited with status {proc.returncode} for {alert.rule} on {alert.run}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()
