"""The fault zoo's evaluator: scoring rules on hand-made findings, splits, and two real cases end to end."""

from __future__ import annotations

from collections import Counter

from benchmarks.faults.evaluate import lead_finding, run_case, score, summarize
from benchmarks.faults.registry import Case, all_cases, get


def _case(healthy=False, accept=("lr_too_high",), wrong=("bad_labels",)):
    return Case("hand_made", "optimizer", healthy, lambda d: {}, accept=accept, wrong=wrong)


def _f(rule, severity="warning", step=10, **evidence):
    return {"rule": rule, "severity": severity, "step": step, "evidence": evidence, "fix": [f"fix {rule}"]}


def test_only_unaccepted_findings_score_as_misleading():
    s = score(_case(), {"posthoc": [_f("bad_labels"), _f("underfitting")], "online": []})
    assert s["verdict"] == "misleading" and s["misleading"] and s["detected"] and not s["correct"]


def test_an_accepted_finding_behind_a_wrong_lead_is_not_correct():
    s = score(_case(), {"posthoc": [_f("bad_labels", "critical"), _f("lr_too_high", step=4)], "online": []})
    assert s["verdict"] == "wrong lead" and not s["correct"] and not s["misleading"]


def test_correct_with_latency_and_info_findings_do_not_count():
    res = {"posthoc": [_f("chance_accuracy", "info"), _f("lr_too_high", step=7)], "online": [_f("lr_too_high", step=5)]}
    s = score(_case(), res)
    assert s["verdict"] == "correct" and s["latency"] == 5 and s["lead"] == "lr_too_high"


def test_lead_follows_root_cause_field_or_evidence():
    symptom = _f("chance_accuracy", "critical", root_cause="lr_too_high")
    assert lead_finding([symptom, _f("lr_too_high")])["rule"] == "lr_too_high"
    symptom = {**_f("chance_accuracy", "critical"), "root_cause": "bad_labels"}
    s = score(_case(), {"posthoc": [symptom, _f("bad_labels"), _f("lr_too_high")], "online": []})
    assert s["lead"] == "bad_labels" and s["verdict"] == "wrong lead"


def test_direction_tagged_ids_match_only_that_direction():
    case = _case(accept=("update_ratio:high",), wrong=("update_ratio:low",))
    assert score(case, {"posthoc": [_f("update_ratio", direction="high")], "online": []})["verdict"] == "correct"
    assert score(case, {"posthoc": [_f("update_ratio", direction="low")], "online": []})["verdict"] == "misleading"


def test_healthy_false_alarm_is_any_warning_and_summary_counts_it():
    quiet = score(_case(healthy=True), {"posthoc": [_f("noisy_loss", "info")], "online": []})
    alarm = score(_case(healthy=True), {"posthoc": [], "online": [_f("noisy_loss")]})
    missed = score(_case(), {"posthoc": [], "online": []})
    assert quiet["verdict"] == "quiet" and alarm["verdict"] == "FALSE ALARM" and missed["verdict"] == "missed"
    m = summarize([quiet, alarm, missed])
    assert (m["faulty"], m["healthy"], m["false_alarms"], m["detected"]) == (1, 2, 1, 0)


def test_registry_is_large_stratified_and_honest():
    cases = all_cases()
    faulty = [c for c in cases if not c.healthy]
    assert len(faulty) >= 40 and len(cases) - len(faulty) >= 25
    assert all(c.accept and not set(c.accept) & set(c.wrong) for c in faulty)
    groups = Counter((c.family, c.healthy) for c in cases)
    held = Counter((c.family, c.healthy) for c in cases if c.split == "holdout")
    for g, n in groups.items():
        assert held[g] == round(n / 3), g
    assert [c.split for c in all_cases()] == [c.split for c in cases]  # deterministic


def test_two_real_cases_end_to_end(tmp_path):
    """A NaN from an lr far too high is diagnosed correctly; a short healthy run trains well."""
    bad = run_case("lr_explode_momentum_mlp", str(tmp_path / "bad"))
    s = score(get("lr_explode_momentum_mlp"), bad)
    assert bad["error"] is None and bad["metrics"]["nan"] == 1 and not s["missed_expect"]
    assert s["verdict"] == "correct" and "nonfinite_loss" in s["warnings"]

    good = run_case("short_run_50_steps", str(tmp_path / "good"))
    s = score(get("short_run_50_steps"), good)
    assert good["error"] is None and not s["missed_expect"] and s["verdict"] in ("quiet", "FALSE ALARM")
    assert (tmp_path / "good" / "run" / "meta.json").exists()
