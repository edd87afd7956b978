"""Hugging Face Trainer: one line records a run with the babysit hooks.

    from babysit.hooks.huggingface import BabysitCallback
    trainer = Trainer(..., callbacks=[BabysitCallback("runs/exp1")])

The Trainer hands callbacks no per-step loss, so the callback reads it where your own loop would: a forward
hook on the model takes the `loss` the model returns in training mode (a tensor, kept on the device), and
each optimizer step records the mean over its micro-batches, whatever `gradient_accumulation_steps` (when the
Trainer passes `num_items_in_batch`, the model already divides by the whole step's item count, and the
micro-batch losses are summed instead). NaN and inf are recorded as they happen (the Trainer's own log
replaces them by a running mean under `logging_nan_inf_filter`). A model that returns no loss (a custom
`compute_loss` or `compute_loss_func`) falls back to the Trainer's `on_log` loss: the mean over the last
`logging_steps` steps (set `logging_steps=1` or so for a useful curve). Evaluation metrics (`eval_loss`,
`eval_accuracy`, ...) become `val_loss`, `val_acc` in the epoch record; `train_loss` per epoch is the mean of
the step losses recorded during the epoch. A STOP file, or a critical finding with `on_critical="stop"`, sets
`control.should_training_stop`.

The Trainer has no exception hook: a run that crashes is left "running" and shows as crashed once its
process is gone (the reader checks the pid).

transformers is optional: importing this module costs nothing; `BabysitCallback` subclasses
`transformers.TrainerCallback` on first use. `HFHooks` is the same logic without the base class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from babysit.hooks.integration import RunCallback, callback_subclass, number, step_loss

__all__ = ["BabysitCallback", "HFHooks", "callback_class"]  # noqa: F822 - built on first use (__getattr__)

_ARGS = ("learning_rate", "weight_decay", "num_train_epochs", "max_steps", "per_device_train_batch_size",
         "gradient_accumulation_steps", "warmup_steps", "warmup_ratio", "lr_scheduler_type", "optim", "seed",
         "max_grad_norm", "adam_beta1", "adam_beta2", "fp16", "bf16", "logging_steps", "eval_strategy")


def _model_loss(output: Any) -> torch.Tensor | None:
    """The `loss` of a model output (a ModelOutput or a dict), as a scalar tensor; None if it has none."""
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if not isinstance(loss, torch.Tensor) or loss.numel() == 0:
        return None
    return loss.detach().float().mean()  # DataParallel returns one loss per device


def _eval_metrics(metrics: Mapping) -> dict[str, float]:
    """eval_loss, eval_accuracy, ... -> val_loss, val_acc, ... (runtime and throughput numbers dropped)."""
    from babysit.monitor.importers.names import epoch_metrics

    numbers = {}
    for k, v in metrics.items():
        x = number(v)
        if x is None or str(k) == "epoch" or str(k).endswith(("_runtime", "_per_second")):
            continue
        numbers[str(k)] = x
    return {k: v for k, v in epoch_metrics(numbers).items() if not k.startswith("train_")}


class HFHooks(RunCallback):
    """Drives a `hooks.Run` from the Hugging Face Trainer's callback events.

    Args: those of `hooks.integration.RunCallback` (path, num_classes, config, watch, every, input_shape,
    snapshot_every, and anything `hooks.Run` accepts, on_critical included). num_classes defaults to the
    model's config.num_labels; the main TrainingArguments are recorded with `config`.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._step_pending = False  # an optimizer step ended; its loss may still come in on_log
        self._epoch_pending = False  # an epoch ended; its eval metrics may still come in on_evaluate
        self._epoch_losses: list[Any] = []
        self._val: dict[str, float] = {}
        self._micro: list[torch.Tensor] = []  # model losses of the optimizer step in progress
        self._summed = False  # the model divided by the whole step's num_items_in_batch: sum, don't average
        self._step_loss: torch.Tensor | None = None  # the loss of the step that just ended
        self._hook: Any = None

    # --------------------------------------------------------------- bookkeeping
    def _flush_step(self, loss: Any = None, **scalars: Any) -> None:
        if self._step_pending and self.run is not None:
            self._step_pending = False
            if self._step_loss is not None:  # the model's own loss beats the Trainer's logged mean
                loss, self._step_loss = self._step_loss, None
            if loss is not None:
                self._epoch_losses.append(loss)
            self.run.step(loss=loss, **scalars)

    def _capture(self, module: torch.nn.Module, args: Any, kwargs: dict, output: Any) -> None:
        """Forward hook: keep each training micro-batch's loss (evaluation runs in eval mode: skipped)."""
        if not module.training or not torch.is_grad_enabled():
            return
        loss = _model_loss(output)
        if loss is not None:
            self._micro.append(loss)
            self._summed = kwargs.get("num_items_in_batch") is not None

    def _flush_epoch(self) -> None:
        if not self._epoch_pending or self.run is None:
            return
        self._epoch_pending = False
        metrics = dict(self._val)
        if self._epoch_losses:
            metrics["train_loss"] = step_loss(self._epoch_losses)  # the epoch's mean step loss
        self._epoch_losses, self._val = [], {}
        self.run.epoch(**metrics)

    def _stop(self, control: Any) -> Any:
        if self.run is not None and self.run.should_stop and control is not None:
            control.should_training_stop = True
        return control

    # --------------------------------------------------------------- events
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> Any:
        if self.run is not None:
            return control
        config = {k: getattr(args, k) for k in _ARGS if hasattr(args, k)}
        config = {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in config.items()}
        labels = getattr(getattr(model, "config", None), "num_labels", None)
        c = int(labels) if isinstance(labels, int) and labels >= 2 else None
        self._start_run(c, config, int(getattr(state, "global_step", 0) or 0))
        self._watch(model, optimizer, scheduler=kwargs.get("lr_scheduler"))
        if isinstance(model, torch.nn.Module):
            self._hook = model.register_forward_hook(self._capture, with_kwargs=True)
        return control

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._flush_step()
        self._flush_epoch()
        return self._stop(control)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._flush_step()  # a step left pending (no on_log came): record it before this one
        micro, self._micro = self._micro, []
        if micro:
            self._step_loss = step_loss(micro, summed=self._summed)
        self._step_pending = True  # recorded in on_log (which brings grad_norm) or at the next event
        return self._stop(control)

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping | None = None, **kwargs: Any) -> Any:
        logs = logs or {}
        loss = number(logs.get("loss"))
        if loss is not None:
            grad_norm = number(logs.get("grad_norm"))
            self._flush_step(loss, **({"grad_norm": grad_norm} if grad_norm is not None else {}))
        if any(str(k).startswith("eval_") for k in logs):
            self._val.update(_eval_metrics(logs))
        return self._stop(control)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Mapping | None = None,
                    **kwargs: Any) -> Any:
        self._val.update(_eval_metrics(metrics or {}))
        self._flush_epoch()  # eval at an epoch's end: its record can be written now
        return self._stop(control)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._flush_step()
        self._flush_epoch()
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._flush_step()
        self._epoch_pending = True
        return self._stop(control)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._flush_step()
        self._flush_epoch()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._close()
        return control


def callback_class(base: type | None = None) -> type:
    """The Trainer callback class, subclassing `base` (default: transformers.TrainerCallback)."""
    if base is None:
        try:
            from transformers import TrainerCallback as base
        except ImportError:
            raise ImportError("babysit's Hugging Face callback needs transformers: pip install transformers") from None
    return callback_subclass(HFHooks, base, __name__)


def __getattr__(name: str) -> Any:
    if name == "BabysitCallback":
        return callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
