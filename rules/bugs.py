"""Checks for the bugs users actually make in their own loops: probabilities fed to a logits loss, a model
that does not train because its parameters are frozen or missing from the optimizer, and optimizer.step()
skipped on most steps.

They read what the hooks record once (meta.json `model`, `optimizer`, `first_batch`; status.json and step
records `optimizer_steps`, FORMAT.md). Any of those may be missing (an old run, an import, a loop the hooks
could not see into): a rule then says nothing. A structural fact alone is not enough where a legitimate
setup looks the same (a linear probe freezes most of the net on purpose): those rules also ask the loss.
"""

from __future__ import annotations

import math
import re

import numpy as np

from babysit.rules.base import Context, Finding, Rule, fmt, meta_dict, meta_layers
from babysit.rules.loss import REGRESSION_LOSSES
from babysit.rules.once import OnceRule
from babysit.rules.window import Tail

__all__ = ["DoubleSoftmax", "EvalModeTraining", "LossMismatch", "MissingZeroGrad", "OutputActivation",
           "FrozenParameters", "SkippedOptimizerSteps", "Progress", "number", "train_accuracy", "since_start"]


def number(x) -> float | None:
    """A finite float from a meta value of any JSON type, else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float, str)):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def since_start(ctx: Context) -> int | None:
    """The step a structural finding belongs to: the first one. A softmax head, frozen layers or a skipped
    optimizer.step() were there from the start, whenever the loss confirmed them; the engine links a cause to
    the symptoms that came after it."""
    return ctx.first_step if ctx.first_step is not None else (ctx.last_step or None)


def train_accuracy(ctx: Context) -> float | None:
    """The latest train accuracy in this update's epoch records (0-1; percentages are scaled), else None."""
    for col in ("train_acc", "train_accuracy", "acc", "accuracy"):
        if col in ctx.epochs:
            vals = ctx.epochs.num(col)
            vals = vals[np.isfinite(vals)]
            if len(vals):
                a = float(vals[-1])
                return a / 100 if 1 < a <= 100 else a
    return None


class Progress:
    """Whether the loss is where it should be: its recent median against its start, across updates.

    `learning` is None until `bug_min_steps` steps have been seen (too early to say), else True when the
    recent loss fell below `bug_loss_progress` of the initial loss, or a pretrained net (the first loss far
    below ln C) stays near its start, or the train accuracy is well above chance.
    """

    def __init__(self, thresholds: dict):
        self.th = thresholds
        self.tail = Tail(20)  # the last 20 finite losses
        self.accuracy: float | None = None

    def feed(self, ctx: Context) -> None:
        ok = np.isfinite(ctx.new_loss)
        self.tail.extend(ctx.new_loss[ok])
        acc = train_accuracy(ctx)
        if acc is not None:
            self.accuracy = acc

    @property
    def recent(self) -> float:
        vals = self.tail.parts[0]
        return float(np.median(vals)) if len(vals) else math.nan

    def learning(self, ctx: Context) -> bool | None:
        start, recent = ctx.initial_loss, self.recent
        seen = ctx.last_step - (ctx.first_step or 0)
        if start is None or not math.isfinite(recent) or seen < self.th["bug_min_steps"]:
            return None
        if ctx.nonfinite_step is not None:
            return False
        c = ctx.num_classes
        if self.accuracy is not None and c is not None:
            scaled = (self.accuracy - 1 / c) / (1 - 1 / c)
            if scaled >= self.th["underfit_acc"]:
                return True
        if ctx.starts_trained and recent <= 1.1 * start:
            return True
        if start > 0:
            return recent <= self.th["bug_loss_progress"] * start
        return recent < start - abs(start) * (1 - self.th["bug_loss_progress"])  # a loss that can go negative

    def note(self, ctx: Context) -> str:
        s = f"loss {fmt(self.recent)} now vs {fmt(ctx.initial_loss)} at the start"
        return s + (f", train accuracy {fmt(self.accuracy)}" if self.accuracy is not None else "")


def resolve_later(rule: Rule, ctx: Context, fired: Finding | None, progress: Progress) -> list[Finding]:
    """A warning given because the loss was not falling, once it falls after all: an info note (resolved).

    Online a rule judges a young run; a slow start (a big frozen backbone, a low lr) must not stay a warning.
    """
    if fired is None or fired.evidence.get("resolved") or progress.learning(ctx) is not True:
        return []
    ev = {**fired.evidence, "resolved": True, "resolved_step": ctx.last_step, "resolved_loss": progress.recent}
    msg = f"{fired.message}; later the loss fell ({progress.note(ctx)}): resolved"
    return [rule.finding(ctx, "info", fired.step, msg, ev, ["none_needed"])]


def softmax_floor(c: int) -> float:
    """The lowest cross_entropy of probabilities: a one-hot p scores -log(e / (e + C - 1))."""
    return math.log1p((c - 1) / math.e)


