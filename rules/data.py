"""Checks on what goes into the net: inputs far from zero mean and unit scale, and labels that cannot be right.

They read the statistics of the first batch and the targets of the first training steps that the hooks
record once (meta.json `first_batch`, `targets_seen`; FORMAT.md). Missing fields mean nothing is said.
A data oddity that does not hurt (a run that trains fine on raw-scale inputs) is an info note; it becomes a
warning when the run is in the trouble it typically causes.
"""

from __future__ import annotations

from babysit.rules.base import Context, Finding, Rule, fmt, meta_dict, meta_layers
from babysit.rules.bugs import Progress, number, since_start
from babysit.rules.loss import batch_size

__all__ = ["UnnormalizedInput", "BadLabels", "SingleBatch"]

NORM_LAYERS = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "LocalResponseNorm", "RMSNorm")
# what inputs at the wrong scale typically cause: with one of these live the note becomes a warning
# (init_loss_mismatch: inputs in the thousands give the first layer, and so the logits, values in the
# thousands: the first loss lands far above ln C, the lecture's first sanity check)
TROUBLE = ("saturated_activations", "dead_units", "flat_loss", "loss_explosion", "nonfinite_loss",
           "exploding_gradients", "vanishing_gradients", "chance_accuracy", "update_ratio", "init_loss_mismatch")


def _trouble(ctx: Context) -> list[str]:
    return [r for r in TROUBLE if ctx.has(r) and not ctx.findings[r].resolved]


class UnnormalizedInput(Rule):
    id = "unnormalized_input"
    title = "Inputs are far from zero mean and unit scale"
    fix = ("normalize_inputs",)
    needs = ("meta.first_batch",)

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.severity: str | None = None
        self.progress = Progress(thresholds)

    def _scale(self, x: dict, few: bool = False) -> tuple[str, float, float] | None:
        """(where, mean, std) of the worst-scaled channel, or of the whole batch, when off scale; else None.

        `few`: a batch of a few examples, whose mean and spread say nothing about the data's centering (one
        example's features are what they are): only a scale in the tens counts then, not an offset."""
        means, stds = x.get("channel_mean"), x.get("channel_std")
        cands = [("the inputs", number(x.get("mean")), number(x.get("std")))]
        if isinstance(means, list) and isinstance(stds, list) and len(means) == len(stds):
            cands += [(f"input channel {i}", number(m), number(s))
                      for i, (m, s) in enumerate(zip(means, stds, strict=True))]
        worst = None
        for where, m, s in cands:
            if m is None or s is None:
                continue
            # far: a spread of tens or more (raw pixels 0-255, dollars), or the whole batch offset by several
            # spreads; one channel's offset alone is no evidence (a blank border pixel is constant)
            off = s > self.th["unnorm_scale"] or abs(m) > self.th["unnorm_scale"] or (
                where == "the inputs" and not few and abs(m) > 1 and abs(m) > self.th["unnorm_offset"] * s)
            if off and (worst is None or max(abs(m), s) > max(abs(worst[1]), worst[2])):
                worst = (where, m, s)
        return worst

    def update(self, batch, ctx: Context) -> list[Finding]:
        self.progress.feed(ctx)
        if self.severity == "warning":
            return []
        x = meta_dict(meta_dict(ctx.meta, "first_batch"), "inputs")
        if not x or x.get("integer") is not False:
            return []  # token ids / class indices (or not recorded): nothing to normalize
        first = next((layer for layer in meta_layers(ctx.meta) if (number(layer.get("count")) or 0) > 0), None)
        if first is not None and str(first.get("type", "")).startswith(NORM_LAYERS + ("Embedding",)):
            return []  # the net normalizes its own input
        bs = batch_size(ctx)
        worst = self._scale(x, few=bs is not None and bs <= self.th["tiny_batch"])
        if worst is None:
            return []
        trouble, learning = _trouble(ctx), self.progress.learning(ctx)
        severity = "warning" if trouble or learning is False else "info"
        ended = isinstance(ctx.status, dict) and ctx.status.get("state") in ("finished", "crashed", "stopped")
        if severity == self.severity or (severity == "info" and learning is None and not ended):
            return []  # an info note waits until the run has shown whether it learns
        self.severity = severity
        where, m, s = worst
        verb = "have" if where == "the inputs" else "has"
        msg = (f"first batch: {where} {verb} mean {fmt(m)} and std {fmt(s)} (min {fmt(number(x.get('min')))}, "
               f"max {fmt(number(x.get('max')))}); zero-center and scale the data")
        if first is not None:
            msg += f" and the first layer ({first.get('type')}) does not normalize"
        msg += f"; {self.progress.note(ctx)}" + (f"; with {', '.join(trouble)}" if trouble else "")
        evidence = {"where": where, "mean": m, "std": s, "min": number(x.get("min")), "max": number(x.get("max")),
                    "first_layer": first.get("type") if first else None, "with": trouble,
                    "initial_loss": ctx.initial_loss, "loss_now": self.progress.recent}
        fix = [("normalize_inputs", f"inputs have mean {fmt(m)}, std {fmt(s)}")]
        return [self.finding(ctx, severity, since_start(ctx), msg, evidence, fix)]


