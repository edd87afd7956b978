"""At most N alerts per rule in any window of seconds; what is held back is summarized once the window frees.

W&B rate-limits alerts per title for the same reason: a NaN hitting 200 runs of a sweep at once is one problem,
not 200 pages. `RateLimited` wraps a sink with it: it asks `allow(rule, run)` before passing an alert on, and
`flush()` (every tick of the watcher) sends the summaries that are due as notes ("nonfinite_loss: 195 more
alert(s) held back ...").
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["RateLimit", "RateLimited"]


class RateLimit:
    """A sliding window per rule. `clock` is time.monotonic unless a test gives another."""

    def __init__(self, limit: int = 5, window: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.limit = max(1, int(limit))
        self.window = float(window)
        self.clock = clock
        self._sent: dict[str, deque[float]] = {}  # rule -> times of recent announcements
        self._held: dict[str, list[str]] = {}  # rule -> runs whose alert was held back

    def _recent(self, rule: str, now: float) -> deque[float]:
        sent = self._sent.setdefault(rule, deque())
        while sent and now - sent[0] >= self.window:
            sent.popleft()
        return sent

    def allow(self, rule: str, run: str) -> bool:
        """Whether an alert of `rule` about `run` may go out now; if not, it is held for a summary."""
        now = self.clock()
        sent = self._recent(rule, now)
        if len(sent) >= self.limit:
            self._held.setdefault(rule, []).append(run)
            return False
        sent.append(now)
        return True

    def due(self, force: bool = False) -> list[tuple[str, list[str]]]:
        """(rule, runs held back) whose window has room again (all of them when `force`); each counts as sent."""
        now = self.clock()
        out = []
        for rule in list(self._held):
            sent = self._recent(rule, now)
            if len(sent) >= self.limit and not force:
                continue
            sent.append(now)
            out.append((rule, self._held.pop(rule)))
        return out

    def next_due(self) -> float | None:
        """The clock time at which the earliest held summary may go out, or None when nothing is held."""
        times = [self._sent[r][0] + self.window for r in self._held if self._sent.get(r)]
        return min(times, default=None)

    def summary(self, rule: str, runs: list[str]) -> str:
        shown = ", ".join(runs[:5]) + (f" and {len(runs) - 5} more" if len(runs) > 5 else "")
        return (f"{rule}: {len(runs)} more alert(s) held back by the rate limit "
                f"({self.limit} per {self.window:g} s): {shown}")


class RateLimited:
    """A sink wrapper: alerts go on to `inner` within the rate limit; notes always do (they are few)."""

    def __init__(self, inner: Any, rate: RateLimit):
        self.inner = inner
        self.rate = rate
        self.sent = 0  # alerts passed on

    def emit(self, alert: Any) -> None:
        if self.rate.allow(alert.rule, alert.run):
            self.sent += 1
            self.inner.emit(alert)

    def note(self, text: str) -> None:
        self.inner.note(text)

    def flush(self, force: bool = False) -> None:
        """Send the summaries whose window has room again (all of them when `force`)."""
        for rule, runs in self.rate.due(force):
            self.inner.note(self.rate.summary(rule, runs))

    def next_due(self) -> float | None:
        return self.rate.next_due()

    def close(self, deadline: float | None = None) -> None:
        try:
            self.flush(force=True)
        finally:
            self.inner.close(deadline)
