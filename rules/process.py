"""Rules on the run as a process and on how it is evaluated: a stalled or crashed run, test-set reuse."""

from __future__ import annotations

import math
import time

import numpy as np

from babysit.rules.base import Context, Finding, Rule, fmt
from babysit.rules.once import OnceRule

__all__ = ["StalledRun", "TestSetReuse"]


class StalledRun(Rule):
    """A 'running' run without a heartbeat for much longer than its own rhythm, or a crashed run."""

    id = "stalled_run"
    title = "Run stalled or crashed"
    fix = ("check_process", "check_dataloader", "check_ranks")
    needs = ("process",)

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.last_time = math.nan
        self.max_gap = 0.0
        self.severity = None

    def update(self, batch, ctx: Context) -> list[Finding]:
        # Step times are in write order; an evaluation pause shows as a gap between two steps. Epoch times
        # only matter for runs that record no steps.
        times = ctx.new_time[np.isfinite(ctx.new_time)]
        if not len(times) and len(ctx.epochs) and "time" in ctx.epochs:
            et = ctx.epochs.num("time")
            times = np.sort(et[np.isfinite(et)])
        if len(times):
            joined = np.concatenate([[self.last_time], times]) if math.isfinite(self.last_time) else times
            if len(joined) > 1:
                self.max_gap = max(self.max_gap, float(np.max(np.diff(joined))))
            self.last_time = float(np.nanmax([times[-1], self.last_time]))
        status = ctx.status or {}
        state = status.get("state")
        if state == "crashed":
            return self._crashed(ctx, status)
        if state != "running" or self.severity is not None:
            return []
        heartbeat = status.get("heartbeat")
        if not isinstance(heartbeat, (int, float)):
            return []
        # status.json is rewritten on a timer; the newest record is as good a sign of life
        alive = max(float(heartbeat), self.last_time) if math.isfinite(self.last_time) else float(heartbeat)
        now = ctx.now if ctx.now is not None else time.time()
        age = now - alive
        limit = max(self.th["stalled_min_s"], self.th["stalled_factor"] * self.max_gap)
        if age <= limit:
            return []
        self.severity = "warning"
        step = max(int(status.get("step") or 0), ctx.last_step)
        msg = (f"no heartbeat for {fmt(age, 3)} s at step {step} while the run says it is running (limit "
               f"{fmt(limit, 3)} s: {fmt(self.th['stalled_factor'])}x its longest gap between records "
               f"{fmt(self.max_gap, 2)} s, at least {fmt(self.th['stalled_min_s'])} s)")
        evidence = {"state": state, "heartbeat_age_s": age, "limit_s": limit, "max_gap_s": self.max_gap,
                    "step": step, "pid": status.get("pid"), "host": status.get("host")}
        return [self.finding(ctx, "warning", step, msg, evidence)]

    def _crashed(self, ctx: Context, status: dict) -> list[Finding]:
        if self.severity == "critical":
            return []
        self.severity = "critical"
        step = max(int(status.get("step") or 0), ctx.last_step)
        error = status.get("error") or {}
        what = (f"{error.get('type', 'error')}: {error.get('message', '')}".strip(": ") if error
                else status.get("reason") or "the process stopped without closing the run")
        msg = f"run crashed at step {step}: {what}"
        evidence = {"state": "crashed", "recorded_state": status.get("recorded_state"), "step": step,
                    "error": error or None, "reason": status.get("reason"), "heartbeat": status.get("heartbeat")}
        fix = ["read_error", *self.fix[:2]]
        return [self.finding(ctx, "critical", step, msg, evidence, fix)]


class TestSetReuse(OnceRule):
    """The test split evaluated more than once: every look at it is a chance of a false discovery."""

    __test__ = False  # not a pytest class
    id = "test_set_reuse"
    title = "Test set evaluated more than once"
    fix = ("val_for_decisions", "test_once", "fresh_test_split")
    needs = ("test_ledger",)

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.uses: dict[str, list[int]] = {}
        self.max_uses: dict[str, int] = {}

    def examine(self, batch, ctx: Context) -> list[Finding]:
        for ev in ctx.events:
            if ev.get("type") != "event" or ev.get("name") != "test_eval":
                continue
            data = ev.get("data") if isinstance(ev.get("data"), dict) else {}
            split = str(data.get("split_id", "test"))
            self.uses.setdefault(split, []).append(ev.get("step"))
            uses = data.get("uses")
            if isinstance(uses, (int, float)) and not isinstance(uses, bool):
                self.max_uses[split] = max(self.max_uses.get(split, 0), int(uses))
            count = max(len(self.uses[split]), self.max_uses.get(split, 0))
            if count > self.th["test_reuse_max"]:
                self.done = True
                steps = [s for s in self.uses[split] if s is not None]
                msg = (f"test split {split!r} evaluated {count} times"
                       + (f" (events at steps {', '.join(map(str, steps[:6]))})" if steps else "")
                       + ": touch the test set once, or its score no longer estimates new data")
                evidence = {"split_id": split, "uses": count, "events": len(self.uses[split]),
                            "steps": steps}
                step = ev.get("step") if isinstance(ev.get("step"), int) else None
                return [self.finding(ctx, "warning", step, msg, evidence)]
        return []
