"""What the structure and data checks need, seen once: the first training batch and the targets of the first
steps (meta.json's `model.head`, `first_batch` and `targets_seen`; docs/FORMAT.md).

The user hands `run.step` only the loss, so the targets are seen where the loss is computed: a
`TorchFunctionMode` observes calls to the torch.nn.functional losses (nn.*Loss modules call them). It is
active only from the end of a training forward pass to the next `run.step` (the whole first forward, for
models that compute their loss inside, like Hugging Face's), only during the first steps (TARGET_STEPS, or
fewer once TARGET_ENOUGH targets are seen); after that every hook is removed and nothing runs. Statistics
stay device tensors (no host sync per step); they are moved to the host once, when the run writes them at a
flush. Nothing here may break training: errors switch it off, the mode is always exited, and a user's own
mode pushed above ours is respected (ours then passes calls through until it is on top again and can be
popped).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode

__all__ = ["FirstBatch", "TARGET_STEPS", "LOSS_FUNCTIONS"]

TARGET_STEPS = 200  # targets_seen covers at most the first this many training steps...
TARGET_ENOUGH = (50, 4096)  # ...and stops at the first step >= 50 with this many targets seen: a histogram
# needs targets, not steps, and every step of the window costs (the mode sees every torch call until run.step)
MAX_BINS = 1024  # class histogram bins (0 .. bins-1) when num_classes is unknown or larger
MAX_CHANNELS = 64  # per-channel input statistics only for this many channels or fewer
_WRITE_AT = (1, 10, 50, TARGET_STEPS)  # steps after which what was gathered is written to meta.json

LOSS_FUNCTIONS = {
    F.cross_entropy: "cross_entropy",
    F.nll_loss: "nll_loss",
    F.binary_cross_entropy: "binary_cross_entropy",
    F.binary_cross_entropy_with_logits: "binary_cross_entropy_with_logits",
    F.mse_loss: "mse_loss",
    F.l1_loss: "l1_loss",
    F.smooth_l1_loss: "smooth_l1_loss",
    F.huber_loss: "huber_loss",
    F.kl_div: "kl_div",
}
_IGNORE_INDEX = {"cross_entropy", "nll_loss"}  # these skip targets equal to ignore_index (default -100)


def _not_compiled(fn):
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(fn) if disable is not None else fn


def _first_tensor(obj: Any, keys: tuple[str, ...] = ()) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict) or hasattr(obj, "keys"):
        try:
            for key in keys:
                if isinstance(obj.get(key), torch.Tensor):
                    return obj[key]
            values = list(obj.values())
        except Exception:  # noqa: BLE001 - an odd container: nothing to see
            return None
        return next((v for v in values if isinstance(v, torch.Tensor)), None)
    if isinstance(obj, (tuple, list)):
        return next((v for v in obj if isinstance(v, torch.Tensor)), None)
    logits = getattr(obj, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else None


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex())


def _basic(t: torch.Tensor) -> dict:
    """dtype, shape and (as device tensors) mean, std, min, max: the statistics every tensor gets."""
    out: dict[str, Any] = {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
                           "integer": _is_integer(t)}
    if t.numel() == 0 or t.is_complex():
        return out
    x = t.detach()
    x = x if x.dtype == torch.float64 else x.float()
    out.update(mean=x.mean(), std=x.std(unbiased=False), min=x.amin(), max=x.amax())
    return out


def _input_stats(t: torch.Tensor) -> dict:
    out = _basic(t)
    # per channel: dim 1 of (N, C) features and (N, C, H, W) images; (N, L, D) is ambiguous, left out
    if t.numel() and not out["integer"] and t.ndim in (2, 4, 5) and t.shape[1] <= MAX_CHANNELS:
        x = t.detach().float().transpose(0, 1).reshape(t.shape[1], -1)
        out["channel_mean"] = list(x.mean(dim=1).unbind())
        out["channel_std"] = list(x.std(dim=1, unbiased=False).unbind())
    return out


def _output_stats(t: torch.Tensor) -> dict:
    """What a structure check needs of a prediction: is it probabilities (softmax) or log-probabilities?"""
    out: dict[str, Any] = {"shape": list(t.shape)}
    if t.numel() == 0 or not t.is_floating_point():
        return out
    x = t.detach().float()
    lo = x.amin()
    out.update(min=lo, max=x.amax(), mean=x.mean(), nonneg=lo >= 0)
    if x.ndim >= 2 and x.shape[-1] > 1:
        out["rows_sum_to_one"] = ((x.sum(dim=-1) - 1).abs().amax() < 1e-3) & (lo >= 0)
        out["log_probs"] = (torch.logsumexp(x, dim=-1).abs().amax() < 1e-3) & (x.amax() <= 1e-6)
    return out


class _LossMode(TorchFunctionMode):
    """Sees calls to the loss functions; passes everything through unchanged."""

    def __init__(self, owner: FirstBatch):
        super().__init__()
        self.owner = owner
        self.passive = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.passive:
            name = LOSS_FUNCTIONS.get(func)
            if name is not None and self.owner._observe_loss(name, args, kwargs):
                out = func(*args, **kwargs)
                self.owner._observe_loss_value(out)  # the first loss term alone: a total may add others
                return out
        return func(*args, **kwargs)


class FirstBatch:
    """Gathers the first batch's statistics, the model's head, and the targets of the first steps."""

    def __init__(self, model: nn.Module, num_classes: int | None = None):
        self.model = model
        self.bins = int(num_classes) if isinstance(num_classes, int) and 0 < num_classes <= MAX_BINS else MAX_BINS
        self.steps = 0  # run.step calls seen
        self.done = False
        self.disabled = False
        self._handles: list[Any] = []
        self._leaf_handles: list[Any] = []
        self._mode: _LossMode | None = None
        self._first: dict[str, Any] | None = None  # the first batch, device tensors until collected
        self._first_written = False
        self._in_first_forward = False
        self._head: tuple[str, nn.Module] | None = None
        self._loss_seen = False  # the loss of the current forward was observed
        self._labels: torch.Tensor | None = None  # a `labels=` keyword of the forward (Hugging Face)
        self._targets: dict[str, Any] | None = None  # targets_seen accumulators (device tensors)
        self._target_steps = 0
        self._target_this_step = False
        self._new = False  # something to write at the next flush
        root = type(model).__name__
        self._handles.append(model.register_forward_pre_hook(_not_compiled(self._pre_forward), with_kwargs=True))
        self._handles.append(model.register_forward_hook(_not_compiled(self._post_forward)))
        for name, module in model.named_modules():
            if not list(module.children()):
                self._leaf_handles.append(module.register_forward_hook(_not_compiled(self._leaf(name or root))))

    # ----------------------------------------------------------------- run-facing
    @property
    def ready(self) -> bool:
        """There is something new to write (checked by the run at a flush: a Python flag, no sync)."""
        return self._new

    def after_step(self) -> None:
        """Called by `run.step`: the loss of this step is done."""
        self._exit_mode()
        self.steps += 1
        if self._target_this_step:
            self._target_steps += 1
            self._target_this_step = False
        if self.steps in _WRITE_AT:
            self._new = True
        acc = self._targets
        enough = self.steps >= TARGET_ENOUGH[0] and acc is not None and acc["count"] >= TARGET_ENOUGH[1]
        if self.steps >= TARGET_STEPS or enough:
            self._remove_hooks()
            self.done = True
            self._new = True

    def collect(self, materialize: Callable[[list[dict]], None]) -> dict[str, Any]:
        """The meta.json fields gathered so far, moved to the host: `materialize` (the run's one transfer
        per device for scalar leaves), plus the histograms. A handful of times in the first steps."""
        self._new = False
        fields: dict[str, Any] = {}
        vectors: dict[str, torch.Tensor] = {}
        if self._first is not None and not self._first_written:
            first = {k: v for k, v in self._first.items() if not k.startswith("_")}
            first = {k: (dict(v) if isinstance(v, dict) else v) for k, v in first.items()}
            if isinstance(self._first.get("_target"), torch.Tensor):
                vectors["target"] = self._first["_target"]
            fields["first_batch"] = first
            self._first_written = self._first.get("loss_fn") is not None or self.steps > 0
        if self._head is not None:
            fields["head"] = {"name": self._head[0], "type": type(self._head[1]).__name__}
        if self._targets is not None:
            acc = self._targets
            vectors["counts"] = acc["counts"]
            fields["targets_seen"] = {"steps": self._target_steps, "count": acc["count"], "min": acc["min"],
                                      "max": acc["max"], "histogram": None, "histogram_bins": self.bins,
                                      "ignored": acc["ignored"]}
        materialize([fields])
        host = {k: v.detach().reshape(-1).cpu().tolist() for k, v in vectors.items()}
        first = fields.get("first_batch")
        if first is not None:
            for key in ("outputs", "loss_input"):
                _as_bools(first.get(key))
            targets = first.get("targets")
            if isinstance(targets, dict):
                _clean(targets)
                if "target" in host and targets.get("integer"):
                    targets["histogram"] = _histogram_of(host["target"], self.bins)
            if isinstance(first.get("inputs"), dict):
                _clean(first["inputs"])
        seen = fields.get("targets_seen")
        if seen is not None:
            seen["ignored"] = int(seen["ignored"])
            if seen["count"] <= seen["ignored"]:
                seen["min"] = seen["max"] = None  # nothing but ignored targets
            else:
                seen["min"], seen["max"] = int(seen["min"]), int(seen["max"])
            seen["histogram"] = {str(c): int(n) for c, n in enumerate(host.get("counts", [])) if n}
        return fields

    def close(self) -> None:
        self._exit_mode(force=True)
        self._remove_hooks()
        self._first = self._targets = None
        self.done = True

    # ----------------------------------------------------------------- hooks
    def _fail(self, exc: BaseException) -> None:
        import warnings

        if not self.disabled:
            self.disabled = True
            warnings.warn(f"babysit: first-batch checks disabled after an internal error ({type(exc).__name__}: "
                          f"{exc}); training continues", RuntimeWarning, stacklevel=2)
        if self._mode is not None:
            self._mode.passive = True

    @staticmethod
    def _training(module: nn.Module) -> bool:
        return module.training and torch.is_grad_enabled()

    def _leaf(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._in_first_forward:
                self._head = (name, module)  # the last leaf to run is the head

        return hook

    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.disabled or not self._training(module):
            return
        try:
            self._exit_mode()  # a new forward: the previous one's loss is done
            self._loss_seen = False
            labels = kwargs.get("labels") if isinstance(kwargs, dict) else None
            self._labels = labels if isinstance(labels, torch.Tensor) else None
            if self._first is None:
                x = _first_tensor(args) if args else None
                if x is None:
                    x = _first_tensor(kwargs, ("input_ids", "pixel_values", "input", "x", "inputs"))
                self._first = {"inputs": _input_stats(x) if x is not None else None, "outputs": None,
                               "loss_fn": None, "loss_input": None, "targets": None}
                self._in_first_forward = True
                self._enter_mode()  # the whole first forward: models that compute their loss inside it
        except Exception as exc:  # noqa: BLE001 - must never break the forward pass
            self._fail(exc)

    def _post_forward(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if self.disabled or not self._training(module):
            return
        try:
            if self._in_first_forward:
                self._in_first_forward = False
                for handle in self._leaf_handles:
                    handle.remove()
                self._leaf_handles = []
                y = _first_tensor(output, ("logits",))
                if y is not None and self._first is not None:
                    self._first["outputs"] = _output_stats(y)
                self._new = True
            if self._labels is not None and not self._loss_seen:
                first = self._first is not None and not self._first.get("_target_seen")
                self._observe_targets(self._labels, -100, first)  # Hugging Face's ignore index
            if self.steps < TARGET_STEPS:
                self._enter_mode()  # until run.step: the loss computed from this output
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _observe_loss(self, name: str, args: tuple, kwargs: dict) -> bool:
        """Sees the first loss call of a step; True for the very first one (whose value is kept too)."""
        if self._loss_seen or self.disabled:
            return False
        self._loss_seen = True
        first = False
        try:
            pred = args[0] if args else kwargs.get("input")
            target = args[1] if len(args) > 1 else kwargs.get("target")
            ignore = kwargs.get("ignore_index", -100) if name in _IGNORE_INDEX else None
            first = self._first is not None and self._first.get("loss_fn") is None
            if first:
                self._first["loss_fn"] = name
                reduction = kwargs.get("reduction", "mean")  # "sum": the loss is N x the per-example one
                self._first["reduction"] = reduction if isinstance(reduction, str) else None
                if isinstance(pred, torch.Tensor):
                    self._first["loss_input"] = _output_stats(pred)
                self._new = True
            if isinstance(target, torch.Tensor):
                self._observe_targets(target, ignore, first)
        except Exception as exc:  # noqa: BLE001 - must never break the loss computation
            self._fail(exc)
        return first and not self.disabled

    def _observe_loss_value(self, out: Any) -> None:
        try:
            if (isinstance(out, torch.Tensor) and out.ndim == 0 and out.is_floating_point()
                    and self._first is not None):
                self._first["loss_value"] = out.detach().float()  # a device scalar: moved at the next flush
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _observe_targets(self, target: torch.Tensor, ignore: int | None, first: bool) -> None:
        with torch.no_grad():
            t = target.detach()
            if first and self._first is not None:
                self._first["_target_seen"] = True
                stats = _basic(t)
                if stats["integer"] and t.numel():
                    keep = t[t != ignore] if ignore is not None else t  # a sync-free mask: boolean indexing syncs
                    stats.update(_basic(keep) if keep.numel() else {})  # ...on GPU; but only once
                    stats["ignore_index"] = ignore
                    self._first["_target"] = t.clone()
                else:
                    stats["histogram"] = None
                self._first["targets"] = stats
            if not _is_integer(t) or t.numel() == 0 or self.steps >= TARGET_STEPS:
                return
            flat = t.reshape(-1).long()
            valid = flat != ignore if ignore is not None else torch.ones_like(flat, dtype=torch.bool)
            big = torch.iinfo(torch.long).max
            lo = torch.where(valid, flat, big).amin()
            hi = torch.where(valid, flat, -big).amax()
            binned = valid & (flat >= 0) & (flat < self.bins)
            acc = self._targets
            if acc is None:
                acc = self._targets = {"counts": torch.zeros(self.bins, dtype=torch.long, device=flat.device),
                                       "min": lo, "max": hi, "count": 0,
                                       "ignored": torch.zeros((), dtype=torch.long, device=flat.device)}
            else:
                acc["min"], acc["max"] = torch.minimum(acc["min"], lo), torch.maximum(acc["max"], hi)
            acc["counts"].index_add_(0, flat.clamp(0, self.bins - 1), binned.long())
            acc["ignored"] += (~valid).sum()
            acc["count"] += flat.numel()
            self._target_this_step = True

    # ----------------------------------------------------------------- the mode
    def _enter_mode(self) -> None:
        if self._mode is not None or self.disabled:
            return
        mode = _LossMode(self)
        mode.__enter__()
        self._mode = mode

    def _exit_mode(self, force: bool = False) -> None:
        mode = self._mode
        if mode is None:
            return
        mode.passive = True  # from now on it only passes calls through
        if _get_current_function_mode() is mode:
            mode.__exit__(None, None, None)
            self._mode = None
        elif force:  # a user's mode above ours: leave the stack to them; ours stays a pass-through
            self._mode = None

    def _remove_hooks(self) -> None:
        for handle in self._handles + self._leaf_handles:
            handle.remove()
        self._handles, self._leaf_handles = [], []


_BOOLS = ("nonneg", "rows_sum_to_one", "log_probs")


def _as_bools(stats: Any) -> None:
    """The flags travelled as 0.0/1.0 with the other scalars."""
    if isinstance(stats, dict):
        for key in _BOOLS:
            if isinstance(stats.get(key), float):
                stats[key] = bool(stats[key]) if stats[key] == stats[key] else None
        _clean(stats)


def _clean(stats: dict) -> None:
    """Integer tensors' min/max back to ints; a NaN (e.g. an empty selection) reads as null."""
    for key, value in list(stats.items()):
        if isinstance(value, float) and value != value:
            stats[key] = None
        elif key in ("min", "max") and stats.get("integer") and isinstance(value, float) and value.is_integer():
            stats[key] = int(value)


def _histogram_of(values: list, bins: int) -> dict[str, int]:
    hist: dict[int, int] = {}
    for v in values:
        v = int(v)
        if 0 <= v < bins:
            hist[v] = hist.get(v, 0) + 1
    return {str(k): hist[k] for k in sorted(hist)}
