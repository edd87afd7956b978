"""What the cases share: small datasets, small models, and the plain training loop a user would write.

Everything is deterministic (fixed seeds, one thread) and small enough to train on a CPU in seconds.
A case that needs a loop with a bug in it writes its own loop with `batches`, `evaluate` and `log_epoch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.faults.api import Run

__all__ = ["Data", "digits", "toy2d", "tabular", "sequences", "waves", "regression", "mlp", "cnn", "resnet",
           "LSTMClassifier", "TinyTransformer", "open_run", "fit", "batches", "evaluate", "log_epoch",
           "relu_dead_fraction", "saturated_fraction", "roughness", "seed_all"]


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Data:
    """Train and validation tensors; `num_classes` None for regression."""

    x: torch.Tensor
    y: torch.Tensor
    xv: torch.Tensor
    yv: torch.Tensor
    num_classes: int | None

    def with_(self, **kw) -> Data:
        return replace(self, **kw)


def _split(x: np.ndarray, y: np.ndarray, val_frac: float = 0.2, seed: int = 0):
    idx = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(len(x) * val_frac))
    return x[idx[n_val:]], y[idx[n_val:]], x[idx[:n_val]], y[idx[:n_val]]


def _standardize(x: np.ndarray, xv: np.ndarray):
    """Zero-center and scale each feature with the TRAINING split's statistics (the lecture's preprocessing)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    return (x - mean) / std, (xv - mean) / std


def _tensors(x, y, xv, yv, num_classes, y_float=False) -> Data:
    ty = torch.float32 if y_float else torch.long
    return Data(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=ty),
                torch.as_tensor(xv, dtype=torch.float32), torch.as_tensor(yv, dtype=ty), num_classes)


@cache
def _digits_raw():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)  # pixels 0..16, 1797 images of 8x8


def digits(size: int = 8, scale: str = "standard", flat: bool = False, n_train: int | None = None) -> Data:
    """sklearn's digits as (N, 1, size, size) images (or flat vectors), 10 classes, 1437 train / 360 val.

    scale: "standard" subtracts the training mean image and divides by the pixel std; "unit" is pixels/16
    (0..1, the common practice); "raw" keeps 0..16; "255" is 0..255 like an image file.
    """
    x, y = _digits_raw()
    x, y, xv, yv = _split(x, y)
    if scale == "standard":  # the lecture's preprocessing: subtract the mean image, divide by the pixel std
        mean, std = x.mean(0), x.std()
        x, xv = (x - mean) / std, (xv - mean) / std
    elif scale == "unit":
        x, xv = x / 16.0, xv / 16.0
    elif scale == "255":
        x, xv = x * (255.0 / 16.0), xv * (255.0 / 16.0)
    elif scale != "raw":
        raise ValueError(scale)
    if n_train is not None:
        x, y = x[:n_train], y[:n_train]
    d = _tensors(x.reshape(-1, 1, 8, 8), y, xv.reshape(-1, 1, 8, 8), yv, 10)
    if size != 8:
        up = lambda t: F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
        d = d.with_(x=up(d.x), xv=up(d.xv))
    if flat:
        d = d.with_(x=d.x.flatten(1), xv=d.xv.flatten(1))
    return d


