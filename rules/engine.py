"""The engine: feed every rule the same new records, keep one current finding per rule, link causes.

`diagnose(run)` is a fresh `OnlineDiagnoser` fed the whole run once, so the three callers (post-hoc, the
hooks inside training, the watcher) get the same findings from the same data.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from babysit.rules.base import Context, Finding, Rule, Table, severity_rank
from babysit.rules.catalogue import CAUSES, RULES
from babysit.rules.layers import observe_layers
from babysit.rules.thresholds import resolve

__all__ = ["OnlineDiagnoser", "diagnose", "RuleWarning", "sort_findings"]


class RuleWarning(RuntimeWarning):
    """A rule raised: it is switched off for this run and the other rules go on."""


class OnlineDiagnoser:
    """Stateful diagnosis of one run, fed new records as they arrive.

    `update(batch, status)` costs O(new records) and returns the findings that are new since the last call
    (a rule is reported once, and again when its severity rises or a cause is found for it). `findings`
    holds every current finding, causes first.
    """

    def __init__(
        self,
        meta: dict | None = None,
        thresholds: dict | None = None,
        *,
        run_dir: str | Path | None = None,
        rules: list[type[Rule]] | None = None,
    ):
        self.thresholds = resolve(thresholds)
        meta = meta if meta is not None else {}  # by reference: hooks.Run adds the model summary at watch()
        self.ctx = Context(meta=meta, thresholds=self.thresholds)
        meta_path = meta.get("path") if isinstance(meta, dict) else None
        self.ctx.run_dir = Path(run_dir) if run_dir is not None else (
            Path(meta_path) if isinstance(meta_path, str) and meta_path else None)
        self.rules = [cls(self.thresholds) for cls in (RULES if rules is None else rules)]
        self._reported: dict[str, tuple[int, tuple]] = {}
        self._init_losses: list[float] = []

    # ------------------------------------------------------------------ context
    def _advance(self, batch: Any, status: dict | None) -> None:
        ctx = self.ctx
        if status is not None:
            ctx.status = dict(status)
        path = getattr(batch, "path", None)
        if ctx.run_dir is None and path is not None and str(path) not in ("", "."):
            ctx.run_dir = Path(path)
        if isinstance(getattr(batch, "meta", None), dict) and batch.meta:
            ctx.meta = {**batch.meta, **{k: v for k, v in ctx.meta.items() if v is not None}}
        steps = Table(batch.steps)
        ctx.new_step = steps.ints("step") if "step" in steps else np.array([], dtype=np.int64)
        ctx.new_loss, ctx.new_lr, ctx.new_time = steps.num("loss"), steps.num("lr"), steps.num("time")
        ctx.epochs, ctx.layers, ctx.snapshots = Table(batch.epochs), Table(batch.layers), Table(batch.snapshots)
        ctx.events = list(getattr(batch, "events", None) or [])
        ctx.prev_lr = ctx.last_lr
        if len(ctx.new_step):
            if ctx.nonfinite_step is None:
                bad = np.flatnonzero(~np.isfinite(ctx.new_loss))
                if len(bad):
                    ctx.nonfinite_step = int(ctx.new_step[bad[0]])
            if ctx.first_step is None:
                ctx.first_step = int(ctx.new_step[0])
            ctx.last_step = max(ctx.last_step, int(ctx.new_step[-1]))
            lr = ctx.new_lr[np.isfinite(ctx.new_lr)]
            if len(lr):
                ctx.max_lr = float(np.nanmax([ctx.max_lr, lr.max()]))
                ctx.last_lr = float(lr[-1])
            self._initial_loss()
        if len(ctx.epochs):
            ends = ctx.epochs.ints("step")
            ctx.epoch_ends.extend(int(s) for s in ends)
            ctx.last_step = max(ctx.last_step, int(ends.max()))
        observe_layers(batch, ctx)
        for table in (ctx.layers, ctx.snapshots):
            if len(table):
                ctx.last_step = max(ctx.last_step, int(table.ints("step").max()))

    def _initial_loss(self) -> None:
        """The loss at init: min(first loss, median of the first `init_steps`) so a spike never inflates it."""
        ctx = self.ctx
        k = max(int(self.thresholds["init_steps"]), 1)
        if len(self._init_losses) >= k:
            return
        finite = np.isfinite(ctx.new_loss)
        if not finite.any():
            return
        vals, steps = ctx.new_loss[finite], ctx.new_step[finite]
        if ctx.initial_step is None:
            ctx.initial_step = int(steps[0])
        self._init_losses.extend(float(v) for v in vals[: k - len(self._init_losses)])
        first = self._init_losses[0]
        ctx.initial_loss = min(first, float(np.median(self._init_losses)))
        ctx.initial_final = len(self._init_losses) >= k

    # ------------------------------------------------------------------ update
    def update(self, batch: Any, status: dict | None = None, now: float | None = None) -> list[Finding]:
        """Feed the records new since the last call; return findings new (or escalated) since then."""
        ctx = self.ctx
        ctx.now = time.time() if now is None else now
        self._advance(batch, status)
        for rule in list(self.rules):
            try:
                found = rule.update(batch, ctx)
            except Exception as exc:  # noqa: BLE001 - one broken rule must not silence the others
                warnings.warn(f"babysit rule {rule.id} switched off: {type(exc).__name__}: {exc}", RuleWarning,
                              stacklevel=2)
                self.rules.remove(rule)
                continue
            for f in found:
                old = ctx.findings.get(f.rule)
                if old is None or severity_rank(f.severity) > severity_rank(old.severity) or f.evidence.get("resolved"):
                    ctx.findings[f.rule] = f
        _link_causes(ctx.findings)
        new = []
        for rule_id, f in ctx.findings.items():
            key = (severity_rank(f.severity), tuple(f.evidence.get("caused_by", ())), bool(f.evidence.get("resolved")))
            if self._reported.get(rule_id) != key:
                self._reported[rule_id] = key
                new.append(f)
        return sort_findings(new)

    @property
    def findings(self) -> list[Finding]:
        return sort_findings(list(self.ctx.findings.values()))


def _link_causes(findings: dict[str, Finding]) -> None:
    """Where a cause explains a symptom, say so in the symptom and lead its fixes with the cause's.

    A run whose ReLUs died has a flat loss too; telling the user to raise the learning rate would be wrong.
    Chains resolve to the root: underfitting <- chance_accuracy <- dead_units names dead_units.
    """
    live = {k: f for k, f in findings.items() if not f.evidence.get("resolved")}

    def causes_of(rule: str, seen: frozenset = frozenset()) -> list[str]:
        found = [c for c in CAUSES.get(rule, ()) if c in live and c not in seen and c != rule
                 and _explains(live[c], live[rule])]
        return found

    def root_of(rule: str) -> str:
        seen = {rule}
        while True:
            up = [c for c in causes_of(rule) if c not in seen]
            if not up:
                return rule
            rule = up[0]
            seen.add(rule)

    for symptom, f in live.items():
        found = causes_of(symptom)
        if not found:
            continue
        roots = list(dict.fromkeys(root_of(c) for c in found))
        if f.evidence.get("caused_by") == found and f.evidence.get("root_cause") == roots[0]:
            continue
        if "own_fix" not in f.evidence:
            f.evidence["own_fix"] = list(f.fix)
            f.evidence["own_message"] = f.message
        lead = live[roots[0]]
        f.evidence["caused_by"] = found
        f.evidence["root_cause"] = lead.rule
        also = [c for c in found if c != lead.rule]
        f.message = (f"{f.evidence['own_message']} -- likely a consequence of {lead.rule} (step {lead.step}): "
                     f"fix that first" + (f" (also see {', '.join(also)})" if also else ""))
        fixes = [f"fix {lead.rule} first: {lead.fix[0]}" if lead.fix else f"fix {lead.rule} first"]
        fixes += lead.fix[1:3]
        seen = {_gist(x) for x in fixes}
        fixes += [x for x in f.evidence["own_fix"] if _gist(x) not in seen and not _contradicts(x, found)]
        f.fix = fixes[:6]


def _explains(cause: Finding, symptom: Finding) -> bool:
    """Whether a cause finding explains a symptom; a too-high update ratio does not explain a flat loss."""
    return not (cause.evidence.get("direction") == "high" and symptom.rule == "flat_loss")


def _gist(fix: str) -> str:
    """The first three words of a fix: 'lower the regularization (...)' twice is one fix."""
    return " ".join(fix.lower().replace(":", " ").split()[:3])


def _contradicts(fix: str, causes: list[str]) -> bool:
    """A symptom's own fix that the cause makes wrong (raise the lr when units died from a high lr)."""
    text = fix.lower()
    return "raise the learning rate" in text or "increase the learning rate" in text or "train longer" in text


_CAUSE_ORDER = {rule: i for i, rule in enumerate(["nonfinite_loss", "stalled_weights", "dead_units",
                                                  "saturated_activations", "vanishing_gradients",
                                                  "exploding_gradients", "loss_explosion", "update_ratio"])}


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first; within a severity, causes before the symptoms they explain, then by step."""
    def key(f: Finding):
        caused = 1 if f.evidence.get("caused_by") else 0
        return (-severity_rank(f.severity), caused, _CAUSE_ORDER.get(f.rule, 99),
                f.step if f.step is not None else math.inf)
    return sorted(findings, key=key)


def diagnose(run: Any, thresholds: dict | None = None, now: float | None = None) -> list[Finding]:
    """Post-hoc diagnosis of a whole run (a `RunData` from `monitor.reader.load_run`)."""
    diagnoser = OnlineDiagnoser(getattr(run, "meta", None) or {}, thresholds,
                                run_dir=getattr(run, "path", None))
    diagnoser.update(run, status=getattr(run, "status", None) or {}, now=now)
    return diagnoser.findings
