"""Per-layer statistics on sampled steps, and first-layer weight snapshots.

A probe is idle between samples: no forward hook, no optimizer hook, nothing to run. At the end of the step
before a sampled one it arms forward hooks on the activation modules and step pre/post hooks on the optimizer;
the sampled step fills them, and `after_step` gathers the numbers and removes every hook again.

The update/weight ratio is measured around the update the optimizer really applied: the pre-hook clones the
weights, the post-hook compares (right for momentum, Adam, weight decay and anything else the optimizer does).
The clone is a transient copy of the trainable weights, once per sample.

Every statistic stays a device tensor; `hooks.run._materialize` moves them to the host with the step losses,
in one transfer at flush time. Snapshots are the one exception (a .npy needs host memory); they are rare.

Sampling has a floor, because problems start early and short runs must not be blind: every one of the first
FLOOR_DENSE steps is sampled, then steps spaced by a factor FLOOR_GROWTH (12, 14, 17, 20, ... 492, ...) up
to step FLOOR_END: a 60-step run gets 21 samples, a 500-step run 36, at a fixed cost that a long run
amortizes. Beyond the floor sampling is time-budgeted by default: a sample is taken when the probes' total
cost (snapshots and the floor included) stays under `budget` (0.2%) of the wall time since `watch()`, and
never more often than every `min_every` steps. Pass `every=N` for a fixed schedule (every multiple of N)
instead of the budget; the floor applies to both (`floor=False` turns it off). At close, `final_records`
adds the run's last state (weights and the last gradients still held), so sampling reaches the end.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from babysit.monitor import runfile

__all__ = [
    "LayerProbe",
    "DEFAULT_BUDGET",
    "MIN_EVERY",
    "SNAPSHOT_EVERY",
    "RELU_MODULES",
    "TANH_SATURATED",
    "SIGMOID_SATURATED",
]

DEFAULT_BUDGET = 0.002  # adaptive sampling: probe time <= 0.2% of wall time
MIN_EVERY = 10  # adaptive sampling: at most one sample per this many steps
FLOOR_DENSE = 10  # the floor: every one of the first this many steps ...
FLOOR_GROWTH = 1.15  # ... then each sample this factor after the previous one ...
FLOOR_END = 1000  # ... up to this step
SNAPSHOT_EVERY = 100  # steps between first-layer snapshots ...
SNAPSHOTS_PER_DOUBLING = 50  # ... and the spacing doubles after each this many, so long runs keep few files
MAX_SNAPSHOT_ELEMENTS = 1 << 22  # a first layer larger than this (16 MB of float32) is not snapshotted

# Units of these modules output exactly 0 (gradient 0) when they do not fire: a unit that never fires is dead.
# Leaky variants, ELU, GELU and SiLU pass gradient for negative inputs, so "never positive" is not "dead".
RELU_MODULES = (nn.ReLU, nn.ReLU6)
_FEATURES_LAST = (nn.Linear, nn.Bilinear, nn.LayerNorm, nn.Embedding)
TANH_SATURATED = 0.99  # |tanh(x)| > 0.99, i.e. |x| > 2.65: gradient 1 - y^2 < 0.02
SIGMOID_SATURATED = 0.01  # sigmoid(x) < 0.01 or > 0.99, i.e. |x| > 4.6: gradient y(1 - y) < 0.0099


def _warn(message: str) -> None:
    warnings.warn(f"babysit: {message}; training continues", RuntimeWarning, stacklevel=2)


# The statistics below run under torch.no_grad() and keep every op count low: on a CPU each op costs
# microseconds of dispatch whatever its size, and that is most of a sample's cost on small models.


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """All values as one float tensor (no copy for the usual single float32 parameter)."""
    t = tensors[0] if len(tensors) == 1 else torch.cat([x.reshape(-1) for x in tensors])
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(_flat(tensors))


def _weight_stats(params: list[nn.Parameter]) -> dict[str, torch.Tensor]:
    w = _flat(params)
    mean = w.mean()
    # population std as ||w - mean|| / sqrt(n): a third of the time torch.std_mean takes on CPU
    std = torch.linalg.vector_norm(w - mean) / math.sqrt(w.numel())
    return {"w_norm": torch.linalg.vector_norm(w), "w_mean": mean, "w_std": std}


def _grad_stats(params: list[nn.Parameter]) -> dict[str, torch.Tensor]:
    grads = [p.grad for p in params]
    if any(g is None or g.is_sparse for g in grads):
        return {}  # a layer this step did not use has no gradient to describe
    g = _flat(grads)
    numel = g.numel()
    return {"g_norm": torch.linalg.vector_norm(g), "zero_grad_frac": (numel - torch.count_nonzero(g)) / numel}


@dataclass
class _WeightLayer:
    name: str
    params: list[nn.Parameter]  # the module's `weight` if it has one, else all its own parameters
    # filled on a sampled step:
    stats: dict[str, Any] = field(default_factory=dict)
    before: list[torch.Tensor] | None = None
    before_norm: torch.Tensor | None = None


@dataclass
class _ActivationLayer:
    name: str
    module: nn.Module
    kind: str  # "relu" | "tanh" | "sigmoid"
    channel_dim: int  # 1 (conv layout N, C, ...) or -1 (features last: N, ..., C)
    fired: torch.Tensor | None = None  # relu: per unit, did it output > 0 anywhere in the batch
    saturated: torch.Tensor | None = None  # tanh/sigmoid: count of saturated activations
    total: int = 0
    units: int = 0

    def reset(self) -> None:
        self.fired, self.saturated, self.total, self.units = None, None, 0, 0

    def observe(self, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim < 2 or not output.is_floating_point():
            return
        out = output.detach()
        dim = self.channel_dim % out.ndim
        self.units = out.shape[dim]
        if self.kind == "relu":
            others = tuple(d for d in range(out.ndim) if d != dim)
            fired = torch.amax(out, dim=others) > 0
            if self.fired is None or self.fired.shape != fired.shape:
                self.fired = fired
            else:  # several forward passes before one optimizer step (gradient accumulation): any fires
                self.fired |= fired
            return
        if self.kind == "tanh":
            saturated = (out.abs() > TANH_SATURATED).sum()
        else:
            saturated = ((out - 0.5).abs() > 0.5 - SIGMOID_SATURATED).sum()
        self.saturated = saturated if self.saturated is None else self.saturated + saturated
        self.total += out.numel()

    def record(self) -> dict | None:
        if self.kind == "relu":
            if self.fired is None:
                return None
            return {"kind": "relu", "dead_frac": 1.0 - self.fired.float().mean(), "num_units": self.units}
        if self.saturated is None or self.total == 0:
            return None
        return {"kind": self.kind, "saturated_frac": self.saturated / self.total, "num_units": self.units}


def _activation_kind(module: nn.Module) -> str | None:
    if isinstance(module, RELU_MODULES):
        return "relu"
    if isinstance(module, nn.Tanh):
        return "tanh"
    if isinstance(module, nn.Sigmoid):
        return "sigmoid"
    return None


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "layer"


def _not_compiled(fn):
    """Probes read clocks and Python state: under torch.compile they would force a recompile at every sample."""
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(fn) if disable is not None else fn


class LayerProbe:
    """Per-layer statistics of `model` on sampled steps, and snapshots of its first layer's weights.

    Args:
        model: the module to watch.
        optimizer: the optimizer stepping it (None: no update/weight ratio).
        run_dir: the run directory (snapshots go to run_dir/snapshots/).
        input_shape: the shape of one input sample without the batch dimension, e.g. (1, 28, 28); a first
            Linear layer's weights are then snapshotted as images (out, *input_shape).
        every: sample step 1 and every multiple of this many steps; None (default): time-budgeted sampling.
        snapshot_every: steps between first-layer snapshots (the spacing doubles after every 50 of them).
        budget: the fraction of wall time the probes may take when `every` is None.
        min_every: at most one sample per this many steps when `every` is None.
        floor: sample the first steps densely whatever the schedule (see the module's docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        run_dir: str | os.PathLike,
        input_shape: tuple[int, ...] | None = None,
        every: int | None = None,
        snapshot_every: int = SNAPSHOT_EVERY,
        *,
        budget: float = DEFAULT_BUDGET,
        min_every: int = MIN_EVERY,
        floor: bool = True,
    ):
        if every is not None and int(every) < 1:
            raise ValueError(f"every must be a positive number of steps, not {every!r}")
        if int(snapshot_every) < 1:
            raise ValueError(f"snapshot_every must be a positive number of steps, not {snapshot_every!r}")
        if optimizer is not None and not hasattr(optimizer, "register_step_post_hook"):
            _warn(f"no update/weight ratios: {type(optimizer).__name__} has no optimizer step hooks (torch >= 2.0)")
            optimizer = None
        self.model = model
        self.optimizer = optimizer
        self.run_dir = Path(run_dir)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.every = int(every) if every is not None else None
        self.snapshot_every = int(snapshot_every)
        self.budget = float(budget)
        self.min_every = max(1, int(min_every))
        self.floor = bool(floor)
        self.samples = 0  # sampled steps so far
        self.last_sampled = 0  # the last sampled step
        self.seconds = 0.0  # wall time the probes took so far (hooks, statistics, snapshots)
        self.hook_seconds = 0.0  # the part of it inside the model's forward and the optimizer's step
        self.disabled = False

        root = type(model).__name__
        self._weights: list[_WeightLayer] = []
        self._acts: list[_ActivationLayer] = []
        self._first: tuple[str, nn.Module] | None = None
        last_weight: nn.Module | None = None
        for name, module in model.named_modules():
            name = name or root
            own = dict(module.named_parameters(recurse=False))
            if own:
                weight = own.get("weight")
                params = [weight] if isinstance(weight, nn.Parameter) else list(own.values())
                self._weights.append(_WeightLayer(name, params))
                last_weight = module
                if self._first is None and isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                    self._first = (name, module)
            kind = _activation_kind(module)
            if kind is not None:
                # Which dimension holds the units: the last one after a layer that works on the last
                # dimension (Linear on (N, L, D) sequences), else dim 1 (channels after conv/batch norm).
                features_last = isinstance(last_weight, _FEATURES_LAST)
                self._acts.append(_ActivationLayer(name, module, kind, -1 if features_last else 1))

        self._handles: list[Any] = []
        self._armed = False
        self._collecting = False  # forward hooks record only between arming and the optimizer step
        self._stepped = False  # the optimizer's post-hook ran for this sample
        self._cost = 0.0  # seconds spent in hooks for the sample in progress
        self._start = time.perf_counter()
        self._next_step = 1  # the next step that may be sampled (by `every` or the budget)
        self._first_step: int | None = None
        self.last_step = 0
        self._floor_next = 1 if self.floor else math.inf  # the next step the floor samples
        self._next_time = self._start  # adaptive: the earliest time the next sample fits the budget
        self._snapshot_every = self.snapshot_every
        self._snapshots = 0
        self._snapshots_on = self._first is not None
        self._dir_seen = self.run_dir.is_dir()  # once it exists, a vanished run directory is not recreated
        self._arm()  # step 1 is always sampled: gradients, dead units and saturation at initialization
        self.wake: float = 1  # the next step after_step has work at

    # ----------------------------------------------------------------- public
    def initial_records(self) -> list[dict]:
        """The first layer's weights at watch time (the snapshot kept forever)."""
        rec = self._snapshot(0)
        return [rec] if rec else []

    def after_step(self, step: int) -> list[dict]:
        """Called after every optimizer step. Returns the records of a sampled step, else nothing.

        Nothing happens before step `wake` (the caller may skip the call until then: a per-step cost)."""
        if self.disabled:
            self._disarm()
            self.wake = math.inf
            return []
        if self._first_step is None:
            self._first_step = step - 1  # the step count at watch(): a resumed run starts above 0
        self.last_step = step
        records: list[dict] = []
        if self._armed:
            t0 = time.perf_counter()
            with torch.no_grad():
                records.append(self._collect(step))
            self._disarm()
            self.samples += 1
            self.last_sampled = step
            self._schedule(step, self._cost + time.perf_counter() - t0)
        if self._snapshots_on and step % self._snapshot_every == 0:
            t0 = time.perf_counter()
            rec = self._snapshot(step)
            if rec:
                records.append(rec)
            self.seconds += time.perf_counter() - t0
        if not self._armed and self._due(step + 1):
            self._arm()
        self.wake = self._wake(step)
        return records

    def _wake(self, step: int) -> float:
        """The next step whose after_step has work: a collection when armed, else the first step at which
        `_due(step + 1)` may hold, or a snapshot."""
        if self._armed or self.disabled:
            return step + 1
        wake = min(self._floor_next, self._next_step) - 1
        if self.every is None and wake <= step:  # waiting for the time budget alone: a call per step costs
            wake = min(self._floor_next - 1, step + self._steps_until(self._next_time))  # ...more than a check
        if self._snapshots_on:
            wake = min(wake, (step // self._snapshot_every + 1) * self._snapshot_every)
        return max(step + 1, wake)

    def _steps_until(self, when: float) -> int:
        """Most (80%) of the steps left until `when` at the mean step time so far (at least 1): the wake-ups
        close in on the time geometrically (a handful per sample), and steps that get slower overshoot it by
        little."""
        now = time.perf_counter()
        if self._first_step is None or now >= when:
            return 1
        steps, elapsed = self.last_step - self._first_step, now - self._start
        if steps <= 0 or elapsed <= 0:
            return 1
        return max(1, int(0.8 * (when - now) * steps / elapsed))

    def final_records(self, step: int) -> list[dict]:
        """At close: the last state, if the last step was not sampled. Weights and the gradients the last
        backward left (no update ratio or activations: those need a step); the record has `"at_close": true`.
        """
        if self.disabled or step <= self.last_sampled:
            return []
        self._disarm()
        t0 = time.perf_counter()
        with torch.no_grad():
            for layer in self._weights:
                layer.stats, layer.before, layer.before_norm = {}, None, None
            for act in self._acts:
                act.reset()
            rec = self._collect(step)
        rec["at_close"] = True
        records = [rec]
        if self._snapshots_on and step % self._snapshot_every != 0:
            snap = self._snapshot(step)
            if snap:
                records.append(snap)
        self.seconds += time.perf_counter() - t0
        self.last_sampled = step
        return records

    def close(self) -> None:
        """Remove every hook and drop references to the model's tensors."""
        self._disarm()
        for layer in self._weights:
            layer.before = layer.before_norm = None
            layer.stats = {}
        for act in self._acts:
            act.reset()

    # ----------------------------------------------------------------- scheduling
    def _due(self, step: int) -> bool:
        """May `step` be sampled: the floor says so, or `every`, or the time budget."""
        if step >= self._floor_next:
            return True
        if step < self._next_step:
            return False
        return self.every is not None or time.perf_counter() >= self._next_time

    def _schedule(self, step: int, cost: float) -> None:
        self.seconds += cost
        if self.floor:
            after = step + 1 if step < FLOOR_DENSE else max(step + 1, math.ceil(step * FLOOR_GROWTH))
            self._floor_next = after if after <= FLOOR_END else math.inf
        if self.every is not None:
            self._next_step = (step // self.every + 1) * self.every
            return
        # Token bucket: the next sample waits until the time spent plus its expected cost (the last one's)
        # fits in budget * elapsed. Over a run the probes take `budget` of the time, whatever they cost.
        self._next_step = step + self.min_every
        self._next_time = self._start + (self.seconds + cost) / self.budget

    def _fail(self, where: str, exc: BaseException) -> None:
        """Switch the probes off. Never removes hooks here: we may be inside the loop that calls them."""
        if not self.disabled:
            self.disabled = True
            self._collecting = False
            _warn(f"layer probes disabled after an internal error in {where} ({type(exc).__name__}: {exc})")

    # ----------------------------------------------------------------- arming
    def _arm(self) -> None:
        t0 = time.perf_counter()
        for act in self._acts:
            act.reset()
            self._handles.append(act.module.register_forward_hook(self._forward_hook(act)))
        for layer in self._weights:
            layer.stats, layer.before, layer.before_norm = {}, None, None
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(_not_compiled(self._pre_step)))
            self._handles.append(self.optimizer.register_step_post_hook(_not_compiled(self._post_step)))
        self._armed = self._collecting = True
        self._stepped = False
        self._cost = time.perf_counter() - t0  # this sample's cost starts with arming

    def _disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._armed = self._collecting = False

    def _forward_hook(self, act: _ActivationLayer):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            # Evaluation passes (no grad, or eval mode) between two training steps are not the batch.
            if not self._collecting or not (module.training and torch.is_grad_enabled()):
                return
            t0 = time.perf_counter()
            try:
                act.observe(output)
            except Exception as exc:  # noqa: BLE001 - an error here would break the user's forward pass
                self._fail(f"the forward hook of {act.name}", exc)
            dt = time.perf_counter() - t0
            self._cost += dt
            self.hook_seconds += dt

        return _not_compiled(hook)

    # ----------------------------------------------------------------- optimizer hooks
    def _optimized(self) -> list[_WeightLayer]:
        in_optimizer = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        return [
            layer for layer in self._weights
            if all(p.requires_grad and id(p) in in_optimizer for p in layer.params)
        ]

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.disabled or self._stepped:
            return
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                for layer in self._optimized():
                    layer.stats = {"kind": "weight", **_grad_stats(layer.params)}
                    layer.before = [p.clone() for p in layer.params]
                    layer.before_norm = _norm(layer.before)
        except Exception as exc:  # noqa: BLE001 - an error here would break optimizer.step()
            self._fail("the optimizer pre-step hook", exc)
        dt = time.perf_counter() - t0
        self._cost += dt
        self.hook_seconds += dt

    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.disabled or self._stepped:
            return
        self._stepped = True
        self._collecting = False  # the activations of this step's batch are in
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                for layer in self._weights:
                    if layer.before is None:
                        continue
                    # ||w_after - w_before||, computed in the clone we own (no second copy)
                    pairs = zip(layer.before, layer.params, strict=True)
                    delta = _norm([b.sub_(p) for b, p in pairs])
                    norm = layer.before_norm
                    ratio = torch.where(norm > 0, delta / norm, math.nan)  # undefined for a zero weight
                    layer.stats.update(_weight_stats(layer.params), update_ratio=ratio)
                    layer.before = layer.before_norm = None
        except Exception as exc:  # noqa: BLE001 - an error here would break optimizer.step()
            self._fail("the optimizer post-step hook", exc)
        dt = time.perf_counter() - t0
        self._cost += dt
        self.hook_seconds += dt

    # ----------------------------------------------------------------- statistics
    def _collect(self, step: int) -> dict:
        self._collecting = False
        stats: dict[str, dict] = {}
        for layer in self._weights:
            if not any(p.requires_grad for p in layer.params):
                continue  # frozen (fine-tuning): nothing to watch, and a zero update is no alarm
            if "w_norm" not in layer.stats:  # not seen by the optimizer hooks (no optimizer, skipped step)
                params = layer.params
                layer.stats = {"kind": "weight", **_weight_stats(params), **_grad_stats(params)}
            stats[layer.name] = layer.stats
            layer.stats, layer.before, layer.before_norm = {}, None, None
        for act in self._acts:
            rec = act.record()
            if rec is not None:
                stats[act.name] = rec
            act.reset()
        return {"type": "layers", "step": step, "time": time.time(), "stats": stats}

    # ----------------------------------------------------------------- snapshots
    def _snapshot(self, step: int) -> dict | None:
        """Save the first layer's weights as .npy (never pickle); one warning and off if that fails."""
        if not self._snapshots_on or self._first is None:
            return None
        if self._dir_seen and not self.run_dir.is_dir():
            return None  # the run directory was deleted: the run says so once; never recreate half of it
        name, module = self._first
        try:
            weight = module.weight.detach()
            if weight.numel() > MAX_SNAPSHOT_ELEMENTS:
                self._snapshots_on = False
                _warn(f"no weight snapshots: {name} has {weight.numel():,} weights "
                      f"(limit {MAX_SNAPSHOT_ELEMENTS:,})")
                return None
            array = weight.float().cpu().numpy()  # a host copy (a sync on GPU): hence only every 100+ steps
            shape = self.input_shape
            if isinstance(module, nn.Linear) and shape and math.prod(shape) == array.shape[1]:
                array = array.reshape(array.shape[0], *shape)  # one image per output unit
            rel = f"{runfile.SNAPSHOTS}/{_safe_name(name)}_step{step:08d}.npy"
            _save_npy(self.run_dir / rel, array)
        except Exception as exc:  # noqa: BLE001 - a full disk must not cost the statistics
            self._snapshots_on = False
            _warn(f"weight snapshots disabled after an error ({type(exc).__name__}: {exc})")
            return None
        self._snapshots += 1
        self._dir_seen = True
        if step > 0 and self._snapshots % SNAPSHOTS_PER_DOUBLING == 0:
            self._snapshot_every *= 2
        return {"type": "snapshot", "step": step, "time": time.time(), "layer": name, "file": rel,
                "shape": list(array.shape)}


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save (never pickle). No temporary file and rename: readers find a snapshot through its record in
    events.jsonl, which is written after this returns, so they never see a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