class DoubleSoftmax(OnceRule):
    id = "double_softmax"
    title = "Probabilities fed to a loss that expects logits"
    fix = ("logits_to_loss",)
    needs = ("meta.first_batch",)

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.progress = Progress(thresholds)

    def update(self, batch, ctx: Context) -> list[Finding]:
        self.progress.feed(ctx)
        if self.done:
            return []
        fb = meta_dict(ctx.meta, "first_batch")
        loss_fn = str(fb.get("loss_fn") or "")
        head = str(meta_dict(meta_dict(ctx.meta, "model"), "head").get("type") or "")
        probs = fb.get("loss_input") if isinstance(fb.get("loss_input"), dict) else None
        if probs is None:  # the hooks did not see the loss call: the model's output stands in for it
            probs = fb.get("outputs") if isinstance(fb.get("outputs"), dict) else {}
        is_probs = probs.get("nonneg") is True and probs.get("rows_sum_to_one") is True
        seen = probs.get("nonneg") is not None  # the tensor's statistics were recorded: trust them over the head
        what = None
        if "cross_entropy" in loss_fn and not loss_fn.startswith("binary") and (is_probs or (head == "Softmax"
                                                                                           and not seen)):
            what = "cross_entropy applies log_softmax itself: softmax before it squashes the logits"
        elif loss_fn == "nll_loss" and (is_probs or (head == "Softmax" and not seen)):
            what = "nll_loss expects log-probabilities (LogSoftmax), it got probabilities"
        elif loss_fn == "binary_cross_entropy_with_logits" and head == "Sigmoid" and (
                not seen or (probs.get("nonneg") is True and (number(probs.get("max")) or 2) <= 1)):
            what = "binary_cross_entropy_with_logits applies the sigmoid itself: sigmoid before it squashes them"
        if what is None:
            return []
        self.done = True
        c = ctx.num_classes
        evidence = {"loss_fn": loss_fn, "head": head or None, "loss_input_nonneg": probs.get("nonneg"),
                    "loss_input_rows_sum_to_one": probs.get("rows_sum_to_one"), "loss_now": self.progress.recent,
                    "train_accuracy": self.progress.accuracy}
        msg = f"{what} (head {head or '?'}, loss {loss_fn}"
        if is_probs:
            msg += f", its input in [{fmt(number(probs.get('min')))}, {fmt(number(probs.get('max')))}] with rows " \
                   "summing to 1"
        msg += ")"
        if c is not None and "cross_entropy" in loss_fn and not loss_fn.startswith("binary"):
            floor = softmax_floor(c)
            evidence["loss_floor"] = floor
            msg += f"; the loss cannot go below {fmt(floor)} for {c} classes even when every answer is right"
        fix = ["logits_to_loss"] if "cross_entropy" in loss_fn else [("logits_to_loss", "or nn.LogSoftmax "
                                                                      "with nll_loss")]
        return [self.finding(ctx, "warning", since_start(ctx), msg, evidence, fix)]


