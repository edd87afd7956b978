"""Scenario suite: real small training runs (CPU, seconds) with one fault injected each, and healthy runs.

Every rule of the catalogue must fire at warning or above on its fault with the right evidence; every
healthy configuration must get no warning and no critical (info notes are allowed). Detection latency
(steps from the fault's onset to the finding) is recorded and printed at the end of the session.
"""

from __future__ import annotations

import pytest
from scenarios import LATENCY, Scenario, train

from babysit import hooks
from babysit.monitor.reader import load_run
from babysit.rules import diagnose
from babysit.rules.base import severity_rank

pytestmark = pytest.mark.filterwarnings("error::rules.engine.RuleWarning")


def findings_of(run_dir, **kw):
    return {f.rule: f for f in diagnose(load_run(run_dir), **kw)}


def loud(findings: dict) -> dict:
    return {k: f for k, f in findings.items() if severity_rank(f.severity) >= severity_rank("warning")}


def expect(trained, scenario: Scenario, rule: str, onset: int = 1, severity: str = "warning", label: str = ""):
    run = trained(scenario)
    found = findings_of(run["run_dir"])
    assert rule in found, f"{rule} not found; got {[(f.rule, f.severity) for f in found.values()]}"
    f = found[rule]
    assert severity_rank(f.severity) >= severity_rank(severity), f
    assert f.fix and f.message and f.step is not None
    LATENCY[label or f"{scenario.name} -> {rule}"] = (onset, f.step, f.step - onset)
    return f, found


# ------------------------------------------------------------------ faults, one per rule
NAN_INPUT = Scenario("nan_input", nan_input_at=100, epochs=3)
LR_SPIKE = Scenario("lr_spike_x30", lr=0.05, lr_spike=(100, 30.0), momentum=0.9, epochs=3)
LOW_LR = Scenario("lr_too_low", lr=1e-5, momentum=0.0, epochs=4)
BIG_INIT = Scenario("init_scale_x30", last_init_scale=30.0, epochs=2)
TINY_TRAIN = Scenario("train_on_60", train_limit=60, lr=0.05, epochs=60, batch_size=16, hidden=128)
HEAVY_REG = Scenario("weight_decay_0.3", lr=0.05, weight_decay=0.3, epochs=8)
SHUFFLED = Scenario("shuffled_labels", shuffle_labels=True, opt="adam", lr=1e-3, epochs=6)
BATCH_1 = Scenario("batch_size_1", batch_size=1, lr=0.01, momentum=0.0, max_steps=1000, epochs=1)
WEIGHT_NOISE = Scenario("first_layer_noise", input_shape=(1, 8, 8), weight_noise=0.02, lr=0.02, epochs=6)
ADAM_LOW = Scenario("adam_lr_1e-6", opt="adam", lr=1e-6, epochs=3)
DEAD_BIAS = Scenario("relu_bias_-10", bias_init=-10.0, model="mlp2", epochs=4)
RAW_INPUT = Scenario("tanh_unnormalized_x20", model="tanh", input_scale=20.0, lr=0.01, epochs=3)
DEEP_SIGMOID = Scenario("sigmoid_8_layers", model="sigmoid_deep", depth=8, lr=0.05, epochs=4)
LAST_ONLY = Scenario("optimizer_last_layer_only", optimize_last_only=True, epochs=4)
LR_ZERO = Scenario("lr_0", lr=0.0, epochs=3)


def test_nonfinite_loss_from_nan_input(trained):
    f, found = expect(trained, NAN_INPUT, "nonfinite_loss", onset=100, severity="critical")
    assert f.step == 100 and f.evidence["last_finite_step"] == 99
    assert "NaN" in f.message
    # records after the NaN are garbage: no layer rule may blame dead units on it
    assert "dead_units" not in found


def test_loss_explosion_after_lr_spike(trained):
    f, _ = expect(trained, LR_SPIKE, "loss_explosion", onset=100, severity="critical")
    assert f.step >= 100 and f.evidence["ratio"] >= 3
    assert f"{f.evidence['initial_loss']:.2f}"[:3] in f.message and "x the initial" in f.message
    assert "stop" in f.fix[0] and "learning rate" in f.fix[1]


def test_exploding_gradients_after_lr_spike(trained):
    f, _ = expect(trained, LR_SPIKE, "exploding_gradients", onset=100)
    assert f.evidence.get("ratio", 0) >= 100 or f.severity == "critical"
    assert "clip" in f.fix[0]


def test_update_ratio_high_after_lr_spike(trained):
    f, _ = expect(trained, LR_SPIKE, "update_ratio", onset=100)
    assert f.evidence["direction"] == "high" and f.evidence["median_ratio"] > 0.1
    assert "lower the learning rate" in f.fix[0]


