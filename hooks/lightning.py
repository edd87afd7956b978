"""PyTorch Lightning: one line records a run with the babysit hooks.

    from babysit.hooks.lightning import BabysitCallback
    trainer = L.Trainer(callbacks=[BabysitCallback("runs/exp1", num_classes=10)])

Every optimizer step's training loss (the value `training_step` returns, as your own loop would see it:
the mean over the step's micro-batches, whatever `accumulate_grad_batches`), the learning rate, per-layer
statistics and first-layer snapshots go through `hooks.Run`; at
the end of each training epoch (after validation) the trainer's `callback_metrics` become the epoch record,
with `train_loss`, `train_acc`, `val_loss`, `val_acc` found under the names people log them as. A STOP file,
or a critical finding with `on_critical="stop"`, sets `trainer.should_stop`.

Lightning is optional: importing this module costs nothing; `BabysitCallback` is built on first use from
whichever of `lightning.pytorch` and `pytorch_lightning` you already imported (else whichever is installed).
`LightningHooks` is the same logic without the base class; it only needs the attributes it reads.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

import torch
from babysit.hooks.huggingface import unwrap_optimizer
from babysit.hooks.run import Run, StopTraining

__all__ = ["BabysitCallback", "LightningHooks", "callback_class"]  # noqa: F822 - built on first use (__getattr__)


def _loss_of(outputs: Any) -> torch.Tensor | float | None:
    if isinstance(outputs, torch.Tensor):
        return outputs.detach()
    if isinstance(outputs, Mapping):
        loss = outputs.get("loss")
        if isinstance(loss, torch.Tensor):
            return loss.detach()
        if isinstance(loss, (int, float)):
            return float(loss)
    return None


def _accumulation_scale(trainer: Any, pl_module: Any) -> int:
    """Automatic optimization hands on_train_batch_end the loss already divided by accumulate_grad_batches
    (the value it calls backward on); undo that so the record is the loss training_step returned. Manual
    optimization hands it through untouched."""
    if not getattr(pl_module, "automatic_optimization", True):
        return 1
    n = getattr(trainer, "accumulate_grad_batches", 1)
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def _numbers(metrics: Mapping) -> dict[str, Any]:
    """Scalars only (tensors with one element, numbers): anything else is not an epoch metric."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[str(k)] = v.detach().reshape(())
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[str(k)] = float(v)
    return out