class LossMismatch(OnceRule):
    """The loss function does not fit what it is given: nll_loss on raw scores that are not log-probabilities
    (the log_softmax was forgotten: the 'loss' is -score[y], unbounded below), a regression loss (MSE, L1,
    Huber) regressing class indices with one output per sample while the run declares C >= 3 classes, a binary
    cross-entropy given targets outside [0, 1] (class indices cast to float: no minimum), or a regression loss
    between softmax probabilities and one-hot targets (a saturated softmax passes back almost no gradient).

    From the first batch the hooks saw the loss called on (meta first_batch: `loss_fn`, `loss_input` with
    `log_probs`, min/max, shape; `targets`). Log-probabilities are never positive and their rows' exp sums
    to 1; probabilities are double_softmax's.
    """

    id = "loss_mismatch"
    title = "The loss function does not match the model's output"
    fix = ("log_softmax_before_nll", "classification_loss", "match_target_shape", "bce_targets_01")
    needs = ("meta.first_batch",)

    def examine(self, batch, ctx: Context) -> list[Finding]:
        fb = meta_dict(ctx.meta, "first_batch")
        fn = str(fb.get("loss_fn") or "")
        inp = fb.get("loss_input") if isinstance(fb.get("loss_input"), dict) else {}
        tgt = fb.get("targets") if isinstance(fb.get("targets"), dict) else {}
        lo, hi = number(inp.get("min")), number(inp.get("max"))
        found = None
        if fn == "nll_loss" and inp.get("log_probs") is False and inp.get("rows_sum_to_one") is not True:
            where = f"values up to {fmt(hi)}" if hi is not None and hi > 0 else "rows whose exp does not sum to 1"
            found = (f"nll_loss got raw scores, not log-probabilities ({where}; range [{fmt(lo)}, {fmt(hi)}]): "
                     "it computes -score[y], which the net can push to -infinity", ["log_softmax_before_nll"])
        c = ctx.num_classes
        shape = inp.get("shape") if isinstance(inp.get("shape"), list) else []
        one_output = len(shape) == 1 or (len(shape) == 2 and shape[-1] == 1)
        t_lo, t_hi = number(tgt.get("min")), number(tgt.get("max"))
        if (found is None and fn in REGRESSION_LOSSES and c is not None and c >= 3 and one_output
                and t_lo is not None and t_hi is not None and 0 <= t_lo and t_hi <= c - 1 and t_hi >= 2):
            found = (f"{fn} regresses the class index: the model gives one number per sample "
                     f"(loss input shape {shape}) for targets {fmt(t_lo)}..{fmt(t_hi)} of a {c}-class run",
                     ["classification_loss"])
        if (found is None and fn.startswith("binary_cross_entropy") and t_lo is not None and t_hi is not None
                and (t_lo < -1e-6 or t_hi > 1 + 1e-6)):
            # A binary cross-entropy's target is a probability: t*log(p) + (1-t)*log(1-p) with t outside [0, 1]
            # has no minimum (with logits it falls without end as the logit grows): nothing to converge to.
            index = c is not None and c >= 3 and 0 <= t_lo and t_hi <= c - 1 and t_hi >= 2
            what = f"class indices of a {c}-class run" if index else "values outside [0, 1]"
            found = (f"{fn} got targets {fmt(t_lo)}..{fmt(t_hi)} ({what}): a binary cross-entropy needs targets in "
                     "[0, 1]; with larger ones the loss has no minimum and falls without end",
                     ["classification_loss" if index else "bce_targets_01"])
        if (found is None and fn in REGRESSION_LOSSES and c is not None and c >= 2 and len(shape) == 2
                and shape[-1] == c and inp.get("rows_sum_to_one") is True and _one_hot(tgt, shape, c)):
            found = (f"{fn} compares softmax probabilities (loss input {shape}, rows summing to 1) with one-hot "
                     f"targets of a {c}-class run: the gradient through the softmax is small (p(1 - p) per class) and "
                     "vanishes as it saturates, so learning crawls (cross_entropy on the logits does not)",
                     ["classification_loss"])
        t_shape = tgt.get("shape") if isinstance(tgt.get("shape"), list) else []
        crossed = _cross_broadcast(shape, t_shape)
        if found is None and fn in REGRESSION_LOSSES and crossed is not None:
            found = (f"{fn} got predictions of shape {shape} and targets of shape {t_shape}: they broadcast to "
                     f"{crossed}, every prediction against every target, so the best the net can do is predict "
                     "their mean (PyTorch warns 'Using a target size ... different to the input size')",
                     ["match_target_shape"])
        if found is None:
            return []
        self.done = True
        msg, fix = found
        evidence = {"loss_fn": fn, "loss_input_min": lo, "loss_input_max": hi, "loss_input_shape": shape,
                    "targets_shape": t_shape or None, "broadcast_shape": crossed,
                    "log_probs": inp.get("log_probs"), "targets_min": t_lo, "targets_max": t_hi, "num_classes": c}
        return [self.finding(ctx, "warning", since_start(ctx), msg, evidence, fix)]


def _one_hot(tgt: dict, shape: list, c: int) -> bool:
    """Whether recorded targets of `shape` look one-hot over c classes: 0..1, mean 1/c and the spread of 0/1 values
    with one 1 per row (std sqrt(1/c - 1/c^2)), which soft labels (a teacher's probabilities) fall short of."""
    lo, hi, mean, std = (number(tgt.get(k)) for k in ("min", "max", "mean", "std"))
    if tgt.get("shape") != shape or None in (lo, hi, mean, std):
        return False
    return (abs(lo) < 1e-6 and abs(hi - 1) < 1e-6 and abs(mean - 1 / c) < 0.1 / c
            and abs(std - math.sqrt(1 / c - 1 / c ** 2)) < 0.05 * math.sqrt(1 / c))


def _cross_broadcast(a: list, b: list) -> list[int] | None:
    """The shape two recorded shapes broadcast to when it is larger than both (an (N, 1) prediction against (N,)
    targets makes N x N pairs), else None (equal shapes, one a plain expansion of the other, or not numbers)."""
    if not a or not b or a == b or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in a + b):
        return None
    n = max(len(a), len(b))
    pa, pb = [1] * (n - len(a)) + list(a), [1] * (n - len(b)) + list(b)
    if any(x != y and 1 not in (x, y) for x, y in zip(pa, pb, strict=True)):
        return None  # would not broadcast: the loss raised, nothing trained
    out = [max(x, y) for x, y in zip(pa, pb, strict=True)]
    return out if math.prod(out) > max(math.prod(a), math.prod(b)) else None


