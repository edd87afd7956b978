"""Structured findings, the fix catalogue's contradictions, missing metrics and honest coverage, on synthetic
records (the real record format, read through the reader's own batch builder)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from synth import batch, curve, epoch, layers, steps

from babysit.monitor.reader import RunData
from babysit.rules import diagnose
from babysit.rules.catalogue import RULES, markdown
from babysit.rules.fixes import FIXES, resolve_fixes
from babysit.rules.thresholds import TABLE

pytestmark = pytest.mark.filterwarnings("error::rules.engine.RuleWarning")

DOCS = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


def run_of(*records, meta=None, status=None) -> RunData:
    b = batch(*records)
    return RunData(steps=b.steps, epochs=b.epochs, layers=b.layers, snapshots=b.snapshots, events=b.events,
                   meta=meta if meta is not None else {"num_classes": 10}, status=status or {"state": "finished"})


def by_rule(findings):
    return {f.rule: f for f in findings}


def collapse(n: int = 400) -> np.ndarray:
    """Down to 0.8 in 80 steps, then back up to ln(10) and flat there: the lecture's 'too high' curve."""
    s = np.arange(1, n + 1)
    down = 2.3 * np.exp(-s / 30) + 0.8 * (1 - np.exp(-s / 30))
    return np.where(s < 80, down, 2.31 + 0.01 * np.sin(s))


# ------------------------------------------------------------------ structured fields
def test_findings_carry_causes_and_fix_ids_as_fields():
    s = np.arange(1, 401)
    relu = {"kind": "relu", "num_units": 64, "dead_frac": 1.0}
    found = diagnose(run_of(steps(s, 2.30 + 0.005 * np.sin(s), lr=0.5), *[layers(k, r=relu) for k in (1, 50, 100)]))
    flat = by_rule(found)["flat_loss"]
    d = flat.to_dict()
    assert d["caused_by"] == ["dead_units"] and d["root_cause"] == "dead_units"
    assert len(d["fix_ids"]) == len(d["fix"]) and all(i in FIXES for i in d["fix_ids"])
    assert "caused_by" not in d["evidence"] and "root_cause" not in d["evidence"]
    json.dumps(d, allow_nan=True)
    dead = by_rule(found)["dead_units"]
    assert dead.caused_by == [] and dead.root_cause is None


def test_fix_entries_resolve_to_ids_and_texts():
    ids, texts = resolve_fixes(["lower_lr", ("raise_lr", "3x"), "some custom advice"])
    assert ids[:2] == ["lower_lr", "raise_lr"] and texts[1] == "raise the learning rate (3x)"
    assert ids[2].startswith("text:") and texts[2] == "some custom advice"  # a rule not on the catalogue yet
    for cls in RULES:  # every built-in rule names catalogue fixes
        for e in cls.fix:
            assert (e[0] if isinstance(e, tuple) else e) in FIXES, (cls.id, e)


# ------------------------------------------------------------------ never lead with a contradicted fix
def test_loss_that_rose_then_sat_at_chance_is_lr_too_high_and_never_raise_the_lr():
    s = np.arange(1, 401)
    recs = [steps(s, collapse(), lr=0.5)] + [epoch(k, 80 * k, train_acc=0.1, val_acc=0.1) for k in range(1, 6)]
    found = by_rule(diagnose(run_of(*recs)))
    lr = found["lr_too_high"]
    assert lr.fix_ids[0] == "lower_lr" and "rose back" in lr.message
    for f in found.values():
        assert "raise_lr" not in f.fix_ids and "train_longer" not in f.fix_ids, f
        assert "check_labels" not in f.fix_ids, f
    assert found["chance_accuracy"].root_cause == "lr_too_high"


def test_warmup_spike_that_recovers_is_not_lr_too_high():
    s, loss = curve(600, tau=60)
    loss = loss.copy()
    loss[100:115] *= 3.0  # a spike, then the curve goes on down
    assert "lr_too_high" not in by_rule(diagnose(run_of(steps(s, loss))))


def test_frozen_model_never_gets_more_capacity():
    meta = {"num_classes": 10, "model": {"trainable": 650, "frozen": 120000, "layers": []}}
    recs = [steps(*curve(500, end=1.5))]
    recs += [epoch(k, 100 * k, train_acc=0.4 + 0.001 * k, val_acc=0.4) for k in range(1, 6)]
    under = by_rule(diagnose(run_of(*recs, meta=meta)))["underfitting"]
    assert "more_capacity" not in under.fix_ids and "train_longer" not in under.fix_ids
    assert under.evidence["fixes_ruled_out"]["more_capacity"] == ["frozen"]
    # the same run without the frozen backbone does propose it
    under = by_rule(diagnose(run_of(*recs, meta={"num_classes": 10})))["underfitting"]
    assert under.fix_ids[0] == "more_capacity"


def test_integer_inputs_are_never_told_to_normalize():
    tanh = {"kind": "tanh", "saturated_frac": 0.9}
    recs = [steps(*curve(300)), *[layers(k, fc={"kind": "weight", "g_norm": 1.0}, t=tanh) for k in (10, 60, 110)]]
    meta = {"num_classes": 10, "first_batch": {"inputs": {"dtype": "torch.int64", "integer": True}}}
    sat = by_rule(diagnose(run_of(*recs, meta=meta)))["saturated_activations"]
    assert "normalize_inputs" not in sat.fix_ids and sat.fix_ids[0] == "xavier_init"
    sat = by_rule(diagnose(run_of(*recs)))["saturated_activations"]
    assert sat.fix_ids[0] == "normalize_inputs"  # float inputs: the lecture's first suspect


