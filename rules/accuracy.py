"""Rules on end-of-epoch metrics: overfitting, underfitting, accuracy stuck at chance.

Epoch records are few (one per epoch), so these rules keep a short history of them and loop in Python.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from babysit.rules.base import Context, Finding, dropout_rate, fmt, meta_dict
from babysit.rules.loss import infer_num_classes
from babysit.rules.once import OnceRule

__all__ = ["Overfitting", "Underfitting", "ChanceAccuracy"]

_HISTORY = 64  # epochs of metrics kept (O(window) state)


def _epoch_rows(ctx: Context) -> list[dict]:
    """The new epoch records as dicts, built once per update and shared by the epoch rules."""
    ep = ctx.epochs
    if not len(ep):
        return []
    cached = getattr(ctx, "_epoch_rows", None)
    if cached is not None and cached[0] is ep:
        return cached[1]
    cols = {c: (ep.ints(c) if c in ("epoch", "step") else ep.num(c))
            for c in ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc") if c in ep}
    rows = []
    for i in range(len(ep)):
        row = {}
        for k, col in cols.items():
            v = col[i]
            row[k] = int(v) if k in ("epoch", "step") else (None if math.isnan(v) else float(v))
        rows.append(row)
    ctx._epoch_rows = (ep, rows)
    return rows


class _EpochRule(OnceRule):
    """Keeps the last epochs' metrics; accuracies given in percent are scaled to [0, 1]."""

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.history: deque[dict] = deque(maxlen=_HISTORY)
        self.percent = False

    def examine(self, batch, ctx: Context) -> list[Finding]:
        out: list[Finding] = []
        for row in _epoch_rows(ctx):
            for k in ("train_acc", "val_acc"):
                v = row.get(k)
                if v is not None and v > 1.0 + 1e-9:
                    self.percent = True
            self.history.append(row)
            if self.fired is None:
                out = self.check(ctx, row)
                if out:
                    self.fired = out[0]
                    self.done = not self.resolvable
            else:  # a condition that goes away later (a slow start) is downgraded to an info note
                resolved = self.resolve(ctx, row, self.fired)
                if resolved is not None:
                    self.done = True
                    return [resolved]
        return out

    fired: Finding | None = None
    resolvable = False

    def resolve(self, ctx: Context, row: dict, fired: Finding) -> Finding | None:
        return None

    def resolved(self, ctx: Context, fired: Finding, row: dict, what: str) -> Finding:
        epoch = int(row["epoch"])
        return self.finding(
            ctx, "info", fired.step, f"{fired.message}; later {what} by epoch {epoch} (resolved: a slow start)",
            {**fired.evidence, "resolved": True, "resolved_epoch": epoch}, ["none_needed"], epoch=fired.epoch,
        )

    def acc(self, row: dict, key: str) -> float | None:
        v = row.get(key)
        if v is None or not math.isfinite(v):
            return None
        return v / 100.0 if self.percent else v

    def check(self, ctx: Context, row: dict) -> list[Finding]:  # pragma: no cover - interface
        raise NotImplementedError


class Overfitting(_EpochRule):
    """A large train/val accuracy gap, or val loss rising well above its best while train loss keeps falling."""

    id = "overfitting"
    title = "Overfitting: train and val diverge"
    fix = ("regularize", "more_data", "early_stopping", "smaller_model")
    needs = ("val_metrics", "epochs>=overfit_patience")

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.gap_streak = 0
        self.rise_streak = 0
        self.best: dict | None = None  # the epoch with the lowest val loss

    def check(self, ctx: Context, row: dict) -> list[Finding]:
        patience = max(int(self.th["overfit_patience"]), 1)
        tr, va = self.acc(row, "train_acc"), self.acc(row, "val_acc")
        gap = tr - va if tr is not None and va is not None else None
        if gap is not None:  # an epoch without validation (every N epochs) neither extends nor breaks the streak
            self.gap_streak = self.gap_streak + 1 if gap > self.th["overfit_gap"] else 0
        epoch, step = int(row["epoch"]), int(row["step"])
        if gap is not None and self.gap_streak >= patience:
            msg = (f"train accuracy {fmt(tr)} vs val accuracy {fmt(va)} at epoch {epoch}: a gap of "
                   f"{fmt(100 * gap, 3)} points for {self.gap_streak} epochs "
                   f"(limit {fmt(100 * self.th['overfit_gap'])})")
            evidence = {"epoch": epoch, "step": step, "train_acc": tr, "val_acc": va, "gap": gap,
                        "epochs": self.gap_streak}
            return [self.finding(ctx, "warning", step, msg, evidence, epoch=epoch)]
        vl, tl = row.get("val_loss"), row.get("train_loss")
        if vl is None or not math.isfinite(vl):
            return []
        if self.best is None or vl < self.best["val_loss"]:
            self.best = dict(row)
            self.rise_streak = 0
            return []
        best_vl, best_tl = self.best["val_loss"], self.best.get("train_loss")
        rising = vl > best_vl * (1 + self.th["overfit_val_rise"]) and best_vl > 0
        falling = tl is not None and best_tl is not None and tl < best_tl
        small_gap = gap is not None and gap < self.th["overfit_gap"] / 3
        self.rise_streak = self.rise_streak + 1 if rising and falling and not small_gap else 0
        if self.rise_streak >= patience:
            msg = (f"val loss {fmt(vl)} at epoch {epoch} is {fmt(100 * (vl / best_vl - 1), 3)}% above its best "
                   f"{fmt(best_vl)} (epoch {self.best['epoch']}) while train loss fell {fmt(best_tl)} -> {fmt(tl)}")
            evidence = {"epoch": epoch, "step": step, "val_loss": vl, "best_val_loss": best_vl,
                        "best_epoch": self.best["epoch"], "train_loss": tl, "best_train_loss": best_tl,
                        "train_acc": tr, "val_acc": va}
            fix = [self.fix[2], self.fix[0], self.fix[1], self.fix[3]]
            return [self.finding(ctx, "warning", step, msg, evidence, fix, epoch=epoch)]
        return []


