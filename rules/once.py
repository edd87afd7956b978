"""A rule that says its piece once per run, then stops looking.

Most rules judge a condition that, once reported, needs no second look (the engine keeps one finding per rule
anyway): they set `self.done = True` and every later update costs nothing. The bookkeeping is here once.
"""

from __future__ import annotations

from typing import Any

from babysit.rules.base import Context, Finding, Rule

__all__ = ["OnceRule"]


class OnceRule(Rule):
    """Subclasses implement `examine(batch, ctx)` (what `update` would do) and set `self.done = True` when
    they have nothing more to say; from then on `update` returns nothing without calling them."""

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.done = False

    def update(self, batch: Any, ctx: Context) -> list[Finding]:
        return [] if self.done else self.examine(batch, ctx)

    def examine(self, batch: Any, ctx: Context) -> list[Finding]:  # pragma: no cover - interface
        raise NotImplementedError
