"""`--stop-on`: a sink wrapper that asks a running run to stop when one of its findings is serious enough.

It passes every alert and note on unchanged, then writes the run's STOP file (`{"reason": "<rule>:
<message>", "by": "babysit watch", "time": ...}`), which `babysit.Run` reads at its next flush. Once per run,
never over a STOP file already there, never for a run that is not running, and never for `stalled_run`: a
stuck or dead process cannot act on it. Outside the rate limit: a held-back alert still stops its run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from babysit.monitor import runfile
from babysit.monitor.sinks import Alert, severity_rank
from babysit.monitor.watch_diagnose import STALL_RULE

__all__ = ["NO_STOP_RULES", "StopOn"]

NO_STOP_RULES = frozenset({STALL_RULE})  # a stalled or dead process cannot act on a STOP file


class StopOn:
    """Wrap `inner`; write STOP for a running run whose alert reaches `severity` ("warning" or "critical").

    Args:
        running: whether the run in this run directory is running now (its status as last read).
        warn: one line for the user when the STOP file cannot be written.
    """

    def __init__(self, inner: Any, severity: str, running: Callable[[Path], bool],
                 warn: Callable[[str], None] = lambda text: None):
        if severity not in ("warning", "critical"):
            raise ValueError(f"stop_on must be 'warning' or 'critical', not {severity!r}")
        self.inner = inner
        self.rank = severity_rank(severity)
        self.running = running
        self.warn = warn
        self.asked: set[str] = set()  # run directories asked to stop (or found already asked)

    def emit(self, alert: Alert) -> None:
        self.inner.emit(alert)
        self._maybe_stop(alert)

    def note(self, text: str) -> None:
        self.inner.note(text)

    def close(self, deadline: float | None = None) -> None:
        self.inner.close(deadline)

    def _maybe_stop(self, alert: Alert) -> None:
        key = str(alert.run_dir)
        if severity_rank(alert.severity) < self.rank or alert.rule in NO_STOP_RULES or key in self.asked:
            return
        if not self.running(alert.run_dir):
            return
        self.asked.add(key)
        stop = alert.run_dir / runfile.STOP
        if stop.exists():
            return
        reason = f"{alert.rule}: {' '.join(str(alert.finding.get('message', '')).split())}"
        try:
            runfile.write_json_atomic(stop, {"reason": reason, "by": "babysit watch", "time": time.time()})
        except OSError as e:
            self.warn(f"cannot write {stop}: {e.strerror or e}")
            return
        self.inner.note(f"{alert.run}: asked the run to stop ({alert.rule}); it stops at its next flush")