def _histogram(d: dict) -> dict[int, int]:
    """{"3": 17} -> {3: 17}; keys that are not integers are dropped."""
    out = {}
    for k, v in (d.get("histogram") or {}).items() if isinstance(d.get("histogram"), dict) else ():
        kk, vv = number(k), number(v)
        if kk is not None and vv is not None and kk == int(kk):
            out[int(kk)] = out.get(int(kk), 0) + int(vv)
    return out


class BadLabels(Rule):
    id = "bad_labels"
    title = "Labels or targets that cannot be right"
    fix = ("check_label_indices",)
    needs = ("meta.first_batch",)

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.severity: str | None = None
        self.progress = Progress(thresholds)

    def update(self, batch, ctx: Context) -> list[Finding]:
        self.progress.feed(ctx)
        if self.severity == "warning":
            return []
        fb = meta_dict(ctx.meta, "first_batch")
        t, seen = meta_dict(fb, "targets"), meta_dict(ctx.meta, "targets_seen")
        if ctx.num_classes is not None and (t.get("integer") is True or seen):
            found = self._classes(ctx, t, seen)
        elif ctx.num_classes is None and t.get("integer") is False:
            found = self._regression(ctx, t)
        else:
            return []
        if found is None or found[0] == self.severity:
            return []
        severity, msg, evidence, fix = found
        self.severity = severity
        return [self.finding(ctx, severity, since_start(ctx), msg, evidence, fix)]

    def _classes(self, ctx: Context, t: dict, seen: dict):
        c = ctx.num_classes
        hist = _histogram(seen) or _histogram(t)
        ignore = number(t.get("ignore_index"))
        ignore = -100 if ignore is None else ignore  # cross_entropy's default ignore_index
        hist.pop(int(ignore), None)
        src = seen if seen else t  # min/max cover every target; a histogram may stop at histogram_bins
        lo = min([v for v in (number(src.get("min")), min(hist, default=None)) if v is not None and v != ignore],
                 default=None)
        hi = max([v for v in (number(src.get("max")), max(hist, default=None)) if v is not None and v != ignore],
                 default=None)
        if lo is None or hi is None:
            return None
        evidence = {"num_classes": c, "min": lo, "max": hi, "histogram": {str(k): v for k, v in sorted(hist.items())}}
        if lo < 0 or hi >= c:
            one_based = lo == 1 and hi == c
            msg = (f"class labels range over [{int(lo)}, {int(hi)}] but num_classes is {c}: they must be 0..{c - 1}"
                   + (" (they look 1-based: subtract 1)" if one_based else ""))
            return "warning", msg, evidence, ["check_label_indices", "check_num_classes"]
        if not hist:
            return None
        present = {k: v for k, v in hist.items() if v > 0}
        unshuffled = self._one_class_batch(_histogram(t), present)
        bins = number(src.get("histogram_bins"))
        absent = [k for k in range(c if bins is None else min(c, int(bins))) if k not in present]
        rare, common = min(present.values()), max(present.values())
        sorted_note = (f"; the first batch is all class {unshuffled[0]} (chance {fmt(unshuffled[1])} if shuffled): "
                       "the data looks sorted by class" if unshuffled and unshuffled[1] < 0.01 else "")
        evidence["first_batch_one_class"] = unshuffled[0] if unshuffled else None
        if absent and rare >= self.th["labels_min_per_class"]:
            # every class that did appear appeared often: a class that never did is not bad luck
            msg = (f"{len(absent)} of {c} classes never appear in {sum(present.values()):,} training targets "
                   f"(missing: {', '.join(map(str, absent[:10]))}{' ...' if len(absent) > 10 else ''}); the "
                   f"rarest class that does appear has {rare}{sorted_note}")
            evidence["missing"] = absent
            fix = ["shuffle_data", "check_pipeline"] if sorted_note else ["check_num_classes", "check_pipeline"]
            return "warning", msg, evidence, fix
        if unshuffled and unshuffled[1] < 1e-3:
            msg = (f"the first batch is all class {unshuffled[0]} (chance {fmt(unshuffled[1])} if the data were "
                   f"shuffled, from the {len(present)} classes seen): the training data looks sorted by class")
            return "warning", msg, evidence, ["shuffle_data", "check_pipeline"]
        if len(present) >= 2 and common / rare > self.th["labels_imbalance"]:
            acc, majority = self.progress.accuracy, common / sum(present.values())
            stuck = acc is not None and abs(acc - majority) <= min(0.02, (1 - majority) / 2)  # not just near 1
            msg = (f"classes are imbalanced {fmt(common / rare)}:1 in the training targets (majority class "
                   f"{fmt(100 * majority)}% of them)"
                   + (f"; train accuracy {fmt(acc)} is the majority rate: the net predicts one class" if stuck else ""))
            evidence.update(imbalance=common / rare, majority_frac=majority, train_accuracy=acc)
            return ("warning" if stuck else "info"), msg, evidence, ["rebalance_classes"]
        return None

    @staticmethod
    def _one_class_batch(first: dict[int, int], seen: dict[int, int]) -> tuple[int, float] | None:
        """(class, chance of that under shuffling) when the first batch holds one class only; else None."""
        if len(first) != 1 or len(seen) < 3:
            return None
        (k, n), = first.items()
        total = sum(seen.values())
        return k, sum((v / total) ** n for v in seen.values())

    def _regression(self, ctx: Context, t: dict):
        m, s = number(t.get("mean")), number(t.get("std"))
        if m is None or s is None:
            return None
        far = s > self.th["target_scale"] or (abs(m) > self.th["target_scale"] and abs(m) > self.th["unnorm_offset"]
                                              * s)
        learning = self.progress.learning(ctx)
        if not far or learning is None:
            return None
        # Falling from a huge start is not enough: an MSE near the targets' variance (an L1 loss near their std)
        # is what predicting their mean gives, so the net explains almost nothing of them.
        loss_fn, recent = str(meta_dict(ctx.meta, "first_batch").get("loss_fn") or ""), self.progress.recent
        baseline = s * s if loss_fn == "mse_loss" else (s if loss_fn in ("l1_loss", "smooth_l1_loss", "huber_loss")
                                                         else None)
        no_better = baseline is not None and recent >= self.th["target_fit"] * baseline
        if learning and not no_better:
            return None  # a regression on raw-scale targets that fits them is a choice
        # a net that starts at the mean (bias set to it, or after its first steps) neither falls far nor beats
        # the mean until it has had time to learn: a young run is judged after flat_window steps more than the
        # other bug checks; a run that has ended had all the time it will get
        ended = isinstance(ctx.status, dict) and ctx.status.get("state") in ("finished", "crashed", "stopped")
        if not ended and ctx.last_step - (ctx.first_step or 0) < self.th["bug_min_steps"] + self.th["flat_window"]:
            return None
        how = (f"the loss {fmt(recent)} is no better than predicting their mean ({fmt(baseline)})" if no_better
               else f"the loss does not fall: {self.progress.note(ctx)}")
        msg = (f"regression targets have mean {fmt(m)} and std {fmt(s)} (min {fmt(number(t.get('min')))}, max "
               f"{fmt(number(t.get('max')))}), far from unit scale, and {how}")
        evidence = {"mean": m, "std": s, "min": number(t.get("min")), "max": number(t.get("max")),
                    "initial_loss": ctx.initial_loss, "loss_now": recent, "mean_predictor_loss": baseline}
        return "warning", msg, evidence, [("standardize_targets", f"mean {fmt(m)}, std {fmt(s)}")]


