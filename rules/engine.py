"""The engine: feed every rule the same new records, keep one current finding per rule, link causes.

`diagnose(run)` is a fresh `OnlineDiagnoser` fed the whole run once, so the three callers (post-hoc, the
hooks inside training, the watcher) get the same findings from the same data.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from babysit.rules.base import Context, Finding, Rule, Table, severity_rank
from babysit.rules.catalogue import CAUSE_ORDER, CAUSES, RULES
from babysit.rules.causes import explains, run_facts
from babysit.rules.coverage import Seen, not_evaluated
from babysit.rules.fixes import FIXES, fix_text
from babysit.rules.layers import observe_layers
from babysit.rules.metric_names import canonical_epochs
from babysit.rules.thresholds import resolve

__all__ = ["OnlineDiagnoser", "diagnose", "findings_of_run", "Findings", "RuleWarning", "sort_findings"]


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
        snapshot_loader: Callable[[Path, str], Any] | None = None,
    ):
        self.thresholds = resolve(thresholds)
        meta = meta if meta is not None else {}  # by reference: hooks.Run adds the model summary at watch()
        self.ctx = Context(meta=meta, thresholds=self.thresholds)
        # Rules never open files: snapshots come through the format's loader (monitor.runfile.load_snapshot),
        # handed in here or brought by the reader's batches (RunBatch.load_snapshot).
        self.snapshot_loader = snapshot_loader
        self.ctx.load_snapshot = self._load_snapshot
        meta_path = meta.get("path") if isinstance(meta, dict) else None
        self.ctx.run_dir = Path(run_dir) if run_dir is not None else (
            Path(meta_path) if isinstance(meta_path, str) and meta_path else None)
        self.rules = [cls(self.thresholds) for cls in (RULES if rules is None else rules)]
        self._reported: dict[str, tuple[int, tuple, bool]] = {}
        self._own: dict[str, tuple] = {}  # rule -> (finding, its own message, fix ids, fix texts) before linking
        self.seen = Seen()
        self._init_losses: list[float] = []

    # ------------------------------------------------------------------ context
    def _advance(self, batch: Any, status: dict | None) -> None:
        ctx = self.ctx
        if status is not None:
            ctx.status = dict(status)
        path = getattr(batch, "path", None)
        if ctx.run_dir is None and path is not None and str(path) not in ("", "."):
            ctx.run_dir = Path(path)
        if self.snapshot_loader is None:
            loader = getattr(batch, "load_snapshot", None)
            self.snapshot_loader = loader if callable(loader) else None
        if isinstance(getattr(batch, "meta", None), dict) and batch.meta:
            ctx.meta = {**batch.meta, **{k: v for k, v in ctx.meta.items() if v is not None}}
        steps = Table(batch.steps)
        ctx.new_step = steps.ints("step") if "step" in steps else np.array([], dtype=np.int64)
        ctx.new_loss, ctx.new_lr, ctx.new_time = steps.num("loss"), steps.num("lr"), steps.num("time")
        ctx.epochs = Table(canonical_epochs(batch.epochs))  # run.epoch(accuracy=..., val_accuracy=...) too
        ctx.layers, ctx.snapshots = Table(batch.layers), Table(batch.snapshots)
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
        self.seen.observe(ctx)
        for rule in list(self.rules):
            old = ctx.findings.get(rule.id)
            if old is not None and (old.severity == "critical" or old.resolved):
                continue  # reported for good: nothing left for this rule to say
            try:
                found = rule.update(batch, ctx)
            except Exception as exc:  # noqa: BLE001 - one broken rule must not silence the others
                warnings.warn(f"babysit rule {rule.id} switched off: {type(exc).__name__}: {exc}", RuleWarning,
                              stacklevel=2)
                self.rules.remove(rule)
                continue
            for f in found:
                self._accept(f)
        _link_causes(ctx.findings, self._own, run_facts(ctx), self.thresholds["cause_lag_steps"])
        new = []
        for rule_id, f in ctx.findings.items():
            key = (severity_rank(f.severity), tuple(f.caused_by), f.resolved)
            if self._reported.get(rule_id) != key:
                self._reported[rule_id] = key
                new.append(f)
        return sort_findings(new)

    def _accept(self, f: Finding) -> None:
        """Report-once and escalation: a rule's finding replaces its current one only when it is more severe, or
        says the condition resolved (a slow start: downgraded to info)."""
        old = self.ctx.findings.get(f.rule)
        if old is None or severity_rank(f.severity) > severity_rank(old.severity) or (f.resolved and not old.resolved):
            self.ctx.findings[f.rule] = f
            self._own[f.rule] = (f, f.message, list(f.fix_ids), list(f.fix))

    def _load_snapshot(self, rel: str) -> np.ndarray | None:
        """A snapshot array of this run (`rel`: its path in the run directory), or None when it cannot be had."""
        if self.snapshot_loader is None or self.ctx.run_dir is None:
            return None
        try:
            arr = self.snapshot_loader(Path(self.ctx.run_dir), str(rel))
        except (OSError, ValueError):
            return None
        return arr if isinstance(arr, np.ndarray) else None

    def not_evaluated(self) -> list[dict]:
        """The rules that could not judge this run so far, and why: [{"rule", "why"}]."""
        return not_evaluated(self.rules, self.seen, self.ctx)

    @property
    def findings(self) -> Findings:
        """Every current finding, causes first, with `.not_evaluated` (the rules that could not judge yet)."""
        return Findings(sort_findings(_healed_view(self.ctx.findings)), self.not_evaluated())

    def rolled_back(self, step: int, rules: tuple[str, ...] = ("nonfinite_loss", "loss_explosion",
                                                               "exploding_gradients", "noisy_loss",
                                                               "dead_units")) -> None:
        """The hooks restored an earlier state at `step` (on_critical="heal", hooks/heal.py): judge what
        follows afresh. These rules start over (their windows hold the blow-up) and may report again."""
        self.rules = [type(r)(self.thresholds) if r.id in rules else r for r in self.rules]
        for rule_id in rules:
            self.ctx.findings.pop(rule_id, None)
            self._reported.pop(rule_id, None)
            self._own.pop(rule_id, None)
        self.ctx.nonfinite_step = None


class Findings(list):
    """The findings of a diagnosis, with `not_evaluated`: the rules that could not judge the run, and why."""

    not_evaluated: list[dict]

    def __init__(self, findings=(), not_evaluated: list[dict] | None = None):
        super().__init__(findings)
        self.not_evaluated = list(not_evaluated or [])


def _link_causes(findings: dict[str, Finding], own: dict, facts: set[str], lag: float = 100) -> None:
    """Where a cause explains a symptom, say so in the symptom and lead its fixes with the root cause's.

    A run whose ReLUs died has a flat loss too; telling the user to raise the learning rate would be wrong.
    Chains resolve to the root: underfitting <- chance_accuracy <- dead_units names dead_units. Every finding
    drops the fixes the run's facts rule out (rules/fixes.py `contradicted_by`).
    """
    live = {k: f for k, f in findings.items() if not f.resolved and severity_rank(f.severity) >= 1}

    def causes_of(rule: str) -> list[str]:
        return [c for c in CAUSES.get(rule, ()) if c in live and c != rule and explains(live[c], live[rule], lag)]

    def root_of(rule: str) -> str:
        seen = {rule}
        while True:
            up = [c for c in causes_of(rule) if c not in seen]
            if not up:
                return rule
            rule = up[0]
            seen.add(rule)

    for rule_id, f in findings.items():
        base, message, ids, texts = own.get(rule_id, (f, f.message, list(f.fix_ids), list(f.fix)))
        if base is not f:  # a finding the engine did not accept (built by hand): its own fields are the original
            message, ids, texts = f.message, list(f.fix_ids), list(f.fix)
            own[rule_id] = (f, message, ids, texts)
        found = causes_of(rule_id) if rule_id in live else []
        pairs = list(zip(ids, texts, strict=False))
        if found:
            lead = live[root_of(found[0])]
            also = [c for c in found if c != lead.rule]
            message = (f"{message} -- likely a consequence of {lead.rule} (step {lead.step}): fix that first"
                       + (f" (also see {', '.join(also)})" if also else ""))
            lead_pairs = list(zip(lead_own(own, lead)[0], lead_own(own, lead)[1], strict=False))
            if lead_pairs:
                lead_pairs[0] = (lead_pairs[0][0], f"fix {lead.rule} first: {lead_pairs[0][1]}")
            own_pairs = [(k, t) for k, t in pairs if not (k in FIXES and FIXES[k].generic)]
            pairs = lead_pairs[:3] + own_pairs
        kept, ruled_out, seen_ids = [], [], set()
        for fid, text in pairs:
            if fid in seen_ids:
                continue
            seen_ids.add(fid)
            fix = FIXES.get(fid)
            (ruled_out if fix is not None and facts & set(fix.contradicted_by) else kept).append((fid, text))
        f.caused_by = found
        f.root_cause = live[root_of(found[0])].rule if found else None
        f.message = message
        f.fix_ids = [k for k, _ in kept[:6]]
        f.fix = [t for _, t in kept[:6]]
        if ruled_out:
            f.evidence["fixes_ruled_out"] = {k: sorted(facts & set(FIXES[k].contradicted_by)) for k, _ in ruled_out}
        else:
            f.evidence.pop("fixes_ruled_out", None)


def lead_own(own: dict, f: Finding) -> tuple[list[str], list[str]]:
    """A cause's own fixes (before any linking changed them)."""
    entry = own.get(f.rule)
    if entry is None or entry[0] is not f:
        return list(f.fix_ids), list(f.fix)
    return entry[2], entry[3]


