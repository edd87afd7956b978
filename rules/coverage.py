"""Honest coverage: which rules could not judge a run, and why ("layer rules: 1 sampled step in 176").

Each rule declares `needs` (rules/base.py); the engine counts what it has seen (`Seen`), and `not_evaluated`
turns unmet needs into `{"rule", "why"}` entries, so "no problems found" says how much was looked at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from babysit.rules.base import Context, Rule, meta_layers

__all__ = ["Seen", "not_evaluated"]

_ACC = ("train_acc", "val_acc")
_VAL = ("val_loss", "val_acc")


@dataclass
class Seen:
    """What the records so far contain: counts only, O(1) state."""

    losses: int = 0  # finite step losses
    epochs: int = 0
    layer_steps: int = 0  # distinct sampled steps with layer records
    last_layer_step: int = -1
    metrics: set = field(default_factory=set)  # epoch metrics with at least one finite value
    snapshots: int = 0  # first-layer weight snapshots

    def observe(self, ctx: Context) -> None:
        self.losses += int(np.isfinite(ctx.new_loss).sum())
        self.snapshots += len(ctx.snapshots)
        ep = ctx.epochs
        self.epochs += len(ep)
        for name in (*_ACC, "train_loss", *_VAL):
            if name in ep and np.isfinite(ep.num(name)).any():
                self.metrics.add(name)
        lay = ctx.layers
        if len(lay) and "step" in lay:
            steps = np.unique(lay.ints("step"))
            steps = steps[steps > self.last_layer_step]
            self.layer_steps += len(steps)
            if len(steps):
                self.last_layer_step = int(steps[-1])


def _amount(expr: str, thresholds: dict) -> float:
    """'flat_window', '3', '2*noisy_window+noisy_min_steps' -> a number (threshold names or integers)."""
    total = 0.0
    for term in expr.split("+"):
        k, _, name = term.strip().rpartition("*")
        value = float(thresholds[name]) if name in thresholds else float(name)
        total += (float(k) if k else 1.0) * value
    return total


def _why(need: str, seen: Seen, ctx: Context) -> str | None:
    """Why a need is unmet, or None when it is met."""
    from babysit.rules.loss import infer_num_classes  # loss.py imports base only; import here keeps layers flat

    name, op, amount = need.partition(">=")
    value = _amount(amount, ctx.thresholds) if op else 0.0
    if not math.isfinite(value):
        return None  # an override made the need unmeetable: the rule itself says nothing, nor does this
    n = math.ceil(value)
    if name == "loss":
        return None if seen.losses else "no step losses recorded"
    if name == "steps":
        return None if seen.losses >= n else f"{seen.losses} steps with a loss, needs {n}"
    if name == "epochs":
        return None if seen.epochs >= n else f"{seen.epochs} epochs recorded, needs {n}"
    if name == "layers":
        if seen.layer_steps >= n:
            return None
        return f"layer rules: {seen.layer_steps} sampled step(s) in {max(ctx.last_step, 0)}, needs {n}"
    if name == "num_classes":
        return None if infer_num_classes(ctx)[0] else "num_classes unknown (pass num_classes= to Run)"
    if name == "accuracy":
        return None if seen.metrics & set(_ACC) else "no accuracy metrics (train_acc/val_acc)"
    if name == "train_acc":
        return None if "train_acc" in seen.metrics else "no train accuracy (train_acc)"
    if name == "val_metrics":
        return None if seen.metrics & set(_VAL) else "no validation metrics (val_loss/val_acc)"
    if name == "meta.model":
        return None if meta_layers(ctx.meta) else "no model summary (run.watch(model) was not called)"
    if name == "meta.first_batch":  # the bug and data checks (rules/bugs.py, rules/data.py)
        fb = ctx.meta.get("first_batch") if isinstance(ctx.meta, dict) else None
        return None if isinstance(fb, dict) and fb else "no first-batch statistics (recorded by run.watch())"
    if name == "optimizer_steps":
        st = ctx.status if isinstance(ctx.status, dict) else {}
        return None if st.get("optimizer_steps") is not None else "no optimizer.step() count (run.watch(model, " \
            "optimizer) records it)"
    if name == "snapshots":
        return None if seen.snapshots else "no first-layer weight snapshots"
    if name in ("process", "test_ledger"):  # what only the hooks record: an imported log (CSV, TensorBoard) has neither
        if not (isinstance(ctx.meta, dict) and ctx.meta.get("source")):
            return None
        return ("no process status (only a babysit run records one)" if name == "process"
                else "no test-evaluation ledger (only a babysit run records one)")
    return None  # an unknown need never hides a rule


def not_evaluated(rules: list[Rule], seen: Seen, ctx: Context) -> list[dict]:
    """[{"rule", "why"}] for the rules that have not reported and lack something they need."""
    out = []
    for rule in rules:
        if rule.id in ctx.findings:
            continue
        for need in getattr(rule, "needs", ()) or ():
            try:
                why = _why(str(need), seen, ctx)
            except (KeyError, ValueError, ArithmeticError):
                why = None
            if why:
                out.append({"rule": rule.id, "why": why})
                break
    return out
