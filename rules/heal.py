"""The `healed` finding: the hooks rolled the run back and changed something (on_critical="heal").

A healed run finished, but it needed a babysitter: the finding says what happened at which step and what to
put in the config so the next run does not need it (the lr the heal ended with, the clip level, a warmup).
It reads `heal` events (docs/FORMAT.md); the findings that triggered them stay in the report as they happened.
"""

from __future__ import annotations

import math

from babysit.rules.base import Context, Finding, Rule, fmt

__all__ = ["Healed"]


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


class Healed(Rule):
    id = "healed"
    title = "Run was healed: rolled back and changed"
    fix = ("lower_lr",)

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.heals: list[dict] = []

    def update(self, batch, ctx: Context) -> list[Finding]:
        new = [e for e in ctx.events if isinstance(e, dict) and e.get("type") == "event" and e.get("name") == "heal"
               and isinstance(e.get("data"), dict)]
        if not new:
            return []
        for e in new:
            self.heals.append({**e["data"], "step": e.get("step")})
        return [self._finding(ctx)]

    def _finding(self, ctx: Context) -> Finding:
        heals = self.heals
        parts = []
        for h in heals[:6]:
            action = str(h.get("action"))
            change = {"lr_x0.1": f"lr {fmt(_num(h.get('lr_before')))} -> {fmt(_num(h.get('lr_after')))}",
                      "clip_grad_norm": f"gradient norm clipped at {fmt(_num(h.get('clip')))}",
                      "warmup": "lr warmup"}.get(action, action)
            parts.append(f"step {h.get('step')}: {h.get('finding')}, rolled back to step {h.get('rolled_back_to')}, "
                         f"{change}")
        more = f" (and {len(heals) - 6} more)" if len(heals) > 6 else ""
        msg = f"healed {len(heals)} time{'s' if len(heals) > 1 else ''}: " + "; ".join(parts) + more
        # what the config should say so the next run does not need a babysitter
        last_lr = next((_num(h.get("lr_after")) for h in reversed(heals) if math.isfinite(_num(h.get("lr_after")))),
                       math.nan)
        lowered = any(h.get("action") == "lr_x0.1" for h in heals)
        clips = [_num(h.get("clip")) for h in heals if math.isfinite(_num(h.get("clip")))]
        fix: list = []
        if lowered and math.isfinite(last_lr):
            fix.append(("lower_lr", f"start at {fmt(last_lr)}, the lr the run was healed with"))
        if clips:
            fix.append(("clip_gradients", f"max_norm={fmt(clips[-1])}, the healthy stretch's gradient norm"))
        if any(h.get("action") == "warmup" for h in heals) or not fix:
            fix.append("warmup_or_clip")
        first = heals[0]
        step = first.get("step") if isinstance(first.get("step"), int) else None
        evidence = {"heals": len(heals), "attempts": heals, "lr_after": last_lr,
                    "clip": clips[-1] if clips else None, "findings": sorted({str(h.get("finding")) for h in heals})}
        return self.finding(ctx, "warning", step, msg, evidence, fix)