class Underfitting(_EpochRule):
    """No train/val gap (or val above train), and train accuracy has plateaued far from perfect (scaled from
    chance)."""

    id = "underfitting"
    title = "Underfitting: low accuracy, no gap"
    fix = ("more_capacity", "lower_reg", "train_longer")
    needs = ("train_acc", "epochs>=underfit_min_epochs")

    def check(self, ctx: Context, row: dict) -> list[Finding]:
        epoch, step = int(row["epoch"]), int(row["step"])
        if epoch < int(self.th["underfit_min_epochs"]) or len(self.history) < 3:
            return []
        c, _ = infer_num_classes(ctx)
        chance = 1.0 / c if c else 0.0
        tr, va = self.acc(row, "train_acc"), self.acc(row, "val_acc")
        # the last 3 epochs that measured train accuracy (metrics may come every N epochs)
        trs = [t for t in (self.acc(r, "train_acc") for r in self.history) if t is not None][-3:]
        if tr is None or len(trs) < 3:
            return []
        if va is None:  # validation not measured this epoch: the latest that was
            va = next((v for v in (self.acc(r, "val_acc") for r in reversed(self.history)) if v is not None), None)
        gap = tr - va if va is not None else 0.0
        scaled = (tr - chance) / (1 - chance)
        gain = tr - min(trs[:-1])
        # Val accuracy well ABOVE train accuracy is no overfitting gap either: it is what regularization that acts
        # only in training (dropout, augmentation) does, the train batches being harder than the clean val set.
        # Counted as no gap; as evidence of too much of it (a warning) only while train accuracy stays below
        # underfit_warn_acc (scaled): mixup or strong augmentation keep a healthy train accuracy well under val's.
        reverse = gap <= -self.th["underfit_gap"]
        held_back = reverse and scaled < self.th["underfit_warn_acc"]
        no_gap = abs(gap) < self.th["underfit_gap"] or reverse
        if no_gap and scaled < self.th["underfit_acc"] and gain < self.th["underfit_plateau"]:
            msg = (f"train accuracy {fmt(tr)} and val accuracy {fmt(va)} at epoch {epoch}: "
                   f"{'no overfitting gap' if reverse else 'no gap'} "
                   f"({fmt(100 * gap, 2)} points) and train accuracy gained {fmt(100 * gain, 2)} points over the last "
                   f"2 epochs" + (f" (chance is {fmt(chance)})" if c else ""))
            evidence = {"epoch": epoch, "step": step, "train_acc": tr, "val_acc": va, "gap": gap,
                        "gain_last_epochs": gain, "chance": chance, "scaled_train_acc": scaled}
            fix = list(self.fix)
            config = meta_dict(ctx.meta, "config")
            # a declared penalty under any of the names the rules know (causes.declared_regularization's)
            regs = [config.get(k) for k in ("reg", "weight_decay", "l2", "l2_reg", "lambda_l2")]
            regs = [r for r in regs if isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r)]
            reg, dropout = (max(regs) if regs else None), dropout_rate(ctx.meta)
            heavy = (reg is not None and reg >= 0.01 or dropout is not None and dropout >= 0.5
                     or _optimizer_weight_decay(ctx.meta) >= self.th["underfit_heavy_wd"] or held_back)
            evidence["val_above_train"] = reverse
            if reverse:
                msg += (f"; val accuracy is {fmt(100 * -gap, 2)} points ABOVE train accuracy: regularization that "
                        "acts only in training (dropout, augmentation, noise) holds the train batches back")
            if heavy:
                note = (f"reg {fmt(reg) if reg is not None else '-'}, "
                        f"dropout {fmt(dropout) if dropout is not None else '-'}")
                fix[0], fix[1] = (fix[1], note), fix[0]
            # Without a cause in sight, a plateau with no gap may be the data's own ceiling (label noise):
            # say so as a note, not a warning; the cause rules (low_capacity, lr, dead units) warn on their own.
            # Train accuracy AT chance (chance_accuracy's margin) is not a capacity shortfall either: a model too
            # small still learns what it can and plateaus above chance; at chance it learned nothing from its own
            # training batches (labels not matching the inputs, an lr or dead units): a note, and the rules of
            # those causes (chance_accuracy, bad_labels, flat_loss, dead_units) speak for it.
            at_chance = bool(c) and tr <= chance + min(self.th["chance_margin"], 0.5 / c)
            severity = "warning" if heavy or (scaled < self.th["underfit_warn_acc"] and not at_chance) else "info"
            if severity == "info" and at_chance:
                msg += ("; train accuracy is at chance: the net learns nothing from its own batches, which more "
                        "capacity does not fix (check the labels against the inputs, the lr, dead units)")
            elif severity == "info" and reverse:
                msg += "; fine for strong augmentation or mixup, whose train batches are meant to be harder"
            elif severity == "info":
                msg += "; no regularization or other cause in sight: this may be the data's ceiling (noisy labels)"
            return [self.finding(ctx, severity, step, msg, evidence, fix, epoch=epoch)]
        return []


    resolvable = True

    def resolve(self, ctx: Context, row: dict, fired: Finding) -> Finding | None:
        tr = self.acc(row, "train_acc")
        before = fired.evidence.get("train_acc")
        if tr is not None and before is not None and tr > before + 2 * self.th["underfit_plateau"] + 0.06:
            return self.resolved(ctx, fired, row, f"train accuracy rose to {fmt(tr)}")
        return None