class SingleBatch(Rule):
    """Every one of the first steps saw exactly the first batch's labels: the same batch every step.

    The hooks count the targets of the first steps (meta `targets_seen`). Random batches of a larger set never
    add up to exactly k x the first batch's class histogram over k steps; one batch fetched once and reused
    (`xb, yb = next(iter(loader))` above the loop) always does. Full-batch training on a set that small looks
    the same, so alone it is a note; with overfitting (the net memorizes the one batch) it is the warning and
    the cause the overfitting names. Needs `single_batch_steps` steps and two classes in the batch.
    """

    id = "single_batch"
    title = "The same batch every step"
    fix = ("advance_the_loader",)
    needs = ("meta.targets_seen",)
    severity: str | None = None  # the severity said so far (set per instance once said)

    def update(self, batch, ctx: Context) -> list[Finding]:
        if self.severity == "warning":
            return []
        first = _histogram(meta_dict(meta_dict(ctx.meta, "first_batch"), "targets"))
        seen = meta_dict(ctx.meta, "targets_seen")
        steps, hist = number(seen.get("steps")), _histogram(seen)
        if not first or not hist or steps is None or steps < self.th["single_batch_steps"] or len(first) < 2:
            return []
        if set(hist) != set(first) or any(hist[c] != steps * n for c, n in first.items()):
            return []
        severity = "warning" if ctx.has("overfitting") else "info"
        ended = isinstance(ctx.status, dict) and ctx.status.get("state") in ("finished", "crashed", "stopped")
        if severity == self.severity or (severity == "info" and not ended):
            return []  # a note waits for the run's end: overfitting may still come and make it the warning
        self.severity = severity
        size = sum(first.values())
        msg = (f"each of the first {int(steps)} steps saw exactly the first batch's {size} labels ({len(first)} "
               "classes, the same counts every step): one batch reused, not a loader that advances")
        if severity == "warning":
            msg += "; the net memorizes it (overfitting)"
        evidence = {"steps": steps, "batch_histogram": {str(k): v for k, v in sorted(first.items())},
                    "batch_size": size}
        return [self.finding(ctx, severity, since_start(ctx), msg, evidence)]
