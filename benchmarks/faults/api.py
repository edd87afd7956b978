"""The three babysit calls the zoo uses, in one place: record a run, load it, diagnose it."""

from __future__ import annotations

from babysit import Run
from babysit.monitor.reader import load_run
from babysit.rules import diagnose

__all__ = ["Run", "load_run", "diagnose"]