def test_loss_explosion_stops_training_online(tmp_path):
    """hooks.Run(on_critical="stop"): the lecture's 'loss > 3x original: quit early', live."""
    s = Scenario("lr_spike_stop", lr=0.05, lr_spike=(100, 30.0), momentum=0.9, epochs=20, step_sleep=0.002,
                 flush_steps=16)
    out = train(s, tmp_path / "run", on_critical="stop")
    run = load_run(tmp_path / "run")
    # the hooks run the rules on a time budget, so the first critical they see may be the NaN that follows
    assert run.status["state"] == "stopped"
    assert run.status["reason"].split(":")[0] in ("loss_explosion", "nonfinite_loss")
    assert out["steps"] < 900  # stopped long before the end of epoch 20
    assert any(f["rule"] == "loss_explosion" and f["step"] >= 100 for f in run.findings)


def test_flat_loss_when_lr_too_low(trained):
    f, found = expect(trained, LOW_LR, "flat_loss")
    assert abs(f.evidence["rel_change"]) < 0.02 and f.evidence["level_vs_initial"] > 0.9
    assert "raise the learning rate" in f.fix[0]  # its own, or through update_ratio (the same cause)
    assert (f.root_cause or "update_ratio") == "update_ratio"
    assert found["update_ratio"].evidence["direction"] == "low"


def test_init_loss_mismatch_from_large_last_layer(trained):
    f, _ = expect(trained, BIG_INIT, "init_loss_mismatch")
    assert f.step == 1 and f.evidence["ratio"] > 1.5 and f.evidence["num_classes"] == 10
    assert "ln(10) = 2.3" in f.message


def test_overfitting_on_60_examples(trained):
    f, _ = expect(trained, TINY_TRAIN, "overfitting")
    assert f.evidence["gap"] > 0.15 and f.evidence["train_acc"] > f.evidence["val_acc"]
    assert "regularization" in f.fix[0] or "early stopping" in f.fix[0]


def test_underfitting_with_heavy_weight_decay(trained):
    f, found = expect(trained, HEAVY_REG, "underfitting")
    assert abs(f.evidence["gap"]) < 0.05 and f.evidence["scaled_train_acc"] < 0.7
    assert f.fix_ids[0] == "lower_reg" and "reg 0.3" in f.fix[0]  # reg is the configured culprit: it leads
    assert "overfitting" not in found


def test_chance_accuracy_with_shuffled_labels(trained):
    f, found = expect(trained, SHUFFLED, "chance_accuracy")
    assert f.evidence["accuracy"] <= 0.15 and f.evidence["chance"] == pytest.approx(0.1)
    assert "labels" in f.fix[0]
    # the weights move, so nothing may advise raising the learning rate
    assert not any("raise the learning rate" in x for g in found.values() for x in g.fix[:1])


def test_noisy_loss_with_batch_size_1(trained):
    """Batch 1 at a modest lr: the curve is a wide band, but it still learns -- a note, not a warning."""
    f, _ = expect(trained, BATCH_1, "noisy_loss", severity="info")
    assert f.evidence["batch_size"] == 1 and f.evidence["rel_spread"] > 0.5 and f.evidence["still_improving"]
    assert "batch size" in f.fix[0]


def test_noisy_weights_when_first_layer_gets_noise(trained):
    f, _ = expect(trained, WEIGHT_NOISE, "noisy_weights")
    assert f.evidence["roughness"] > 0.85 and f.evidence["roughness_change"] > 0.85
    assert f.evidence["file"].startswith("snapshots/")


def test_update_ratio_low_with_adam_lr_1e6(trained):
    f, _ = expect(trained, ADAM_LOW, "update_ratio")
    assert f.evidence["direction"] == "low" and 0 < f.evidence["median_ratio"] < 3e-5
    assert "raise the learning rate" in f.fix[0]


def test_dead_units_and_flat_loss_names_the_cause(trained):
    f, found = expect(trained, DEAD_BIAS, "dead_units", severity="critical")
    assert f.evidence["dead_frac"] >= 0.99
    flat = found["flat_loss"]
    assert flat.root_cause == "dead_units" and "dead_units" in flat.message
    assert flat.fix[0].startswith("fix dead_units first")
    assert not any("raise the learning rate" in x for x in flat.fix)


def test_saturated_tanh_with_unnormalized_inputs(trained):
    f, _ = expect(trained, RAW_INPUT, "saturated_activations")
    assert f.evidence["kind"] == "tanh" and f.evidence["saturated_frac"] >= 0.5
    assert "normalize the inputs" in f.fix[0]


def test_vanishing_gradients_in_deep_sigmoid_net(trained):
    f, found = expect(trained, DEEP_SIGMOID, "vanishing_gradients")
    assert f.evidence["ratio"] < 1e-3
    assert "ReLU" in f.fix[0]
    assert found["flat_loss"].root_cause == "vanishing_gradients"


def test_stalled_weights_when_optimizer_misses_a_layer(trained):
    f, _ = expect(trained, LAST_ONLY, "stalled_weights")
    assert f.evidence["layers"] == ["0"] and not f.evidence["all_layers"]
    assert "parameter list" in f.fix[0]


