"""Cause rules and the differential diagnosis: which cause the run's own evidence supports for a symptom.

A symptom (chance accuracy, a flat loss, underfitting ...) has several possible causes with different fixes.
The symptom rules (loss.py, accuracy.py) say what is seen; the cause rules here say why, from evidence the
symptom rules do not weigh: the shape of the loss curve (it rose, then sat at chance level), the update/weight
ratio, units that died after step 1, the model's capacity. The engine links a symptom to its causes
(`CAUSES` in catalogue.py, `explains` here) and leads the symptom's fixes with the root cause's fix;
`run_facts` lists what the run shows so no finding leads with a fix the evidence contradicts (rules/fixes.py).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from babysit.rules.base import Context, Finding, Rule, fmt, meta_dict, meta_layers, row_nanmedian
from babysit.rules.bugs import Progress
from babysit.rules.layers import layer_view
from babysit.rules.loss import infer_num_classes
from babysit.rules.once import OnceRule
from babysit.rules.window import Tail, rolling_mean

__all__ = ["LrTooHigh", "LowCapacity", "RegularizationTooStrong", "explains", "run_facts"]

_WEIGHT_TYPES = ("Linear", "Conv", "Bilinear", "LSTM", "GRU", "RNN", "Embedding", "MultiheadAttention")


class LrTooHigh(Rule):
    """The lecture's 'too high' loss curve: it went down, then up; or the net collapsed to a constant predictor.

    Rose back: over the last `lr_high_window` steps every smoothed point is `lr_high_rise` x the lowest level
    reached before (and `lr_high_rise_abs` x ln(C) above it). Collapsed: the smoothed loss over the window never
    below `lr_high_level` x ln(C) (at or above the initial loss when C is unknown) and not falling, with one
    piece of evidence that the steps are too large: it jumped `explosion_warn_factor` x above its start in the
    first `lr_high_early_steps`, the median update/weight ratio over the window is `lr_high_ratio` or more, or
    ReLUs died after step 1.
    """

    id = "lr_too_high"
    title = "Learning rate too high: the net collapsed"
    fix = (("lower_lr", "10x"), "warmup_or_clip", "scale_lr_to_ratio")
    needs = ("loss", "steps>=lr_high_window")

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.w = max(int(thresholds["lr_high_window"]), 20)
        self.m = 10  # steps per smoothed point: one batch is noise, ten are a level
        self.tail = Tail(self.w + self.m, float, np.int64)
        self.min_level = math.inf
        self.early_peak = -math.inf
        self.ratios = Tail(256, np.int64, float)  # recent median update/weight ratios: (step, value)
        self.w_first = math.nan  # median weight norm across layers: at the first record, and the latest
        self.w_last = math.nan
        self.done = False

    def update(self, batch, ctx: Context) -> list[Finding]:
        n = len(ctx.new_loss)
        if self.done or not n:
            return []
        self._weights(batch, ctx)
        x, steps = self.tail.extend(ctx.new_loss, ctx.new_step)
        # Adam's first update is ~lr per weight whatever the gradient: ratios of the first steps are no evidence
        keep = (ctx.ur_steps >= (ctx.first_step or 1) + 5) & np.isfinite(ctx.ur_values)
        rs, rv = self.ratios.extend(ctx.ur_steps[keep], ctx.ur_values[keep])
        init = ctx.initial_loss
        if init is None or init <= 0 or not ctx.initial_final or len(x) < self.w:
            return []
        c, _ = infer_num_classes(ctx)
        ref = ctx.chance_loss(c) if c else init
        # beyond 1e6 x its start a loss has exploded whatever its value (NaN and inf included); capped, the
        # running sums below keep their precision after a 1e25 spike has passed (otherwise later windows read
        # as 0 and 'rose back'). A window holding a non-finite loss is nonfinite_loss's to report: skipped, the
        # same whether the NaN came in this batch or an earlier one.
        finite = np.isfinite(x)
        cap = 1e6 * max(ref, init)
        win = self._windows(np.where(finite, np.minimum(x, cap), cap), steps, n, ctx, ref, init, c is not None)
        bad = np.r_[0, np.cumsum(~finite)]
        clean = bad[win["ends"] + 1] - bad[win["ends"] + 1 - self.w] == 0
        for k in np.flatnonzero((win["rose"] | win["stuck"]) & clean):
            end, start = int(steps[win["ends"][k]]), int(steps[win["ends"][k] - self.w + 1])
            inside = rv[(rs >= start) & (rs <= end)]  # the ratio while the loss sits there
            ratio = float(np.median(inside)) if len(inside) else math.nan
            at = {key: float(v[k]) for key, v in win.items() if key != "ends"}
            at["level"] = float(np.mean(x[win["ends"][k] - self.w + 1 : win["ends"][k] + 1]))  # uncapped
            why = self._evidence(ctx, end, at["peak"], ratio, init, bool(at["rose"]), at["min_before"], at["low"],
                                 at["level"], at["sd"])
            if why:
                self.done = True
                return [self._report(ctx, end, at, ratio, why, ref, init, c)]
        return []

    def _windows(self, x, steps, n: int, ctx: Context, ref: float, init: float, known_c: bool) -> dict:
        """Per window of the last `w` steps that ends on a new step: its level, lowest smoothed point, the lowest
        level before it, the early peak, its noise, and whether it rose back or sits collapsed."""
        w, m, th = self.w, self.m, self.th
        L = rolling_mean(x, m)  # L[j]: the smoothed loss of x[j : j + m]
        early = np.where(steps[m - 1:] <= (ctx.first_step or 1) + th["lr_high_early_steps"], L, -np.inf)
        ends = np.arange(max(len(x) - n, w - 1), len(x))  # windows x[p - w + 1 : p + 1]
        low = sliding_window_view(L, w - m + 1).min(axis=1)[ends - w + 1]
        before = np.fmin.accumulate(np.r_[self.min_level, L])  # before[k]: min of the carried level and L[:k]
        min_before = before[np.maximum(ends - w - m + 2, 0)]
        peaks = np.fmax.accumulate(np.r_[self.early_peak, early])
        cs, cs2, half = np.r_[0.0, np.cumsum(x)], np.r_[0.0, np.cumsum(x * x)], w // 2
        level = (cs[ends + 1] - cs[ends + 1 - w]) / w
        falling = (cs[ends + 1] - cs[ends + 1 - half]) / half < (1 - th["flat_rel_change"]) * (
            cs[ends + 1 - half] - cs[ends + 1 - w]) / (w - half)
        # the noise of one smoothed point: a rise smaller than a few of these is two minima of a noisy band
        sd = np.sqrt(np.maximum((cs2[ends + 1] - cs2[ends + 1 - w]) / w - level ** 2, 0.0) / m)
        # down, then up: the whole window well above a level the loss had reached before
        rose = ~falling & (low >= th["lr_high_rise"] * min_before) & (
            low - min_before >= np.maximum(th["lr_high_rise_abs"] * ref, th["lr_high_rise_sd"] * sd))
        # collapsed: the whole window at chance level (at or above the start without C), not falling
        stuck = ~falling & (low >= th["lr_high_level"] * ref) & (known_c or level >= init)
        self.min_level = float(before[max(len(x) - w - m + 2, 0)])  # carried to the next update
        self.early_peak = float(peaks[-1])
        return {"ends": ends, "low": low, "min_before": min_before, "peak": peaks[ends - m + 2], "level": level,
                "sd": sd, "rose": rose, "stuck": stuck}

    def _report(self, ctx: Context, step: int, at: dict, ratio: float, why: list[str], ref: float, init: float,
                c: int | None) -> Finding:
        lv, lr = at["level"], float(ctx.lr_at(np.array([step]))[0])
        msg = (f"loss {fmt(lv)} at step {step} sits at "
               + (f"{fmt(lv / ref, 2)}x ln({c}) = {fmt(ref)} (chance level)" if c else
                  f"{fmt(lv / init, 2)}x its initial {fmt(init)}")
               + f" over the last {self.w} steps, and " + "; ".join(why) + _lr_note(lr))
        evidence = {"step": step, "loss": lv, "chance_loss": ref if c else None, "initial_loss": init,
                    "min_loss_before": _finite(at["min_before"]), "early_peak": _finite(at["peak"]),
                    "update_ratio": _finite(ratio), "lr": lr, "why": why, "direction": "high"}
        fix = list(self.fix)
        if math.isfinite(lr):
            fix[0] = ("lower_lr", f"10x, from {fmt(lr)}")
        return self.finding(ctx, "warning", step, msg, evidence, fix)

    def _weights(self, batch, ctx: Context) -> None:
        view = layer_view(batch, ctx)
        cols = view.columns("weight") if view is not None else []
        if not cols:
            return
        med = row_nanmedian(view.stat("w_norm")[:, cols])
        med = med[np.isfinite(med)]
        if len(med):
            self.w_first = med[0] if math.isnan(self.w_first) else self.w_first
            self.w_last = float(med[-1])

    def _evidence(self, ctx: Context, step: int, peak: float, ratio: float, init: float, rose: bool,
                  min_before: float, low: float, level: float, sd: float) -> list[str]:
        """What says the steps are too large, as of `step` (empty: nothing does)."""
        th = self.th
        if rose:
            times = f" ({fmt(low / min_before, 2)}x)" if min_before > 0 else ""
            return [f"it had been down at {fmt(min_before)} before: it rose back{times}"]
        why = []
        if peak >= th["explosion_warn_factor"] * init and peak - init >= th["lr_high_rise_sd"] * sd:
            why.append(f"it jumped to {fmt(peak)} ({fmt(peak / init, 2)}x its start) in the first steps")
        if level >= th["explosion_warn_factor"] * init:
            why.append(f"it sits {fmt(level / init, 2)}x above its start")
        # weights that head for zero (a linear model at chance, a crushing L2 penalty) take the ratio's
        # denominator with them: a high ratio is no evidence there; nor are ReLUs that went silent, which is
        # what weights shrinking to zero do to them (every pre-activation tends to its bias)
        shrunk = self.w_last < th["lr_high_w_shrunk"] * self.w_first
        if (math.isfinite(ratio) and ratio >= th["lr_high_ratio"] and len(weight_layers(ctx.meta)) != 1
                and not shrunk):
            why.append(f"the update/weight ratio is {fmt(ratio)} meanwhile (median; healthy ~1e-3)")
        dead = ctx.findings.get("dead_units")
        if (dead is not None and _dead_after_init(dead) and dead.step is not None and dead.step <= step
                and not shrunk):
            frac, at_init = dead.evidence.get("dead_frac") or 0, dead.evidence.get("at_init") or 0
            why.append(f"ReLUs died after step 1 ({dead.evidence.get('layer')}: {fmt(100 * frac, 3)}% dead, "
                       f"{fmt(100 * at_init, 2)}% at init)")
        return why


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _dead_after_init(dead: Finding) -> bool:
    at_init, limit = dead.evidence.get("at_init"), dead.evidence.get("limit")
    return isinstance(at_init, (int, float)) and isinstance(limit, (int, float)) and at_init < limit


def _lr_note(lr: float) -> str:
    return f" (lr {fmt(lr)})" if math.isfinite(lr) else ""


def weight_layers(meta: dict) -> list[dict]:
    """The model's layers that hold weights (Linear, Conv, recurrent, attention), in model order."""
    return [x for x in meta_layers(meta) if any(t in str(x.get("type", "")) for t in _WEIGHT_TYPES)]


