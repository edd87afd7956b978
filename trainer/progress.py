"""A one-line progress bar on stderr, rewritten in place (epochs of a run, trials of a search)."""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    def __init__(self, total: int, label: str, enabled: bool = True, width: int = 20):
        self.total = max(total, 1)
        self.label = label
        self.width = width
        self.enabled = enabled and sys.stderr is not None
        self.start = time.perf_counter()

    def update(self, done: int, text: str = "") -> None:
        if not self.enabled:
            return
        filled = int(self.width * done / self.total)
        elapsed = time.perf_counter() - self.start
        bar = "#" * filled + "." * (self.width - filled)
        sys.stderr.write(f"\r[{bar}] {self.label} {done}/{self.total}  {text}  {elapsed:.0f}s\033[K")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
