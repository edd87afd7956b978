"""noisy_weights: first-layer filters that still look like noise once training has progressed.

Trained first-layer filters are smooth (edges, blobs, strokes); random init is white noise. Roughness is the
high-frequency energy of each filter: the mean squared difference between neighbouring pixels over 4x the
filter's variance, 1 for white noise and near 0 for a smooth filter. Snapshots are .npy files listed in the
snapshots frame, loaded by the engine's loader (`ctx.load_snapshot`: the run format's, without pickle).
"""

from __future__ import annotations

import math

import numpy as np

from babysit.rules.base import Context, Finding, Rule, fmt, meta_dict, meta_layers
from babysit.rules.bugs import Progress

__all__ = ["NoisyWeights", "roughness", "as_images", "image_rows", "layer_type"]

MIN_SIDE = 5  # 3x3 filters are too small to call noisy
MIN_FILTERS = 8


def as_images(w: np.ndarray, layer_type: str | None = None) -> np.ndarray | None:
    """Filters as (n, channels, h, w) when the weights are images, else None.

    Images are conv2d filters (out, in, kh, kw) and a first Linear layer's rows reshaped by a declared
    `watch(input_shape=...)` into (out, *input_shape). A plain 2-D matrix is never an image: an LSTM's head
    with 64 inputs, 256 tabular features or an embedding table drawn as 8x8/16x16 pictures is noise by
    construction. With the layer type unknown (no model summary) only 4-D weights count.
    """
    w = np.asarray(w, dtype=float)
    kind = str(layer_type or "")
    if kind == "Linear" and w.ndim in (3, 4):
        return w[:, None] if w.ndim == 3 else w
    if w.ndim == 4 and kind in ("", "Linear", "Conv2d", "LazyConv2d", "ConvTranspose2d"):
        return w
    return None


def image_rows(ctx: Context, w: np.ndarray, kind: str | None) -> np.ndarray:
    """A first Linear layer's (out, C*H*W) weights as (out, C, H, W) when the recorded first batch is images.

    The model flattens (N, C, H, W) inputs itself, so each row is an image even without watch(input_shape=...).
    Only 4-D batches count: (N, T, F) sequences and (N, F) tables never are.
    """
    shape = meta_dict(meta_dict(ctx.meta, "first_batch"), "inputs").get("shape")
    if kind != "Linear" or w.ndim != 2 or not isinstance(shape, list) or len(shape) != 4:
        return w
    try:
        c, h, wd = (int(v) for v in shape[1:])
    except (TypeError, ValueError):
        return w
    return w.reshape(len(w), c, h, wd) if c * h * wd == w.shape[1] and c > 0 else w


def layer_type(meta, name: str) -> str | None:
    """The module type of a layer in the model summary (meta.json model.layers), if listed."""
    for layer in meta_layers(meta):
        if str(layer.get("name")) == name:
            t = layer.get("type")
            return str(t) if t is not None else None
    return None


def roughness(filters: np.ndarray) -> float:
    """Median over filters of high-frequency energy: ~1 for white noise, ~0 for smooth filters."""
    a = filters - filters.mean(axis=(2, 3), keepdims=True)
    var = (a**2).mean(axis=(1, 2, 3))
    dy = ((a[:, :, 1:, :] - a[:, :, :-1, :]) ** 2).mean(axis=(1, 2, 3))
    dx = ((a[:, :, :, 1:] - a[:, :, :, :-1]) ** 2).mean(axis=(1, 2, 3))
    ok = var > 0
    if not ok.any():
        return math.nan
    return float(np.median((dx[ok] + dy[ok]) / (4 * var[ok])))


class NoisyWeights(Rule):
    id = "noisy_weights"
    title = "First-layer weights look like noise"
    fix = ("noisy_weights_regularize", "noisy_weights_wait", ("lower_lr", "if the filters got noisier than at init"))
    needs = ("snapshots",)

    def __init__(self, thresholds: dict):
        super().__init__(thresholds)
        self.init: tuple[int, np.ndarray] | None = None
        self.severity = None
        self.latest: tuple[int, str] | None = None
        self.progress = Progress(thresholds)  # for the train accuracy

    @staticmethod
    def _load(ctx: Context, rel: str) -> np.ndarray | None:
        arr = ctx.load_snapshot(rel)  # the format's loader: inside the run, header checked, no pickle
        return arr if isinstance(arr, np.ndarray) and np.issubdtype(arr.dtype, np.number) else None

    def update(self, batch, ctx: Context) -> list[Finding]:
        self.progress.feed(ctx)
        snaps = ctx.snapshots
        if self.severity == "warning" or not len(snaps):
            return []
        steps = snaps.ints("step")
        order = np.argsort(steps, kind="stable")
        if self.init is None:
            first = int(order[0])
            arr = self._load(ctx, str(snaps.raw("file")[first]))
            if arr is None:
                return []
            self.init = (int(steps[first]), arr)
        last = int(order[-1])
        step = int(steps[last])
        row = {"file": str(snaps.raw("file")[last]), "layer": str(snaps.raw("layer")[last])}
        if step - self.init[0] < self.th["noisy_weights_min_steps"]:
            return []
        kind = layer_type(ctx.meta, row["layer"])
        arr = self._load(ctx, str(row["file"]))
        w0, w = as_images(image_rows(ctx, self.init[1], kind), kind), None
        if arr is not None:
            w = as_images(image_rows(ctx, arr, kind), kind)
        if w is None or w0 is None or w.shape != w0.shape or min(w.shape[2:]) < MIN_SIDE:
            return []
        if not np.isfinite(w).all():
            return []  # nonfinite_loss reports NaN weights
        r, r0 = roughness(w), roughness(w0)
        delta = w - w0
        moved = float(np.linalg.norm(delta) / max(np.linalg.norm(w0), 1e-12))
        rd = roughness(delta) if moved > 0 else math.nan
        if not (math.isfinite(r) and r >= self.th["noisy_weights_roughness"]) or moved < 1e-6:
            return []  # smooth enough, or a frozen (pretrained) first layer
        # A warning only when training clearly moved the filters and what it added is itself noise;
        # filters that are still mostly their random init get an info note (train longer).
        noisy_change = (moved >= 1.0 and math.isfinite(rd) and rd >= self.th["noisy_weights_roughness"]
                        and len(w) >= MIN_FILTERS)  # a median over 2 filters is no evidence
        # Filters still mostly their init are only an info note, even when the net already fits its training
        # data: an easy task is fitted by a big first layer long before its init noise fades (measured: digits
        # at 28x28, weight decay 1e-3, 300 steps: 99% train accuracy, roughness 0.82).
        acc = self.progress.accuracy
        severity = "warning" if noisy_change else "info"
        if self.severity == severity:
            return []
        self.severity = severity
        layer = str(row["layer"])
        msg = (f"first-layer filters of {layer} look like noise at step {step}: roughness {fmt(r, 2)} "
               f"(white noise 1, smooth filters ~0.3 or less; at init {fmt(r0, 2)}); training moved them "
               f"{fmt(100 * moved, 3)}% of their initial norm"
               + (f" and the change itself is noise (roughness {fmt(rd, 2)})" if noisy_change else "")
               + (f"; train accuracy {fmt(acc)}" if acc is not None else ""))
        evidence = {"step": step, "layer": layer, "roughness": r, "roughness_init": r0, "moved": moved,
                    "roughness_change": rd, "file": str(row["file"]), "shape": list(w.shape), "train_accuracy": acc}
        fix = list(self.fix) if severity == "warning" else [self.fix[1], self.fix[0]]
        return [self.finding(ctx, severity, step, msg, evidence, fix)]