_CAUSE_ORDER = {rule: i for i, rule in enumerate(CAUSE_ORDER)}


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first; within a severity, causes before the symptoms they explain, then by step."""
    def key(f: Finding):
        caused = 1 if f.caused_by else 0
        return (-severity_rank(f.severity), caused, _CAUSE_ORDER.get(f.rule, 99),
                f.step if f.step is not None else math.inf)
    return sorted(findings, key=key)


def _healed_view(findings: dict[str, Finding]) -> list[Finding]:
    """The findings as a person reads the finished run: a blow-up the hooks healed (rolled back, lr lowered) is
    history, kept as an info note that points at the `healed` finding, whose fix says what the next run's config
    should change. A view only: the online rules keep their state (a relapse must still trigger the next heal)."""
    out = dict(findings)
    healed = findings.get("healed")
    attempts = healed.evidence.get("attempts") if healed is not None else None
    for attempt in attempts if isinstance(attempts, list) else []:
        step = attempt.get("step") if isinstance(attempt, dict) else None
        back = attempt.get("rolled_back_to") if isinstance(attempt, dict) else None
        if not isinstance(step, int):
            continue
        for f in list(out.values()):
            if f.resolved or f.rule not in _UNDONE_BY_ROLLBACK and f.rule != attempt.get("finding"):
                continue
            # the finding belongs to the stretch the rollback undid (or triggered the heal itself)
            if f.step is None or f.step > step or isinstance(back, int) and f.step <= back:
                continue
            out[f.rule] = replace(
                f, severity="info", fix=[fix_text("see_healed")], fix_ids=["see_healed"],
                message=f"{f.message}; healed at step {step}: rolled back to step {back}, "
                        f"then {attempt.get('action')}",
                evidence={**f.evidence, "resolved": True, "healed_at": step})
    return list(out.values())


# what a rollback undoes: findings about the blown-up stretch itself (hooks/heal.py rolls back on these)
_UNDONE_BY_ROLLBACK = ("nonfinite_loss", "loss_explosion", "exploding_gradients", "noisy_loss", "dead_units",
                       "lr_too_high")


def findings_of_run(fresh: list[Finding] | None, recorded: Any = ()) -> Findings:
    """The findings of a run as `babysit diagnose`, the report and the dashboard all show them.

    `fresh`: a diagnosis of the run (its `.not_evaluated` is kept); `recorded`: findings.jsonl's lines, cleaned
    (monitor.runfile.clean_findings). A rule the diagnosis found speaks for itself; for any other rule the log's
    most severe (then latest) line is added, marked `recorded` (the log keeps every escalation), unless a later
    line of that rule says it resolved (a slow start that caught up): then that one. Then what a heal undid
    becomes history (`_healed_view`), for recorded findings as for fresh ones.
    """
    current = {f.rule: f for f in fresh or ()}
    kept: dict[str, Finding] = {}
    for d in recorded or ():
        if not isinstance(d, dict):
            continue
        f = Finding.from_dict(d)
        old = kept.get(f.rule)
        resolved = isinstance(f.evidence, dict) and f.evidence.get("resolved") is True
        if f.rule not in current and (old is None or resolved
                                      or severity_rank(f.severity) >= severity_rank(old.severity)):
            kept[f.rule] = f
    return Findings(sort_findings(_healed_view({**current, **kept})), getattr(fresh, "not_evaluated", None))


def diagnose(run: Any, thresholds: dict | None = None, now: float | None = None) -> Findings:
    """Post-hoc diagnosis of a whole run (a `RunData` from `monitor.reader.load_run`).

    Returns the findings (a list, causes first) with `.not_evaluated`: the rules that could not judge the run.
    """
    diagnoser = OnlineDiagnoser(getattr(run, "meta", None) or {}, thresholds,
                                run_dir=getattr(run, "path", None))
    diagnoser.update(run, status=getattr(run, "status", None) or {}, now=now)
    return diagnoser.findings
