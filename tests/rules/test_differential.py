"""Differential diagnosis on real small training runs: one symptom, different causes, different first fixes.

Accuracy at chance has four causes here -- a learning rate far too high (the net collapses), ReLUs dead from a
bad bias init, shuffled labels, a linear model on data that is not linearly separable -- and each must lead with
its own fix. Each cause has a healthy look-alike that must stay quiet.
"""

from __future__ import annotations

import pytest
from scenarios import LATENCY, Scenario

from babysit.monitor.reader import load_run
from babysit.rules import diagnose
from babysit.rules.base import severity_rank

pytestmark = pytest.mark.filterwarnings("error::rules.engine.RuleWarning")

LR_COLLAPSE = Scenario("lr_collapse_sgd_momentum_0.5", model="mlp2", lr=0.5, momentum=0.9, epochs=6)
ADAM_COLLAPSE = Scenario("lr_collapse_adam_0.2", model="mlp2", opt="adam", lr=0.2, epochs=6)
DEAD_BIAS = Scenario("relu_bias_-10", bias_init=-10.0, model="mlp2", epochs=4)  # shared with test_scenarios
SHUFFLED = Scenario("shuffled_labels", shuffle_labels=True, opt="adam", lr=1e-3, epochs=6)
LINEAR_CIRCLES = Scenario("linear_on_circles", data="circles", model="linear", lr=0.1, epochs=15)

LOOK_ALIKES = [
    Scenario("label_smoothing_0.3", label_smoothing=0.3, epochs=8),  # the loss floors well above 0
    Scenario("imbalanced_prior_bias", data="imbalanced", prior_bias=True, lr=0.05, epochs=8),  # starts below ln C
    Scenario("finetune_from_checkpoint", pretrain_epochs=6, lr=0.01, epochs=4),  # starts near 0.1
    Scenario("transient_lr_spike_x6", lr=0.05, lr_spike=(150, 6.0), spike_len=10, epochs=8),  # a warmup-like spike
    Scenario("heavy_dropout_0.6", opt="adam", lr=1e-3, dropout=0.6, hidden=128, epochs=8),
    Scenario("linear_probe_separable", data="binary", model="linear", lr=0.05, epochs=15),  # no hidden layer, fine
]


def found(trained, scenario: Scenario) -> dict:
    out = trained(scenario)
    return {f.rule: f for f in diagnose(load_run(out["run_dir"]))}


def first_fix(f) -> str:
    return f.fix_ids[0]


def test_chance_accuracy_from_lr_too_high_leads_with_lowering_it(trained):
    fs = found(trained, LR_COLLAPSE)
    lr = fs["lr_too_high"]
    assert lr.severity == "warning" and lr.evidence["direction"] == "high"
    assert any("rose back" in w for w in lr.evidence["why"]), lr.evidence["why"]
    assert first_fix(lr) == "lower_lr" and "10x, from 0.5" in lr.fix[0]
    chance = fs["chance_accuracy"]
    assert chance.root_cause == "lr_too_high" and "lr_too_high" in chance.caused_by
    assert first_fix(chance) == "lower_lr" and chance.fix[0].startswith("fix lr_too_high first")
    # the ReLUs died from the lr, not from the init: dead_units points at lr_too_high too
    assert fs["dead_units"].root_cause == "lr_too_high"
    # no finding leads with a fix the evidence contradicts
    for f in fs.values():
        if severity_rank(f.severity) >= 1:
            assert first_fix(f) not in ("raise_lr", "train_longer", "check_labels", "more_capacity"), f
            assert "check_labels" not in f.fix_ids, f  # loss rose and updates are huge: not the labels
    LATENCY[f"{LR_COLLAPSE.name} -> lr_too_high"] = (1, lr.step, lr.step - 1)