class Gradless:
    """Weight layers that never receive a gradient (a .detach() in forward, a branch the loss never uses, a
    forward under torch.no_grad(), zero_grad() between backward() and step()).

    From the layer records: a layer sampled `records` times with no gradient norm, while another layer has
    one (so the probes did see gradients), or while the optimizer stepped it: the probes read the gradient
    right before optimizer.step() and the update right after, so an update ratio without a gradient norm is
    a step taken on a layer whose .grad was None. Embeddings are left out (sparse gradients are not measured).
    """

    def __init__(self, records: int = 3):
        self.records = records
        self.seen: dict[str, list[int]] = {}  # layer -> [records, with a gradient, stepped without a gradient]

    def feed(self, ctx: Context) -> None:
        lay = ctx.layers
        if not len(lay) or "layer" not in lay.cols or not ({"g_norm", "update_ratio"} & set(lay.cols)):
            return
        kind = lay.raw("kind") if "kind" in lay else np.full(len(lay), "weight", dtype=object)
        nan = np.full(len(lay), np.nan)
        has = np.isfinite(lay.num("g_norm") if "g_norm" in lay.cols else nan)
        stepped = np.isfinite(lay.num("update_ratio") if "update_ratio" in lay.cols else nan) & ~has
        for name, k, h, s in zip(lay.raw("layer"), kind, has, stepped, strict=True):
            if k == "weight":
                c = self.seen.setdefault(str(name), [0, 0, 0])
                c[0], c[1], c[2] = c[0] + 1, c[1] + int(h), c[2] + int(s)

    @property
    def none_anywhere(self) -> bool:
        """No layer ever had a gradient while the optimizer stepped: nothing reaches the weights at all."""
        return bool(self.seen) and not any(h for _, h, _ in self.seen.values()) and any(
            s for _, _, s in self.seen.values())

    def layers(self, ctx: Context) -> dict[str, float]:
        """{layer: parameter count} of the layers that never got a gradient."""
        some = any(h for _, h, _ in self.seen.values())
        meta = {str(x.get("name")): x for x in meta_layers(ctx.meta)}
        out = {}
        for name, (n, h, s) in self.seen.items():
            info = meta.get(name, {})
            if (n >= self.records and h == 0 and (some or s >= self.records)
                    and "Embedding" not in str(info.get("type", ""))):
                out[name] = number(info.get("count")) or 0.0
        return out


_SQUASH = {"Sigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0), "Hardtanh": (-1.0, 1.0), "Hardsigmoid": (0.0, 1.0),
           "ReLU": (0.0, math.inf), "ReLU6": (0.0, 6.0), "Softplus": (0.0, math.inf)}


class OutputActivation(OnceRule):
    """A ReLU, sigmoid or tanh after the last layer, before cross_entropy: the logits are clipped or squashed."""

    id = "output_activation"
    title = "An activation clips or squashes the logits before the loss"
    fix = ("remove_output_activation",)
    needs = ("meta.first_batch",)

    def examine(self, batch, ctx: Context) -> list[Finding]:
        fb = meta_dict(ctx.meta, "first_batch")
        head = str(meta_dict(meta_dict(ctx.meta, "model"), "head").get("type") or "")
        if fb.get("loss_fn") != "cross_entropy" or head not in _SQUASH:
            return []  # a sigmoid before binary_cross_entropy or a tanh before mse_loss is by design
        lo, hi = _SQUASH[head]
        seen = fb.get("loss_input") if isinstance(fb.get("loss_input"), dict) else {}
        vmin, vmax = number(seen.get("min")), number(seen.get("max"))
        if (vmin is not None and vmin < lo - 1e-6) or (vmax is not None and vmax > hi + 1e-6):
            return []  # what reached the loss is not the activation's output (the head only reports)
        self.done = True
        c = ctx.num_classes
        evidence = {"head": head, "loss_fn": "cross_entropy", "range": [lo, hi], "loss_input_min": vmin,
                    "loss_input_max": vmax}
        msg = f"the model's last module is {head}, so the logits reaching cross_entropy lie in [{fmt(lo)}, {fmt(hi)}]"
        if math.isfinite(hi) and c is not None:
            floor = math.log1p((c - 1) * math.exp(-(hi - lo)))  # one logit at hi, the rest at lo
            evidence["loss_floor"] = floor
            msg += f": the loss cannot go below {fmt(floor)} for {c} classes"
        elif lo == 0:
            msg += ": a class whose logit is clipped at 0 gets no gradient and can stay dead"
        return [self.finding(ctx, "warning", since_start(ctx), msg, evidence)]


_NO_GRAD_ANYWHERE = ("optimizer.step() ran while no layer held a gradient: the forward ran under torch.no_grad() "
                     "or was detached (loss.requires_grad_() hides that), or zero_grad() runs between backward() "
                     "and step()")


