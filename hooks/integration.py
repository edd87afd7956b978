"""What the framework callbacks (hooks/lightning.py, hooks/huggingface.py) share: the options they take, the
`hooks.Run` they build from them, and the loss of one optimizer step from its micro-batch losses.

A framework calls back at its own moments; each callback only maps those moments onto `Run.step`, `Run.epoch`
and `Run.close`. Everything about the run itself (its arguments, watching the model, closing it) is here once.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from babysit.hooks.run import Run

__all__ = ["RunCallback", "callback_subclass", "number", "step_loss", "unwrap_optimizer"]


def number(value: Any) -> float | None:
    """A one-element tensor or a real number as a float (a host sync for a tensor); None for anything else."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def step_loss(losses: list[Any], summed: bool = False) -> Any:
    """The loss of one optimizer step from its micro-batch losses: their mean (their sum when each was already
    divided by the whole step's item count); None without any. Device tensors stay on the device: no sync."""
    if not losses:
        return None
    if len(losses) == 1:
        return losses[0]
    if all(isinstance(x, torch.Tensor) for x in losses):
        stacked = torch.stack([x.float().reshape(()) for x in losses])
        return stacked.sum() if summed else stacked.mean()
    total = sum(float(x) for x in losses)
    return total if summed else total / len(losses)


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's AcceleratedOptimizer (or Lightning's LightningOptimizer): the
    layer probes hook the optimizer's step, and a wrapper's step hooks never fire."""
    inner = optimizer
    for _ in range(3):
        inner = getattr(inner, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer):
            return inner
        if inner is None:
            break
    return optimizer


_CLASSES: dict[tuple[type, type], type] = {}


def callback_subclass(hooks: type, base: type, module: str, **attrs: Any) -> type:
    """`BabysitCallback`: the callback logic `hooks` (framework-free) on the framework's callback `base`, built
    once per base on first use, so importing an integration imports no framework."""
    if (hooks, base) not in _CLASSES:
        _CLASSES[hooks, base] = type("BabysitCallback", (hooks, base),
                                     {"__module__": module, "__doc__": hooks.__doc__, **attrs})
    return _CLASSES[hooks, base]


class RunCallback:
    """The part of a framework callback that owns the `hooks.Run`.

    Args:
        path: the run directory.
        num_classes: C (default: what the callback finds in the model's configuration).
        config: extra hyperparameters to record (the callback records the framework's main settings too).
        watch: record per-layer statistics and first-layer snapshots (`every`, `input_shape`,
            `snapshot_every` are passed to `Run.watch`).
        run_kwargs: anything else `hooks.Run` accepts (on_critical, flush_interval, thresholds, all_ranks, ...);
            on_critical defaults to "warn" as for `hooks.Run`.
    """

    def __init__(self, path: str | os.PathLike, num_classes: int | None = None, config: dict | None = None, *,
                 watch: bool = True, every: int | None = None, input_shape: tuple[int, ...] | None = None,
                 snapshot_every: int | None = None, **run_kwargs: Any):
        super().__init__()
        self.path = path
        self.num_classes = num_classes
        self.config = dict(config or {})
        self.on_critical = run_kwargs.pop("on_critical", "warn")
        self.watch_model = watch
        self.watch_kwargs = {"every": every, "input_shape": input_shape, "snapshot_every": snapshot_every}
        self.run_kwargs = run_kwargs
        self.run: Run | None = None

    def _start_run(self, num_classes: int | None, config: dict, global_step: int) -> Run:
        """The run, recording `config` under the user's own `config` (which wins)."""
        # Under torch.distributed, hooks.Run writes from rank 0 only (all_ranks=True: every rank, own dir).
        c = self.num_classes if self.num_classes is not None else num_classes
        self.run = Run(self.path, num_classes=c, config={**config, **self.config}, on_critical=self.on_critical,
                       **self.run_kwargs)
        self.run.global_step = global_step  # resumed from a checkpoint: keep its step count
        return self.run

    def _watch(self, model: Any, optimizer: Any, scheduler: Any = None, scaler: Any = None) -> None:
        """Watch the model (when asked to) and the real optimizer under any wrapper. on_critical="heal"
        (hooks/heal.py) rolls the scheduler and scaler back too; without the model it says so and stops."""
        assert self.run is not None
        watched = model if self.watch_model and isinstance(model, torch.nn.Module) else None
        options = {k: v for k, v in self.watch_kwargs.items() if v is not None} if watched is not None else {}
        self.run.watch(watched, unwrap_optimizer(optimizer), scheduler=scheduler, scaler=scaler, **options)

    def _close(self, state: str | None = None, error: BaseException | None = None) -> None:
        if self.run is not None and not self.run.closed:
            self.run.close(state=state, error=error)
