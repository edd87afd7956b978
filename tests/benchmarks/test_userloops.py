"""The user-loop suite stays runnable: its registry is split by name hash, and a few real cases train, are
diagnosed and scored end to end (a healthy loop gives no warning, buggy loops are caught with the right rule)."""

from __future__ import annotations

import pytest

from benchmarks.faults.evaluate import run_case, score
from benchmarks.userloops.__main__ import main, summary, tally
from benchmarks.userloops.registry import all_cases, get, split_of


def test_registry_has_both_kinds_and_a_third_held_out_by_name_alone():
    every = all_cases()
    fresh = [c for c in every if c.split == "fresh"]  # fresh_loops.py: their own split, out of the hash order
    assert fresh and all(c.fn.__module__.endswith(".fresh_loops") for c in fresh)
    assert {c.healthy for c in fresh} == {True, False}
    fresh2 = [c for c in every if c.split == "fresh2"]  # fresh2_loops.py: a second batch, out of the hash order too
    assert fresh2 and all(c.fn.__module__.endswith(".fresh2_loops") for c in fresh2)
    assert {c.healthy for c in fresh2} == {True, False}
    fresh3 = [c for c in every if c.split == "fresh3"]  # fresh3_loops.py: a third batch, out of the hash order
    assert fresh3 and all(c.fn.__module__.endswith(".fresh3_loops") for c in fresh3)
    assert {c.healthy for c in fresh3} == {True, False}
    fresh += fresh2 + fresh3
    cases = [c for c in every if c.split not in ("fresh", "fresh2", "fresh3")]
    healthy = [c for c in cases if c.healthy]
    faulty = [c for c in cases if not c.healthy]
    assert len(healthy) >= 12 and len(faulty) >= 12
    for group in (healthy, faulty):
        hold = [c for c in group if c.split == "holdout"]
        assert len(hold) == round(len(group) / 3)
        names = [c.name for c in group]
        assert all(split_of(c.name, names) == c.split for c in group)  # a function of the names, not results
    assert all(c.accept for c in faulty + [c for c in fresh if not c.healthy])


@pytest.mark.parametrize("name,rule", [("nll_loss_on_logits", "loss_mismatch"),
                                       ("softmax_module_then_crossentropy", "double_softmax")])
def test_buggy_loops_are_caught_with_the_rule_that_fixes_them(tmp_path, name, rule):
    res = run_case(name, str(tmp_path / name), suite="benchmarks.userloops")
    assert res["error"] is None, res["error"]
    s = score(get(name), res)
    assert s["verdict"] == "correct" and s["lead"] == rule, s


def test_a_healthy_user_loop_gives_no_warning(tmp_path):
    res = run_case("tiny_run_wine", str(tmp_path / "good"), suite="benchmarks.userloops")
    assert res["error"] is None, res["error"]
    s = score(get("tiny_run_wine"), res)
    assert s["verdict"] == "quiet", s["warnings"]
    assert tally([s]) == {"faulty": 0, "caught": 0, "misleading": 0, "missed": 0, "healthy": 1, "false_alarms": 0,
                          "errors": 0}
    assert "holdout" not in summary([s]) or s["split"] == "holdout"


def test_the_runner_lists_without_training(capsys):
    assert main(["--list", "--split", "all"]) == 0
    out = capsys.readouterr().out
    assert "nll_loss_on_logits" in out and "tiny_run_wine" in out
    assert main(["--list", "--split", "fresh2"]) == 0
    out = capsys.readouterr().out
    assert "fresh2_zero_init_all_layers" in out and "tiny_run_wine" not in out
    assert main(["--list", "--split", "fresh3"]) == 0
    out = capsys.readouterr().out
    assert "fresh3_dropout_095" in out and "fresh2_zero_init_all_layers" not in out