def test_labels_are_not_blamed_when_updates_are_100x_too_large():
    w = {"kind": "weight", "g_norm": 1.0, "update_ratio": 0.3}
    recs = [steps(np.arange(1, 201), 2.3 + 0.01 * np.sin(np.arange(1, 201)), lr=3.0)]
    recs += [layers(k, a=w, b=w) for k in range(10, 201, 10)]
    recs += [epoch(k, 50 * k, train_acc=0.1, val_acc=0.1) for k in range(1, 5)]
    found = by_rule(diagnose(run_of(*recs)))
    chance = found["chance_accuracy"]
    assert chance.fix_ids[0] != "check_labels" and "check_labels" not in chance.fix_ids
    assert found["lr_too_high"].evidence["update_ratio"] >= 0.03


# ------------------------------------------------------------------ missing is not NaN (contract 3)
def test_validation_every_third_epoch_is_not_a_nan():
    s, loss = curve(600)
    eps = [epoch(k, 60 * k, train_loss=1.0 / k, train_acc=0.5 + 0.04 * k,
                 **({"val_loss": 1.1 / k, "val_acc": 0.5 + 0.04 * k} if k % 3 == 0 else {})) for k in range(1, 11)]
    found = diagnose(run_of(steps(s, loss), *eps))
    assert [f.rule for f in found if f.severity != "info"] == []


def test_a_recorded_nan_val_loss_is_still_critical():
    s, loss = curve(300)
    eps = [epoch(1, 100, val_loss=1.0), epoch(2, 200), epoch(3, 300, val_loss=math.nan)]
    f = by_rule(diagnose(run_of(steps(s, loss), *eps)))["nonfinite_loss"]
    assert f.severity == "critical" and f.epoch == 3 and f.evidence["what"] == "val_loss"


# ------------------------------------------------------------------ honest coverage
def test_not_evaluated_says_which_rules_could_not_judge_and_why():
    s, loss = curve(176)
    found = diagnose(run_of(steps(s, loss), layers(1, fc={"kind": "weight", "g_norm": 1.0}), meta={}))
    why = {x["rule"]: x["why"] for x in found.not_evaluated}
    assert why["dead_units"] == "layer rules: 1 sampled step(s) in 176, needs 2"
    assert why["update_ratio"].startswith("layer rules: 1 sampled step(s) in 176")
    assert why["chance_accuracy"] == "no accuracy metrics (train_acc/val_acc)"
    assert why["overfitting"] == "no validation metrics (val_loss/val_acc)"
    assert why["init_loss_mismatch"].startswith("num_classes unknown")
    assert why["noisy_loss"] == "176 steps with a loss, needs 250"
    assert "nonfinite_loss" not in why and "loss_explosion" not in why


def test_a_rule_that_reported_is_evaluated():
    s = np.arange(1, 301)
    found = diagnose(run_of(steps(s, np.full(300, 2.3) + 0.001 * np.sin(s))))
    assert "flat_loss" in by_rule(found)
    assert "flat_loss" not in {x["rule"] for x in found.not_evaluated}


# ------------------------------------------------------------------ the docs table is generated
def test_catalogue_markdown_covers_every_rule_and_is_in_the_docs():
    table = markdown()
    for cls in RULES:
        assert f"`{cls.id}`" in table
    for name in ("lr_high_window", "explosion_factor", "dead_frac"):
        assert f"`{name}`={TABLE[name].value:g}" in table
    assert DOCS.exists() and table in DOCS.read_text(), "regenerate: python -m babysit.rules.catalogue --markdown"


# ------------------------------------------------------------------ noisy: a warning only when it stops learning
def test_noisy_loss_warns_when_the_level_stalls_and_notes_when_it_falls():
    """Batch-1-like losses (a wide, skewed band): a warning when the level stays, a note while it keeps falling."""
    s = np.arange(1, 801)
    noise = np.random.default_rng(1).lognormal(0.0, 1.2, 800)
    for level, severity in ((np.ones(800), "warning"), (1.5 * np.exp(-s / 300) + 0.2, "info")):
        x = level * noise
        x[:5] = 2.3  # the loss at init, ln(10)
        f = by_rule(diagnose(run_of(steps(s, x))))["noisy_loss"]
        assert f.severity == severity and f.evidence["still_improving"] == (severity == "info"), f.message
        assert "lr_too_high" not in by_rule(diagnose(run_of(steps(s, x))))  # noise is not a rise


def test_a_cause_found_long_after_a_symptom_does_not_explain_it():
    w = {"kind": "weight", "g_norm": 1.0, "update_ratio": 0.3}
    relu = {"kind": "relu", "num_units": 64}
    recs = [steps(*curve(1000))]
    recs += [layers(k, a=w, b=w, r={**relu, "dead_frac": 0.0}) for k in range(10, 100, 10)]
    recs += [layers(k, a={**w, "update_ratio": 1e-3}, b={**w, "update_ratio": 1e-3},
                    r={**relu, "dead_frac": 0.0 if k < 800 else 0.9}) for k in range(100, 1001, 10)]
    found = by_rule(diagnose(run_of(*recs)))
    assert found["update_ratio"].step < 100 and found["dead_units"].step > 800
    assert found["update_ratio"].caused_by == []
