"""Rule changes found by loops written the way users write them (benchmarks/userloops), each with its fault
caught and its healthy counterpart quiet: nll_loss on raw logits and MSE on class indices (loss_mismatch), no
ln(C) chance level for a regression loss, a spike judged against the loss's own noise (loss_explosion), a
noisy batch-1 loss as a note, and findings that do not depend on how the log is chunked.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from synth import batch, layers, steps
from torch import nn
from torch.nn import functional as F
from userloops import Loop, digits, findings, mlp, train

from babysit.monitor.reader import RunData, load_run
from babysit.rules import diagnose
from babysit.rules.engine import OnlineDiagnoser

pytestmark = pytest.mark.filterwarnings("error::rules.engine.RuleWarning")


@pytest.fixture(scope="module")
def data():
    return digits()


def _run_of(*records, meta=None, state: str = "finished") -> RunData:
    b = batch(*records)
    return RunData(steps=b.steps, epochs=b.epochs, layers=b.layers, snapshots=b.snapshots, events=b.events,
                   meta=meta or {}, status={"state": state})


def _by_rule(found) -> dict:
    return {f.rule: f for f in found}


# ------------------------------------------------------------------ loss_mismatch
def test_nll_loss_on_raw_logits_is_caught_with_the_log_softmax_fix(tmp_path, data):
    x, y = data
    found = findings(train(tmp_path / "run", Loop(mlp(64, 10), x, y, loss="nll_loss", steps=120)))
    f = found["loss_mismatch"]
    assert f.severity == "warning" and f.fix_ids[0] == "log_softmax_before_nll"
    assert f.evidence["loss_fn"] == "nll_loss" and f.evidence["log_probs"] is False
    assert "double_softmax" not in found


def test_nll_loss_on_log_softmax_is_quiet(tmp_path, data):
    x, y = data
    loop = Loop(mlp(64, 10), x, y, loss="nll_loss", to_loss=lambda out: F.log_softmax(out, 1), steps=120)
    assert "loss_mismatch" not in findings(train(tmp_path / "run", loop))


def test_mse_on_class_indices_is_loss_mismatch_not_an_init_loss_mismatch(tmp_path, data):
    """One output regressing labels 0..9 starts at MSE ~28: that is not '12x ln(10)', it is the wrong loss."""
    x, y = data
    loop = Loop(mlp(64, 1), x, y.float(), loss="mse_loss", to_loss=lambda out: out.squeeze(1), steps=120)
    found = findings(train(tmp_path / "run", loop))
    f = found["loss_mismatch"]
    assert f.fix_ids[0] == "classification_loss" and f.evidence["num_classes"] == 10
    assert "init_loss_mismatch" not in found


def test_regression_with_mse_is_quiet_and_never_claims_a_chance_level(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(600, 8)
    y = x @ torch.randn(8) + 0.1 * torch.randn(600)
    loop = Loop(mlp(8, 1), x, y, num_classes=None, loss="mse_loss", to_loss=lambda out: out.squeeze(1), steps=200)
    found = findings(train(tmp_path / "run", loop))
    assert not [f for f in found.values() if f.severity != "info"], {r: f.message for r, f in found.items()}


def test_a_collapsed_regression_loss_is_judged_against_its_start_not_ln2():
    """A 1-output regression head is no 2-class classifier: lr_too_high compares with the initial loss."""
    s = np.arange(1, 401)
    loss = np.where(s < 80, 1.0 * np.exp(-s / 30) + 0.3, 1.6 + 0.01 * np.sin(s))
    meta = {"first_batch": {"loss_fn": "mse_loss"},
            "model": {"layers": [{"name": "0", "type": "Linear", "params": {"weight": [16, 8]}},
                                 {"name": "2", "type": "Linear", "params": {"weight": [1, 16]}}]}}
    found = _by_rule(diagnose(_run_of(steps(s, loss, lr=0.5), meta=meta)))
    for f in found.values():
        assert "ln(2)" not in f.message and "chance" not in f.message, f.message
    assert "lr_too_high" in found and found["lr_too_high"].evidence["chance_loss"] is None


# ------------------------------------------------------------------ loss_explosion vs the loss's own noise
def _batch1_losses(n: int, seed: int = 0) -> np.ndarray:
    """Per-example cross-entropy of a net that learns: all near ln 2 at init (a random net is unsure of every
    example), then most near 0 and a heavy tail of hard ones."""
    rng = np.random.default_rng(seed)
    fit = 1 - np.exp(-np.arange(n) / 150)  # how far the net has learned
    learned = rng.exponential(0.08, n) * np.where(rng.random(n) < 0.08, 12.0, 1.0)
    return (1 - fit) * (0.69 + 0.05 * rng.standard_normal(n)) + fit * learned


def test_hard_examples_in_a_row_at_batch_size_1_are_no_explosion():
    loss = _batch1_losses(3000)
    found = _by_rule(diagnose(_run_of(steps(np.arange(1, 3001), loss), meta={"num_classes": 2})))
    assert "loss_explosion" not in found, found["loss_explosion"].message


def test_a_noisy_loss_whose_level_rises_still_explodes():
    loss = _batch1_losses(1500)
    loss[800:] = loss[800:] * 20 + 3.0  # the level itself jumps (lr too high): sustained, not a cluster
    found = _by_rule(diagnose(_run_of(steps(np.arange(1, 1501), loss), meta={"num_classes": 2})))
    f = found["loss_explosion"]
    assert f.severity == "critical" and f.step > 800


def test_a_smooth_loss_still_explodes_within_a_few_steps():
    s = np.arange(1, 301)
    loss = np.where(s < 150, 2.3 * np.exp(-s / 50) + 0.2, 9.0)
    f = _by_rule(diagnose(_run_of(steps(s, loss), meta={"num_classes": 10})))["loss_explosion"]
    assert f.severity == "critical" and 150 <= f.step <= 155


def test_a_noisy_batch1_loss_is_a_note_when_the_batch_size_explains_it():
    loss = _batch1_losses(1500)
    meta = {"num_classes": 2, "first_batch": {"inputs": {"shape": [1, 2]}}}
    f = _by_rule(diagnose(_run_of(steps(np.arange(1, 1501), loss), meta=meta))).get("noisy_loss")
    assert f is None or (f.severity == "info" and "batch size 1" in f.message)


# ------------------------------------------------------------------ the same findings however the log is chunked
def _chunks(run, k: int):
    last = int(max(run.steps["step"].max(), run.layers["step"].max() if len(run.layers) else 0,
                   run.epochs["step"].max() if len(run.epochs) else 0))
    for lo in range(0, last + 1, k):
        part = {name: (t[(t["step"] > lo) & (t["step"] <= lo + k)] if len(t) else t)
                for name in ("steps", "epochs", "layers", "snapshots") for t in [getattr(run, name)]}
        yield SimpleNamespace(**part, events=[], path=run.path, meta=run.meta, load_snapshot=run.load_snapshot)


def _severities(diagnoser) -> dict:
    return {f.rule: f.severity for f in diagnoser.findings}


@pytest.mark.parametrize("lr", [0.05, 0.3])
def test_findings_do_not_depend_on_how_the_log_is_chunked(tmp_path, data, lr):
    """Dead units that escalate, a collapse after a spike: one chunk and many small ones agree."""
    x, y = data
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    run = load_run(train(tmp_path / "run", Loop(model, x, y, opt="adam", lr=lr, steps=250)))
    whole = OnlineDiagnoser(run.meta, run_dir=run.path)
    whole.update(run, status=run.status)
    for k in (7, 40):
        parts = OnlineDiagnoser(run.meta, run_dir=run.path)
        for b in _chunks(run, k):
            parts.update(b, status=run.status)
        assert _severities(parts) == _severities(whole), k


def test_lr_too_high_after_an_exploded_spike_reads_the_later_losses_right():
    """A 1e25 spike, then a plateau at chance: running sums that held 1e25 must not read the plateau as 0."""
    s = np.arange(1, 301)
    loss = np.where(s < 10, 2.3 - 0.1 * s, 2.35 + 0.05 * np.sin(s))
    loss[12:20] = 10.0 ** np.arange(3, 27, 3)
    recs = [steps(s, loss, lr=1.5), *[layers(k, fc=dict(kind="weight", w_norm=1.0)) for k in (1, 100, 200)]]
    whole = _by_rule(diagnose(_run_of(*recs, meta={"num_classes": 10})))
    f = whole.get("lr_too_high")
    assert f is not None and math.isfinite(f.evidence["min_loss_before"]) and f.evidence["min_loss_before"] > 0.5


# ------------------------------------------------------------------ what users call their metrics, multi-head models
def test_user_spellings_of_epoch_metrics_reach_the_rules():
    """run.epoch(accuracy=..., val_accuracy=..., valid_loss=...) at chance is seen as chance accuracy."""
    from synth import epoch

    s = np.arange(1, 401)
    recs = [steps(s, 2.3 + 0.01 * np.sin(s), lr=0.01)]
    recs += [epoch(k, 50 * k, accuracy=0.1, val_accuracy=0.1, valid_loss=2.3) for k in range(1, 9)]
    found = _by_rule(diagnose(_run_of(*recs, meta={"num_classes": 10})))
    assert "chance_accuracy" in found and found["chance_accuracy"].severity == "warning"


def test_a_canonical_name_wins_over_an_alias():
    import pandas as pd

    from babysit.rules.metric_names import canonical_epochs

    frame = pd.DataFrame({"val_loss": [1.0], "valid_loss": [9.0], "val/accuracy": [0.5]})
    out = canonical_epochs(frame)
    assert list(out["val_loss"]) == [1.0] and list(out["val_acc"]) == [0.5] and "valid_loss" in out


def test_num_classes_comes_from_the_loss_input_not_the_last_head():
    """A trunk with a 10-class head and a 1-unit parity head registered last: C is 10, from what the loss got."""
    from babysit.rules.base import Context
    from babysit.rules.loss import infer_num_classes

    meta = {"first_batch": {"loss_fn": "cross_entropy", "loss_input": {"shape": [32, 10]}},
            "model": {"layers": [{"name": "cls", "type": "Linear", "params": {"weight": [10, 128]}},
                                 {"name": "parity", "type": "Linear", "params": {"weight": [1, 128]}}]}}
    assert infer_num_classes(Context(meta=meta, thresholds={})) == (10, "loss_input")
    meta["first_batch"] = {"loss_fn": "mse_loss", "loss_input": {"shape": [32, 1]}}
    assert infer_num_classes(Context(meta=meta, thresholds={})) == (None, "")


# ------------------------------------------------------------------ missing_zero_grad
def test_a_loop_that_never_zeroes_the_gradients_is_caught_and_leads_the_explosion(tmp_path, data):
    x, y = data
    loop = Loop(mlp(64, 10, hidden=128), x, y, opt="momentum", lr=0.01, steps=150, zero_when=lambda i: False)
    found = findings(train(tmp_path / "run", loop))
    f = found["missing_zero_grad"]
    assert f.severity == "warning" and f.fix_ids == ["call_zero_grad"] and f.evidence["growth"] >= 4
    for symptom in ("loss_explosion", "exploding_gradients", "lr_too_high"):
        if symptom in found and found[symptom].severity != "info":
            assert found[symptom].root_cause == "missing_zero_grad", symptom


@pytest.mark.parametrize("k", [1, 4])
def test_zeroed_gradients_and_gradient_accumulation_are_quiet(tmp_path, data, k):
    x, y = data
    loop = Loop(mlp(64, 10, hidden=128), x, y, opt="momentum", lr=0.01, steps=150, loss_scale=k,
                step_when=lambda i: (i + 1) % k == 0)
    assert "missing_zero_grad" not in findings(train(tmp_path / "run", loop))


def test_an_undeclared_c_is_no_ground_for_an_init_loss_finding_without_accuracies():
    """A GAN records the discriminator's two BCE terms summed (2 ln 2 at the start): C=2 read off the loss input
    is right, but the recorded loss is not that loss, so only accuracies would make the ln(C) check valid."""
    s = np.arange(1, 301)
    meta = {"first_batch": {"loss_fn": "binary_cross_entropy_with_logits", "loss_input": {"shape": [64, 1]}}}
    found = _by_rule(diagnose(_run_of(steps(s, 1.386 - 0.1 * (1 - np.exp(-s / 50))), meta=meta)))
    assert "init_loss_mismatch" not in found


# ------------------------------------------------------------------ raw-scale regression targets
def test_raw_regression_targets_no_better_than_the_mean_wait_while_young_and_count_once_finished():
    """A net that starts at the targets' mean needs time; a finished 90-step run that never beat it had its time."""
    s = np.arange(1, 91)
    meta = {"first_batch": {"loss_fn": "mse_loss", "targets": {"mean": 140.0, "std": 70.0, "min": 25.0,
                                                                 "max": 346.0, "integer": False}}}
    recs = steps(s, 4900 * (1 + 0.05 * np.sin(s)))
    assert "bad_labels" not in _by_rule(diagnose(_run_of(recs, meta=meta, state="running")))
    f = _by_rule(diagnose(_run_of(recs, meta=meta)))["bad_labels"]
    assert f.severity == "warning" and f.fix_ids[0] == "standardize_targets"