class LightningHooks:
    """Drives a `hooks.Run` from Lightning's callback hooks.

    Args:
        path: the run directory.
        num_classes: C (default: the LightningModule's hparams num_classes / n_classes / num_labels).
        config: extra hyperparameters to record (the module's hparams are recorded too).
        on_critical: as for hooks.Run ("warn", "stop", "raise" or None).
        watch: record per-layer statistics and first-layer snapshots (`every`, `input_shape`,
            `snapshot_every` are passed to `Run.watch`).
        run_kwargs: anything else `hooks.Run` accepts (flush_interval, thresholds, all_ranks, ...).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        num_classes: int | None = None,
        config: dict | None = None,
        *,
        on_critical: str | None = "warn",
        watch: bool = True,
        every: int | None = None,
        input_shape: tuple[int, ...] | None = None,
        snapshot_every: int | None = None,
        **run_kwargs: Any,
    ):
        super().__init__()
        self.path = path
        self.num_classes = num_classes
        self.config = dict(config or {})
        self.on_critical = on_critical
        self.watch_model = watch
        self.watch_kwargs = {"every": every, "input_shape": input_shape, "snapshot_every": snapshot_every}
        self.run_kwargs = run_kwargs
        self.run: Run | None = None
        self._losses: list[Any] = []  # micro-batch losses of the optimizer step in progress
        self._last_global_step = 0

    # --------------------------------------------------------------- lifecycle
    def setup(self, trainer: Any, pl_module: Any, stage: str | None = None) -> None:
        if self.run is not None or stage not in (None, "fit"):
            return
        from babysit.monitor.importers.series import num_classes_of

        hparams = {}
        try:
            hparams = dict(getattr(pl_module, "hparams", None) or {})
        except (TypeError, ValueError):
            pass
        config = {**hparams, **self.config}
        for key in ("max_epochs", "max_steps", "accumulate_grad_batches", "gradient_clip_val", "precision"):
            value = getattr(trainer, key, None)
            if isinstance(value, (int, float, str)) and key not in config:
                config[f"trainer.{key}"] = value
        c = self.num_classes if self.num_classes is not None else num_classes_of(hparams)
        self.run = Run(self.path, num_classes=c, config=config, on_critical=self.on_critical, **self.run_kwargs)
        self._last_global_step = int(getattr(trainer, "global_step", 0) or 0)
        self.run.global_step = self._last_global_step  # resumed from a checkpoint: keep its step count

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.run is None:
            self.setup(trainer, pl_module, "fit")
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        optimizer = optimizers[0] if optimizers else None
        optimizer = unwrap_optimizer(optimizer)  # a wrapper's step hooks never fire: probe the real one
        # on_critical="heal" (hooks/heal.py) rolls these back too; without the module it says so and stops
        configs = getattr(trainer, "lr_scheduler_configs", None) or []
        heal = {"scheduler": getattr(configs[0], "scheduler", None) if configs else None,
                "scaler": getattr(getattr(trainer, "precision_plugin", None), "scaler", None)}
        if self.watch_model and isinstance(pl_module, torch.nn.Module):
            self.run.watch(pl_module, optimizer, **heal,
                           **{k: v for k, v in self.watch_kwargs.items() if v is not None})
        else:
            self.run.watch(None, optimizer)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        run = self.run
        if run is None:
            return
        loss = _loss_of(outputs)
        if loss is not None:
            scale = _accumulation_scale(trainer, pl_module)
            self._losses.append(loss * scale if scale != 1 else loss)
        step = int(getattr(trainer, "global_step", 0) or 0)
        if step <= self._last_global_step:
            return  # accumulating gradients: no optimizer step yet
        self._last_global_step = step
        losses, self._losses = self._losses, []
        if not losses:
            mean = None
        elif len(losses) == 1:
            mean = losses[0]
        elif all(isinstance(x, torch.Tensor) for x in losses):
            mean = torch.stack([x.float().reshape(()) for x in losses]).mean()  # stays on the device: no sync
        else:
            mean = sum(float(x) for x in losses) / len(losses)
        try:
            run.step(loss=mean)
        except StopTraining:
            trainer.should_stop = True
            raise
        if run.should_stop:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.run is None or getattr(trainer, "sanity_checking", False):
            return
        from babysit.monitor.importers.names import epoch_metrics

        metrics = epoch_metrics(_numbers(getattr(trainer, "callback_metrics", None) or {}))
        self.run.epoch(**metrics)
        if self.run.should_stop:
            trainer.should_stop = True

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if isinstance(exception, StopTraining):
            self._close("stopped")
        elif isinstance(exception, KeyboardInterrupt):
            if self.run is not None:
                self.run.stop_reason = self.run.stop_reason or "interrupted (Ctrl-C)"
            self._close("stopped")
        else:
            self._close("crashed", exception)

    def teardown(self, trainer: Any, pl_module: Any, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self._close()

    def _close(self, state: str | None = None, error: BaseException | None = None) -> None:
        if self.run is not None and not self.run.closed:
            self.run.close(state=state, error=error)

    # Lightning saves callback state in checkpoints; the run directory is the state worth keeping.
    def state_dict(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def _lightning_callback_base() -> type:
    for name in ("lightning.pytorch", "pytorch_lightning"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "Callback"):
            return module.Callback
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name).Callback
        except ImportError:
            continue
    raise ImportError("babysit's Lightning callback needs PyTorch Lightning: pip install lightning")


_CLASSES: dict[type, type] = {}


def callback_class(base: type | None = None) -> type:
    """The Lightning callback class, subclassing `base` (default: the installed Lightning's Callback)."""
    base = base or _lightning_callback_base()
    if base not in _CLASSES:
        _CLASSES[base] = type("BabysitCallback", (LightningHooks, base), {
            "__module__": __name__,
            "__doc__": LightningHooks.__doc__,
            "state_key": property(lambda self: f"BabysitCallback[{self.path}]"),
        })
    return _CLASSES[base]


def __getattr__(name: str) -> Any:
    if name == "BabysitCallback":
        return callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