class FrozenParameters(Rule):
    id = "frozen_parameters"
    title = "Most of the model does not train"
    fix = ("check_requires_grad", "check_optimizer_params")
    needs = ("meta.model", "steps>=bug_min_steps")

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.severity: str | None = None
        self.fired: Finding | None = None
        self.progress = Progress(thresholds)
        self.gradless = Gradless()

    def update(self, batch, ctx: Context) -> list[Finding]:
        self.progress.feed(ctx)
        self.gradless.feed(ctx)
        if self.severity == "warning":
            found = resolve_later(self, ctx, self.fired, self.progress)
            self.severity = "resolved" if found else self.severity
            return found
        if self.severity == "resolved":
            return []
        model, opt = meta_dict(ctx.meta, "model"), meta_dict(ctx.meta, "optimizer")
        total, frozen = number(model.get("parameters")), number(model.get("frozen"))
        if frozen is None and number(model.get("trainable")) is not None and total is not None:
            frozen = total - number(model.get("trainable"))
        missing = number(opt.get("trainable_not_in_optimizer")) or 0.0
        if not total or frozen is None:
            return []
        no_grad = self.gradless.layers(ctx)
        idle = frozen + missing + sum(no_grad.values())
        if idle / total < self.th["frozen_frac"]:
            return []
        learning = self.progress.learning(ctx)
        if learning is None:
            return []
        # intended freezing (a linear probe, fine-tuning the head) learns; say nothing unless trainable
        # parameters sit outside the optimizer, which is a bug as often as a choice: an info note then
        severity = "warning" if not learning else ("info" if missing / total >= self.th["frozen_frac"] else None)
        if severity is None or severity == self.severity:
            return []
        self.severity = severity
        layers = [str(x.get("name")) for x in meta_layers(ctx.meta) if number(x.get("trainable")) == 0
                  and (number(x.get("frozen")) or 0) > 0]
        outside = opt.get("layers_not_in_optimizer")
        outside = [str(x) for x in outside][:8] if isinstance(outside, list) else []
        msg = (f"{fmt(100 * idle / total)}% of the model's {int(total):,} parameters do not train "
               f"({int(frozen):,} with requires_grad off, {int(missing):,} trainable but in no optimizer group"
               + (f", {int(sum(no_grad.values())):,} in layers that never get a gradient: "
                  f"{', '.join(list(no_grad)[:6])} -- " + (_NO_GRAD_ANYWHERE if self.gradless.none_anywhere else
                                                           "a .detach() in forward, or a branch the loss does not use")
                  if no_grad else "") + ")")
        msg += f"; {self.progress.note(ctx)}" + (": the loss is not where it should be" if not learning else
                                                 ": it learns, so this may be intended (a linear probe); then set "
                                                 "requires_grad=False on them to skip their backward")
        if layers:
            msg += f"; frozen layers: {', '.join(layers[:6])}" + (" ..." if len(layers) > 6 else "")
        if outside:
            msg += f"; not in the optimizer: {', '.join(outside)}"
        evidence = {"parameters": total, "frozen": frozen, "not_in_optimizer": missing, "idle_frac": idle / total,
                    "no_gradient": sum(no_grad.values()), "layers_without_gradient": list(no_grad),
                    "frozen_layers": layers, "layers_not_in_optimizer": outside, "initial_loss": ctx.initial_loss,
                    "loss_now": self.progress.recent, "train_accuracy": self.progress.accuracy}
        fix = list(self.fix) if frozen + sum(no_grad.values()) >= missing else [self.fix[1], self.fix[0]]
        self.fired = self.finding(ctx, severity, since_start(ctx), msg, evidence, fix)
        return [self.fired]


_ACCUM_KEY = re.compile(r"accum", re.IGNORECASE)


def declared_accumulation(ctx: Context) -> int | None:
    """Gradient accumulation declared in the config (grad_accum, accumulate_grad_batches, ...), if any."""
    for key, value in meta_dict(ctx.meta, "config").items():
        v = number(value)
        if _ACCUM_KEY.search(str(key)) and v is not None and v >= 2:
            return int(v)
    return None


