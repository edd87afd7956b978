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
import sys
from collections.abc import Mapping
from typing import Any

import torch

from babysit.hooks.integration import RunCallback, callback_subclass, step_loss
from babysit.hooks.run import StopTraining

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


class LightningHooks(RunCallback):
    """Drives a `hooks.Run` from Lightning's callback hooks.

    Args: those of `hooks.integration.RunCallback` (path, num_classes, config, watch, every, input_shape,
    snapshot_every, and anything `hooks.Run` accepts, on_critical included). num_classes defaults to the
    LightningModule's hparams num_classes / n_classes / num_labels; its hparams are recorded with `config`.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._losses: list[Any] = []  # micro-batch losses of the optimizer step in progress
        self._last_global_step = 0

    # --------------------------------------------------------------- lifecycle
    def setup(self, trainer: Any, pl_module: Any, stage: str | None = None) -> None:
        if self.run is not None or stage not in (None, "fit"):
            return
        from babysit.rules.base import num_classes_of

        hparams = {}
        try:
            hparams = dict(getattr(pl_module, "hparams", None) or {})
        except (TypeError, ValueError):
            pass
        config = dict(hparams)
        for key in ("max_epochs", "max_steps", "accumulate_grad_batches", "gradient_clip_val", "precision"):
            value = getattr(trainer, key, None)
            if isinstance(value, (int, float, str)) and key not in config and key not in self.config:
                config[f"trainer.{key}"] = value
        self._last_global_step = int(getattr(trainer, "global_step", 0) or 0)
        self._start_run(num_classes_of(hparams), config, self._last_global_step)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.run is None:
            self.setup(trainer, pl_module, "fit")
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        optimizer = optimizers[0] if optimizers else None
        configs = getattr(trainer, "lr_scheduler_configs", None) or []
        self._watch(pl_module, optimizer, scheduler=getattr(configs[0], "scheduler", None) if configs else None,
                    scaler=getattr(getattr(trainer, "precision_plugin", None), "scaler", None))

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
        mean = step_loss(losses)
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


def callback_class(base: type | None = None) -> type:
    """The Lightning callback class, subclassing `base` (default: the installed Lightning's Callback)."""
    # Lightning keys a callback's checkpointed state by state_key: one per run directory
    return callback_subclass(LightningHooks, base or _lightning_callback_base(), __name__,
                             state_key=property(lambda self: f"BabysitCallback[{self.path}]"))


def __getattr__(name: str) -> Any:
    if name == "BabysitCallback":
        return callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
