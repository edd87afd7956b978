"""Self-healing runs: roll back to the last known good state, change one thing, and let the loop go on.

What a person babysitting a run does at hour six when the loss blows up, done inside the hooks between two
steps, so the user's loop does not change. Batches are not replayed: the data keeps flowing, the steps lost
to the blow-up are simply gone.

The good state is one of at most two copies of everything training changes (model tensors, optimizer state,
the scheduler's bookkeeping, the AMP grad scaler, RNG states) in preallocated buffers: host memory by default
(pinned where CUDA, copied with non_blocking so the step is not stalled), or device memory. A copy is taken
every `every` steps as a *candidate*; it becomes the *good* one only after the online rules have seen the
steps that followed it without a warning and their losses were finite and near where the run started.
The state at `watch()` is good from the start (nothing has happened to it yet).

On a critical finding a rollback can fix, `heal()` restores the good copy in place (the user's model and
optimizer objects stay the same objects) and applies the next fix of the policy:
  1. lr x0.1: every param group's lr and the scheduler's base values (base_lrs, OneCycle/Cyclic max and min);
  2. gradient-norm clipping at the median total gradient norm of the healthy stretch (an optimizer step
     pre-hook, so it applies whatever the loop does);
  3. a linear warmup of the lr over `warmup` optimizer steps (a factor applied around optimizer.step(), so the
     scheduler never sees it).
Fixes accumulate. After a heal the healer also watches for a relapse (the smoothed loss back at 3x the best level
the healed run reached). A good state taken RECOVERED_AFTER x `every` steps after a heal means the run recovered:
the next incident starts the policy again. After `max_heals` attempts without recovery the run stops, with the
last good state put back and every attempt in the reason.
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time
from collections import deque
from typing import Any

import numpy as np
import torch

from babysit.rules.base import fmt

__all__ = ["Healer", "start_healer", "HEALABLE", "POLICY", "WARMUP_STEPS"]

# Critical findings a rollback can fix: the weights are still good a few steps back. ReLUs killed by a blow-up
# (dead_units) come back with the old weights; dead from initialization, rolling back cannot help, and after
# `max_heals` attempts the run stops as it would have without healing.
HEALABLE = ("nonfinite_loss", "loss_explosion", "exploding_gradients", "dead_units")
# Warnings that make a candidate state suspect (the run may already be on its way to a blow-up).
SUSPECT = (*HEALABLE, "noisy_loss", "update_ratio")
POLICY = ("lr_x0.1", "clip_grad_norm", "warmup")
WARMUP_STEPS = 100
# Extra rules passes for candidates' verdicts stay under this fraction of the run's time (they cost ms each).
JUDGE_BUDGET = 0.01
RELAPSE_WINDOW = 10  # steps in the smoothed loss level a relapse is judged on
RECOVERED_LEVEL = 1.5  # after a heal, a good state's stretch must stay within this multiple of the best level
RECOVERED_AFTER = 5  # a good state this many `every` after the last heal means the run recovered
LR_FACTOR = 0.1
# Scheduler fields a restore leaves alone: its position follows the loop (batches are not replayed, and a
# OneCycleLR stepped past its total raises), and its lr values carry the heals already applied.
_SCHED_KEEP = {"last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_initial_step",
               "lr_lambdas", "_schedulers", "_milestones", "milestones", "total_steps", "verbose"}


def _is_lr_key(key: str) -> bool:
    return key.endswith("lr") or key.endswith("lrs")


class _Copy:
    """One copy of the training state in buffers reused from copy to copy."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.model: list[torch.Tensor] = []
        self.opt: dict[int, dict[str, Any]] = {}
        self.devices: dict[tuple[int, str], torch.device] = {}  # where each optimizer state tensor lives
        self.scaler: dict[str, Any] = {}
        self.rng: dict[str, Any] = {}
        self.sched: dict[str, Any] = {}


