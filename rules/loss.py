"""Rules on the step loss curve: non-finite values, explosion, a flat curve, the loss at init, a noisy curve."""

from __future__ import annotations

import math

import numpy as np

from babysit.rules.base import Context, Finding, Rule, dropout_rate, fmt, meta_dict, meta_layers
from babysit.rules.once import OnceRule
from babysit.rules.window import Tail, first_true, rolling_mean, runs_of

__all__ = ["NonfiniteLoss", "LossExplosion", "FlatLoss", "InitLossMismatch", "NoisyLoss", "infer_num_classes",
           "loss_kind", "batch_size", "REGRESSION_LOSSES", "CATEGORICAL_LOSSES"]


def _lr_note(lr: float) -> str:
    return f" (lr is {fmt(lr)})" if lr is not None and math.isfinite(lr) else ""


def _cfg(ctx: Context, *names: str):
    config = meta_dict(ctx.meta, "config")
    for n in names:
        if n in config:
            return config[n]
    return None


def batch_size(ctx: Context) -> int | None:
    """The batch size from the config, else from the first batch the hooks saw (meta first_batch shape[0])."""
    bs = _cfg(ctx, "batch_size", "batch", "bs")
    if isinstance(bs, (int, float)) and not isinstance(bs, bool) and bs > 0:
        return int(bs)
    fb = meta_dict(ctx.meta, "first_batch")
    for key in ("inputs", "targets"):
        shape = meta_dict(fb, key).get("shape")
        if isinstance(shape, list) and shape and isinstance(shape[0], int) and not isinstance(shape[0], bool):
            return shape[0] if shape[0] > 0 else None
    return None


class NonfiniteLoss(OnceRule):
    id = "nonfinite_loss"
    title = "Loss, weights or gradients are NaN/inf"
    fix = ("lower_lr_10x", "check_data_finite", "clip_gradients", "guard_loss_math")
    needs = ("loss",)

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.last_finite: tuple[int, float] | None = None

    def examine(self, batch, ctx: Context) -> list[Finding]:
        found = self._steps(ctx) or self._epochs(batch, ctx) or self._layers(batch, ctx)
        if found:
            self.done = True
        return found

    def _steps(self, ctx: Context) -> list[Finding]:
        loss, steps = ctx.new_loss, ctx.new_step
        i = first_true(~np.isfinite(loss))
        if i is None:
            if len(loss):
                self.last_finite = (int(steps[-1]), float(loss[-1]))
            return []
        if i > 0:
            self.last_finite = (int(steps[i - 1]), float(loss[i - 1]))
        step, value = int(steps[i]), float(loss[i])
        lr = float(ctx.new_lr[i]) if len(ctx.new_lr) > i else math.nan
        before = (f"; last finite loss {fmt(self.last_finite[1])} at step {self.last_finite[0]}"
                  if self.last_finite else "; no finite loss before it")
        init = f", initial {fmt(ctx.initial_loss)}" if ctx.initial_loss is not None else ""
        msg = f"loss is {fmt(value)} at step {step}{before}{init}{_lr_note(lr)}"
        evidence = {"step": step, "value": value, "what": "loss", "lr": lr,
                    "last_finite_step": self.last_finite[0] if self.last_finite else None,
                    "last_finite_loss": self.last_finite[1] if self.last_finite else None,
                    "initial_loss": ctx.initial_loss}
        fix = list(self.fix)
        init_loss = ctx.initial_loss
        low = (self.last_finite is not None and init_loss is not None and math.isfinite(self.last_finite[1])
               and 0 <= self.last_finite[1] < self.th["nonfinite_low_loss"] * abs(init_loss))
        if self.last_finite is None:  # NaN from the very first step: data or loss code, not the lr
            fix = [fix[1], fix[3], fix[0], fix[2]]
        elif low:
            # NaN straight from a loss near its floor, not from one that rose: too high an lr shows a rising loss
            # first; a log(0) or 0/0 in the loss's own math (log(1 - sigmoid) once the net is sure) does not.
            fix = [fix[3], fix[1], fix[0], fix[2]]
            msg += (f"; the loss was near its floor ({fmt(self.last_finite[1])}), not rising: "
                    "a log(0) or 0/0 in the loss")
            evidence["from_low_loss"] = True
        return [self.finding(ctx, "critical", step, msg, evidence, fix)]

    def _epochs(self, batch, ctx: Context) -> list[Finding]:
        ep = ctx.epochs
        # Contract 3: NaN in the frame is also how a metric that was not measured reads (validation every 3rd
        # epoch). Only a name listed in the row's `nonfinite_metrics` was recorded as NaN/inf; frames without
        # that column (CSV/TensorBoard imports) count only infinities.
        marked = ep.raw("nonfinite_metrics") if "nonfinite_metrics" in ep else None
        for col in ("train_loss", "val_loss"):
            if col not in ep:
                continue
            vals = ep.num(col)
            if marked is not None:
                listed = np.array([isinstance(m, (list, tuple)) and col in m for m in marked], dtype=bool)
                bad = listed | np.isinf(vals)
            else:
                bad = np.isinf(vals)
            i = first_true(bad)
            if i is not None:
                step, epoch = int(ep.ints("step")[i]), int(ep.ints("epoch")[i])
                msg = f"{col} is {fmt(vals[i])} at epoch {epoch} (step {step})"
                return [self.finding(ctx, "critical", step, msg, {"what": col, "value": vals[i], "step": step},
                                     epoch=epoch)]
        return []

    def _layers(self, batch, ctx: Context) -> list[Finding]:
        lay = ctx.layers
        if not len(lay) or "kind" not in lay:
            return []
        weight = lay.raw("kind") == "weight"
        w, g, zf = lay.num("w_norm"), lay.num("g_norm"), lay.num("zero_grad_frac")
        for vals, bad, what in ((w, weight & ~np.isfinite(w), "weights"),
                                (g, np.isinf(g) | (np.isnan(g) & np.isfinite(zf)), "gradients")):
            i = first_true(bad)
            if i is not None:
                step, layer = int(lay.ints("step")[i]), str(lay.raw("layer")[i])
                msg = f"{what} of layer {layer} are {fmt(vals[i])} (norm) at step {step}"
                return [self.finding(ctx, "critical", step, msg,
                                     {"what": what, "layer": layer, "value": vals[i], "step": step})]
        return []