def toy2d(kind: str = "moons", n: int = 1000, noise: float = 0.1, seed: int = 0) -> Data:
    """2-D toy sets: moons and circles (2 classes), spirals (3 arms, 3 classes); standardized."""
    from sklearn.datasets import make_circles, make_moons

    if kind == "moons":
        x, y = make_moons(n, noise=noise, random_state=seed)
    elif kind == "circles":
        x, y = make_circles(n, noise=noise, factor=0.5, random_state=seed)
    elif kind == "spirals":
        rng = np.random.default_rng(seed)
        k = 3
        y = np.repeat(np.arange(k), n // k)
        r = np.tile(np.linspace(0.05, 1, n // k), k)
        t = y * (2 * np.pi / k) + r * 4 + rng.normal(0, noise, len(y))
        x = np.stack([r * np.sin(t), r * np.cos(t)], 1)
    else:
        raise ValueError(kind)
    x, y, xv, yv = _split(x.astype(np.float32), y.astype(np.int64), seed=seed)
    x, xv = _standardize(x, xv)
    return _tensors(x, y, xv, yv, int(y.max()) + 1)


def tabular(kind: str = "breast_cancer", scale: str = "standard", seed: int = 0, **kw) -> Data:
    """breast_cancer (30 features, 2 classes), wine (13, 3 classes) or synthetic make_classification."""
    from sklearn import datasets

    if kind == "breast_cancer":
        x, y = datasets.load_breast_cancer(return_X_y=True)
    elif kind == "wine":
        x, y = datasets.load_wine(return_X_y=True)
    elif kind == "synthetic":
        args = dict(n_samples=2000, n_features=256, n_informative=24, n_redundant=8, n_classes=4,
                    class_sep=1.5, flip_y=0.01, random_state=seed)
        args.update(kw)
        x, y = datasets.make_classification(**args)
    else:
        raise ValueError(kind)
    x, y, xv, yv = _split(x.astype(np.float32), y.astype(np.int64), seed=seed)
    if scale == "standard":
        x, xv = _standardize(x, xv)
    return _tensors(x, y, xv, yv, int(y.max()) + 1)


def sequences(n: int = 2000, length: int = 20, vocab: int = 12, seed: int = 0) -> Data:
    """Token sequences (ids 0..vocab-1); the label is which of tokens 1, 2, 3 occurs most often (3 classes)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab, size=(n, length))
    counts = np.stack([(x == t).sum(1) for t in (1, 2, 3)], 1) + rng.random((n, 3)) * 0.5  # random tie-break
    y = counts.argmax(1)
    x, y, xv, yv = _split(x, y.astype(np.int64), seed=seed)
    return Data(torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(xv), torch.as_tensor(yv), 3)


def waves(n: int = 1500, length: int = 32, seed: int = 0) -> Data:
    """Noisy sine waves (n, length, 1); the label is the frequency band (3 classes)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    freq = np.array([1.0, 2.0, 3.5])[y] + rng.normal(0, 0.1, n)
    t = np.linspace(0, 2 * np.pi, length)
    x = np.sin(freq[:, None] * t[None] + rng.uniform(0, 2 * np.pi, (n, 1))) + rng.normal(0, 0.3, (n, length))
    x, y, xv, yv = _split(x[..., None].astype(np.float32), y.astype(np.int64), seed=seed)
    return _tensors(x, y, xv, yv, 3)


def regression(kind: str = "synthetic", scale_y: bool = True, seed: int = 0) -> Data:
    """make_regression (20 features, targets ~ +-300) or diabetes (10 features, targets 25..346)."""
    from sklearn import datasets

    if kind == "synthetic":
        x, y = datasets.make_regression(n_samples=1500, n_features=20, n_informative=10, noise=10.0,
                                        random_state=seed)
    elif kind == "diabetes":
        x, y = datasets.load_diabetes(return_X_y=True)
    else:
        raise ValueError(kind)
    x, y, xv, yv = _split(x.astype(np.float32), y.astype(np.float32), seed=seed)
    x, xv = _standardize(x, xv)
    if scale_y:
        mean, std = y.mean(), y.std()
        y, yv = (y - mean) / std, (yv - mean) / std
    return _tensors(x, y[:, None], xv, yv[:, None], None, y_float=True)


# --------------------------------------------------------------------------- models
def mlp(sizes: list[int], act: type[nn.Module] = nn.ReLU, dropout: float = 0.0, bn: bool = False) -> nn.Sequential:
    """Flatten, then Linear layers of `sizes` with `act` (and BatchNorm / dropout) between them."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            if bn:
                layers.append(nn.BatchNorm1d(b))
            layers.append(act())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def cnn(channels: int = 1, width: int = 16, classes: int = 10, bn: bool = True, act=nn.ReLU) -> nn.Sequential:
    """Two conv blocks (conv, [BN], act, maxpool), average pool to 2x2, linear head."""
    def block(a, b):
        return [nn.Conv2d(a, b, 3, padding=1), *([nn.BatchNorm2d(b)] if bn else []), act(), nn.MaxPool2d(2)]
    return nn.Sequential(*block(channels, width), *block(width, 2 * width),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * width, classes))


class _Block(nn.Module):
    def __init__(self, a: int, b: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(a, b, 3, stride, 1, bias=False), nn.BatchNorm2d(b)
        self.conv2, self.bn2 = nn.Conv2d(b, b, 3, 1, 1, bias=False), nn.BatchNorm2d(b)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.short = nn.Identity() if stride == 1 and a == b else nn.Sequential(
            nn.Conv2d(a, b, 1, stride, bias=False), nn.BatchNorm2d(b))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.short(x))


def resnet(channels: int = 1, width: int = 16, classes: int = 10) -> nn.Sequential:
    """A small ResNet: stem, three residual blocks (the last two downsample), pool, head."""
    return nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         _Block(width, width, 1), _Block(width, 2 * width, 2), _Block(2 * width, 2 * width, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes))


class LSTMClassifier(nn.Module):
    """Embedding (token ids) or a linear projection (float sequences), an LSTM, the last state to a head."""

    def __init__(self, classes: int, vocab: int | None = None, inputs: int = 1, hidden: int = 32, emb: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb) if vocab else nn.Linear(inputs, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.lstm(self.embed(x))
        return self.head(out[:, -1])


class TinyTransformer(nn.Module):
    """Token embedding + learned positions, a 2-layer Transformer encoder, mean pooling, a head."""

    def __init__(self, classes: int, vocab: int, length: int, d: int = 32, layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x) + self.pos).mean(1))


# --------------------------------------------------------------------------- the loop
def seed_all(seed: int = 0) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def open_run(run_dir, num_classes: int | None, **config) -> Run:
    """The user's one line: a babysit run for this training, warning (not stopping) on critical findings."""
    return Run(run_dir, num_classes=num_classes, config=config, on_critical="warn")


def batches(n: int, batch_size: int, gen: torch.Generator, shuffle: bool = True):
    """Index tensors of one epoch's minibatches (the last one may be smaller)."""
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def _acc(out: torch.Tensor, y: torch.Tensor) -> float:
    return (out.argmax(1) == y).float().mean().item()


@torch.no_grad()
def evaluate(model: nn.Module, x, y, loss_fn=F.cross_entropy, classify: bool = True, batch: int = 1024):
    """(loss, accuracy or None) over a whole split, in eval mode."""
    was = model.training
    model.eval()
    outs = torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])
    model.train(was)
    return loss_fn(outs, y).item(), (_acc(outs, y) if classify else None)


def log_epoch(run: Run, train_loss: float, train_acc: float | None, val=None) -> dict:
    """run.epoch with the keys the rules know; val is (loss, acc) on epochs with validation, else None."""
    m = {"train_loss": train_loss}
    if train_acc is not None:
        m["train_acc"] = train_acc
    if val is not None:
        m["val_loss"] = val[0]
        if val[1] is not None:
            m["val_acc"] = val[1]
    run.epoch(**m)
    return m


def fit(run: Run, model: nn.Module, opt: torch.optim.Optimizer, d: Data, *, epochs: int, batch_size: int,
        loss_fn=F.cross_entropy, sched=None, val_every: int = 1, accum: int = 1, clip: float | None = None,
        seed: int = 0, shuffle: bool = True, max_steps: int | None = None) -> dict:
    """The ordinary minibatch loop: forward, loss, backward, (clip), step, zero_grad, scheduler per step.

    `accum` > 1 accumulates gradients over that many minibatches per optimizer step (run.step is still
    called on every minibatch). Returns the last epoch's metrics plus the final validation numbers.
    """
    gen = torch.Generator().manual_seed(seed)
    classify = d.num_classes is not None
    last: dict = {}
    step = 0
    bad = 0
    for epoch in range(1, epochs + 1):
        losses, accs = [], []
        for i, idx in enumerate(batches(len(d.x), batch_size, gen, shuffle)):
            out = model(d.x[idx])
            loss = loss_fn(out, d.y[idx])
            (loss / accum).backward()
            if (i + 1) % accum == 0:
                if clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
                opt.zero_grad()
                if sched is not None:
                    sched.step()
            run.step(loss=loss)
            step += 1
            losses.append(loss.item())
            if classify:
                accs.append(_acc(out.detach(), d.y[idx]))
            bad = 0 if math.isfinite(losses[-1]) else bad + 1
            if bad >= 50 or (max_steps and step >= max_steps):
                break
        val = evaluate(model, d.xv, d.yv, loss_fn, classify) if epoch % val_every == 0 or epoch == epochs else None
        last = log_epoch(run, float(np.mean(losses)), float(np.mean(accs)) if classify else None, val)
        if bad >= 50 or (max_steps and step >= max_steps):  # the user sees NaN for a while and kills the run
            break
    last["steps"] = step
    return last


# --------------------------------------------------------------------------- facts for --check
@torch.no_grad()
def relu_dead_fraction(model: nn.Module, x: torch.Tensor) -> float:
    """Fraction of ReLU units (all ReLU modules together) that output zero for every input in x."""
    dead, total = [0], [0]

    def hook(_m, _i, out):
        fired = (out > 0).flatten(2).any(2) if out.dim() > 2 else (out > 0)  # per channel for conv maps
        alive = fired.any(0)
        dead[0] += int((~alive).sum())
        total[0] += alive.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    was = model.training
    model.eval()
    model(x)
    model.train(was)
    for h in handles:
        h.remove()
    return dead[0] / max(total[0], 1)


@torch.no_grad()
def saturated_fraction(model: nn.Module, x: torch.Tensor) -> float:
    """Fraction of Tanh/Sigmoid outputs within 1% of their bounds on x."""
    sat, total = [0], [0]

    def hook(m, _i, out):
        lo = -1.0 if isinstance(m, nn.Tanh) else 0.0
        near = (out > 0.99) | (out < lo + 0.01) if lo == 0.0 else (out.abs() > 0.99)
        sat[0] += int(near.sum())
        total[0] += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Tanh, nn.Sigmoid))]
    model(x)
    for h in handles:
        h.remove()
    return sat[0] / max(total[0], 1)


def roughness(images: torch.Tensor) -> float:
    """Mean |difference between neighbouring pixels| over the std, for (n, h, w) weight images.

    About 1.1 for white noise; well below 1 for smooth, digit-like templates.
    """
    x = images - images.mean((1, 2), keepdim=True)
    dx = (x[:, :, 1:] - x[:, :, :-1]).abs().mean() + (x[:, 1:, :] - x[:, :-1, :]).abs().mean()
    return float(dx / 2 / (x.std() + 1e-12))
