"""The user-loop suite's registry: each case with whether it is healthy, its split, and how to score it.

Cases are `benchmarks.faults.registry.Case` objects, so the zoo's scorer (`benchmarks.faults.evaluate.score`)
judges them the same way. The split is fixed by the name alone, before any result is seen: within the
healthy and within the faulty cases, ordered by the SHA-1 of "userloops:" + name, the first third (rounded)
is "holdout" and the rest "tune". Nothing is tuned on the holdout.
"""

from __future__ import annotations

import hashlib

from benchmarks.faults.registry import Case

__all__ = ["Case", "faulty", "healthy", "all_cases", "get", "split_of"]

_CASES: dict[str, Case] = {}


def _register(family: str, is_healthy: bool, accept=(), wrong=(), expect=None):
    def wrap(fn):
        name = fn.__name__
        if name in _CASES:
            raise ValueError(f"duplicate case {name}")
        doc = " ".join((fn.__doc__ or "").split())
        _CASES[name] = Case(name, family, is_healthy, fn, tuple(accept), tuple(wrong), dict(expect or {}), doc)
        return fn
    return wrap


def faulty(family: str, accept, wrong=(), expect=None):
    """A loop with a bug: `accept` ids diagnose it with a fix the evidence supports; `wrong` ids mislead."""
    if not accept:
        raise ValueError("a faulty case needs at least one accepted rule id")
    return _register(family, False, accept, wrong, expect)


def healthy(family: str, expect=None):
    """A loop that trains well: any finding at warning or above is a false alarm."""
    return _register(family, True, expect=expect)


def _key(name: str) -> str:
    return hashlib.sha1(f"userloops:{name}".encode()).hexdigest()


def split_of(name: str, names: list[str]) -> str:
    """'holdout' for the first third (rounded) of `names` in hash order, else 'tune'."""
    order = sorted(names, key=_key)
    return "holdout" if order.index(name) < round(len(order) / 3) else "tune"


def all_cases() -> list[Case]:
    """Every case, faulty first, then by name; splits assigned."""
    from benchmarks.userloops import buggy_loops, healthy_loops  # noqa: F401 - importing registers the cases

    for is_healthy in (True, False):
        names = [c.name for c in _CASES.values() if c.healthy is is_healthy]
        for n in names:
            _CASES[n].split = split_of(n, names)
    return sorted(_CASES.values(), key=lambda c: (c.healthy, c.name))


def get(name: str) -> Case:
    cases = {c.name: c for c in all_cases()}
    if name not in cases:
        raise KeyError(f"no case {name!r}; see --list")
    return cases[name]
