"""The zoo's registry: every case with its family, whether it is healthy, its split, and how to score it.

A faulty case names the rule ids that count as the right diagnosis (`accept`: each one's fix is the cause's
fix) and the ones that mislead when they lead (`wrong`). An id may carry a direction, `update_ratio:high`,
which matches only a finding whose evidence says `direction: high`. `expect` gives ranges the case's own
final numbers must fall in, so `--check` shows that the fault (or the health) is really there.

Split: within each (family, healthy/faulty) group, cases are ordered by the SHA-1 of their name and the
first third (rounded) is "holdout", the rest "tune". The hash makes it stable and independent of file
order; stratifying by family keeps every kind of fault on both sides. Adding a case to a family can move at
most the one case at the boundary of that family.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Case", "Registry", "faulty", "healthy", "all_cases", "get"]


@dataclass
class Case:
    name: str
    family: str
    healthy: bool
    fn: Callable[[str], dict]
    accept: tuple[str, ...] = ()
    wrong: tuple[str, ...] = ()
    expect: dict = field(default_factory=dict)
    about: str = ""
    split: str = "tune"

    @property
    def kind(self) -> str:
        return "healthy" if self.healthy else "faulty"


class Registry:
    """Cases registered by decorators: `@registry.faulty(...)` or `@registry.healthy(...)` on a function that
    runs the case into a run directory. The zoo and the user-loop suite each keep one."""

    def __init__(self) -> None:
        self.cases: dict[str, Case] = {}

    def _register(self, family: str, is_healthy: bool, accept=(), wrong=(), expect=None):
        def wrap(fn):
            name = fn.__name__
            if name in self.cases:
                raise ValueError(f"duplicate case {name}")
            doc = " ".join((fn.__doc__ or "").split())
            self.cases[name] = Case(name, family, is_healthy, fn, tuple(accept), tuple(wrong), dict(expect or {}),
                                    doc)
            return fn
        return wrap

    def faulty(self, family: str, accept, wrong=(), expect=None):
        """A case with a fault: `accept` ids diagnose it with a fix the evidence supports; `wrong` ids mislead
        if they lead."""
        if not accept:
            raise ValueError("a faulty case needs at least one accepted rule id")
        return self._register(family, False, accept, wrong, expect)

    def healthy(self, family: str, expect=None):
        """A case that trains well: any finding at warning or above is a false alarm."""
        return self._register(family, True, expect=expect)

    def get(self, name: str, cases: list[Case]) -> Case:
        by_name = {c.name: c for c in cases}
        if name not in by_name:
            raise KeyError(f"no case {name!r}; see --list")
        return by_name[name]


_ZOO = Registry()
_CASES = _ZOO.cases
faulty = _ZOO.faulty
healthy = _ZOO.healthy


def _assign_splits() -> None:
    groups: dict[tuple[str, bool], list[Case]] = {}
    for c in _CASES.values():
        groups.setdefault((c.family, c.healthy), []).append(c)
    for members in groups.values():
        members.sort(key=lambda c: hashlib.sha1(c.name.encode()).hexdigest())
        n_hold = round(len(members) / 3)
        for i, c in enumerate(members):
            c.split = "holdout" if i < n_hold else "tune"


def all_cases() -> list[Case]:
    """Every case, faulty first, then by family and name; splits assigned."""
    from benchmarks.faults import cases  # noqa: F401 - importing the modules registers their cases

    _assign_splits()
    return sorted(_CASES.values(), key=lambda c: (c.healthy, c.family, c.name))


def get(name: str) -> Case:
    return _ZOO.get(name, all_cases())