class LowCapacity(OnceRule):
    """A model without a hidden layer (one weight layer: a linear classifier) whose loss stays near chance while
    the optimizer works normally: the classes are not linearly separable, the cause is capacity."""

    id = "low_capacity"
    title = "Model too small: no hidden layer"
    fix = ("more_capacity",)
    needs = ("meta.model", "num_classes", "steps>=flat_window")

    def examine(self, batch, ctx: Context) -> list[Finding]:
        layers = weight_layers(ctx.meta)
        if len(layers) != 1:
            self.done = bool(layers)  # a hidden layer exists: capacity is not this run's question
            return []
        # underfitting counts as a note too: it stays a note when it cannot see a cause, and this is one
        symptom = next((ctx.findings[r] for r in ("chance_accuracy", "flat_loss", "underfitting")
                        if ctx.has(r, "info" if r == "underfitting" else "warning")), None)
        if symptom is None or any(ctx.has(r) for r in ("lr_too_high", "loss_explosion", "nonfinite_loss",
                                                         "stalled_weights", "frozen_parameters")):
            return []
        ratio = ctx.update_ratio_recent
        if math.isfinite(ratio) and ratio < self.th["update_ratio_low"]:
            return []  # the weights barely move: the lr, not the model, is the question
        self.done = True
        layer = layers[0]
        c, _ = infer_num_classes(ctx)
        msg = (f"the model has one weight layer ({layer.get('name')}: {layer.get('type')}) -- a linear classifier -- "
               f"and {symptom.rule} at step {symptom.step}"
               + (f" while the update/weight ratio is {fmt(ratio)} (the optimizer works)" if math.isfinite(ratio)
                  else "")
               + ": the classes are not linearly separable in these inputs")
        evidence = {"step": symptom.step, "weight_layers": 1, "layer": layer.get("name"), "symptom": symptom.rule,
                    "update_ratio": ratio, "num_classes": c}
        return [self.finding(ctx, "warning", symptom.step, msg, evidence)]


