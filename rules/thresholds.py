"""Every number a rule compares against, in one table, each with where it came from.

Override per run with `babysit.Run(thresholds={...})`, `diagnose(run, thresholds={...})`, or on the command line
(`babysit diagnose RUN --threshold explosion_factor=5 --config thresholds.toml`). Unknown names are an error,
so a typo never silently leaves a default in place.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Threshold", "TABLE", "THRESHOLDS", "resolve", "parse_assignment", "load_config"]


@dataclass(frozen=True)
class Threshold:
    value: float
    what: str
    source: str


LECTURE = "CS231n lecture \"Training neural networks\""
TABLE: dict[str, Threshold] = {
    # --- loss curve
    "explosion_factor": Threshold(
        3.0,
        "loss_explosion: smoothed loss above this multiple of the initial loss",
        LECTURE + ": 'loss > 3x original loss, quit early'",
    ),
    "explosion_warn_factor": Threshold(
        1.5,
        "loss_explosion (warning): smoothed loss above this multiple of the initial loss",
        "ours: healthy runs stay under ~1.1x (measured on the scenario suite)",
    ),
    "explosion_min_rise": Threshold(
        0.2,
        "loss_explosion: and the loss must have risen by at least this fraction of ln(C) (C known)",
        "ours: a fine-tuned net at loss 0.1 that wobbles to 0.17 (1.7x) did not explode",
    ),
    "explosion_window": Threshold(
        5,
        "loss_explosion: steps in the rolling median that must exceed the factor",
        "Lightning SpikeDetection window=10, halved for latency",
    ),
    "explosion_noise_history": Threshold(
        200,
        "loss_explosion: steps before a window whose single losses show the loss's own noise",
        "ours: long enough to see a heavy tail of hard batches (batch size 1)",
    ),
    "explosion_noise_frac": Threshold(
        0.01,
        "loss_explosion: more than this fraction of those steps above the limit is a noisy loss",
        "ours: a 5-step median crosses by chance once single steps cross ~1-2% of the time (binomial)",
    ),
    "explosion_noisy_window": Threshold(
        51,
        "loss_explosion: steps in the rolling mean that must exceed the factor when the loss is noisy",
        "ours: a level that rose, not a cluster of hard batches; 10x explosion_window",
    ),
    "tiny_batch": Threshold(
        4,
        "vanishing_gradients / loss_explosion / unnormalized_input: at or below this batch size a gradient, a loss"
        " or input statistics are a few examples' (an all-tiny gradient is a fitted example; single losses are "
        "noise; one example's mean is no offset)",
        "ours: a batch-1 run at a healthy lr records every layer below 1e-7 on a confidently right example",
    ),
    "zero_grad_steps": Threshold(
        10,
        "missing_zero_grad: consecutive first steps (all sampled) over which the gradient norm must rise",
        "ours: the probes sample each of the first 10 steps",
    ),
    "zero_grad_growth": Threshold(
        4.0,
        "missing_zero_grad: the gradient norm at the last of them at least this x the first",
        "ours: summed gradients measure 7-8x at step 10 (digits MLPs), healthy runs 0.5-2x",
    ),
    "eval_mode_steps": Threshold(
        100,
        "eval_mode_training: steps after which a missing first batch means no training-mode forward was seen; "
        "mid-run, the steps the sampled eval-mode steps must span",
        "ours: the hooks write the first batch after steps 1, 10 and 50",
    ),
    "nonfinite_low_loss": Threshold(
        0.1,
        "nonfinite_loss: a last finite loss below this x the initial one puts the loss's math (log, division) "
        "first among the fixes",
        "ours: lr blow-ups pass through a rising loss (1e2-1e36 before NaN); log(0) NaNs follow losses ~1e-4",
    ),
    "eval_mode_records": Threshold(
        5,
        "eval_mode_training: sampled steps in a row with gradients and no training-mode activation, mid-run",
        "ours: the probes sample every step to 10, then ~15% apart; a healthy run measures activations at each",
    ),
    "single_batch_steps": Threshold(
        20,
        "single_batch: steps whose labels must all equal the first batch's before it is said",
        "ours: random batches of a larger set match it by chance at 2 steps at most",
    ),
    "init_steps": Threshold(
        5,
        "steps whose median is 'the initial loss' for relative comparisons",
        "ours: one step is a single noisy batch",
    ),
    "flat_window": Threshold(
        100,
        "flat_loss: steps over which the loss must barely move",
        "smdebug LossNotDecreasing (10 steps) made sustained",
    ),
    "flat_window_moving": Threshold(
        300,
        "flat_loss: steps the loss must stay flat when the weights do move (deep nets plateau before they learn)",
        "ours",
    ),
    "flat_resolved": Threshold(
        0.6,
        "flat_loss: a flat loss that later drops below this fraction of the initial loss was a slow start (info)",
        "ours",
    ),
    "flat_rel_change": Threshold(
        0.02,
        "flat_loss: relative change of the smoothed loss across the window below this",
        LECTURE + ": 'loss barely changing: lr too low'",
    ),
    "flat_level": Threshold(
        0.85,
        "flat_loss: only while the loss is still above this fraction of the initial loss",
        "ours: a run that learned and converged is not flat",
    ),
    "noisy_window": Threshold(
        100,
        "noisy_loss: steps per window of spread measurement",
        LECTURE + ": loss curve width ~ batch size",
    ),
    "noisy_rel_spread": Threshold(
        1.0,
        "noisy_loss: step-to-step spread (robust std) above this multiple of the trend level",
        "ours, tuned on healthy runs (batch >= 16)",
    ),
    "noisy_init_spread": Threshold(
        0.3,
        "noisy_loss: and the spread above this fraction of the initial loss",
        "ours, tuned on healthy runs",
    ),
    "noisy_small_batch": Threshold(
        4,
        "noisy_loss: a configured batch size at or below this relaxes the limits (the lecture's cause)",
        LECTURE + ": 'if too noisy, increase the batch size'",
    ),
    "noisy_small_batch_relax": Threshold(
        0.5,
        "noisy_loss: factor on both spread limits when the batch is that small",
        "ours, tuned on batch-1/2 runs vs healthy batch>=8 runs",
    ),
    "flat_moving_ratio": Threshold(
        3e-4,
        "flat_loss: an update/weight ratio above this means the weights move, so the lr is not too low",
        "CS231n notes (~1e-3 healthy)",
    ),
    "noisy_improving": Threshold(
        0.2,
        "noisy_loss: only a note (info) while the median loss fell by at least this fraction over the last windows",
        "ours: a batch-1 run that trains well is noisy by nature (fault zoo look-alike batch1_sgd_small_lr)",
    ),
    "noisy_min_steps": Threshold(
        50,
        "noisy_loss: ignore the first steps (the fast initial drop is trend, not noise)",
        "ours",
    ),
    # --- causes (rules/causes.py)
    "cause_lag_steps": Threshold(
        100,
        "a cause finding explains a symptom only when found at most this many steps after it",
        "ours: cause rules need a window of evidence (lr_too_high 50 steps, flat_loss 100) before they report",
    ),
    "lr_high_window": Threshold(
        50,
        "lr_too_high: steps over which the loss must sit at chance level (or above its start) and not fall",
        "ours: flat_window; a warmup spike recovers within it",
    ),
    "lr_high_level": Threshold(
        0.9,
        "lr_too_high: the smoothed loss stays at or above this multiple of ln(C) (a constant predictor's loss)",
        LECTURE + ": 'loss at chance = ln(C)'; a collapsed net predicts the class prior (<= ln C)",
    ),
    "lr_high_rise": Threshold(
        1.5,
        "lr_too_high: 'it rose back': every smoothed point of the window is this multiple of the lowest loss before",
        LECTURE + ": 'too high: the loss goes down, then up'; explosion_warn_factor's 1.5x",
    ),
    "lr_high_rise_abs": Threshold(
        0.2,
        "lr_too_high: and the rise is at least this fraction of ln(C) (of the initial loss without C): not noise",
        "ours",
    ),
    "lr_high_rise_sd": Threshold(
        4.0,
        "lr_too_high: and the rise is at least this many standard errors of a smoothed point (small-batch noise)",
        "ours: two minima of one noisy band differ by ~2 standard errors",
    ),
    "lr_high_w_shrunk": Threshold(
        0.2,
        "lr_too_high: a high update ratio is no evidence once the median weight norm fell below this fraction of "
        "its first value (weights heading for zero: a crushing L2 penalty, a linear model at chance)",
        "ours (fault zoo: l2_penalty_in_loss_too_strong, linear_model_on_circles)",
    ),
    "reg_strong_w_shrunk": Threshold(
        0.2,
        "regularization_too_strong: the median weight norm across weight layers below this fraction of its first "
        "value (the weights crushed toward zero)",
        "ours: as lr_high_w_shrunk, the same shrink that makes a high update ratio no evidence of a high lr",
    ),
    "reg_strong_min": Threshold(
        0.01,
        "regularization_too_strong: the declared penalty (optimizer weight_decay, config weight_decay/reg/l2) at "
        "or above this; below it no penalty crushes weights in the steps a run takes",
        "ours: underfitting's 'heavy' config reg is 0.01",
    ),
    "lr_high_early_steps": Threshold(
        50,
        "lr_too_high: evidence 'it jumped': the smoothed loss rose explosion_warn_factor x above its start within "
        "this many steps",
        LECTURE + ": 'too high: the loss jumps up in the first steps'",
    ),
    "lr_high_ratio": Threshold(
        0.03,
        "lr_too_high: evidence 'updates too large': median update/weight ratio above this (30x the healthy ~1e-3; "
        "Adam at a healthy lr stays under ~1e-2)",
        "CS231n notes (~1e-3 healthy); ours for the factor",
    ),
    # --- initial loss and accuracy
    "init_loss_ratio": Threshold(
        1.5,
        "init_loss_mismatch: first loss above this multiple of ln(C)",
        LECTURE + ": 'loss at init ~ ln(C) (2.30 for 10 classes)'",
    ),
    "init_loss_low_ratio": Threshold(
        0.5,
        "init_loss_mismatch (info): first loss below this multiple of ln(C)",
        "ours: pretrained nets start low",
    ),
    "chance_margin": Threshold(
        0.05,
        "chance_accuracy: val accuracy at most 1/C + min(this, 0.5/C)",
        LECTURE + ": accuracy at chance = nothing learned",
    ),
    "chance_min_epochs": Threshold(
        2,
        "chance_accuracy: epochs of training before judging",
        "ours",
    ),
    "overfit_gap": Threshold(
        0.15,
        "overfitting: train accuracy minus val accuracy above this",
        LECTURE + ": 'big gap = overfitting'; smdebug Overfit uses 0.1 on loss",
    ),
    "overfit_val_rise": Threshold(
        0.3,
        "overfitting: val loss this fraction above its minimum while train loss keeps falling",
        "ours (smdebug Overfit patience)",
    ),
    "overfit_patience": Threshold(
        2,
        "overfitting: consecutive epochs the condition must hold",
        "Keras/Lightning EarlyStopping patience",
    ),
    "underfit_gap": Threshold(
        0.05,
        "underfitting: train/val accuracy gap below this ('no gap')",
        LECTURE + ": 'no gap = underfitting, increase capacity'",
    ),
    "underfit_acc": Threshold(
        0.7,
        "underfitting: train accuracy, scaled from chance (0) to perfect (1), below this",
        "ours",
    ),
    "underfit_plateau": Threshold(
        0.02,
        "underfitting: train accuracy gained over the last epochs below this",
        "ours",
    ),
    "underfit_warn_acc": Threshold(
        0.3,
        "underfitting: a warning without other evidence only below this scaled train accuracy; above it, and with "
        "no heavy regularization, it is an info note (the data's own ceiling looks the same: noisy labels)",
        "ours: healthy runs on label-noisy data plateau with no gap at any accuracy",
    ),
    "underfit_heavy_wd": Threshold(
        0.05,
        "underfitting: an optimizer weight_decay at or above this counts as heavy regularization (AdamW's "
        "default 0.01 does not)",
        "ours",
    ),
    "underfit_min_epochs": Threshold(
        4,
        "underfitting: epochs of training before judging",
        "ours",
    ),
    # --- layers
    "update_ratio_low": Threshold(
        3e-5,
        "update_ratio: median update/weight ratio below this (optimizer barely moves the weights)",
        "CS231n notes: ~1e-3 is healthy (30x below it); smdebug WeightUpdateRatio < 1e-8",
    ),
    "update_ratio_high": Threshold(
        0.1,
        "update_ratio: median update/weight ratio above this (lr too high)",
        "CS231n notes: ~1e-3 is healthy; smdebug WeightUpdateRatio > 10",
    ),
    "update_ratio_records": Threshold(
        3,
        "update_ratio: consecutive layer records the ratio must stay off",
        "ours: a sustained condition, not one sample",
    ),
    "update_ratio_min_steps": Threshold(
        20,
        "update_ratio (high): the streak of records must also span this many steps",
        "ours: dense early sampling (every step at first) and small-init weights that grow fast in the first ~10 "
        "steps; 3 records at every=10 span 20",
    ),
    "lr_decayed_factor": Threshold(
        0.01,
        "update_ratio: a low ratio is expected once the lr has decayed below this fraction of its peak",
        "ours (schedules)",
    ),
    "dead_frac": Threshold(
        0.6,
        "dead_units: fraction of a ReLU layer's units that never fire on the probe batch",
        "smdebug DeadRelu (>50% of a layer); AutoTrainer dying ReLU (>=70%)",
    ),
    "dead_frac_small_batch": Threshold(
        0.95,
        "dead_units: the limit for batches under 8 examples (few probe examples: many units idle by chance)",
        "ours",
    ),
    "sustain_steps": Threshold(
        50,
        "layer rules: two records in a row spanning this many steps also count as sustained",
        "ours: time-budgeted sampling gives few records",
    ),
    "dead_records": Threshold(
        2,
        "dead_units: consecutive layer records the layer must stay dead",
        "ours",
    ),
    "saturated_frac": Threshold(
        0.5,
        "saturated_activations: fraction of tanh/sigmoid outputs pinned at their limits",
        "smdebug SaturatedActivation (tanh input beyond +-9.5)",
    ),
    "saturated_records": Threshold(
        2,
        "saturated_activations: consecutive layer records the layer must stay saturated",
        "ours",
    ),
    "vanishing_ratio": Threshold(
        1e-3,
        "vanishing_gradients: first layer's gradient norm over the last layer's below this",
        "AutoTrainer vanishing gradient (ratio <= 1e-3)",
    ),
    "vanishing_abs": Threshold(
        1e-7,
        "vanishing_gradients: or every gradient norm below this",
        "smdebug VanishingGradient (mean |grad| < 1e-7)",
    ),
    "vanishing_records": Threshold(
        3,
        "vanishing_gradients: consecutive layer records",
        "ours",
    ),
    "exploding_factor": Threshold(
        100.0,
        "exploding_gradients: total gradient norm above this multiple of its early median",
        "ours; AutoTrainer exploding (ratio >= 70)",
    ),
    "exploding_loss_level": Threshold(
        0.8,
        "exploding_gradients: only while the loss is above this fraction of the initial loss (not improving)",
        "ours: deep nets' gradients grow 10-40x while they start to learn",
    ),
    "exploding_extreme": Threshold(
        1e4,
        "exploding_gradients: growth that is an explosion whatever the loss does",
        "ours",
    ),
    "exploding_records": Threshold(
        2,
        "exploding_gradients: consecutive layer records (non-finite gradients fire at once)",
        "ours",
    ),
    "stalled_records": Threshold(
        3,
        "stalled_weights: consecutive layer records with gradient but no change",
        "smdebug UnchangedTensor (allclose over 3 steps)",
    ),
    "stalled_min_s": Threshold(
        60.0,
        "stalled_run: seconds without a heartbeat, at least",
        "ours; smdebug StalledTrainingRule uses 1800 s",
    ),
    "stalled_factor": Threshold(
        10.0,
        "stalled_run: and this multiple of the run's own longest gap between records",
        "ours",
    ),
    "noisy_weights_roughness": Threshold(
        0.7,
        "noisy_weights: high-frequency energy of first-layer filters (white noise = 1, smooth = 0) above this",
        "Karpathy's recipe / lecture: noisy filters; ours: an MLP on 28x28 digits measures 0.10-0.16 (SGD), 0.54 "
        "(Adam, no weight decay), 0.80 (150 samples, no weight decay: the init's noise stays)",
    ),
    "noisy_weights_min_steps": Threshold(
        200,
        "noisy_weights: steps of training before judging",
        "ours",
    ),
    # --- bug and data checks (rules/bugs.py, rules/data.py)
    "bug_min_steps": Threshold(
        50,
        "bug checks: steps before judging whether the loss is where it should be (frozen, skipped steps, data)",
        "ours: noisy_min_steps; the fast initial drop of a healthy run is over by then",
    ),
    "bug_loss_progress": Threshold(
        0.8,
        "bug checks: the run learns when its recent loss (median of 20 steps) is below this fraction of its start",
        "ours: flat_level 0.85, a little stricter so a barely moving loss counts as not learning",
    ),
    "frozen_frac": Threshold(
        0.5,
        "frozen_parameters: fraction of parameters with requires_grad off or in no optimizer group",
        "issue 12: 'most of the model does not train'",
    ),
    "skipped_ratio": Threshold(
        0.75,
        "skipped_optimizer_steps: optimizer.step() calls per loop step (per declared accumulation) below this",
        "ours: a skipped step now and then (AMP inf/NaN skips) stays well above it",
    ),
    "skipped_accum_growth": Threshold(
        1.3,
        "skipped_optimizer_steps: median growth of the gradient norm over runs of steps without optimizer.step() "
        "at or above this = the gradients add up (accumulation); below the midpoint to 1 = thrown away (a bug)",
        "ours: n accumulated batches have sqrt(n)..n times one batch's norm (>= 1.41 for n = 2); measured on "
        "digits MLPs: accumulation 1.45-5.8, zero_grad every iteration 0.87-1.07",
    ),
    "skipped_min_steps": Threshold(
        20,
        "skipped_optimizer_steps: loop steps before judging",
        "ours",
    ),
    "unnorm_scale": Threshold(
        10.0,
        "unnormalized_input: first-batch input std or |mean| (whole batch or one channel) above this",
        LECTURE + ": zero-center and scale the data; raw 0-255 pixels have std ~70, ToTensor's [0, 1] ~0.3",
    ),
    "unnorm_offset": Threshold(
        3.0,
        "unnormalized_input / bad_labels: |mean| above this many std (and above 1) is far from zero-centered",
        LECTURE + ": 'subtract the mean'; ours for the factor",
    ),
    "labels_min_per_class": Threshold(
        10,
        "bad_labels: a class missing from the targets seen counts only if the rarest class present has this many",
        "ours: at >= 10 expected hits a class is absent by chance with probability < e^-10",
    ),
    "labels_imbalance": Threshold(
        100.0,
        "bad_labels: most over least frequent class in the targets seen above this (info unless accuracy is "
        "stuck at the majority rate)",
        "issue 12: 'extreme imbalance, say > 100:1'",
    ),
    "target_scale": Threshold(
        20.0,
        "bad_labels (regression): target std or |mean| above this, with a loss that does not fall or fits no better "
        "than the mean (target_fit)",
        "issue 12: 'targets far from unit scale (std > ~100)'; ours: 20, as the loss condition keeps fits quiet",
    ),
    "target_fit": Threshold(
        0.8,
        "bad_labels (regression): recent MSE at or above this x the targets' variance (L1: x their std) fits no "
        "better than predicting the mean",
        "ours: R^2 below 0.2; diabetes' healthy scaled fit reaches ~0.5 of the variance",
    ),
    "test_reuse_max": Threshold(
        1,
        "test_set_reuse: evaluations of one test split allowed",
        LECTURE + ": 'touch the test set once' (false discovery)",
    ),
}

THRESHOLDS: dict[str, float] = {name: t.value for name, t in TABLE.items()}


def resolve(overrides: dict | None = None) -> dict[str, float]:
    """Defaults with `overrides` applied; raises ValueError on an unknown name or a non-number."""
    out = dict(THRESHOLDS)
    for name, value in (overrides or {}).items():
        if name not in out:
            raise ValueError(f"unknown threshold {name!r} (known: {', '.join(sorted(out))})")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"threshold {name} must be a number, not {value!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"threshold {name} must be a finite number, not {value!r}")
        out[name] = v
    return out


def parse_assignment(text: str) -> tuple[str, float]:
    """'name=value' from the command line."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    resolve({name: value.strip()})  # validates
    return name, float(value)


def load_config(path: str | os.PathLike) -> dict[str, float]:
    """Thresholds from a .json or .toml file: either top-level names or a [thresholds] table."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read config {path}: {e.strerror or e}") from None
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt config {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config {path}: expected a table of thresholds")
    if isinstance(data.get("thresholds"), dict):
        data = data["thresholds"]
    resolve(data)
    return {k: float(v) for k, v in data.items()}
