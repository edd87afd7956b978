"""The findings of a run are one thing: `babysit diagnose`, the report and the dashboard show the same ones.

A healed run is the hard case: the hooks recorded a critical blow-up in findings.jsonl, then rolled back and
healed. Every view must show that blow-up as history (info, pointing at the `healed` finding), not as critical.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest

from babysit.monitor import runfile
from babysit.monitor.cli import main
from babysit.monitor.dashboard.state import RunsIndex, RunState
from babysit.monitor.report import write_report
from babysit.rules import Finding, findings_of_run
from benchmarks.heal import Setup, scenario
from benchmarks.synthetic import write_run


@pytest.fixture(scope="module")
def healed(tmp_path_factory):
    path = tmp_path_factory.mktemp("healed") / "r"
    res = scenario(Setup(fault="lr_high", factor=30, steps=300), path, heal=True)
    assert res.heals, "the scenario healed"
    return path


def _severities(findings) -> dict[str, str]:
    return {f["rule"]: f["severity"] for f in findings}


def test_a_healed_run_shows_the_same_findings_in_diagnose_the_report_and_the_dashboard(healed, tmp_path):
    recorded = runfile.clean_findings(json.loads(x) for x in (healed / runfile.FINDINGS).read_text().splitlines())
    critical = {f["rule"] for f in recorded if f["severity"] == "critical"}
    assert critical, "the hooks recorded the blow-up as critical: the case this test is about"

    out = io.StringIO()
    with redirect_stdout(out):
        main(["diagnose", str(healed), "--json"])
    diagnosed = _severities(json.loads(out.getvalue())["findings"])
    _, data = write_report(healed, tmp_path / "report.html")
    reported = _severities(data["findings"])
    state = RunState(healed)
    state.update()
    shown = _severities(state.findings())

    assert diagnosed == reported == shown
    assert "healed" in diagnosed and "critical" not in diagnosed.values()
    for rule in critical:  # the recorded blow-up is history in every view
        assert diagnosed.get(rule, "info") == "info", rule
    row = RunsIndex(healed.parent).refresh()[0].row()  # the runs table reads only the log: the same verdict
    assert row["worst_severity"] != "critical"


def test_recorded_findings_fill_gaps_only_and_keep_their_most_severe_line():
    fresh = [Finding("flat_loss", "Flat", "warning", 50, 1, "fresh")]
    log = [{"rule": "flat_loss", "severity": "critical", "step": 40, "message": "old", "source": "hooks"},
           {"rule": "custom", "severity": "info", "step": 1, "message": "a"},
           {"rule": "custom", "severity": "warning", "step": 2, "message": "b", "source": "watch"},
           {"rule": "custom", "severity": "info", "step": 3, "message": "c"},
           "not a dict"]
    found = {f.rule: f for f in findings_of_run(fresh, runfile.clean_findings(log))}
    assert found["flat_loss"].message == "fresh" and not found["flat_loss"].recorded
    assert found["custom"].message == "b" and found["custom"].recorded and found["custom"].source == "watch"
    assert found["custom"].to_dict()["recorded"] is True and "recorded" not in found["flat_loss"].to_dict()


def test_a_recorded_warning_that_the_run_later_resolved_shows_as_resolved():
    """The online rules warned (underfitting at epoch 5), then wrote that it resolved (a slow start): diagnose
    must not show the old warning as the run's state when the fresh diagnosis has nothing to say."""
    log = [{"rule": "underfitting", "severity": "warning", "step": 50, "message": "plateau", "source": "hooks"},
           {"rule": "underfitting", "severity": "info", "step": 90, "message": "plateau; later resolved",
            "evidence": {"resolved": True}, "source": "hooks"},
           {"rule": "flat_loss", "severity": "warning", "step": 10, "message": "flat", "source": "hooks"},
           {"rule": "flat_loss", "severity": "info", "step": 20, "message": "a note, not a resolution"}]
    found = {f.rule: f for f in findings_of_run([], runfile.clean_findings(log))}
    assert found["underfitting"].severity == "info" and found["underfitting"].evidence["resolved"] is True
    assert found["flat_loss"].severity == "warning"  # a later, milder line is not a resolution


def test_diagnose_shows_what_the_run_recorded_and_its_exit_status_follows(tmp_path, capsys):
    custom = {"rule": "custom_check", "title": "Custom", "severity": "critical", "step": 5, "epoch": None,
              "message": "seen by a check of the user's", "evidence": {}, "fix": [], "source": "hooks"}
    path = write_run(tmp_path / "r", steps=200, findings=[custom])
    assert main(["diagnose", str(path)]) == 1  # --fail-on critical: the recorded critical counts
    text = capsys.readouterr().out
    assert "[custom_check] Custom (step 5, recorded during training)" in text
    assert main(["diagnose", str(path), "--json"]) == 1
    (shown,) = [f for f in json.loads(capsys.readouterr().out)["findings"] if f["rule"] == "custom_check"]
    assert shown["severity"] == "critical" and set(shown) == {"rule", "severity", "step", "epoch", "message",
                                                              "evidence", "fix", "fix_ids", "caused_by", "root_cause"}