class LossExplosion(Rule):
    """The loss rising above where it started: a warning above `explosion_warn_factor` x the initial loss
    (healthy runs stay under ~1.1x), critical above `explosion_factor` (the lecture's 3x: quit early).

    A spike is an explosion only relative to the loss's own noise. At a batch of `tiny_batch` examples or
    fewer each step's loss (the initial one too) is a few examples' and the loss counts as noisy from the
    start. The median of `explosion_window` steps
    above the limit is enough while single steps of the preceding `explosion_noise_history` steps stayed
    below it. A loss whose single steps already crossed the limit there (batch size 1, a heavy-tailed
    per-sample loss: a few hard examples in a row) crosses it with a short median by chance, many times in a
    long run; there the level is the mean of `explosion_noisy_window` steps (the expected loss the optimizer
    minimizes: a median would hide a growing tail of confidently wrong examples, the mark of steps too large)
    and it must be above the limit: a level that rose, not a cluster of hard batches.
    """

    id = "loss_explosion"
    title = "Loss rose far above its initial value"
    fix = ("stop_run", ("lower_lr", "3-10x"), "warmup_or_clip")
    needs = ("loss", "steps>=init_steps")

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.w = max(int(thresholds["explosion_window"]), 1)
        self.h = min(max(int(thresholds["explosion_noise_history"]), 1), 10**6)  # bounded: it sizes a buffer
        self.long = min(max(int(thresholds["explosion_noisy_window"]), self.w), 10**6)
        self.tail = Tail(max(self.w + self.h, self.long) - 1, float, np.int64, float)
        self.severity: str | None = None

    def update(self, batch, ctx: Context) -> list[Finding]:
        n = len(ctx.new_loss)
        if self.severity == "critical" or not n:
            return []
        x, steps, lrs = self.tail.extend(ctx.new_loss, ctx.new_step, ctx.new_lr)
        init = ctx.initial_loss
        if init is None or not ctx.initial_final or init <= 0 or len(x) < self.w:
            return []
        first_end = max(len(x) - n, self.w - 1)  # windows that end on a new step
        levels = [("critical", self.th["explosion_factor"])]
        if self.severity is None:
            levels.append(("warning", self.th["explosion_warn_factor"]))
        for severity, factor in levels:
            # The median of a window is above the limit exactly when more than half its values are (odd w):
            # a rolling count, O(n) and cheap. NaN never counts (nonfinite_loss reports it); +inf does.
            limit = factor * init
            c = ctx.num_classes
            if c is not None:  # a relative rise from a tiny (fine-tuned) loss is no explosion
                limit = max(limit, init + self.th["explosion_min_rise"] * ctx.chance_loss(c))
            bs = batch_size(ctx)
            ends, w = self._exploded(x, limit, first_end, bs is not None and bs <= self.th["tiny_batch"])
            if not len(ends):
                continue
            self.severity = severity
            end = int(ends[0])
            window = x[end - w[0] + 1 : end + 1]
            noisy = int(w[0]) != self.w
            value = float(np.mean(window) if noisy else np.median(window))
            step, lr = int(steps[end]), float(lrs[end])
            msg = (f"loss {fmt(value)} at step {step} is {fmt(value / init, 2)}x the initial {fmt(init)} "
                   f"({'mean' if noisy else 'median'} of {int(w[0])} steps"
                   f"{': single steps are noisy' if noisy else ''}; limit {fmt(factor)}x){_lr_note(lr)}")
            evidence = {"step": step, "loss": value, "peak": float(np.nanmax(window)), "initial_loss": init,
                        "ratio": value / init, "factor": factor, "lr": lr}
            fix = list(self.fix) if severity == "critical" else [self.fix[1], self.fix[2]]
            return [self.finding(ctx, severity, step, msg, evidence, fix)]
        return []

    def _exploded(self, x: np.ndarray, limit: float, first_end: int, tiny: bool) -> tuple[np.ndarray, np.ndarray]:
        """Ends (indices into x, from first_end) of windows above the limit, judged against the noise before
        them, and each one's window length. `tiny`: a batch of a few examples, whose single losses are noise
        by construction (the initial loss is one example's): always judged as noisy."""
        ends = np.arange(first_end, len(x))
        if not len(ends):
            return ends, ends
        c = np.concatenate([[0], np.cumsum(x > limit, dtype=np.int64)])
        count = lambda lo, hi: c[hi] - c[np.maximum(lo, 0)]  # noqa: E731 - steps above the limit in x[lo:hi]
        short = count(ends - self.w + 1, ends + 1) >= self.w // 2 + 1  # the median of the short window
        lo = np.maximum(ends - self.w + 1 - self.h, 0)
        noisy = tiny | (count(lo, ends - self.w + 1) > self.th["explosion_noise_frac"]
                        * np.maximum(ends - self.w + 1 - lo, 1))
        # the mean of the long window; capped (inf, 1e30) so the running sum keeps its precision, NaN left out
        capped = np.minimum(np.where(np.isnan(x), 0.0, x), 1e6 * max(limit, 1e-12))
        s = np.concatenate([[0.0], np.cumsum(capped)])
        full = ends + 1 >= self.long
        level = (s[ends + 1] - s[np.maximum(ends + 1 - self.long, 0)]) / self.long
        hit = np.where(noisy, full & (level > limit), short)
        return ends[hit], np.where(noisy, self.long, self.w)[hit]


