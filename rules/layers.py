"""Rules on per-layer statistics (hooks/probes.py): update ratio, dead ReLUs, saturation, vanishing and
exploding gradients, weights that never change.

Layer records come on sampled steps only, so "sustained" means a number of consecutive records.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from babysit.rules.base import Context, Finding, Table, fmt, meta_dict, meta_layers, row_nanmedian
from babysit.rules.loss import batch_size
from babysit.rules.once import OnceRule
from babysit.rules.window import Streak, first_true

__all__ = ["LayerView", "layer_view", "UpdateRatio", "DeadUnits", "SaturatedActivations",
           "VanishingGradients", "ExplodingGradients", "StalledWeights"]

_NORM_TYPES = ("Norm",)  # BatchNorm/LayerNorm/GroupNorm weights: scale parameters, not feature detectors


class LayerView:
    """The new layer records as matrices: one row per sampled step, one column per layer."""

    def __init__(self, table: Table, keep: np.ndarray | None = None):
        self.table = table
        self.keep = keep  # row mask (records before a NaN loss), None: all
        step = table.ints("step")
        layer = table.raw("layer")
        kind = table.raw("kind") if "kind" in table else np.full(len(table), "weight", dtype=object)
        if keep is not None:
            step, layer, kind = step[keep], layer[keep], kind[keep]
        self.steps, self._rows = np.unique(step, return_inverse=True)
        self._cols, names = pd.factorize(layer, sort=False)
        self.names = [str(n) for n in names]
        first = np.unique(self._cols, return_index=True)[1]
        self.kinds = [str(kind[i]) for i in first]
        self._cache: dict[str, np.ndarray] = {}

    def stat(self, name: str) -> np.ndarray:
        """(records x layers) matrix of one statistic, NaN where a layer did not report it."""
        if name not in self._cache:
            out = np.full((len(self.steps), len(self.names)), np.nan)
            if name in self.table:
                vals = self.table.num(name)
                out[self._rows, self._cols] = vals if self.keep is None else vals[self.keep]
            self._cache[name] = out
        return self._cache[name].copy()

    def columns(self, kind: str) -> list[int]:
        return [i for i, k in enumerate(self.kinds) if k == kind]


def layer_view(batch, ctx: Context) -> LayerView | None:
    """Built once per update and shared by the layer rules."""
    lay = ctx.layers
    cached = getattr(ctx, "_layer_view", None)
    if cached is not None and cached[0] is lay:
        return cached[1]
    view = None
    if len(lay) and "layer" in lay and "step" in lay:
        keep = None
        if ctx.nonfinite_step is not None:
            keep = lay.ints("step") < ctx.nonfinite_step  # after a NaN loss, layer stats are garbage
        if keep is None or keep.any():
            view = LayerView(lay, keep)
    ctx._layer_view = (lay, view)
    return view


def observe_layers(batch, ctx: Context) -> None:
    """Publish what several rules want to know: the latest median update/weight ratio."""
    ctx.ur_before = ctx.update_ratio_recent
    ctx.ur_steps, ctx.ur_values = np.array([], dtype=np.int64), np.array([], dtype=float)
    view = layer_view(batch, ctx)
    if view is None:
        return
    cols = _trainable_columns(view, ctx)
    if not cols:
        return
    ratio = view.stat("update_ratio")[:, cols]
    ok = np.isfinite(ratio).any(axis=1)
    if ok.any():
        ctx.ur_steps = view.steps[ok]
        ctx.ur_values = row_nanmedian(ratio[ok])
        ctx.update_ratio_recent = float(ctx.ur_values[-1])


def _model_types(ctx: Context) -> dict[str, str]:
    return {str(x.get("name")): str(x.get("type", "")) for x in meta_layers(ctx.meta)}


def _trainable_columns(view: LayerView, ctx: Context) -> list[int]:
    """Weight layers that are feature detectors (conv/linear...), in model order; norm layers left out."""
    types = _model_types(ctx)
    cols = view.columns("weight")
    keep = [i for i in cols if not any(t in types.get(view.names[i], "") for t in _NORM_TYPES)]
    return keep or cols


class _LayerRule(OnceRule):
    def examine(self, batch, ctx: Context) -> list[Finding]:
        view = layer_view(batch, ctx)
        if view is None:
            return []
        return self.check(view, ctx)

    def check(self, view: LayerView, ctx: Context) -> list[Finding]:  # pragma: no cover - interface
        raise NotImplementedError

    def sustained(self, streak: Streak, cond: np.ndarray, view: LayerView, need_key: str,
                  min_steps: float = 0) -> tuple[int | None, int]:
        return streak.feed(cond, view.steps, int(self.th[need_key]), self.th["sustain_steps"], min_steps)


class UpdateRatio(_LayerRule):
    """The median update/weight ratio across layers, far from ~1e-3 for a sustained stretch of records.

    A low ratio is no alarm once the lr has decayed (schedules end low) or the loss has come down (a
    converged run takes small steps). The first steps are skipped for "high": Adam's first update is ~lr
    per weight whatever the gradient.
    """

    id = "update_ratio"
    title = "Update/weight ratio far from ~1e-3"
    fix = ("scale_lr_to_ratio",)
    needs = ("layers>=update_ratio_records",)

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.low, self.high = Streak(), Streak()
        self.recent_loss = math.nan

    def update(self, batch, ctx: Context) -> list[Finding]:
        if len(ctx.new_loss):
            tail = ctx.new_loss[-20:]
            tail = tail[np.isfinite(tail)]
            if len(tail):
                self.recent_loss = float(np.median(tail))
        return super().update(batch, ctx)

    def check(self, view: LayerView, ctx: Context) -> list[Finding]:
        cols = _trainable_columns(view, ctx)
        if not cols:
            return []
        ratio = view.stat("update_ratio")[:, cols]
        has = np.isfinite(ratio).any(axis=1)
        if not has.any():
            return []
        steps = view.steps[has]
        ratio = ratio[has]
        med = row_nanmedian(ratio)
        lr = ctx.lr_at(steps)
        peak = ctx.max_lr
        decayed = np.isfinite(lr) & math.isfinite(peak) & (lr < self.th["lr_decayed_factor"] * peak)
        init = ctx.initial_loss
        learned = init is not None and math.isfinite(self.recent_loss) and self.recent_loss < 0.5 * init
        learned = learned or ctx.starts_trained  # fine-tuning: small steps on purpose
        low = (med < self.th["update_ratio_low"]) & ~decayed & (not learned)
        high = (med > self.th["update_ratio_high"]) & (steps >= (ctx.first_step or 1) + 5)
        sub = _Sub(view, steps)
        for streak, cond, direction in ((self.high, high, "high"), (self.low, low, "low")):
            # early records come every step: a too-high ratio must also last (small-init weights grow fast)
            span = self.th["update_ratio_min_steps"] if direction == "high" else 0
            i, n = self.sustained(streak, cond, sub, "update_ratio_records", span)
            if i is None:
                continue
            self.done = True
            step, lri = int(steps[i]), float(lr[i])
            per_layer = {view.names[c]: float(ratio[i, j]) for j, c in enumerate(cols)}
            msg = (f"median update/weight ratio {fmt(med[i])} at step {step}, too {direction} for {n} layer "
                   f"records in a row (healthy ~1e-3; limit {fmt(self.th['update_ratio_' + direction])}){_lr(lri)}")
            if direction == "high":
                fix = [("lower_lr", f"~{_times(max(med[i] / 1e-3, 3))}x{_from(lri)}"), "warmup_or_clip"]
            elif med[i] > 0:
                fix = [("raise_lr", f"~{_times(min(1e-3 / med[i], 1000))}x{_from(lri)}"), "lower_reg"]
            else:  # exactly 0: nothing moves, and a higher lr would not change that
                fix = ["check_optimizer_params", "check_lr_zero", "check_gradients_reach"]
            evidence = {"step": step, "median_ratio": float(med[i]), "direction": direction,
                        "records": n, "per_layer": per_layer, "lr": lri}
            return [self.finding(ctx, "warning", step, msg, evidence, fix)]
        return []


class _Sub:
    """A LayerView restricted to some records (only `steps` is read by Streak)."""

    def __init__(self, view: LayerView, steps: np.ndarray):
        self.steps = steps


class DeadUnits(_LayerRule):
    """Most units of a ReLU layer never fire on the probe batch, sustained over records.

    With tiny batches many healthy units do not fire on the few probe examples, so the limit rises with
    the fraction already 'dead' at init (random weights), and to `dead_frac_small_batch` for known batches
    under 8 examples.
    """

    id = "dead_units"
    title = "Dead ReLU units"
    fix = (("lower_lr", "a large update can push ReLUs into never firing"), "bias_init_he", "leaky_relu_or_bn",
           "normalize_inputs")
    needs = ("layers>=dead_records",)

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.streaks: dict[str, Streak] = {}
        self.at_init: dict[str, float] = {}
        self.severity = None

    def limit(self, name: str, ctx: Context) -> float:
        lim = self.th["dead_frac"]
        bs = batch_size(ctx)
        if bs is not None and bs < 8:
            lim = max(lim, self.th["dead_frac_small_batch"])
        return max(lim, min(self.th["dead_frac_small_batch"], self.at_init.get(name, 0.0) + 0.3))

    def check(self, view: LayerView, ctx: Context) -> list[Finding]:
        cols = view.columns("relu")
        if not cols:
            return []
        dead = view.stat("dead_frac")
        # the first sustained record (warning, or critical if all but dead) and the first all-dead one, each
        # over every record of the batch: escalation must not depend on how the records were batched
        first: dict[str, tuple] = {}
        for c in cols:
            name = view.names[c]
            col = dead[:, c]
            if name not in self.at_init and np.isfinite(col).any():
                self.at_init[name] = float(col[np.isfinite(col)][0])
            lim = self.limit(name, ctx)
            ok, runs = self.streaks.setdefault(name, Streak()).feed_all(
                col >= lim, view.steps, int(self.th["dead_records"]), self.th["sustain_steps"])
            for key, cond in (("any", ok), ("critical", ok & (col >= 0.99))):
                i = first_true(cond)
                if i is not None and (key not in first or (i, -col[i]) < (first[key][0], -dead[first[key][0],
                                                                                                   first[key][1]])):
                    first[key] = (i, c, int(runs[i]), lim)
        found = []
        for key in ("any", "critical"):
            if key in first:
                found += self._report(view, ctx, *first[key])
        return found

    def _report(self, view: LayerView, ctx: Context, i: int, c: int, n: int, lim: float) -> list[Finding]:
        dead, units, cols = view.stat("dead_frac"), view.stat("num_units"), view.columns("relu")
        frac = float(dead[i, c])
        severity = "critical" if frac >= 0.99 else "warning"
        if self.severity == severity or self.severity == "critical":
            return []
        self.severity = severity
        step, name = int(view.steps[i]), view.names[c]
        if severity == "critical":
            self.done = True
        nu = units[i, c]
        lr = float(ctx.lr_at(np.array([step]))[0])
        all_dead = {view.names[k]: float(dead[i, k]) for k in cols if np.isfinite(dead[i, k])}
        msg = (f"{fmt(100 * frac, 3)}% of the {int(nu) if np.isfinite(nu) else '?'} units of ReLU layer {name} "
               f"never fired on the probe batch at step {step} ({n} layer records in a row; limit "
               f"{fmt(100 * lim, 3)}%){_lr(lr)}")
        evidence = {"step": step, "layer": name, "dead_frac": frac, "num_units": nu, "records": n,
                    "limit": lim, "at_init": self.at_init.get(name), "per_layer": all_dead, "lr": lr}
        fix = list(self.fix)
        if self.at_init.get(name, 0.0) >= lim:  # dead from the first step: init, not the lr
            fix = [fix[1], fix[3], fix[2], fix[0]]
        return [self.finding(ctx, severity, step, msg, evidence, fix)]


def _output_activation(view: LayerView, c: int, ctx: Context) -> bool:
    """An activation after the last weight layer is the output (a confident sigmoid output is no fault).

    The probes report weight layers before activations, so the model's order comes from meta.json's summary.
    """
    order = {name: i for i, name in enumerate(_model_types(ctx))}
    if view.names[c] not in order:  # no model summary: module paths of a Sequential ("0", "net.3") still sort
        keys = {n: _path_key(n) for n in view.names}
        if any(k is None for k in keys.values()):
            return view.kinds[c] == "sigmoid"  # order unknown: a sigmoid is most often the output
        order = {n: i for i, n in enumerate(sorted(view.names, key=lambda n: keys[n]))}
    weights = [order[view.names[w]] for w in view.columns("weight") if view.names[w] in order]
    return bool(weights) and order[view.names[c]] > max(weights)


def _path_key(name: str) -> tuple | None:
    """'net.10' -> ('net', 10): module paths compared in registration order when the parts are numbers."""
    parts = name.split(".")
    if not any(p.isdigit() for p in parts):
        return None
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


class SaturatedActivations(_LayerRule):
    """tanh/sigmoid layers whose outputs sit at their limits (gradient ~0), sustained over records."""

    id = "saturated_activations"
    title = "Saturated tanh/sigmoid units"
    fix = ("normalize_inputs", "xavier_init", "use_relu_or_bn", "lower_lr")
    needs = ("layers>=saturated_records",)

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.streaks: dict[str, Streak] = {}

    def check(self, view: LayerView, ctx: Context) -> list[Finding]:
        cols = [c for c in view.columns("tanh") + view.columns("sigmoid") if not _output_activation(view, c, ctx)]
        if not cols:
            return []
        sat = view.stat("saturated_frac")
        hits = []
        for c in sorted(cols):
            name = view.names[c]
            cond = sat[:, c] >= self.th["saturated_frac"]
            i, n = self.sustained(self.streaks.setdefault(name, Streak()), cond, view, "saturated_records")
            if i is not None:
                hits.append((i, c, n))
        if not hits:
            return []
        i, c, n = min(hits)
        self.done = True
        step, name = int(view.steps[i]), view.names[c]
        msg = (f"{fmt(100 * sat[i, c], 3)}% of the outputs of {view.kinds[c]} layer {name} are saturated at "
               f"step {step} ({n} layer records in a row; limit {fmt(100 * self.th['saturated_frac'])}%): "
               "their gradient is ~0")
        evidence = {"step": step, "layer": name, "kind": view.kinds[c], "saturated_frac": float(sat[i, c]),
                    "records": n,
                    "per_layer": {view.names[k]: float(sat[i, k]) for k in cols if np.isfinite(sat[i, k])}}
        return [self.finding(ctx, "warning", step, msg, evidence)]


class VanishingGradients(_LayerRule):
    """The first layer's gradient norm orders of magnitude below the last layer's (AutoTrainer's test)."""

    id = "vanishing_gradients"
    title = "Vanishing gradients in early layers"
    fix = ("use_relu", "he_xavier_init", "add_normalization", "residual_or_shallower")
    needs = ("layers>=vanishing_records",)

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.streak = Streak()

    def check(self, view: LayerView, ctx: Context) -> list[Finding]:
        cols = _trainable_columns(view, ctx)
        if len(cols) < 2:
            return []
        g = view.stat("g_norm")[:, cols]
        first, last = g[:, 0], g[:, -1]
        with np.errstate(all="ignore"):
            ratio = first / last
        finite = np.isfinite(g).all(axis=1)
        tiny = finite & (np.where(finite[:, None], g, np.inf).max(axis=1) < self.th["vanishing_abs"])
        bs = batch_size(ctx)
        if bs is not None and bs <= self.th["tiny_batch"]:
            # the probe's gradient is the last batch's: one example the net already fits has a gradient of ~0 in
            # every layer. Only the first-vs-last ratio (depth attenuation) says the gradients vanish there.
            tiny[:] = False
        small = np.isfinite(ratio) & (last > 0) & (ratio < self.th["vanishing_ratio"])
        i, n = self.sustained(self.streak, small | tiny, view, "vanishing_records")
        if i is None:
            return []
        self.done = True
        step = int(view.steps[i])
        fname, lname = view.names[cols[0]], view.names[cols[-1]]
        if tiny[i] and not small[i]:
            msg = (f"every layer's gradient norm is below {fmt(self.th['vanishing_abs'])} at step {step} "
                   f"(largest {fmt(np.nanmax(g[i]))}, {n} layer records in a row)")
        else:
            msg = (f"gradient norm of the first layer {fname} ({fmt(first[i])}) is {fmt(ratio[i])}x the last layer "
                   f"{lname}'s ({fmt(last[i])}) at step {step}, for {n} layer records in a row (limit "
                   f"{fmt(self.th['vanishing_ratio'])}x)")
        evidence = {"step": step, "first_layer": fname, "last_layer": lname, "first_g_norm": float(first[i]),
                    "last_g_norm": float(last[i]), "ratio": float(ratio[i]) if np.isfinite(ratio[i]) else None,
                    "records": n, "per_layer": {view.names[c]: float(g[i, j]) for j, c in enumerate(cols)}}
        return [self.finding(ctx, "warning", step, msg, evidence)]


class ExplodingGradients(_LayerRule):
    """The total gradient norm far above its early median, sustained; or non-finite gradients (at once)."""

    id = "exploding_gradients"
    title = "Exploding gradients"
    fix = ("clip_gradients", "lower_lr", "add_normalization")
    needs = ("layers>=exploding_records",)

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.early: list[float] = []
        self.streak = Streak()
        self.severity = None

    def check(self, view: LayerView, ctx: Context) -> list[Finding]:
        cols = view.columns("weight")
        if not cols:
            return []
        g = view.stat("g_norm")[:, cols]
        zf = view.stat("zero_grad_frac")[:, cols]
        # NaN g_norm next to a reported zero_grad_frac is a NaN gradient, not a missing statistic
        bad_g = np.isinf(g) | (np.isnan(g) & np.isfinite(zf))
        bad = first_true(bad_g.any(axis=1))
        if bad is not None and self.severity != "critical":
            self.severity = "critical"
            self.done = True
            step = int(view.steps[bad])
            layers = [view.names[c] for j, c in enumerate(cols) if bad_g[bad, j]]
            value = "inf" if np.isinf(g[bad]).any() else "NaN"
            msg = f"gradient norm of {', '.join(layers[:5])} is {value} at step {step}"
            return [self.finding(ctx, "critical", step, msg, {"step": step, "layers": layers, "g_norm": value})]
        finite = np.isfinite(g)
        has = finite.any(axis=1)
        total = np.sqrt((np.where(finite, g, 0.0) ** 2).sum(axis=1))
        for t in total[has][: max(0, 3 - len(self.early))]:
            self.early.append(float(t))
        if not self.early or self.severity is not None:
            return []
        base = float(np.median(self.early))
        if base <= 0:
            return []
        factor = self.th["exploding_factor"]
        i, n = self.sustained(self.streak, has & (total > factor * base), view, "exploding_records")
        if i is None:
            return []
        step = int(view.steps[i])
        # Gradients that grow while the loss keeps falling are a net waking up (deep nets start with tiny
        # gradients), not an explosion: require the loss to have stopped improving, unless the growth is extreme.
        loss = ctx.loss_near(step)
        init = ctx.initial_loss
        improving = math.isfinite(loss) and init is not None and loss < self.th["exploding_loss_level"] * init
        if improving and total[i] < self.th["exploding_extreme"] * base:
            return []
        self.severity = "warning"
        lr = float(ctx.lr_at(np.array([step]))[0])
        msg = (f"total gradient norm {fmt(total[i])} at step {step} is {fmt(total[i] / base, 3)}x its early median "
               f"{fmt(base)} (limit {fmt(factor)}x, {n} layer records in a row){_lr(lr)}")
        evidence = {"step": step, "g_norm": float(total[i]), "baseline": base, "ratio": float(total[i] / base),
                    "records": n, "lr": lr, "loss": loss,
                    "per_layer": {view.names[c]: float(g[i, j]) for j, c in enumerate(cols)}}
        return [self.finding(ctx, "warning", step, msg, evidence)]


class StalledWeights(_LayerRule):
    """Layers that get a gradient but whose weights do not change (not in the optimizer, lr 0, ...).

    Frozen layers (requires_grad False) are not reported by the probes, so fine-tuning never trips this;
    an lr schedule that reached 0 (cosine, linear decay) is not a stall either.
    """

    id = "stalled_weights"
    title = "Weights do not change"
    fix = ("check_optimizer_params", "check_requires_grad", "check_lr_zero")
    needs = ("layers>=stalled_records",)

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.streaks: dict[str, Streak] = {}
        self.prev: dict[str, tuple[float, float, float]] = {}
        self.severity = None

    def check(self, view: LayerView, ctx: Context) -> list[Finding]:
        cols = view.columns("weight")
        if not cols:
            return []
        ur, g = view.stat("update_ratio")[:, cols], view.stat("g_norm")[:, cols]
        w = np.stack([view.stat(k)[:, cols] for k in ("w_norm", "w_mean", "w_std")])  # (3, records, layers)
        names = [view.names[c] for c in cols]
        prev_row = np.array([self.prev.get(n, (np.nan,) * 3) for n in names]).T[:, None, :]  # (3, 1, layers)
        prev = np.concatenate([prev_row, w[:, :-1]], axis=1)
        same = (w == prev).all(axis=0)
        for j, n in enumerate(names):
            present = np.flatnonzero(np.isfinite(w[0, :, j]))
            if len(present):
                self.prev[n] = tuple(w[:, present[-1], j])
        lr = ctx.lr_at(view.steps)
        schedule_zero = (lr == 0) & math.isfinite(ctx.max_lr) & (ctx.max_lr > 0)  # a schedule that reached 0
        # No update ratio means the optimizer did not step at that sample. When meta.json lists what the
        # optimizer holds, that is a stall only for a layer outside it; for one inside it, the step was skipped
        # (gradient accumulation; skipped_optimizer_steps judges those), not a layer the optimizer ignores.
        opt = meta_dict(ctx.meta, "optimizer")
        outside = opt.get("layers_not_in_optimizer") if isinstance(opt.get("layers_not_in_optimizer"), list) else None
        unstepped = np.isnan(ur) & same
        if outside is not None:
            unstepped &= np.array([n in outside or n.rpartition(".")[0] in outside for n in names], dtype=bool)
        # a gradient below vanishing_abs moves no float32 weight: that is vanishing_gradients' stall, not this one
        cond = (g > self.th["vanishing_abs"]) & ((ur == 0) | unstepped) & ~schedule_zero[:, None]
        if not cond.any() and not any(self.streaks.get(n) and self.streaks[n].count for n in names):
            return []
        hits: dict[str, tuple[int, int]] = {}
        stalled_at: list[np.ndarray] = []
        for j, n in enumerate(names):
            i, k = self.sustained(self.streaks.setdefault(n, Streak()), cond[:, j], view, "stalled_records")
            full = np.zeros(len(view.steps), dtype=bool)
            if i is not None:
                full[i:] = True  # sustained from here on (good enough for "all layers at once")
                hits[n] = (i, k)
            stalled_at.append(full)
        if not hits:
            return []
        every = np.logical_and.reduce(stalled_at)
        i_all = first_true(every)
        severity = "critical" if i_all is not None else "warning"
        if self.severity == severity or self.severity == "critical":
            return []
        self.severity = severity
        i = i_all if i_all is not None else min(i for i, _ in hits.values())
        step = int(view.steps[i])
        stalled = sorted(hits, key=lambda n: hits[n][0])
        lri = float(lr[i])
        lr_note = " (the learning rate is 0)" if lri == 0 else _lr(lri)
        if severity == "critical":
            msg = (f"no layer's weights changed at step {step} although all {len(cols)} get gradients: the optimizer "
                   f"updates nothing{lr_note}")
        else:
            msg = (f"{len(stalled)} of {len(cols)} layers get gradients but their weights do not change (step "
                   f"{step}): {', '.join(stalled[:5])}{' ...' if len(stalled) > 5 else ''}{lr_note}")
        fix = list(self.fix)
        if lri == 0:
            fix = [fix[2], fix[0], fix[1]]
        evidence = {"step": step, "layers": stalled, "all_layers": severity == "critical", "lr": lri,
                    "records": {n: hits[n][1] for n in stalled}}
        if severity == "critical":
            self.done = True
        return [self.finding(ctx, severity, step, msg, evidence, fix)]


def _lr(lr: float) -> str:
    return f" (lr {fmt(lr)})" if lr is not None and math.isfinite(lr) else ""


def _from(lr: float) -> str:
    return f" from {fmt(lr)}" if lr is not None and math.isfinite(lr) else ""


def _times(x: float) -> str:
    """A factor for a fix: '390', '3.5'."""
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"