def test_adam_collapse_is_lr_too_high(trained):
    fs = found(trained, ADAM_COLLAPSE)
    lr = fs["lr_too_high"]
    assert any("jumped" in w for w in lr.evidence["why"]), lr.evidence["why"]
    for symptom in ("chance_accuracy", "underfitting", "flat_loss"):
        if symptom in fs and fs[symptom].severity != "info":
            assert fs[symptom].root_cause == "lr_too_high" and first_fix(fs[symptom]) == "lower_lr", symptom
    LATENCY[f"{ADAM_COLLAPSE.name} -> lr_too_high"] = (1, lr.step, lr.step - 1)


def test_chance_accuracy_from_dead_relus_leads_with_the_init(trained):
    fs = found(trained, DEAD_BIAS)
    assert "lr_too_high" not in fs  # dead from step 1, nothing rose: not the lr
    assert fs["dead_units"].evidence["at_init"] >= 0.99
    chance = fs["chance_accuracy"]
    assert chance.root_cause == "dead_units" and first_fix(chance) == "bias_init_he"


def test_chance_accuracy_from_shuffled_labels_leads_with_the_labels(trained):
    fs = found(trained, SHUFFLED)
    assert not {"lr_too_high", "low_capacity", "dead_units"} & set(fs)
    chance = fs["chance_accuracy"]
    assert chance.root_cause is None and first_fix(chance) == "check_labels"


def test_chance_accuracy_from_a_linear_model_leads_with_capacity(trained):
    fs = found(trained, LINEAR_CIRCLES)
    assert "lr_too_high" not in fs  # the ratio is high because the weights head for 0, not because of the lr
    cap = fs["low_capacity"]
    assert cap.severity == "warning" and cap.evidence["weight_layers"] == 1 and first_fix(cap) == "more_capacity"
    chance = fs["chance_accuracy"]
    assert chance.root_cause == "low_capacity" and first_fix(chance) == "more_capacity"
    LATENCY[f"{LINEAR_CIRCLES.name} -> low_capacity"] = (1, cap.step, cap.step - 1)


def test_one_symptom_four_causes_four_first_fixes(trained):
    leads = {s.name: first_fix(found(trained, s)["chance_accuracy"])
             for s in (LR_COLLAPSE, DEAD_BIAS, SHUFFLED, LINEAR_CIRCLES)}
    assert len(set(leads.values())) == 4, leads


@pytest.mark.parametrize("scenario", LOOK_ALIKES, ids=[s.name for s in LOOK_ALIKES])
def test_healthy_look_alike_stays_quiet(trained, scenario):
    out = trained(scenario)
    assert out["val_acc"] > 0.85, "the look-alike itself must train well"
    loud = [(f.rule, f.severity, f.message) for f in diagnose(load_run(out["run_dir"]))
            if severity_rank(f.severity) >= severity_rank("warning")]
    assert loud == []
    online = [(f["rule"], f["severity"]) for f in out["findings"] if f["severity"] != "info"]
    assert online == []  # the hooks said nothing during training either


# ------------------------------------------------------------------ missing metrics are missing (issue 11)
def test_validation_every_third_epoch_is_quiet_and_not_nan(trained):
    out = trained(Scenario("val_every_3rd_epoch", val_every=3, epochs=9))
    assert out["val_acc"] > 0.85
    fs = diagnose(load_run(out["run_dir"]))
    assert [f for f in fs if severity_rank(f.severity) >= 1] == []
    assert not [f for f in out["findings"] if f["severity"] != "info"]  # online too: no "val_loss is NaN"


def test_overfitting_is_still_found_with_validation_every_second_epoch(trained):
    out = trained(Scenario("train_on_60_val_every_2nd", train_limit=60, lr=0.05, epochs=60, batch_size=16,
                           hidden=128, val_every=2))
    f = {x.rule: x for x in diagnose(load_run(out["run_dir"]))}["overfitting"]
    assert f.severity == "warning" and f.evidence["gap"] > 0.15 and f.epoch % 2 == 0