class ChanceAccuracy(_EpochRule):
    """Accuracy at 1/C after training has progressed: the net learned nothing that carries to new data."""

    id = "chance_accuracy"
    title = "Accuracy stuck at chance"
    fix = ("check_labels", "check_pipeline", "check_val_preprocessing")
    needs = ("accuracy", "num_classes", "epochs>=chance_min_epochs")

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.streak = 0

    def check(self, ctx: Context, row: dict) -> list[Finding]:
        c, _ = infer_num_classes(ctx)
        if c is None:
            return []
        va, tr = self.acc(row, "val_acc"), self.acc(row, "train_acc")
        self.has_val = getattr(self, "has_val", False) or va is not None
        acc, which = (va, "val") if va is not None else (tr, "train")
        if acc is None or (which == "train" and self.has_val):
            return []  # validation every N epochs: judge the epochs that have it
        chance = 1.0 / c
        limit = chance + min(self.th["chance_margin"], 0.5 / c)
        self.streak = self.streak + 1 if acc <= limit else 0
        epoch, step = int(row["epoch"]), int(row["step"])
        if self.streak >= 2 and epoch >= int(self.th["chance_min_epochs"]):
            msg = (f"{which} accuracy {fmt(acc)} at epoch {epoch} (step {step}) is at chance 1/{c} = {fmt(chance)} "
                   f"for {self.streak} epochs")
            fix = list(self.fix)
            if which == "val" and tr is not None and tr > limit + 0.2:
                msg += f", while train accuracy is {fmt(tr)}: the net memorizes but learns nothing general"
                fix = [fix[0], fix[2], fix[1]]
            evidence = {"epoch": epoch, "step": step, "accuracy": acc, "which": which, "chance": chance,
                        "num_classes": c, "train_acc": tr, "epochs": self.streak}
            return [self.finding(ctx, "warning", step, msg, evidence, fix, epoch=epoch)]
        return []

    resolvable = True

    def resolve(self, ctx: Context, row: dict, fired: Finding) -> Finding | None:
        acc = self.acc(row, "val_acc" if fired.evidence.get("which") == "val" else "train_acc")
        c = fired.evidence.get("num_classes") or 2
        if acc is not None and acc > 1.0 / c + min(self.th["chance_margin"], 0.5 / c) + 0.1:
            return self.resolved(ctx, fired, row, f"{fired.evidence.get('which')} accuracy rose to {fmt(acc)}")
        return None


def _optimizer_weight_decay(meta: Any) -> float:
    """The largest weight_decay among the recorded optimizer's param groups (0 when unknown)."""
    groups = meta_dict(meta, "optimizer").get("param_groups")
    values = [g.get("weight_decay") for g in groups if isinstance(g, dict)] if isinstance(groups, list) else []
    values = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return max(values, default=0.0)