def declared_regularization(meta: dict) -> tuple[float, str] | None:
    """The strongest weight penalty the run declares: the optimizer's weight_decay, or a config `weight_decay`,
    `reg`, `l2` (a hand-added penalty); None when there is none."""
    best: tuple[float, str] | None = None
    groups = meta_dict(meta, "optimizer").get("param_groups")
    for g in groups if isinstance(groups, list) else []:
        v = g.get("weight_decay") if isinstance(g, dict) else None
        if _num(v) and math.isfinite(v) and v > 0 and (best is None or v > best[0]):
            best = (float(v), "optimizer weight_decay")
    config = meta_dict(meta, "config")
    for key in ("weight_decay", "reg", "l2", "l2_reg", "lambda_l2"):
        v = config.get(key)
        if _num(v) and math.isfinite(v) and v > 0 and (best is None or v > best[0]):
            best = (float(v), f"config {key}")
    return best


class RegularizationTooStrong(Rule):
    """A weight penalty that crushes the weights toward zero while the net learns nothing.

    A penalty pulls every weight toward 0; too strong, it wins against the data's gradient: the weights shrink
    far below their init, every pre-activation tends to its bias (ReLUs go silent, gradients vanish, the
    update/weight ratio grows as its denominator vanishes) and the net settles on a constant guess. Needs all
    three: a declared penalty of `reg_strong_min` or more (optimizer weight_decay, or config weight_decay / reg /
    l2), the median weight norm across weight layers below `reg_strong_w_shrunk` x its first value, and a loss
    that is not where it should be after `bug_min_steps` steps (not learning: Progress in rules/bugs.py).
    """

    id = "regularization_too_strong"
    title = "Regularization crushes the weights toward zero"
    fix = ("lower_reg",)
    needs = ("layers", "steps>=bug_min_steps")

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.progress = Progress(thresholds)
        self.w_first = math.nan
        self.shrunk_at: int | None = None  # the first record whose median weight norm is below the limit
        self.w_last = math.nan
        self.done = False

    def update(self, batch, ctx: Context) -> list[Finding]:
        self.progress.feed(ctx)
        if self.done:
            return []
        view = layer_view(batch, ctx)
        cols = view.columns("weight") if view is not None else []
        if cols:
            med = row_nanmedian(view.stat("w_norm")[:, cols])
            ok = np.isfinite(med)
            steps, med = view.steps[ok], med[ok]
            if len(med):
                self.w_first = float(med[0]) if math.isnan(self.w_first) else self.w_first
                self.w_last = float(med[-1])
                below = med < self.th["reg_strong_w_shrunk"] * self.w_first
                if self.shrunk_at is None and below.any():
                    self.shrunk_at = int(steps[np.flatnonzero(below)[0]])
                if not below[-1]:
                    self.shrunk_at = None  # it grew back: judged again from the next time it falls
        reg = declared_regularization(ctx.meta)
        if self.shrunk_at is None or reg is None or reg[0] < self.th["reg_strong_min"]:
            return []
        if self.w_last >= self.th["reg_strong_w_shrunk"] * self.w_first:
            return []
        if self.progress.learning(ctx) is not False:
            return []
        self.done = True
        value, where = reg
        msg = (f"{where} {fmt(value)}: the median weight norm fell from {fmt(self.w_first)} to {fmt(self.w_last)} "
               f"({fmt(self.w_last / self.w_first if self.w_first > 0 else math.nan, 2)}x; below "
               f"{fmt(self.th['reg_strong_w_shrunk'])}x since step {self.shrunk_at}) while the net learns nothing "
               f"({self.progress.note(ctx)}): the penalty pulls the weights to zero faster than the data moves them")
        evidence = {"regularization": value, "declared_by": where, "w_norm_first": self.w_first,
                    "w_norm_last": self.w_last, "shrunk_at": self.shrunk_at, "initial_loss": ctx.initial_loss,
                    "loss_now": self.progress.recent, "train_accuracy": self.progress.accuracy}
        return [self.finding(ctx, "warning", self.shrunk_at, msg, evidence)]