def test_stalled_weights_critical_with_lr_0(trained):
    f, found = expect(trained, LR_ZERO, "stalled_weights", severity="critical")
    assert f.evidence["all_layers"] and "learning rate is 0" in f.message
    assert found["flat_loss"].root_cause == "stalled_weights"


def test_stalled_run_crashed(trained):
    s = Scenario("crash_at_50", crash_at=50, epochs=2)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        trained(s)
    run_dir = trained.root(s) / "run"
    f = findings_of(run_dir)["stalled_run"]
    assert f.severity == "critical" and "RuntimeError" in f.message and f.step == 50
    assert f.evidence["error"]["type"] == "RuntimeError"
    LATENCY["crash_at_50 -> stalled_run"] = (50, f.step, 0)


def test_stalled_run_without_heartbeat(trained):
    """A process that stops writing (hung data loader, deadlock): its status still says running."""
    out = trained(Scenario("hangs_after_2_epochs", epochs=2, keep_open=True))
    try:
        data = load_run(out["run_dir"])
        assert data.status["state"] == "running"  # our own pid: alive
        assert "stalled_run" not in findings_of(out["run_dir"])
        later = max(data.status["heartbeat"], float(data.steps["time"].max())) + 61
        f = {x.rule: x for x in diagnose(data, now=later)}["stalled_run"]
        assert f.severity == "warning" and f.evidence["heartbeat_age_s"] > 60 and f.evidence["limit_s"] >= 60
        assert f.step == 90
        LATENCY["hangs_after_2_epochs -> stalled_run (seconds)"] = (0, 61, 61)
    finally:
        out["run"].close()


def test_test_set_reuse(tmp_path):
    out = train(Scenario("test_reuse", epochs=2), tmp_path / "run", on_critical=None)
    assert out["steps"] == 90
    assert "test_set_reuse" not in findings_of(tmp_path / "run")
    with hooks.Run(tmp_path / "run", num_classes=10, resume=True, on_critical=None) as run:
        run.log_event("test_eval", split_id="digits-0", uses=1, acc=0.97)
        run.log_event("test_eval", split_id="digits-0", uses=2, acc=0.98)
    f = findings_of(tmp_path / "run")["test_set_reuse"]
    assert f.evidence["split_id"] == "digits-0" and f.evidence["uses"] == 2
    assert "validation" in f.fix[0]


# ------------------------------------------------------------------ healthy runs: no warning, no critical
HEALTHY = [
    Scenario("mlp_sgd_momentum"),
    Scenario("conv_adam", model="conv", opt="adam", lr=1e-3, batch_size=64, epochs=8),
    Scenario("mlp_adam_step_schedule_dropout", opt="adam", lr=2e-3, dropout=0.3, schedule="step", epochs=8),
    Scenario("spiral_2d_adam", data="spiral", model="mlp2", opt="adam", lr=1e-2, batch_size=64, epochs=30),
    Scenario("tabular_sgd_cosine_wd", data="tabular", model="mlp2", lr=0.05, weight_decay=1e-4,
             schedule="cosine", epochs=12),
    Scenario("conv_sgd_exp_decay_wd", model="conv", lr=0.02, weight_decay=5e-4, schedule="exp", epochs=8),
    Scenario("moons_tanh_sgd", data="moons", model="tanh", lr=0.1, epochs=20),
    Scenario("batchnorm_nesterov_warmup", model="bn", opt="nesterov", lr=0.1, schedule="warmup", epochs=6),
    Scenario("finetune_frozen_first_layer", freeze_first=True, lr=0.05, epochs=6),
    Scenario("binary_tabular_sgd", data="binary", lr=0.01, epochs=20),
    Scenario("deep_relu_sgd_slow_start", model="deep", depth=6, lr=0.02, momentum=0.9, epochs=10),
    Scenario("mlp_small_batch_adam_snapshots", opt="adam", lr=5e-4, batch_size=8, epochs=3,
             input_shape=(1, 8, 8), every=None),
]


@pytest.mark.parametrize("scenario", HEALTHY, ids=[s.name for s in HEALTHY])
def test_healthy_run_stays_quiet(trained, scenario):
    out = trained(scenario)
    assert out["val_acc"] > 0.85, "the healthy configuration itself must train well"
    found = findings_of(out["run_dir"])
    assert loud(found) == {}, [(f.rule, f.severity, f.message) for f in loud(found).values()]


def test_online_and_posthoc_agree(trained):
    """The hooks' online findings (last version per rule) match post-hoc diagnosis of the same run."""
    for scenario in (LOW_LR, DEAD_BIAS, LR_SPIKE, HEALTHY[0]):
        out = trained(scenario)
        online: dict[str, str] = {}
        for f in out["findings"]:
            online[f["rule"]] = f["severity"]
        posthoc = {k: f.severity for k, f in findings_of(out["run_dir"]).items()}
        loud_online = {k: v for k, v in online.items() if v != "info"}
        loud_posthoc = {k: v for k, v in posthoc.items() if v != "info"}
        assert loud_online == loud_posthoc, scenario.name
