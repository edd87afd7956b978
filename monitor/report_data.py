"""What goes into `babysit report`, before any HTML: the findings of the run (the same as `babysit diagnose` and
the dashboard show: findings_of_run) and the rules that could not judge it, and why (the engine's
`not_evaluated`, from each rule's `needs`). Torch-free; monitor/report.py turns this into the page.
"""

from __future__ import annotations

import warnings
from typing import Any

from babysit.monitor.runfile import clean_findings
from babysit.rules import RULES, RuleWarning, diagnose, findings_of_run
from babysit.rules.base import SEVERITIES
from babysit.rules.engine import Findings

__all__ = ["SEVERITY_ORDER", "diagnose_all", "not_evaluated", "rule_titles"]

SEVERITY_ORDER = tuple(reversed(SEVERITIES))  # the report's sections, worst first


def rule_titles() -> dict[str, str]:
    """Rule id -> title for every rule the engine runs."""
    return {r.id: r.title for r in RULES}


def _titled(skipped: Any) -> list[dict]:
    titles = rule_titles()
    return [{**s, "title": titles.get(s.get("rule"), str(s.get("rule")))} for s in skipped or () if isinstance(s, dict)]


def diagnose_all(run_data: Any, thresholds: dict | None = None,
                 posthoc: list | None = None) -> tuple[list[dict], list[str]]:
    """The findings of the run (a fresh diagnosis, plus what was recorded during training that it does not
    reproduce; what a heal undid shown as history), as dicts with `.not_evaluated`.

    `posthoc`: a diagnosis already made (streamed while reading, monitor/summarize.py); None: diagnose here.
    Returns (findings, problems: rules that broke, or an engine that would not load).
    """
    problems: list[str] = []
    recorded = clean_findings(run_data.findings)
    found = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            found = diagnose(run_data, thresholds) if posthoc is None else posthoc
        except Exception as e:  # noqa: BLE001
            problems.append(f"diagnosis failed ({type(e).__name__}: {e})")
    problems += [str(w.message) for w in caught if issubclass(w.category, RuleWarning)]
    merged = findings_of_run(found, recorded)
    return Findings([f.to_dict() for f in merged], _titled(merged.not_evaluated)), problems


def not_evaluated(run_data: Any, findings: Any = None) -> list[dict]:
    """The rules that could not judge the run, and why: [{"rule", "title", "why"}] (the engine's own account).

    `findings`: the result of `diagnose_all` (carries it); None: diagnose the run to find out.
    """
    skipped = getattr(findings, "not_evaluated", None)
    if skipped is None:
        skipped = getattr(diagnose_all(run_data)[0], "not_evaluated", [])
    return list(skipped)
