"""The rules' test fixtures: trained scenario runs shared by the whole session, and the latency report."""

from __future__ import annotations

from pathlib import Path

import pytest

# pytest's default (prepend) import mode puts this folder, which is no package, on sys.path for its conftest
# and test modules: scenarios.py, synth.py and userloops.py import by their plain names.
from scenarios import LATENCY


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """trained(scenario) -> the run directory; each scenario trains once per session."""
    from scenarios import train

    cache: dict[str, dict] = {}
    roots: dict[str, Path] = {}

    def get(scenario, **kwargs):
        if scenario.name not in cache:
            roots[scenario.name] = root = tmp_path_factory.mktemp(scenario.name)
            cache[scenario.name] = train(scenario, root / "run", **kwargs)
        return cache[scenario.name]

    get.root = lambda scenario: roots[scenario.name]
    return get


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not LATENCY:
        return
    tr = terminalreporter
    tr.section("babysit rules: detection latency (steps from fault onset to the finding)")
    for name, (onset, step, latency) in sorted(LATENCY.items()):
        tr.write_line(f"  {name:<50} onset {onset:>5}  finding at {step:>5}  latency {latency:>5} steps")
