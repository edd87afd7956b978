"""The test-set ledger: every look at a test split, so the second one can warn about false discovery.

The lecture: "once we have used a test set once, we should not use it again". A test split is named by its
`split_id` (trainer/data.py: a hash of dataset, seed and fractions), not by the run, because the danger is the
person looking at the same test examples again through any run. The ledger is therefore per user, one JSON line
per use:

    $BABYSIT_LEDGER, else $XDG_CACHE_HOME/babysit/test_ledger.jsonl, else ~/.cache/babysit/test_ledger.jsonl

(`babysit evaluate --ledger PATH` picks another, e.g. one on a shared disk next to a team's data). Each use is also
appended to the run's events.jsonl as an event `test_eval`, which the rule test_set_reuse reads.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from babysit.monitor import runfile

__all__ = ["ledger_path", "record_use", "uses"]

try:
    import fcntl
except ImportError:  # Windows: appends are still whole lines; only the count can race
    fcntl = None


def ledger_path(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("BABYSIT_LEDGER"):
        return Path(os.environ["BABYSIT_LEDGER"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "babysit" / "test_ledger.jsonl"


def _count(lines: list[str], split_id: str) -> int:
    n = 0
    for line in lines:
        try:
            n += json.loads(line).get("split_id") == split_id
        except (ValueError, AttributeError):
            continue  # a torn or foreign line is not a use
    return n


def uses(path: Path, split_id: str) -> int:
    """How many times this split's test set has been evaluated."""
    try:
        return _count(path.read_text(encoding="utf-8").splitlines(), split_id)
    except FileNotFoundError:
        return 0


def record_use(path: Path, split_id: str, **fields) -> int:
    """Append one use and return the count including it (under a file lock where the OS has one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"split_id": split_id, "time": time.time(), **fields}
    with open(path, "a+", encoding="utf-8") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = _count(f.read().splitlines(), split_id) + 1
        f.write(runfile.dumps_line({**entry, "uses": n}))
        f.flush()
    return n
