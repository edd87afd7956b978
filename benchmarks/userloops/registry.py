"""The user-loop suite's registry: each case with whether it is healthy, its split, and how to score it.

Cases are `benchmarks.faults.registry.Case` objects, so the zoo's scorer (`benchmarks.faults.evaluate.score`)
judges them the same way. The split is fixed by the name alone, before any result is seen: within the
healthy and within the faulty cases, ordered by the SHA-1 of "userloops:" + name, the first third (rounded)
is "holdout" and the rest "tune". Nothing is tuned on the holdout.

The cases of fresh_loops.py are their own split, "fresh": written after the others were tuned on, and left
out of the hash order above, so adding them moves no tune/holdout assignment. The cases of fresh2_loops.py
(a second batch written after those were tuned on) are the split "fresh2", out of the hash order the same way,
and those of fresh3_loops.py (a third batch, written after fresh2 was tuned on) the split "fresh3".
"""

from __future__ import annotations

import hashlib

from benchmarks.faults.registry import Case, Registry

__all__ = ["Case", "faulty", "healthy", "all_cases", "get", "split_of"]

_LOOPS = Registry()
_CASES = _LOOPS.cases
faulty = _LOOPS.faulty
healthy = _LOOPS.healthy


def _key(name: str) -> str:
    return hashlib.sha1(f"userloops:{name}".encode()).hexdigest()


def split_of(name: str, names: list[str]) -> str:
    """'holdout' for the first third (rounded) of `names` in hash order, else 'tune'."""
    order = sorted(names, key=_key)
    return "holdout" if order.index(name) < round(len(order) / 3) else "tune"


FRESH_MODULE = "benchmarks.userloops.fresh_loops"
FRESH_SPLITS = {FRESH_MODULE: "fresh", "benchmarks.userloops.fresh2_loops": "fresh2",
                "benchmarks.userloops.fresh3_loops": "fresh3"}


def _fresh_split(c: Case) -> str | None:
    """'fresh', 'fresh2' or 'fresh3' for a case of a fresh batch, else None (a hash-ordered case)."""
    return FRESH_SPLITS.get(getattr(c.fn, "__module__", ""))


def _is_fresh(c: Case) -> bool:
    return _fresh_split(c) is not None


def all_cases() -> list[Case]:
    """Every case, faulty first, then by name; splits assigned."""
    from benchmarks.userloops import (  # noqa: F401 - importing registers the cases
        buggy_loops,
        fresh2_loops,
        fresh3_loops,
        fresh_loops,
        healthy_loops,
    )

    for c in _CASES.values():
        if _is_fresh(c):
            c.split = _fresh_split(c)
    for is_healthy in (True, False):
        names = [c.name for c in _CASES.values() if c.healthy is is_healthy and not _is_fresh(c)]
        for n in names:
            _CASES[n].split = split_of(n, names)
    return sorted(_CASES.values(), key=lambda c: (c.healthy, c.name))


def get(name: str) -> Case:
    return _LOOPS.get(name, all_cases())