class FlatLoss(Rule):
    """The loss barely moves over a window while it is still near its initial value: nothing is being learned.

    A run that learned and then converged is not flat: the loss must never have dropped below
    `flat_level` x the initial loss. A warmup (lr rising across the window) is not flat either. When the
    weights do move (update/weight ratio >= `flat_moving_ratio`), deep nets often sit on a plateau before
    they learn, so the loss must stay flat for `flat_window_moving` steps. A flat loss that later drops
    (below `flat_resolved` x the initial) is downgraded to an info note.
    """

    id = "flat_loss"
    title = "Loss barely changes"
    fix = (("raise_lr", "3-10x"), "lower_reg", "check_gradients_reach")
    needs = ("loss", "steps>=flat_window")

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.w = max(int(thresholds["flat_window"]), 10)
        self.m = max(self.w // 10, 5)
        self.tail = Tail(self.w - 1, float, np.int64, float)
        self.min_level = math.inf
        self.run = 0  # consecutive flat positions so far
        self.fired: Finding | None = None
        self.done = False

    def update(self, batch, ctx: Context) -> list[Finding]:
        n = len(ctx.new_loss)
        if self.done or not n:
            return []
        x, steps, lrs = self.tail.extend(ctx.new_loss, ctx.new_step, ctx.new_lr)
        init = ctx.initial_loss
        if init is None or init <= 0 or len(x) < self.m:
            return []
        if ctx.initial_final and ctx.starts_trained:
            self.done = True  # fine-tuning a pretrained net: a loss that barely moves is the point
            return []
        w, m = self.w, self.m
        finite = np.isfinite(x)
        level = rolling_mean(np.where(finite, x, 0.0), m)  # level[j] = mean of x[j : j + m]
        ok = rolling_mean(finite.astype(float), m) == 1.0
        level = np.where(ok, level, np.nan)
        first_new = len(x) - n
        # smoothed level ending at each new position p: level[p - m + 1]
        ends = np.arange(max(first_new, m - 1), len(x))
        end_level = level[ends - m + 1]
        if self.fired is not None:
            return self._resolve(ctx, ends, end_level, steps, init)
        floor = self.th["flat_level"] * init
        if self.min_level < floor:
            self.done = True  # the loss came down once: this run is not flat, and never will be
            return []
        below = first_true(end_level < floor)
        if below is not None:  # only the stretch before the loss first came down can be flat
            self.done = True
            ends, end_level = ends[:below], end_level[:below]
        running_min = np.fmin.accumulate(np.concatenate([[self.min_level], end_level]))[1:]
        self.min_level = float(np.nanmin([self.min_level, *running_min[-1:]]))
        ends_ok = ends >= w - 1
        if not ends_ok.any():
            return []
        ends, end_level, running_min = ends[ends_ok], end_level[ends_ok], running_min[ends_ok]
        start_level = level[ends - w + 1]
        rel = (start_level - end_level) / np.abs(start_level)
        all_finite = rolling_mean(finite.astype(float), w)[ends - w + 1] == 1.0
        lr0, lr1 = lrs[ends - w + 1], lrs[ends]
        warmup = np.isfinite(lr0) & np.isfinite(lr1) & (lr1 > 1.5 * lr0)
        flat = (np.abs(rel) < self.th["flat_rel_change"]) & (running_min >= self.th["flat_level"] * init)
        flat &= all_finite & ~warmup
        runs = runs_of(flat, self.run)
        self.run = int(runs[-1])
        ur = np.full(len(ends), np.nan)
        cand = flat & (w + runs - 1 >= w)
        ur[cand] = ctx.update_ratio_at(steps[ends[cand]])
        moving = np.isfinite(ur) & (ur >= self.th["flat_moving_ratio"])
        need = np.where(moving, max(self.th["flat_window_moving"], w), w)
        hit = first_true(flat & (w + runs - 1 >= need))
        if hit is None:
            return []
        self.done = False  # fired: keep watching for the loss to drop (a slow start)
        p = int(ends[hit])
        step, lr, a, b = int(steps[p]), float(lrs[p]), float(start_level[hit]), float(end_level[hit])
        span = int(steps[p] - steps[p - w + 1])
        flat_for = int(w + runs[hit] - 1)
        msg = (f"loss {fmt(b)} at step {step} moved {fmt(100 * abs(a - b) / abs(a), 2)}% over the last {span} steps "
               f"({fmt(a)} -> {fmt(b)}) and is still {fmt(100 * b / init, 3)}% of the initial {fmt(init)}"
               f"{_lr_note(lr)}")
        evidence = {"step": step, "window": span, "flat_for": flat_for, "loss_start": a, "loss_end": b,
                    "rel_change": float(rel[hit]), "initial_loss": init, "level_vs_initial": b / init, "lr": lr,
                    "update_ratio": float(ur[hit])}
        fix = list(self.fix)
        if math.isfinite(lr):
            fix[0] = ("raise_lr", f"3-10x, from {fmt(lr)}")
        reg = _cfg(ctx, "reg", "weight_decay", "l2")
        if isinstance(reg, (int, float)) and reg >= 0.1:  # lecture: lr too low OR regularization too high
            fix[0], fix[1] = ("lower_reg", f"it is {fmt(reg)}"), fix[0]
        if moving[hit]:
            # The weights move at a healthy (or larger) rate and the loss does not follow: raising the lr
            # would be wrong. Either the updates bounce (too large) or the labels carry no signal.
            msg += f", for {flat_for} steps, yet the weights move (update/weight ratio {fmt(ur[hit])}, healthy ~1e-3)"
            lower = ("lower_lr", "updates this large can bounce across the minimum")
            fix = [lower, "check_labels"] if ur[hit] >= 1e-2 else ["check_labels", "check_pipeline", lower]
            fix += ["logits_to_loss", "deep_plateau"]
            evidence["weights_move"] = True
        self.fired = self.finding(ctx, "warning", step, msg, evidence, fix)
        # the same batch may already show the loss dropping (post-hoc: the whole run at once)
        later = np.arange(p + 1, len(x))
        later_level = level[later - m + 1] if len(later) else np.array([])
        return self._resolve(ctx, later, later_level, steps, init) or [self.fired]

    def _resolve(self, ctx: Context, ends, end_level, steps, init) -> list[Finding]:
        i = first_true(end_level < self.th["flat_resolved"] * init)
        if i is None:
            return []
        self.done = True
        f = self.fired
        step, level = int(steps[ends[i]]), float(end_level[i])
        resolved = self.finding(
            ctx, "info", f.step,
            f"{f.message}; it then dropped to {fmt(level)} by step {step} (resolved: a slow start, not a stall)",
            {**f.evidence, "resolved": True, "resolved_step": step, "resolved_loss": level},
            ["none_needed_slow_start"],
        )
        return [resolved]


REGRESSION_LOSSES = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss")
CATEGORICAL_LOSSES = ("cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits")


def loss_kind(ctx: Context) -> str | None:
    """'regression' or 'categorical' from the loss function the hooks saw (meta first_batch.loss_fn), else None."""
    fn = str(meta_dict(ctx.meta, "first_batch").get("loss_fn") or "")
    return "regression" if fn in REGRESSION_LOSSES else "categorical" if fn in CATEGORICAL_LOSSES else None


def infer_num_classes(ctx: Context) -> tuple[int | None, str]:
    """C from meta (num_classes) or, as a guess, from the last linear layer's output size.

    No guess for a regression loss (MSE, L1, Huber): ln(C) chance is the loss of a uniform guess under a
    categorical loss and means nothing there (a 1-output regression head is not a 2-class classifier).
    """
    c = ctx.num_classes
    if c is not None:
        return c, "meta"
    kind = loss_kind(ctx)
    if kind == "regression":
        return None, ""
    fb = meta_dict(ctx.meta, "first_batch")
    if kind == "categorical":  # the tensor the loss was given says C, whatever the model's last layer is
        fn, shape = str(fb.get("loss_fn")), meta_dict(fb, "loss_input").get("shape")
        if fn.startswith("binary"):
            return 2, "loss_input"
        if (isinstance(shape, list) and len(shape) >= 2 and isinstance(shape[1], int)
                and not isinstance(shape[1], bool) and shape[1] >= 2):
            return shape[1], "loss_input"
    # a guess: a model with several heads (multi-task) has a last Linear that need not be the classifier
    for layer in reversed(meta_layers(ctx.meta)):
        shape = meta_dict(layer, "params").get("weight")
        if (isinstance(shape, list) and len(shape) == 2 and isinstance(shape[0], (int, float))
                and not isinstance(shape[0], bool) and math.isfinite(shape[0])
                and "Linear" in str(layer.get("type", ""))):
            return (max(int(shape[0]), 2), "model") if shape[0] >= 1 else (None, "")
    return None, ""


class InitLossMismatch(OnceRule):
    """The first loss, computed before any update, should be about ln(C) with regularization off.

    ln(C) per example: with reduction="sum" the loss adds N of them (N x ln C). When the loss passed to
    run.step adds other terms (an auxiliary loss, a penalty), the categorical loss's own first value (the hooks
    see what the loss function returned) is the one judged.
    """

    id = "init_loss_mismatch"
    title = "Initial loss far from ln(C)"
    fix = ("scale_init_down", "check_label_indices", "logits_to_loss", "normalize_inputs", "lower_reg")
    needs = ("loss", "num_classes")

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.first: tuple[int, float] | None = None

    def examine(self, batch, ctx: Context) -> list[Finding]:
        if self.first is None and len(ctx.new_loss):
            finite = np.flatnonzero(np.isfinite(ctx.new_loss))
            if not len(finite):
                return []
            i = finite[0]
            self.first = (int(ctx.new_step[i]), float(ctx.new_loss[i]))
            if self.first[0] > 10 + (ctx.first_step or 0) or (ctx.first_step or 0) > 1:
                self.done = True  # recording started late: this is not the loss at init
                return []
        if self.first is None:
            return []
        c, source = infer_num_classes(ctx)
        self.has_acc = getattr(self, "has_acc", False) or any(c in ctx.epochs for c in ("train_acc", "val_acc"))
        has_acc = self.has_acc
        if c is None or (source != "meta" and not has_acc):
            # a C the user did not declare is trusted only once accuracies show this is a classifier: the
            # recorded loss may be a sum of several (multi-task heads, a GAN's two discriminator terms)
            return []
        fn = meta_dict(ctx.meta, "first_batch").get("loss_fn")
        if loss_kind(ctx) == "regression" or (fn and loss_kind(ctx) is None):
            # ln(C) is the start of a categorical loss; MSE on class ids is loss_mismatch's. A loss the hooks saw
            # that is neither (kl_div: distillation's term, whose start depends on the teacher) has no ln(C) start.
            self.done = True
            return []
        self.done = True
        step, loss = self.first
        expected = ctx.chance_loss(c)
        # The categorical loss's own first value, when the hooks saw it: a total that adds other terms (an
        # auxiliary loss, a penalty, distillation) says nothing about the classifier's start.
        term = meta_dict(ctx.meta, "first_batch").get("loss_value")
        total = None
        if (isinstance(term, (int, float)) and not isinstance(term, bool) and math.isfinite(term)
                and loss_kind(ctx) == "categorical" and abs(term - loss) > 1e-3 * max(abs(loss), 1e-12)):
            total, loss = loss, float(term)
        ratio = loss / expected
        evidence = {"step": step, "loss": loss, "expected": expected, "num_classes": c, "ratio": ratio,
                    "num_classes_from": source, "loss_total": total, "loss_scale": ctx.loss_scale}
        reg = _cfg(ctx, "reg", "l2")
        reg_note = (f"; regularization {fmt(reg)} may add to it: check with reg off"
                    if isinstance(reg, (int, float)) and reg > 0 else "")
        if ratio > self.th["init_loss_ratio"]:
            of = f"{fmt(ctx.loss_scale)} x " if ctx.loss_scale != 1 else ""
            msg = (f"first loss {fmt(loss)} at step {step} is {fmt(ratio, 2)}x {of}ln({c}) = {fmt(expected)}, "
                   f"the loss of a net that starts out guessing uniformly{reg_note}")
            # Dropout is regularization that is on in the first training step: inverted dropout scales the kept
            # activations by 1/(1 - p), which inflates the logits when p is large (0.9: 10x). A declared heavy
            # dropout on a model that has Dropout layers puts lowering it first (the init is not the suspect).
            p = dropout_rate(ctx.meta)
            has_dropout = any("Dropout" in str(x.get("type", "")) for x in meta_layers(ctx.meta))
            if has_dropout and p is not None and p >= 0.5:
                evidence["dropout"] = p
                msg += (f"; dropout {fmt(p)} is on in this first training step and scales the kept activations by "
                        f"1/(1 - p) = {fmt(1 / (1 - p))}: the logits start large because of it")
                return [self.finding(ctx, "warning", step, msg, evidence, ["lower_reg", *self.fix[:-1]])]
            return [self.finding(ctx, "warning", step, msg, evidence)]
        if ratio < self.th["init_loss_low_ratio"]:
            msg = (f"first loss {fmt(loss)} at step {step} is well below ln({c}) = {fmt(expected)}: "
                   "fine for a pretrained net, otherwise check for a label leak or a wrong num_classes")
            fix = ["check_label_leak", "check_num_classes"]
            return [self.finding(ctx, "info", step, msg, evidence, fix)]
        return []


class NoisyLoss(Rule):
    """Step-to-step spread of the loss that is large against its trend (the lecture: width ~ batch size).

    Spread is a robust std of first differences (the trend cancels), per window of `noisy_window` steps;
    it must exceed `noisy_rel_spread` x the window's level and `noisy_init_spread` x the initial loss, in two
    consecutive windows.
    """

    id = "noisy_loss"
    title = "Loss is very noisy"
    fix = ("bigger_batch", "lower_lr", "decay_lr")
    needs = ("loss", "steps>=noisy_min_steps+2*noisy_window")

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.w = max(int(thresholds["noisy_window"]), 10)
        self.buf = Tail(self.w, float, np.int64)
        self.buf.parts = [np.array([]), np.array([], dtype=np.int64)]
        self.streak = 0
        self.medians: list[float] = []
        self.done = False

    def update(self, batch, ctx: Context) -> list[Finding]:
        if self.done or not len(ctx.new_loss):
            return []
        start = (ctx.first_step or 0) + int(self.th["noisy_min_steps"])
        keep = ctx.new_step >= start
        x = np.concatenate([self.buf.parts[0], ctx.new_loss[keep]])
        s = np.concatenate([self.buf.parts[1], ctx.new_step[keep]])
        k = len(x) // self.w
        self.buf.parts = [x[k * self.w :], s[k * self.w :]]
        init = ctx.initial_loss
        if not k or init is None or init <= 0:
            return []
        xs, ss = x[: k * self.w].reshape(k, self.w), s[: k * self.w].reshape(k, self.w)
        bs = batch_size(ctx)
        small = bs is not None and 0 < bs <= self.th["noisy_small_batch"]
        relax = self.th["noisy_small_batch_relax"] if small else 1.0  # a known tiny batch explains the noise
        d = np.diff(xs, axis=1)
        spread = np.zeros(k)
        level = np.ones(k)
        # robust spread <= 2.1 x std (Markov), so windows whose std is small cannot be noisy: skip their medians
        with np.errstate(invalid="ignore"):
            maybe = ~(2.1 * np.std(d, axis=1) / math.sqrt(2) <= relax * self.th["noisy_init_spread"] * init)
        if maybe.any():
            dm = d[maybe]
            mad = np.median(np.abs(dm - np.median(dm, axis=1, keepdims=True)), axis=1)
            spread[maybe] = 1.4826 * mad / math.sqrt(2)
            level[maybe] = np.median(xs[maybe], axis=1)
        finite = np.isfinite(xs).all(axis=1) & (level > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = spread / level
        noisy = finite & maybe & (rel > relax * self.th["noisy_rel_spread"]) & (
            spread > relax * self.th["noisy_init_spread"] * init)
        medians = np.median(xs, axis=1)
        for i in range(k):
            self.streak = self.streak + 1 if noisy[i] else 0
            self.medians = (self.medians + [float(medians[i])])[-4:]  # this window and the 3 before
            # judged over 3 window medians (one may be before the streak): two can differ by chance
            if self.streak >= 2 and len(self.medians) >= 3:
                self.done = True
                step = int(ss[i, -1])
                # a noisy curve whose level keeps falling is a small batch doing its job: a note, not a fault
                earlier, last3 = self.medians[0], self.medians[-3:]
                improving = (earlier > 0 and self.medians[-1] < (1 - self.th["noisy_improving"]) * earlier
                             and last3[0] > last3[1] > last3[2])
                bs_note = f"; batch size {bs:g}" if bs is not None else ""
                msg = (f"loss jumps by {fmt(spread[i])} step to step (robust std) around a level of {fmt(level[i])} "
                       f"at step {step}: {fmt(100 * rel[i], 3)}% of the level, {fmt(100 * spread[i] / init, 3)}% "
                       f"of the initial loss, for {self.streak * self.w} steps{bs_note}")
                evidence = {"step": step, "spread": spread[i], "level": level[i], "rel_spread": rel[i],
                            "initial_loss": init, "window": self.w, "batch_size": bs, "still_improving": improving}
                if improving:
                    msg += (f"; its level still falls ({fmt(earlier)} -> {fmt(self.medians[-1])} over "
                            f"{(len(self.medians) - 1) * self.w} steps): noisy, but learning")
                if small and not improving:
                    # each step's loss is the loss of one or a few examples: its spread is the spread of
                    # per-example losses (most fit, a few do not), a property of the data at this batch size,
                    # not a fault; the lecture: "when the batch size is 1, the wiggle will be relatively high"
                    msg += ": expected at this batch size; judge the trend over epochs"
                return [self.finding(ctx, "info" if improving or small else "warning", step, msg, evidence)]
        return []