class Healer:
    """Keeps the last known good state of one training loop and heals it on request.

    `run` is the `hooks.Run` it serves (for events, status, findings and the online rules' state).
    """

    def __init__(
        self,
        run: Any,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        scaler: Any = None,
        *,
        max_heals: int = 3,
        every: int = 100,
        on_device: bool = False,
        warmup: int = WARMUP_STEPS,
    ):
        if int(max_heals) < 1 or int(every) < 1:
            raise ValueError("heal_max and heal_every must be >= 1")
        self.run, self.model, self.optimizer = run, model, optimizer
        self.scheduler, self.scaler = scheduler, scaler
        self.max_heals, self.every, self.on_device = int(max_heals), int(every), bool(on_device)
        self.warmup = max(int(warmup), 1)
        self.heals: list[dict] = []  # every heal of the run
        self.incident: list[dict] = []  # the heals since the run last recovered
        self.clip: float | None = None
        self._warm_left = 0
        self._warm_lrs: list[float] | None = None
        self._hooks: list[Any] = []
        self._healed_at: int | None = None
        self._losses: list[tuple[int, float]] = []  # (step, loss) since the pending candidate
        # (step, total gradient norm) from the layer records; the last few hundred are the healthy stretch's
        self._gnorms: deque[tuple[int, float]] = deque(maxlen=512)
        self._seen_findings = 0
        self._first_losses: list[float] = []  # the loss at init, until the online rules know it
        self._recent: list[float] = []  # the last RELAPSE_WINDOW finite losses
        self._best = math.inf  # the lowest smoothed loss since the start or the last heal
        self._good, self._spare = _Copy(), _Copy()
        self._pending = False  # the spare holds a candidate waiting for promotion
        self._last_take = run.global_step
        self._start = time.monotonic()
        self._forced, self._forced_spent = False, 0.0  # extra rules passes asked for, and their cost
        self._take(self._good, run.global_step)

    # ----------------------------------------------------------------- copies
    def _buffer(self, buf: torch.Tensor | None, src: torch.Tensor) -> torch.Tensor:
        host = not self.on_device and src.device.type != "cpu"
        device = torch.device("cpu") if host else src.device
        if buf is not None and buf.shape == src.shape and buf.dtype == src.dtype and buf.device == device:
            return buf
        if host:  # pinned host memory: the device-to-host copy is asynchronous and does not stall the step
            return torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
        return torch.empty(src.shape, dtype=src.dtype, device=device)

    def _copy_tensor(self, buf: torch.Tensor | None, src: torch.Tensor) -> torch.Tensor:
        buf = self._buffer(buf, src)
        buf.copy_(src.detach(), non_blocking=True)
        return buf

    def _model_tensors(self) -> list[torch.Tensor]:
        """Parameters and buffers, detached views of the live tensors (a module's extra state is not a tensor)."""
        return [t for t in self.model.state_dict().values() if isinstance(t, torch.Tensor)]

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _take(self, c: _Copy, step: int) -> None:
        """Copy the live state into `c` (buffers reused; only tensors copied, no host sync)."""
        with torch.no_grad():
            live = self._model_tensors()
            if len(c.model) != len(live):
                c.model = [None] * len(live)  # type: ignore[list-item]
            c.model = [self._copy_tensor(b, t) for b, t in zip(c.model, live, strict=True)]
            opt: dict[int, dict[str, Any]] = {}
            for i, p in enumerate(self._params()):
                state = self.optimizer.state.get(p)
                if not state:
                    continue
                old = c.opt.get(i, {})
                opt[i] = {k: self._copy_tensor(old.get(k) if isinstance(old.get(k), torch.Tensor) else None, v)
                          if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in state.items()}
                c.devices.update({(i, k): v.device for k, v in state.items() if isinstance(v, torch.Tensor)})
            c.opt = opt
            c.scaler = self._scaler_state(c.scaler)
        c.rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            c.rng["cuda"] = torch.cuda.get_rng_state_all()
        c.sched = {}
        if self.scheduler is not None and hasattr(self.scheduler, "state_dict"):
            c.sched = copy.deepcopy({k: v for k, v in self.scheduler.state_dict().items()
                                     if k not in _SCHED_KEEP and not _is_lr_key(k)})
        c.step = step

    def _scaler_state(self, old: dict) -> dict:
        s = self.scaler
        if s is None or not getattr(s, "is_enabled", lambda: False)():
            return {}
        out = {}
        for name in ("_scale", "_growth_tracker"):  # device tensors: copying them needs no sync (state_dict does)
            t = getattr(s, name, None)
            if isinstance(t, torch.Tensor):
                out[name] = self._copy_tensor(old.get(name), t)
        return out

    def _restore(self, c: _Copy) -> None:
        """Load copy `c` into the live objects, in place."""
        with torch.no_grad():
            for t, b in zip(self._model_tensors(), c.model, strict=True):
                t.copy_(b, non_blocking=True)
            for i, p in enumerate(self._params()):
                saved = c.opt.get(i)
                if saved is None:
                    self.optimizer.state.pop(p, None)  # no state yet at the good step (e.g. the initial state)
                    continue
                state = self.optimizer.state[p]
                for k in [k for k in state if k not in saved]:
                    del state[k]
                for k, v in saved.items():
                    if not isinstance(v, torch.Tensor):
                        state[k] = copy.deepcopy(v)
                    elif isinstance(state.get(k), torch.Tensor) and state[k].shape == v.shape \
                            and state[k].dtype == v.dtype:
                        state[k].copy_(v, non_blocking=True)
                    else:  # never hand the optimizer our buffer: the next copy would overwrite its state
                        state[k] = v.to(c.devices.get((i, k), p.device), copy=True)
            for name, b in c.scaler.items():
                t = getattr(self.scaler, name, None)
                if isinstance(t, torch.Tensor):
                    t.copy_(b, non_blocking=True)
        torch.set_rng_state(c.rng["torch"])
        np.random.set_state(c.rng["numpy"])
        random.setstate(c.rng["random"])
        if "cuda" in c.rng:
            torch.cuda.set_rng_state_all(c.rng["cuda"])
        for k, v in c.sched.items():
            setattr(self.scheduler, k, copy.deepcopy(v))

    # ----------------------------------------------------------------- called by hooks.Run
    def after_step(self, step: int) -> None:
        """Take a candidate `every` steps after the last one, once that one has been judged."""
        if self._pending and self._seen() >= (self._spare.step or 0) + self.every:
            self._judge()  # the rules ran at the last flush: judge now, so the next candidate is not late
        if not self._pending and step >= self._last_take + self.every:
            self._take(self._spare, step)
            self._pending = True
            self._last_take = step
            self._losses = []

    def observe(self, records: list[dict]) -> bool:
        """See flushed records (host floats). Promote a candidate the rules have cleared; return True when
        the online rules should run now (a loss that is non-finite or above the explosion limit)."""
        urgent = False
        limit = self._limit("explosion_factor")
        for r in records:
            kind = r.get("type")
            if kind == "steps":
                steps, losses = r.get("step") or [], r.get("loss") or []
                for s, v in zip(steps, losses, strict=False):
                    v = float(v)
                    if len(self._first_losses) < 5 and math.isfinite(v):
                        self._first_losses.append(v)
                        limit = self._limit("explosion_factor")
                    if not math.isfinite(v) or v > limit:
                        urgent = True
                    if self._pending and s > (self._spare.step or 0):
                        self._losses.append((int(s), v))
                    if math.isfinite(v):
                        self._recent = [*self._recent[1 - RELAPSE_WINDOW:], v]
            elif kind == "layers":
                g = [st.get("g_norm") for st in (r.get("stats") or {}).values()
                     if isinstance(st, dict) and st.get("kind") == "weight"]
                g = [float(x) for x in g if isinstance(x, (int, float))]
                if g:
                    self._gnorms.append((int(r.get("step", 0)), math.sqrt(sum(x * x for x in g))))
        level = float(np.median(self._recent)) if len(self._recent) == RELAPSE_WINDOW else math.nan
        self._best = min(self._best, level) if math.isfinite(level) else self._best
        if self.incident and self._relapsed(level):
            # healed, then back up: the rules judge against the initial loss, which a collapse to chance
            # never exceeds 3x, so the healer judges its own attempt against the level it reached
            init = self._limit("explosion_factor") / self._factor()
            self.run._on_critical({
                "rule": "loss_explosion", "severity": "critical", "step": self.run.global_step,
                "message": f"relapse after the heal at step {self.incident[-1]['step']}: smoothed loss "
                           f"{fmt(level)} is {fmt(level / self._best)}x its best level {fmt(self._best)} since "
                           f"then (initial {fmt(init)})"})
            return False
        self._judge()
        return urgent or self._ripe()

    def _factor(self) -> float:
        d = self.run._diagnoser
        return float(getattr(d, "thresholds", {}).get("explosion_factor", 3.0)) if d is not None else 3.0

    def _relapsed(self, level: float) -> bool:
        """The smoothed loss at `explosion_factor` x its best level since the last heal, and above half the
        initial loss (a loss that creeps from 0.01 to 0.03 near convergence is noise, not a relapse)."""
        floor = 0.5 * self._limit("explosion_factor") / self._factor()
        return math.isfinite(level) and level > self._factor() * self._best and level > floor

    def _ripe(self) -> bool:
        """A candidate whose following `every` steps were all observed and await the rules' verdict: an extra
        rules pass (milliseconds), on top of their own schedule (hooks.run), while such passes stay within
        JUDGE_BUDGET of the run's time (the first one is free: until then its cost is unknown)."""
        run = self.run
        if self._forced:  # the pass asked for at the last flush has run: count what it cost
            self._forced = False
            self._forced_spent += float(getattr(run, "_rules_cost", 0.0))
        if not self._pending or not self._losses or self._losses[-1][0] < (self._spare.step or 0) + self.every:
            return False
        if self._seen() >= (self._spare.step or 0) + self.every:
            return False
        elapsed = time.monotonic() - self._start
        if self._forced_spent and elapsed * JUDGE_BUDGET < self._forced_spent + float(getattr(run, "_rules_cost", 0)):
            return False
        self._forced = True
        return True

    def _seen(self) -> int:
        """The last step the online rules have seen."""
        return getattr(getattr(self.run._diagnoser, "ctx", None), "last_step", 0)

    def _limit(self, name: str) -> float:
        d = self.run._diagnoser
        init = getattr(getattr(d, "ctx", None), "initial_loss", None)
        if init is None and self._first_losses:  # the engine's definition: a spike never inflates it
            init = min(self._first_losses[0], float(np.median(self._first_losses)))
        if d is None or init is None or not init > 0:
            return math.inf
        return float(d.thresholds.get(name, math.inf)) * init

    def _judge(self) -> None:
        """Promote the pending candidate when the rules saw `every` steps after it without a suspect warning."""
        findings = self.run.findings[self._seen_findings:]
        self._seen_findings = len(self.run.findings)
        if not self._pending:
            return
        step = self._spare.step or 0
        # a finding dated in the stretch that vouches for the candidate condemns it; one dated later is
        # judged with the next candidate (rolling back past it would throw away healthy steps)
        suspect = [f for f in findings if f.get("rule") in SUSPECT and f.get("severity") in ("warning", "critical")
                   and (not isinstance(f.get("step"), int) or step < f["step"] <= step + self.every)]
        losses = np.array([v for s, v in self._losses if s <= step + self.every])
        if suspect or (len(losses) and not (np.isfinite(losses).all()
                                            and losses.max() <= self._limit("explosion_factor"))):
            self._pending = False  # a bad stretch followed it: never roll back to it
            return
        if self._seen() < step + self.every or len(losses) == 0:
            return
        median = float(np.median(losses))
        # after a heal, until recovery, a state must also be near the best the healed run reached: one taken
        # while it slides back up (a collapse to chance never trips the loss-vs-initial limits) is no refuge
        sliding = bool(self.incident) and math.isfinite(self._best) and median > RECOVERED_LEVEL * self._best
        if median > self._limit("explosion_warn_factor") or self._relapsed(median) or sliding:
            self._pending = False  # far above where it started, or where it got to: not a state to come back to
            return
        self._good, self._spare = self._spare, self._good
        self._pending = False
        self._losses = []
        if self.incident and self._healed_at is not None and step >= self._healed_at + RECOVERED_AFTER * self.every:
            self.incident = []  # healthy long after the last heal: the next incident starts the policy over

    def heal(self, finding: dict) -> bool:
        """Roll back and apply the next fix; False when this finding cannot be healed (the caller stops)."""
        rule = finding.get("rule")
        if rule not in HEALABLE:
            return False
        step = self.run.global_step
        if self._healed_at == step:
            return True  # two findings of the same blow-up, seen in one rules pass
        if len(self.incident) >= self.max_heals:
            return False
        self._judge()  # the rules just saw the steps after a pending candidate: it may be the newest good state
        attempt = len(self.incident) + 1
        action = POLICY[attempt - 1] if attempt <= len(POLICY) else "lr_x0.1"
        self._end_warmup()
        self._restore(self._good)
        self._pending = False  # a candidate taken in the bad stretch is worthless
        lr_before = self._lr()
        clip = None
        if action == "clip_grad_norm":
            clip = self._clip_level()
            if clip is None:
                action = "lr_x0.1"  # no healthy gradient norms were recorded: lower the lr again instead
            else:
                self.clip = clip
                self._install_hooks()
        if action == "lr_x0.1":
            self._scale_lr(LR_FACTOR)
        elif action == "warmup":
            self._warm_left = self.warmup
            self._install_hooks()
        event = {"finding": rule, "message": str(finding.get("message", "")), "rolled_back_to": self._good.step,
                 "action": action, "lr_before": lr_before, "lr_after": self._lr(), "clip": clip, "attempt": attempt}
        self._healed_at = step
        self._best, self._recent = math.inf, []
        self.incident.append({"step": step, **event})
        self.heals.append({"step": step, **event})
        diagnoser = self.run._diagnoser
        if diagnoser is not None and hasattr(diagnoser, "rolled_back"):
            diagnoser.rolled_back(step)
        self._seen_findings = len(self.run.findings)
        self.run.log_event("heal", **event)
        self.run._status["healed"] = len(self.heals)
        what = {"lr_x0.1": f"lr {fmt(lr_before)} -> {fmt(self._lr())}",
                "clip_grad_norm": f"gradient norm clipped at {fmt(clip)}",
                "warmup": f"lr warmup over {self.warmup} steps"}[action]
        print(f"babysit: healed {rule} at step {step} (attempt {attempt}/{self.max_heals}): rolled back to step "
              f"{self._good.step}, {what}", file=sys.stderr)
        return True

    def give_up(self, finding: dict) -> str:
        """No more attempts: put the last good state back (so the model the user saves is not the broken one)
        and return the stop reason, the finding and every attempt of this incident."""
        head = f"{finding.get('rule')}: {finding.get('message')}"
        if finding.get("rule") in HEALABLE:
            self._end_warmup()
            self._restore(self._good)
        if not self.incident:
            return head
        tries = "; ".join(f"{a['attempt']}. step {a['step']}: {a['finding']}, rolled back to step "
                          f"{a['rolled_back_to']}, {a['action']} (lr {fmt(a['lr_before'])} -> {fmt(a['lr_after'])})"
                          for a in self.incident)
        return f"{head} -- not healed after {len(self.incident)} attempts: {tries}"

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # ----------------------------------------------------------------- the fixes
    def _lr(self) -> float:
        lr = self.optimizer.param_groups[0].get("lr", math.nan)
        return float(lr.item() if isinstance(lr, torch.Tensor) else lr)

    def _scale_lr(self, factor: float) -> None:
        for g in self.optimizer.param_groups:
            for key in ("lr", "initial_lr", "max_lr", "min_lr"):  # OneCycleLR keeps its range in the groups
                if isinstance(g.get(key), torch.Tensor):
                    g[key].mul_(factor)
                elif isinstance(g.get(key), (int, float)):
                    g[key] = g[key] * factor
        stack = [self.scheduler] if self.scheduler is not None else []
        while stack:
            s = stack.pop()
            stack.extend(getattr(s, "_schedulers", None) or [])  # SequentialLR, ChainedScheduler
            for name in ("base_lrs", "max_lrs", "min_lrs", "_last_lr"):  # CyclicLR: max_lrs; ReduceLROnPlateau
                vals = getattr(s, name, None)
                if isinstance(vals, list):
                    setattr(s, name, [v * factor if isinstance(v, (int, float)) else v for v in vals])

    def _clip_level(self) -> float | None:
        good = self._good.step or 0
        g = [v for s, v in self._gnorms if s <= max(good, 1) and math.isfinite(v) and v > 0]
        return float(np.median(g)) if g else None

    def _install_hooks(self) -> None:
        if self._hooks:
            return
        self._hooks = [self.optimizer.register_step_pre_hook(self._pre_step),
                       self.optimizer.register_step_post_hook(self._post_step)]

    def _pre_step(self, optimizer, args, kwargs) -> None:
        if self.clip is not None:
            params = [p for p in self._params() if p.grad is not None]
            if params:
                torch.nn.utils.clip_grad_norm_(params, self.clip)
        if self._warm_left > 0:
            frac = (self.warmup - self._warm_left + 1) / self.warmup
            self._warm_lrs = [g["lr"] for g in optimizer.param_groups]
            for g in optimizer.param_groups:
                g["lr"] = g["lr"] * frac

    def _post_step(self, optimizer, args, kwargs) -> None:
        if self._warm_lrs is not None:
            for g, lr in zip(optimizer.param_groups, self._warm_lrs, strict=False):
                g["lr"] = lr  # the scheduler never sees the warmup factor
            self._warm_lrs = None
            self._warm_left -= 1

    def _end_warmup(self) -> None:
        if self._warm_lrs is not None:
            self._post_step(self.optimizer, (), {})
        self._warm_left = 0


def start_healer(run: Any, model: Any, optimizer: Any, scheduler: Any = None, scaler: Any = None,
                 **options: Any) -> Healer | None:
    """A Healer for this loop, or None (said once: critical findings then stop the run) where none can work."""
    why = None
    if not isinstance(model, torch.nn.Module) or not isinstance(optimizer, torch.optim.Optimizer):
        why = "it needs run.watch(model, optimizer)"
    elif torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        why = "a rollback on one rank would desynchronize the others under torch.distributed"
    if why:
        print(f"babysit: on_critical='heal' cannot roll back here ({why}); critical findings stop the run",
              file=sys.stderr)
        return None
    return Healer(run, model, optimizer, scheduler, scaler, **options)