# ------------------------------------------------------------------ single_batch
def test_one_batch_reused_every_step_is_named_and_random_batches_are_not(tmp_path, data):
    x, y = data
    same = findings(train(tmp_path / "same", Loop(mlp(64, 10), x[:32], y[:32], sequential=True, steps=120)))
    f = same["single_batch"]
    assert f.fix_ids == ["advance_the_loader"] and f.evidence["batch_size"] == 32
    assert f.severity == "info"  # no validation here, so no overfitting: full-batch training looks the same
    shuffled = findings(train(tmp_path / "random", Loop(mlp(64, 10), x, y, steps=120)))
    assert "single_batch" not in shuffled


# ------------------------------------------------------------------ eval_mode_training
def _dropout_run(run_dir, data, train_mode: bool):
    """A plain user loop (no test helper filling meta): model.eval() left on, or model.train() as it should be."""
    import babysit

    torch.manual_seed(0)
    x, y = data
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train(train_mode)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for i in range(120):
            idx = torch.arange(i * 32, (i + 1) * 32) % len(x)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss)
    return {f.rule: f for f in diagnose(load_run(run_dir))}


def test_a_model_left_in_eval_mode_while_training_is_caught(tmp_path, data):
    f = _dropout_run(tmp_path / "eval", data, train_mode=False)["eval_mode_training"]
    assert f.severity == "warning" and f.fix_ids == ["call_model_train"] and f.evidence["layers"] == ["Dropout"]
    assert "eval_mode_training" not in _dropout_run(tmp_path / "train", data, train_mode=True)


def test_one_example_off_center_is_no_unnormalized_input_but_raw_pixels_are():
    """Batch size 1: its mean over two features is one point of the data, not an offset of the data."""
    s = np.arange(1, 301)
    curve = 0.7 * np.exp(-s / 60) + 0.1
    one = {"num_classes": 2, "first_batch": {"inputs": {"shape": [1, 2], "integer": False, "mean": -1.03,
                                                        "std": 0.24, "min": -1.27, "max": -0.79}}}
    assert "unnormalized_input" not in _by_rule(diagnose(_run_of(steps(s, curve), meta=one)))
    raw = {"num_classes": 10, "first_batch": {"inputs": {"shape": [1, 64], "integer": False, "mean": 80.0,
                                                         "std": 90.0, "min": 0.0, "max": 255.0}}}
    assert "unnormalized_input" in _by_rule(diagnose(_run_of(steps(s, curve), meta=raw)))