def explains(cause: Finding, symptom: Finding, lag: float = 100) -> bool:
    """Whether a cause finding explains a symptom finding (both present at warning or above).

    A cause seen long after the symptom did not make it (`cause_lag_steps`: a cause rule may need a window of
    evidence before it reports, so it may come somewhat later).
    """
    if cause.step is not None and symptom.step is not None and cause.step > symptom.step + lag:
        return False
    if cause.evidence.get("direction") == "high" and symptom.rule == "flat_loss" and cause.rule == "update_ratio":
        return False  # a too-high update ratio with a flat loss: the bounce, not a stall; flat_loss says it
    if cause.rule == "lr_too_high" and symptom.rule == "dead_units":
        return _dead_after_init(symptom)  # dead from init: the init, not the lr
    if cause.rule == "bad_labels" and symptom.rule in ("loss_explosion", "noisy_loss"):
        # only data sorted by class (the loss jumps at each new class) or raw-scale regression targets (huge
        # gradients) make the loss jump; wrong label indices or a missing class do not
        return cause.evidence.get("first_batch_one_class") is not None or "mean_predictor_loss" in cause.evidence
    return True


def run_facts(ctx: Context) -> set[str]:
    """What the run shows that rules a fix out (rules/fixes.py FACTS)."""
    facts = set()
    if ctx.has("lr_too_high") or ctx.has("loss_explosion"):
        facts.add("loss_rose")
    ratio = ctx.update_ratio_recent
    if (math.isfinite(ratio) and ratio >= ctx.thresholds["update_ratio_high"]) or ctx.has("lr_too_high"):
        facts.add("ratio_high")
    model = meta_dict(ctx.meta, "model")
    frozen, trainable = model.get("frozen"), model.get("trainable")
    if (_num(frozen) and _num(trainable) and frozen > trainable) or ctx.has("frozen_parameters"):
        facts.add("frozen")
    inputs = meta_dict(meta_dict(ctx.meta, "first_batch"), "inputs")
    if inputs.get("integer") is True:
        facts.add("integer_inputs")
    dead = ctx.findings.get("dead_units")
    if dead is not None and not _dead_after_init(dead):
        facts.add("dead_at_init")
    return facts


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