class GradientSums:
    """Whether gradients add up across loop steps without optimizer.step(), from the layer records.

    With gradient accumulation `.grad` keeps growing from a skipped step to the next one (j micro-batches, then
    j+1). When zero_grad() runs every iteration and step() only on some, each step's gradient is one batch's:
    the norm does not grow. The probes sample every one of the first steps, so such pairs are there.
    """

    def __init__(self, limit: int = 60):
        self.limit = limit
        self.by_step: dict[int, tuple[float, bool]] = {}  # sampled step -> (total gradient norm, stepped?)

    def feed(self, ctx: Context) -> None:
        lay = ctx.layers
        if not len(lay) or len(self.by_step) >= self.limit or not {"g_norm", "step"} <= set(lay.cols):
            return
        steps, g = lay.ints("step"), lay.num("g_norm")
        ur = lay.num("update_ratio") if "update_ratio" in lay else np.full(len(steps), np.nan)
        # Per sampled step, in one pass (a long run has thousands): the total norm over its finite layer
        # norms, and whether any layer moved. Only the first `limit` steps are kept, whatever the chunking.
        uniq, inv = np.unique(steps, return_inverse=True)
        finite = np.isfinite(g)
        squares = np.bincount(inv, weights=np.where(finite, g, 0.0) ** 2, minlength=len(uniq))
        seen = np.bincount(inv, weights=finite, minlength=len(uniq)) > 0
        stepped = np.bincount(inv, weights=np.isfinite(ur), minlength=len(uniq)) > 0
        for k in np.flatnonzero(seen):
            if len(self.by_step) >= self.limit:
                break
            self.by_step[int(uniq[k])] = (float(np.sqrt(squares[k])), bool(stepped[k]))

    @property
    def ratio(self) -> float:
        """Median growth of the gradient norm over runs of consecutive sampled steps without optimizer.step()
        (from the first of them to the step after the last); NaN with one short run or none.

        Accumulated gradients grow ~sqrt(n)..n over n micro-batches (>= 1.4 for n = 2); independent batches ~1.
        """
        steps, growth, i = sorted(self.by_step), [], 0
        while i < len(steps):
            j = i
            while (not self.by_step[steps[j]][1] and j + 1 < len(steps) and steps[j + 1] == steps[j] + 1):
                j += 1
            if j > i and self.by_step[steps[i]][0] > 0:
                growth.append((self.by_step[steps[j]][0] / self.by_step[steps[i]][0], j - i))
            i = max(j, i + 1)
        enough = len(growth) >= 2 or (growth and growth[0][1] >= 3)  # two runs, or one of 3+ steps
        return float(np.median([g for g, _ in growth])) if enough else math.nan

    def accumulate(self, limit: float) -> bool | None:
        """True: the gradients add up; False: they are thrown away; None: no clear evidence."""
        r = self.ratio
        if not math.isfinite(r):
            return None
        return True if r >= limit else (False if r < 1 + (limit - 1) / 2 else None)


class MissingZeroGrad(OnceRule):
    """optimizer.zero_grad() never called: every backward adds this batch's gradient to all the earlier ones.

    The probes sample every one of the first steps. With zero_grad each step's gradient is one batch's, about
    the same size from step to step at init; without it `.grad` after step k is the sum of k batch gradients,
    which at init point the same way: its norm grows at every step, about linearly (k x the first). Judged on
    the first `zero_grad_steps` consecutive steps, each with an optimizer step (gradient accumulation steps only
    every few micro-batches and its sums restart): the norm rises at every one, ends `zero_grad_growth` x above
    the first, and never grows faster than 2k x (faster is an explosion: the steps are too large, not summed).
    Parameters no optimizer holds are frozen_parameters' to report (nobody zeroes them either).
    """

    id = "missing_zero_grad"
    title = "Gradients are never zeroed: they add up across steps"
    fix = ("call_zero_grad",)
    needs = ("layers>=zero_grad_steps",)

    sums: GradientSums | None = None

    def examine(self, batch, ctx: Context) -> list[Finding]:
        self.sums = self.sums or GradientSums()
        self.sums.feed(ctx)
        k = min(max(int(self.th["zero_grad_steps"]), 2), self.sums.limit)  # a rise needs two steps; sums keep 60
        first = min(self.sums.by_step) if self.sums.by_step else None
        if first is None or any(first + i not in self.sums.by_step for i in range(k)):
            return []
        self.done = True  # judged once, on the first k steps
        norms = np.array([self.sums.by_step[first + i][0] for i in range(k)])
        stepped = all(self.sums.by_step[first + i][1] for i in range(k - 1))
        if number(meta_dict(ctx.meta, "optimizer").get("trainable_not_in_optimizer")):
            return []
        growth = norms / norms[0] if norms[0] > 0 else np.full(k, np.nan)
        n = np.arange(1, k + 1)
        if not (stepped and np.isfinite(growth).all() and (np.diff(norms) > 0).all()
                and growth[-1] >= self.th["zero_grad_growth"] and (growth <= 2 * n).all()):
            return []
        msg = (f"the gradient norm grew at every one of the first {k} steps, from {fmt(norms[0])} to "
               f"{fmt(norms[-1])} ({fmt(growth[-1], 2)}x), about k x the first at step k, with an optimizer step "
               "each time: each backward adds to the gradients of all the steps before")
        evidence = {"steps": [int(first + i) for i in range(k)], "grad_norms": norms.tolist(),
                    "growth": float(growth[-1])}
        return [self.finding(ctx, "warning", since_start(ctx), msg, evidence)]


