"""The engine on synthetic records: edge cases, chunking, escalation, causes, thresholds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from synth import batch, curve, epoch, layers, steps

from babysit.monitor.reader import RunData
from babysit.rules import RULES, THRESHOLDS, Finding, OnlineDiagnoser, diagnose
from babysit.rules.catalogue import CAUSES, RULE_IDS
from babysit.rules.thresholds import TABLE, load_config, parse_assignment, resolve

pytestmark = pytest.mark.filterwarnings("error::rules.engine.RuleWarning")

CATALOGUE = ["nonfinite_loss", "loss_explosion", "flat_loss", "init_loss_mismatch", "overfitting", "underfitting",
             "chance_accuracy", "noisy_loss", "noisy_weights", "update_ratio", "dead_units", "saturated_activations",
             "vanishing_gradients", "exploding_gradients", "stalled_weights", "lr_too_high",
             "regularization_too_strong", "low_capacity", "stalled_run", "test_set_reuse"]
# causes that live in the bug-check modules (rules/bugs.py, rules/data.py): named in CAUSES before they exist
BUG_IDS = {"frozen_parameters", "skipped_optimizer_steps", "double_softmax", "bad_labels", "unnormalized_input"}


def run_of(*records, meta=None, status=None) -> RunData:
    b = batch(*records)
    return RunData(steps=b.steps, epochs=b.epochs, layers=b.layers, snapshots=b.snapshots, events=b.events,
                   meta=meta if meta is not None else {"num_classes": 10}, status=status or {"state": "finished"})


def by_rule(findings):
    return {f.rule: f for f in findings}


def test_catalogue_ids_are_the_public_contract():
    # rules of the bug-check and heal modules (rules/bugs.py, data.py, heal.py) are theirs to list
    others = {r.id for r in RULES if r.__module__.rsplit(".", 1)[-1] in ("bugs", "data", "heal", "weights")}
    assert [r for r in RULE_IDS if r not in others or r == "noisy_weights"] == CATALOGUE
    assert all(r.title and r.fix for r in RULES)
    for symptom, causes in CAUSES.items():
        assert symptom in CATALOGUE and set(causes) <= set(CATALOGUE) | BUG_IDS | others


def test_every_threshold_has_a_source():
    assert set(THRESHOLDS) == set(TABLE)
    for name, t in TABLE.items():
        assert t.what and t.source, name
        assert isinstance(t.value, (int, float)) and not math.isnan(t.value)


def test_empty_run_and_one_step():
    assert diagnose(run_of()) == []
    assert diagnose(run_of(steps([1], [2.3]))) == []
    d = OnlineDiagnoser({"num_classes": 10})
    assert d.update(batch()) == [] and d.findings == []


def test_nan_at_step_1_is_data_not_lr():
    found = by_rule(diagnose(run_of(steps([1, 2, 3], [math.nan, math.nan, math.nan]))))
    f = found["nonfinite_loss"]
    assert f.severity == "critical" and f.step == 1 and f.evidence["last_finite_step"] is None
    assert "inputs" in f.fix[0]  # NaN from the very first step: look at the data before the lr
    assert set(found) == {"nonfinite_loss"}


def test_inf_loss_message_has_the_numbers():
    s, loss = curve(50)
    loss[30] = math.inf
    f = by_rule(diagnose(run_of(steps(s, loss, lr=0.5))))["nonfinite_loss"]
    assert f.step == 31 and "inf at step 31" in f.message and "lr is 0.5" in f.message
    assert "learning rate" in f.fix[0]


def test_nan_val_loss_after_finite_ones():
    found = by_rule(diagnose(run_of(epoch(1, 10, val_loss=1.0), epoch(2, 20, val_loss=math.nan))))
    assert found["nonfinite_loss"].evidence["what"] == "val_loss" and found["nonfinite_loss"].epoch == 2


def test_loss_explosion_message_and_threshold_override():
    s = np.arange(1, 301)
    loss = np.full(300, 2.3)
    loss[200:] = 7.41
    run = run_of(steps(s, loss))
    f = by_rule(diagnose(run))["loss_explosion"]
    assert f.severity == "critical" and f.step == 203  # 3 of the 5 steps in the window are above 3x
    assert "loss 7.41 at step 203 is 3.2x the initial 2.3" in f.message
    assert by_rule(diagnose(run, {"explosion_factor": 4}))["loss_explosion"].severity == "warning"
    assert "loss_explosion" not in by_rule(diagnose(run, {"explosion_factor": 4, "explosion_warn_factor": 4}))


def test_loss_rising_warns_then_escalates_online():
    d = OnlineDiagnoser({"num_classes": 10})
    s = np.arange(1, 401)
    loss = np.r_[np.full(100, 2.3), np.full(100, 4.0), np.full(200, 8.0)]
    first = [f for f in d.update(batch(steps(s[:150], loss[:150]))) if f.rule == "loss_explosion"]
    assert [(f.rule, f.severity, f.step) for f in first] == [("loss_explosion", "warning", 103)]
    assert "stop" not in first[0].fix[0]  # a warning: lower the lr, no need to stop yet
    second = [f for f in d.update(batch(steps(s[150:], loss[150:]))) if f.rule == "loss_explosion"]
    assert [(f.rule, f.severity, f.step) for f in second] == [("loss_explosion", "critical", 203)]


def test_a_single_spike_is_not_an_explosion():
    s, loss = curve(300)
    loss[150] = 50.0
    assert "loss_explosion" not in by_rule(diagnose(run_of(steps(s, loss))))


def test_chunked_updates_give_the_same_findings():
    """Online (any chunking) and post-hoc agree: rules keep O(window) state across updates."""
    s = np.arange(1, 1001)
    loss = np.r_[np.full(400, 2.3) + 0.01 * np.sin(s[:400]), np.linspace(2.3, 8.0, 600)]
    recs = [steps(s, loss, lr=1e-5)]
    recs += [epoch(k, 100 * k, train_acc=0.1, val_acc=0.1, train_loss=2.3, val_loss=2.3) for k in range(1, 11)]
    whole = {(f.rule, f.severity, f.step) for f in diagnose(run_of(*recs))}
    for chunk in (1, 7, 64, 333):
        d = OnlineDiagnoser({"num_classes": 10})
        for i in range(0, 1000, chunk):
            part = steps(s[i:i + chunk], loss[i:i + chunk], lr=1e-5)
            eps = [e for e in recs[1:] if i < e["step"] <= i + chunk]
            d.update(batch(part, *eps), status={"state": "finished"})
        assert {(f.rule, f.severity, f.step) for f in d.findings} == whole, chunk
    assert {"flat_loss", "loss_explosion", "chance_accuracy"} <= {r for r, _, _ in whole}


def test_online_state_stays_bounded():
    d = OnlineDiagnoser({"num_classes": 10})
    for i in range(0, 20_000, 500):
        s, loss = curve(500, first_step=i + 1, tau=3000, seed=i)
        d.update(batch(steps(s, loss)))
    for rule in d.rules:
        tail = getattr(rule, "tail", None) or getattr(rule, "buf", None)
        if tail is not None:
            assert len(tail) <= 1000, rule.id


def test_update_returns_only_new_findings_and_escalations():
    d = OnlineDiagnoser({"num_classes": 10})
    relu = {"kind": "relu", "num_units": 100}
    assert d.update(batch(layers(1, r={**relu, "dead_frac": 0.0}))) == []
    new = d.update(batch(layers(10, r={**relu, "dead_frac": 0.8}), layers(20, r={**relu, "dead_frac": 0.8})))
    assert [(f.rule, f.severity) for f in new] == [("dead_units", "warning")]
    assert d.update(batch(layers(30, r={**relu, "dead_frac": 0.8}))) == []  # reported once
    new = d.update(batch(layers(40, r={**relu, "dead_frac": 1.0}), layers(50, r={**relu, "dead_frac": 1.0})))
    assert [(f.rule, f.severity) for f in new] == [("dead_units", "critical")]  # again on escalation
    assert [f.severity for f in d.findings] == ["critical"]


def test_flat_loss_caused_by_dead_units_does_not_say_raise_the_lr():
    s = np.arange(1, 301)
    loss = 2.30 + 0.005 * np.sin(s)
    relu = {"kind": "relu", "num_units": 64, "dead_frac": 1.0}
    recs = [steps(s, loss, lr=0.5)] + [layers(k, r=relu) for k in (1, 50, 100)]
    found = by_rule(diagnose(run_of(*recs)))
    flat = found["flat_loss"]
    assert found["dead_units"].severity == "critical"
    assert flat.caused_by == ["dead_units"] and flat.root_cause == "dead_units"
    assert flat.message.index("dead_units") > 0 and flat.fix[0].startswith("fix dead_units first")
    assert not any("raise the learning rate" in x for x in flat.fix)
    # causes come first in the list
    order = [f.rule for f in diagnose(run_of(*recs))]
    assert order.index("dead_units") < order.index("flat_loss")


def test_flat_loss_that_later_drops_is_only_info():
    """A slow start (deep nets sit at ln(C) before they learn) is not a stall, post-hoc."""
    s = np.arange(1, 601)
    loss = np.where(s < 250, 2.30 + 0.005 * np.sin(s), 2.30 * np.exp(-(s - 250) / 50) + 0.05)
    f = by_rule(diagnose(run_of(steps(s, loss))))["flat_loss"]
    assert f.severity == "info" and f.evidence["resolved"] and f.evidence["resolved_step"] > 250


def test_flat_loss_ignores_warmup():
    s = np.arange(1, 301)
    lr = np.minimum(1e-6 * 1.05 ** s, 0.1)  # a long warmup: the loss cannot move yet
    found = by_rule(diagnose(run_of(steps(s, np.full(300, 2.3), lr=lr))))
    assert "flat_loss" not in found


def test_init_loss_mismatch_needs_num_classes_and_the_first_step():
    first = [steps([1, 2, 3], [10.0, 9.0, 8.0])]
    assert by_rule(diagnose(run_of(*first)))["init_loss_mismatch"].evidence["ratio"] == pytest.approx(10 / math.log(10))
    assert "init_loss_mismatch" not in by_rule(diagnose(run_of(*first, meta={})))
    late = [steps([500, 501], [10.0, 9.0])]  # recording started late: not the loss at init
    assert "init_loss_mismatch" not in by_rule(diagnose(run_of(*late)))
    low = by_rule(diagnose(run_of(steps([1, 2], [0.3, 0.3]))))["init_loss_mismatch"]
    assert low.severity == "info"  # a pretrained net starts low


def test_accuracy_in_percent_is_understood():
    recs = [epoch(k, 10 * k, train_acc=10.0, val_acc=10.5) for k in range(1, 5)]
    assert by_rule(diagnose(run_of(*recs)))["chance_accuracy"].evidence["accuracy"] == pytest.approx(0.105)


def test_chance_accuracy_that_recovers_is_info():
    accs = [0.1, 0.11, 0.1, 0.5, 0.8, 0.9]
    recs = [epoch(k, 10 * k, val_acc=a, train_acc=a) for k, a in enumerate(accs, 1)]
    assert by_rule(diagnose(run_of(*recs)))["chance_accuracy"].severity == "info"


def test_overfitting_by_val_loss_rising():
    vl = [1.0, 0.6, 0.5, 0.7, 0.9, 1.1]
    tl = [1.0, 0.5, 0.3, 0.2, 0.1, 0.05]
    recs = [epoch(k, 10 * k, train_loss=a, val_loss=b) for k, (a, b) in enumerate(zip(tl, vl, strict=True), 1)]
    f = by_rule(diagnose(run_of(*recs)))["overfitting"]
    assert f.epoch == 5 and f.evidence["best_epoch"] == 3 and "early stopping" in f.fix[0]


def test_layer_rules_on_synthetic_records():
    w = {"kind": "weight", "w_norm": 5.0, "w_mean": 0.0, "w_std": 0.1, "zero_grad_frac": 0.0}
    # vanishing: first layer's gradient 1e-6 of the last one's, three records
    recs = [layers(k, a={**w, "g_norm": 1e-6, "update_ratio": 1e-3}, b={**w, "g_norm": 1.0, "update_ratio": 1e-3})
            for k in (1, 10, 20)]
    f = by_rule(diagnose(run_of(*recs)))["vanishing_gradients"]
    assert f.evidence["first_layer"] == "a" and f.evidence["ratio"] == pytest.approx(1e-6)
    # exploding: non-finite gradient at once
    recs = [layers(1, a={**w, "g_norm": 1.0}), layers(10, a={**w, "g_norm": math.inf})]
    assert by_rule(diagnose(run_of(*recs)))["exploding_gradients"].severity == "critical"
    # stalled: gradient but an update ratio of exactly 0 in every layer
    recs = [layers(k, a={**w, "g_norm": 0.5, "update_ratio": 0.0}) for k in (1, 10, 20)]
    f = by_rule(diagnose(run_of(*recs)))["stalled_weights"]
    assert f.severity == "critical" and f.evidence["layers"] == ["a"]


def test_update_ratio_low_is_fine_once_the_lr_decayed():
    w = {"kind": "weight", "w_norm": 5.0, "w_mean": 0.0, "w_std": 0.1, "g_norm": 0.1, "update_ratio": 1e-6}
    s = np.arange(1, 101)
    recs = [layers(k, a=w, b=w) for k in (40, 60, 80, 100)]
    const = run_of(steps(s, np.full(100, 2.3), lr=0.1), *recs)
    assert by_rule(diagnose(const))["update_ratio"].evidence["direction"] == "low"
    decayed = run_of(steps(s, np.full(100, 2.3), lr=np.r_[np.full(30, 0.1), np.full(70, 1e-4)]), *recs)
    assert "update_ratio" not in by_rule(diagnose(decayed))


def test_saturated_output_sigmoid_is_not_a_fault():
    """A confident sigmoid output layer is saturated by design; a hidden tanh is not."""
    model = {"layers": [{"name": "fc", "type": "Linear"}, {"name": "act", "type": "Tanh"},
                        {"name": "out", "type": "Linear"}, {"name": "sig", "type": "Sigmoid"}]}
    w = {"kind": "weight", "w_norm": 1.0, "g_norm": 0.1}
    recs = [layers(k, fc=w, out=w, act={"kind": "tanh", "saturated_frac": 0.1},
                   sig={"kind": "sigmoid", "saturated_frac": 0.95}) for k in (1, 10, 20)]
    assert "saturated_activations" not in by_rule(diagnose(run_of(*recs, meta={"model": model})))
    recs = [layers(k, fc=w, out=w, act={"kind": "tanh", "saturated_frac": 0.9}) for k in (1, 10, 20)]
    f = by_rule(diagnose(run_of(*recs, meta={"model": model})))["saturated_activations"]
    assert f.evidence["layer"] == "act"
    # without a model summary (the hooks' online meta), a Sequential's numeric names give the order
    seq = [layers(k, **{"0": w, "2": w, "1": {"kind": "tanh", "saturated_frac": 0.9},
                        "3": {"kind": "sigmoid", "saturated_frac": 0.95}}) for k in (1, 10, 20)]
    f = by_rule(diagnose(run_of(*seq, meta={})))["saturated_activations"]
    assert f.evidence["layer"] == "1"


def test_stalled_run_states():
    s, loss = curve(100)
    alive = {"state": "running", "heartbeat": 1000.0 + 1.0, "step": 100}
    run = run_of(steps(s, loss), status=alive)
    assert "stalled_run" not in by_rule(diagnose(run, now=1000.0 + 30))
    f = by_rule(diagnose(run, now=1000.0 + 200))["stalled_run"]
    assert f.severity == "warning" and f.evidence["limit_s"] == 60
    crashed = run_of(steps(s, loss), status={"state": "crashed", "step": 100, "reason": "pid gone"})
    assert by_rule(diagnose(crashed))["stalled_run"].severity == "critical"
    assert "stalled_run" not in by_rule(diagnose(run_of(steps(s, loss), status={"state": "stopped"})))


def test_test_set_reuse_counts_events_and_uses():
    ev = lambda uses, split="s1": {"type": "event", "name": "test_eval", "step": 5, "time": 1.0,  # noqa: E731
                                   "data": {"split_id": split, "uses": uses}}
    assert "test_set_reuse" not in by_rule(diagnose(run_of(ev(1))))
    assert "test_set_reuse" not in by_rule(diagnose(run_of(ev(1, "a"), ev(1, "b"))))
    assert by_rule(diagnose(run_of(ev(1), ev(1))))["test_set_reuse"].evidence["uses"] == 2
    assert by_rule(diagnose(run_of(ev(3))))["test_set_reuse"].evidence["uses"] == 3


def test_findings_are_json_serializable():
    s, loss = curve(50)
    loss[10] = math.nan
    for f in diagnose(run_of(steps(s, loss))):
        assert isinstance(f, Finding)
        d = f.to_dict()
        assert set(d) >= {"rule", "title", "severity", "step", "epoch", "message", "evidence", "fix"}
        json.dumps(d)  # numpy scalars converted


def test_thresholds_resolve_parse_and_config(tmp_path):
    assert resolve({"explosion_factor": "5"})["explosion_factor"] == 5.0
    with pytest.raises(ValueError, match="unknown threshold"):
        resolve({"explosion_factr": 5})
    with pytest.raises(ValueError, match="must be a number"):
        resolve({"explosion_factor": "big"})
    assert parse_assignment("dead_frac=0.8") == ("dead_frac", 0.8)
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_assignment("dead_frac")
    (tmp_path / "t.toml").write_text("[thresholds]\nexplosion_factor = 4\n")
    (tmp_path / "t.json").write_text('{"dead_frac": 0.9}')
    (tmp_path / "bad.json").write_text("{")
    assert load_config(tmp_path / "t.toml") == {"explosion_factor": 4.0}
    assert load_config(tmp_path / "t.json") == {"dead_frac": 0.9}
    with pytest.raises(ValueError, match="corrupt config"):
        load_config(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="cannot read config"):
        load_config(tmp_path / "missing.toml")


def _snapshots(tmp_path, arrays: dict[int, np.ndarray]) -> list[dict]:
    (tmp_path / "snapshots").mkdir(exist_ok=True)
    recs = []
    for step, arr in arrays.items():
        arr = arr.reshape(len(arr), 1, 8, 8)  # a Linear watched with input_shape=(1, 8, 8): rows are images
        rel = f"snapshots/fc_step{step:08d}.npy"
        np.save(tmp_path / rel, arr, allow_pickle=False)
        recs.append({"type": "snapshot", "step": step, "time": 1.0, "layer": "fc", "file": rel,
                     "shape": list(arr.shape)})
    return recs


def test_noisy_weights_from_snapshots(tmp_path):
    rng = np.random.default_rng(0)
    init = rng.normal(0, 0.1, (16, 64))
    yy, xx = np.mgrid[0:8, 0:8]
    smooth = np.stack([np.cos(xx * f / 3 + yy * g / 3).ravel() for f, g in rng.uniform(0, 1, (16, 2))])
    good = _snapshots(tmp_path, {0: init, 500: init * 0.3 + smooth})
    run = run_of(*good)
    run.path = tmp_path
    assert "noisy_weights" not in by_rule(diagnose(run))  # filters formed: smooth
    noisy = _snapshots(tmp_path, {0: init, 600: init + rng.normal(0, 0.3, init.shape)})
    run = run_of(*noisy)
    run.path = tmp_path
    f = by_rule(diagnose(run))["noisy_weights"]
    assert f.severity == "warning" and f.evidence["roughness"] > 0.85 and f.evidence["moved"] > 1
    untrained = _snapshots(tmp_path, {0: init, 700: init * 1.01})
    run = run_of(*untrained)
    run.path = tmp_path
    assert by_rule(diagnose(run))["noisy_weights"].severity == "info"  # still the init: train longer


def test_snapshot_paths_stay_inside_the_run(tmp_path):
    outside = tmp_path / "outside.npy"
    np.save(outside, np.zeros((4, 64)), allow_pickle=False)
    rec = {"type": "snapshot", "step": 900, "time": 1.0, "layer": "fc", "file": "../outside.npy", "shape": [4, 64]}
    (tmp_path / "run").mkdir()
    run = run_of(rec)
    run.path = tmp_path / "run"
    assert diagnose(run) == []


def test_a_broken_rule_is_switched_off_not_fatal():
    class Broken:
        id = "broken"

        def __init__(self, th):
            pass

        def update(self, batch, ctx):
            raise ZeroDivisionError("oops")

    d = OnlineDiagnoser({"num_classes": 10}, rules=[Broken, *RULES])
    with pytest.warns(RuntimeWarning, match="broken switched off"):
        d.update(batch(steps([1, 2], [math.nan, 2.0])))
    assert [f.rule for f in d.findings] == ["nonfinite_loss"]
    assert len(d.rules) == len(RULES)


def test_pretrained_finetune_is_not_flat_nor_too_slow():
    """Fine-tuning starts well below ln(C): a loss that barely moves and tiny updates are intended."""
    s = np.arange(1, 401)
    loss = 0.30 + 0.01 * np.sin(s)
    w = {"kind": "weight", "w_norm": 5.0, "w_mean": 0.0, "w_std": 0.1, "g_norm": 0.1, "update_ratio": 1e-6}
    recs = [steps(s, loss, lr=1e-5)] + [layers(k, a=w, b=w) for k in (1, 100, 200, 300)]
    found = by_rule(diagnose(run_of(*recs)))
    assert {f.rule for f in found.values() if f.severity != "info"} == set()
    assert found["init_loss_mismatch"].severity == "info"



def test_recorded_findings_a_heal_undid_are_history_without_a_fresh_diagnosis():
    from babysit.rules import findings_of_run

    attempt = {"finding": "dead_units", "rolled_back_to": 0, "action": "lr_x0.1", "attempt": 1, "step": 27}
    log = [{"rule": "loss_explosion", "severity": "critical", "step": 12, "message": "blew up", "evidence": {}},
           {"rule": "healed", "severity": "warning", "step": 27, "message": "healed",
            "evidence": {"heals": 1, "attempts": [attempt]}},
           {"rule": "flat_loss", "severity": "warning", "step": 200, "message": "later", "evidence": {}}]
    found = {f.rule: f for f in findings_of_run([], log)}
    assert found["loss_explosion"].severity == "info" and found["loss_explosion"].fix_ids == ["see_healed"]
    assert found["healed"].severity == "warning" and found["flat_loss"].severity == "warning"  # after the heal
    assert all(f.recorded for f in found.values())
