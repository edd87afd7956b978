"""The rule engine and its catalogue: from a run's records, say what is wrong, with evidence and a fix.

Torch-free. Three callers get the same results from the same data:

    from babysit.rules import diagnose, OnlineDiagnoser
    findings = diagnose(monitor.reader.load_run("runs/exp1"))          # post-hoc
    d = OnlineDiagnoser(meta); new = d.update(tailer.poll(), status)  # online: O(new records)
"""

from babysit.rules.base import Context, Finding, Rule
from babysit.rules.catalogue import CAUSES, RULES
from babysit.rules.engine import OnlineDiagnoser, RuleWarning, diagnose, findings_of_run, sort_findings
from babysit.rules.thresholds import TABLE, THRESHOLDS

__all__ = [
    "Finding",
    "Rule",
    "Context",
    "diagnose",
    "findings_of_run",
    "OnlineDiagnoser",
    "THRESHOLDS",
    "TABLE",
    "RULES",
    "CAUSES",
    "RuleWarning",
    "sort_findings",
]