ACTIVATION_KINDS = ("relu", "tanh", "sigmoid")


class EvalModeTraining(Rule):
    """model.eval() left on while the model trains (called for a validation pass and never undone): dropout is
    off and BatchNorm normalizes with running statistics it no longer updates.

    From the start: the hooks record the first batch (meta `first_batch`) from the first forward pass they see
    in training mode (module.training, gradients on) and write it within the first steps. A run recorded by
    hooks that do this (meta `optimizer.params_in_optimizer` comes with them) whose model has Dropout or
    BatchNorm layers, that took `eval_mode_steps` steps with an optimizer, and has no first batch, never ran a
    training-mode forward.

    Mid-run (model.eval() for a validation pass after the first epoch, no model.train() after it): the probes
    measure activations (relu/tanh/sigmoid) only in training-mode forwards. Once they have, sampled steps that
    keep getting gradients with no activation measured at all, for `eval_mode_records` records in a row
    spanning `eval_mode_steps` steps up to the latest, trained in eval mode.
    """

    id = "eval_mode_training"
    title = "The model trains in eval mode"
    fix = ("call_model_train",)
    needs = ("meta.model", "steps>=eval_mode_steps")

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.saw_gradients = False  # the probes saw this model's backward: it is the model being trained
        self.start_done = False  # the from-the-start check was judged
        self.saw_activations = False
        self.last_active: int | None = None  # the last sampled step with an activation measured
        self.quiet: list[int] = []  # sampled steps with gradients and no activation since then
        self.fired = False

    def _modal(self, ctx: Context) -> list[str]:
        return sorted({str(x.get("type")) for x in meta_layers(ctx.meta)
                       if str(x.get("type", "")).startswith(("Dropout", "BatchNorm", "AlphaDropout"))})

    def update(self, batch, ctx: Context) -> list[Finding]:
        if self.fired:
            return []
        lay = ctx.layers
        if len(lay) and "g_norm" in lay:
            g = lay.num("g_norm")
            if np.isfinite(g).any():
                self.saw_gradients = True
            steps = lay.ints("step")
            kind = lay.raw("kind") if "kind" in lay else np.full(len(lay), "weight", dtype=object)
            active = np.isin(kind.astype(str), ACTIVATION_KINDS)
            # per sampled step, in one pass (a long run has thousands): any activation measured, any gradient
            uniq, inv = np.unique(steps, return_inverse=True)
            any_active = np.bincount(inv, weights=active, minlength=len(uniq)) > 0
            any_grad = np.bincount(inv, weights=np.isfinite(g), minlength=len(uniq)) > 0
            for k in range(len(uniq)):
                if any_active[k]:
                    self.saw_activations, self.last_active, self.quiet = True, int(uniq[k]), []
                elif self.saw_activations and any_grad[k]:
                    self.quiet.append(int(uniq[k]))
        found = [] if self.start_done else self._from_start(ctx)
        return found or self._mid_run(ctx)

    def _from_start(self, ctx: Context) -> list[Finding]:
        if ctx.last_step - (ctx.first_step or 0) < self.th["eval_mode_steps"]:
            return []
        self.start_done = True  # judged once, when the first batch would long have been written
        if not self.saw_gradients:
            return []  # the watched model may not be the one trained (a copy, a rebuilt model): nothing to say
        opt = meta_dict(ctx.meta, "optimizer")
        modal = self._modal(ctx)
        if meta_dict(ctx.meta, "first_batch") or "params_in_optimizer" not in opt or not modal:
            return []
        self.fired = True
        msg = (f"{ctx.last_step} steps trained and the hooks never saw a forward pass in training mode, in a model "
               f"with {', '.join(modal)}: model.eval() is on while it trains (dropout off, BatchNorm frozen at its "
               "running statistics)")
        return [self.finding(ctx, "warning", since_start(ctx), msg, {"layers": modal, "steps": ctx.last_step})]

    def _mid_run(self, ctx: Context) -> list[Finding]:
        q = self.quiet
        if (not q or len(q) < self.th["eval_mode_records"] or q[-1] - q[0] < self.th["eval_mode_steps"]
                or self.last_active is None):
            return []
        modal = self._modal(ctx)
        if not modal or "params_in_optimizer" not in meta_dict(ctx.meta, "optimizer"):
            return []
        self.fired = True
        msg = (f"from step {q[0]} on ({len(q)} sampled steps up to step {q[-1]}) the model gets gradients but the "
               f"hooks saw no forward pass in training mode (the last at step {self.last_active}), in a model with "
               f"{', '.join(modal)}: model.eval() from a validation pass was never undone (dropout off, BatchNorm "
               "frozen at its running statistics)")
        evidence = {"layers": modal, "last_training_forward": self.last_active, "first_eval_step": q[0],
                    "records": len(q)}
        return [self.finding(ctx, "warning", q[0], msg, evidence)]


class SkippedOptimizerSteps(Rule):
    id = "skipped_optimizer_steps"
    title = "optimizer.step() ran on far fewer steps than the loop"
    fix = ("step_every_iteration", "declare_accumulation")
    needs = ("optimizer_steps", "steps>=skipped_min_steps")

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.severity: str | None = None
        self.progress = Progress(thresholds)
        self.counts: tuple[int, int] | None = None  # (loop steps, optimizer steps) at the latest record
        self.fired: Finding | None = None
        self.sums = GradientSums()

    def _observe(self, batch, ctx: Context) -> None:
        """The latest (loop steps, optimizer steps): from step records if the reader keeps the column, else status."""
        frame = getattr(batch, "steps", None)
        if frame is not None and "optimizer_steps" in getattr(frame, "columns", ()) and len(frame):
            ops = np.asarray(frame["optimizer_steps"].to_numpy(), dtype=float)
            ok = np.isfinite(ops)
            if ok.any():
                i = int(np.flatnonzero(ok)[-1])
                self.counts = (int(frame["step"].to_numpy()[i]), int(ops[i]))
        st = ctx.status if isinstance(ctx.status, dict) else {}
        step, ops = number(st.get("step")), number(st.get("optimizer_steps"))
        if step is not None and ops is not None and (self.counts is None or step >= self.counts[0]):
            self.counts = (int(step), int(ops))

    def update(self, batch, ctx: Context) -> list[Finding]:
        self.progress.feed(ctx)
        self._observe(batch, ctx)
        self.sums.feed(ctx)
        if self.severity == "warning" and self.fired is not None and self.fired.evidence.get("regular_every"):
            found = resolve_later(self, ctx, self.fired, self.progress)  # accumulation after all: it learns
            self.severity = "resolved" if found else self.severity
            return found
        if self.severity in ("warning", "resolved") or self.counts is None:
            return []
        steps, ops = self.counts
        if steps < self.th["skipped_min_steps"]:
            return []
        ratio = ops / steps
        k = declared_accumulation(ctx)
        expected = 1.0 / k if k else 1.0
        if ratio >= self.th["skipped_ratio"] * expected:
            return []
        every = steps / ops if ops else math.inf
        regular = ops > 0 and abs(every - round(every)) <= 0.05 * every and k is None
        accumulates = self.sums.accumulate(self.th["skipped_accum_growth"]) if ops and k is None else None
        learning = self.progress.learning(ctx)
        # Fewer optimizer steps than loop steps is what gradient accumulation looks like when run.step() is
        # called per micro-batch (every k-th, or a variable number). It is accumulation when the gradients add
        # up between steps, or the loss was divided by a regular k; a bug when they do not add up (zero_grad every
        # iteration throws the skipped ones away) or the optimizer never steps. Without that evidence: a
        # warning when the run does not learn or skips more than half its steps irregularly, else an info note.
        if accumulates or (regular and accumulates is None and self._loss_scaled(ctx, round(every))):
            return []
        if ops == 0 or accumulates is False or (not regular and ratio < 0.5 * expected):
            severity = "warning"
        elif learning is None:
            return []
        else:
            severity = "info" if learning else "warning"
        if severity == self.severity:
            return []
        self.severity = severity
        msg = (f"optimizer.step() ran {ops:,} times in {steps:,} loop steps ({fmt(100 * ratio)}%)"
               + (f", expected ~1 in {k} with the declared gradient accumulation" if k else "")
               + (f"; a regular 1 in {round(every)}, like gradient accumulation" if regular else "")
               + (f"; the gradient norm grows only {fmt(self.sums.ratio)}x over the steps without a step "
                  "(accumulated gradients grow >= 1.4x): zero_grad() throws the skipped steps' gradients away"
                  if accumulates is False else "")
               + f"; {self.progress.note(ctx)}")
        evidence = {"loop_steps": steps, "optimizer_steps": ops, "ratio": ratio, "declared_accumulation": k,
                    "regular_every": round(every) if regular else None, "initial_loss": ctx.initial_loss,
                    "grad_growth_over_skipped": self.sums.ratio,
                    "loss_now": self.progress.recent}
        fix = list(self.fix) if severity == "warning" else [self.fix[1], self.fix[0]]
        self.fired = self.finding(ctx, severity, since_start(ctx), msg, evidence, fix)
        return [self.fired]

    @staticmethod
    def _loss_scaled(ctx: Context, k: int) -> bool:
        """The first loss is ln(C)/k: the loss was divided by the accumulation steps, so accumulation is real."""
        c = ctx.num_classes
        if c is None or ctx.initial_loss is None or k < 2:
            return False
        return abs(ctx.initial_loss * k / ctx.chance_loss(c) - 1) <= 0.25
