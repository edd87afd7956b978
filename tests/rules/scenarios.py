"""Small real training runs on the CPU for the rules' scenario suite: healthy configurations and faults.

Each `Scenario` trains in a second or two (digits, toy 2-D data or tabular data; one thread) with the hooks
recording into a run directory; a fault is a field (a too-high lr, a bad init, a stale optimizer list ...).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from babysit import hooks

__all__ = ["Scenario", "train", "make_data"]

LATENCY: dict[str, tuple[int, int, int]] = {}  # scenario -> (fault onset step, finding step, latency)


@dataclass
class Scenario:
    name: str
    data: str = "digits"  # digits | spiral | moons | tabular | binary | circles | imbalanced
    model: str = "mlp"  # mlp | mlp2 | linear | conv | deep | tanh | sigmoid_deep | bn
    hidden: int = 64
    depth: int = 6  # for deep models
    opt: str = "sgd"  # sgd | adam | nesterov
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: int = 8
    max_steps: int | None = None
    schedule: str | None = None  # step | exp | cosine | warmup | inv
    dropout: float = 0.0
    train_limit: int | None = None  # keep only this many training examples
    shuffle_labels: bool = False
    init_scale: float = 1.0  # multiply every weight at init
    last_init_scale: float = 1.0  # multiply the last layer's weight at init
    bias_init: float | None = None  # hidden layers' biases at init
    freeze_first: bool = False  # requires_grad False on the first layer (fine-tuning: healthy)
    optimize_last_only: bool = False  # optimizer built over the last layer only (fault)
    lr_spike: tuple[int, float] | None = None  # (step, factor): multiply the lr from that step on (fault)
    spike_len: int | None = None  # ... for this many steps only (a transient spike: healthy when it recovers)
    label_smoothing: float = 0.0  # cross_entropy(label_smoothing=...): the loss floor sits above 0 (healthy)
    prior_bias: bool = False  # last layer's bias = log class priors (imbalanced data, healthy: starts below ln C)
    pretrain_epochs: int = 0  # train this long without recording first (fine-tuning from a good checkpoint)
    val_every: int = 1  # validate every N epochs; the others record train metrics only (missing, not NaN)
    nan_input_at: int | None = None  # feed a NaN input batch at this step (fault)
    input_scale: float = 1.0  # multiply the inputs (unnormalized data: fault)
    weight_noise: float = 0.0  # add N(0, this) to the first layer's weights after every step (fault)
    input_shape: tuple[int, ...] | None = None  # given to run.watch (snapshots as images)
    every: int | None = 10
    double_softmax: bool = False  # softmax before cross_entropy (fault)
    no_zero_grad: bool = False  # gradients accumulate across steps (fault)
    crash_at: int | None = None  # raise a RuntimeError at this step (the run is closed as crashed)
    keep_open: bool = False  # return without closing the run (a process that hangs: no more heartbeats)
    step_sleep: float = 0.0  # seconds per step: emulate a slower training loop (online-stop tests)
    flush_steps: int = 512
    seed: int = 0
    pass_num_classes: bool = True
    extra: dict = field(default_factory=dict)


def make_data(kind: str, seed: int = 0, conv: bool = False):
    """(x_train, y_train, x_val, y_val, num_classes): standardized with the training split's statistics."""
    rng = np.random.default_rng(seed)
    if kind == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y, c = d.data.astype(np.float32), d.target.astype(np.int64), 10
    elif kind == "spiral":  # CS231n's spiral: 3 classes, 2-D
        n, c = 300, 3
        xs, ys = [], []
        for k in range(c):
            r = np.linspace(0.0, 1, n)
            t = np.linspace(k * 4, (k + 1) * 4, n) + rng.normal(0, 0.2, n)
            xs.append(np.c_[r * np.sin(t), r * np.cos(t)])
            ys.append(np.full(n, k))
        x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)
    elif kind == "moons":
        from sklearn.datasets import make_moons

        x, y = make_moons(800, noise=0.2, random_state=seed)
        x, y, c = x.astype(np.float32), y.astype(np.int64), 2
    elif kind == "tabular":
        from sklearn.datasets import make_classification

        x, y = make_classification(1200, n_features=20, n_informative=8, n_classes=4, n_clusters_per_class=1,
                                   class_sep=1.5, random_state=seed)
        x, y, c = x.astype(np.float32), y.astype(np.int64), 4
    elif kind == "circles":  # not linearly separable: a linear model stays at chance
        from sklearn.datasets import make_circles

        x, y = make_circles(800, noise=0.05, factor=0.5, random_state=seed)
        x, y, c = x.astype(np.float32), y.astype(np.int64), 2
    elif kind == "imbalanced":  # 90% / 10%, easy
        from sklearn.datasets import make_classification

        x, y = make_classification(1500, n_features=10, n_informative=5, weights=[0.9, 0.1], class_sep=2.0,
                                   random_state=seed)
        x, y, c = x.astype(np.float32), y.astype(np.int64), 2
    elif kind == "binary":
        from sklearn.datasets import load_breast_cancer

        d = load_breast_cancer()
        x, y, c = d.data.astype(np.float32), d.target.astype(np.int64), 2
    else:
        raise ValueError(kind)
    if kind == "spiral":
        c = 3
    perm = rng.permutation(len(x))
    x, y = x[perm], y[perm]
    n_val = len(x) // 5
    xt, yt, xv, yv = x[n_val:], y[n_val:], x[:n_val], y[:n_val]
    mean, std = xt.mean(0), xt.std(0)
    std[std < 1e-6] = 1.0
    xt, xv = (xt - mean) / std, (xv - mean) / std
    xt, xv = torch.from_numpy(xt), torch.from_numpy(xv)
    if conv:
        xt, xv = xt.reshape(-1, 1, 8, 8), xv.reshape(-1, 1, 8, 8)
    return xt, torch.from_numpy(yt), xv, torch.from_numpy(yv), c


def _model(s: Scenario, d_in: int, c: int) -> nn.Module:
    h = s.hidden
    drop = [nn.Dropout(s.dropout)] if s.dropout else []
    if s.model == "mlp":
        return nn.Sequential(nn.Linear(d_in, h), nn.ReLU(), *drop, nn.Linear(h, c))
    if s.model == "linear":
        return nn.Sequential(nn.Linear(d_in, c))
    if s.model == "mlp2":
        return nn.Sequential(nn.Linear(d_in, h), nn.ReLU(), *drop, nn.Linear(h, h), nn.ReLU(), *drop,
                             nn.Linear(h, c))
    if s.model == "tanh":
        return nn.Sequential(nn.Linear(d_in, h), nn.Tanh(), *drop, nn.Linear(h, h), nn.Tanh(), nn.Linear(h, c))
    if s.model == "bn":
        return nn.Sequential(nn.Linear(d_in, h), nn.BatchNorm1d(h), nn.ReLU(), *drop, nn.Linear(h, h),
                             nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, c))
    if s.model in ("deep", "sigmoid_deep"):
        act = nn.Sigmoid if s.model == "sigmoid_deep" else nn.ReLU
        layers: list[nn.Module] = [nn.Linear(d_in, h), act()]
        for _ in range(s.depth - 2):
            layers += [nn.Linear(h, h), act()]
        return nn.Sequential(*layers, nn.Linear(h, c))
    if s.model == "conv":
        w = 8
        return nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), *drop, nn.Linear(2 * w * 16, c),
        )
    raise ValueError(s.model)


def _lr_factor(s: Scenario, step: int, total: int, steps_per_epoch: int) -> float:
    if s.schedule is None:
        f = 1.0
    elif s.schedule == "step":
        f = 0.1 ** (step // max(total // 3, 1))
    elif s.schedule == "exp":
        f = 0.97 ** (step // steps_per_epoch)
    elif s.schedule == "cosine":
        f = 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
    elif s.schedule == "sqrt":
        f = math.sqrt(max(1 - step / total, 0.0))
    elif s.schedule == "inv":
        f = 1.0 / (1 + step / steps_per_epoch)
    elif s.schedule == "warmup":
        f = min(1.0, (step + 1) / 100)
    else:
        raise ValueError(s.schedule)
    if s.lr_spike and step >= s.lr_spike[0] and (s.spike_len is None or step < s.lr_spike[0] + s.spike_len):
        f *= s.lr_spike[1]
    return f


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        out = model(x)
        loss = nn.functional.cross_entropy(out, y).item()
        acc = (out.argmax(1) == y).float().mean().item()
    model.train()
    return loss, acc


def train(s: Scenario, run_dir: Path, on_critical: str | None = "warn", thresholds: dict | None = None) -> dict:
    """Train `s` with the hooks recording into run_dir; returns a small summary (and the run's online findings)."""
    torch.manual_seed(s.seed)
    conv = s.model == "conv"
    xt, yt, xv, yv, c = make_data(s.data, s.seed, conv=conv)
    if s.train_limit:
        xt, yt = xt[: s.train_limit], yt[: s.train_limit]
    xt, xv = xt * s.input_scale, xv * s.input_scale
    if s.shuffle_labels:
        yt = yt[torch.randperm(len(yt))]
    model = _model(s, xt[0].numel(), c)
    linears = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        for m in linears:
            m.weight.mul_(s.init_scale)
        linears[-1].weight.mul_(s.last_init_scale)
        if s.bias_init is not None:
            for m in linears[:-1]:
                m.bias.fill_(s.bias_init)
        if s.prior_bias:
            prior = torch.bincount(yt, minlength=c).float() / len(yt)
            linears[-1].bias.copy_(prior.clamp_min(1e-3).log())
            linears[-1].weight.mul_(0.01)
    if s.freeze_first:
        for p in linears[0].parameters():
            p.requires_grad_(False)
    params = linears[-1].parameters() if s.optimize_last_only else [p for p in model.parameters() if p.requires_grad]
    if s.opt == "adam":
        opt = torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
                              nesterov=s.opt == "nesterov")
    if s.pretrain_epochs:
        _pretrain(s, model, opt, xt, yt)
    steps_per_epoch = math.ceil(len(xt) / s.batch_size)
    total = s.epochs * steps_per_epoch if s.max_steps is None else min(s.max_steps, s.epochs * steps_per_epoch)
    config = {k: v for k, v in asdict(s).items() if v is not None and k != "extra"}
    config.update(reg=s.weight_decay, batch_size=s.batch_size)
    run = hooks.Run(run_dir, num_classes=c if s.pass_num_classes else None, config=config,
                    on_critical=on_critical, thresholds=thresholds, flush_steps=s.flush_steps)
    run.watch(model, opt, every=s.every, input_shape=s.input_shape)
    try:
        va, ta, vl, tl = _loop(s, run, model, opt, linears, xt, yt, xv, yv, total, steps_per_epoch)
    except BaseException as exc:
        run.__exit__(type(exc), exc, exc.__traceback__)
        raise
    if not s.keep_open:
        run.close()
    return {"run_dir": run_dir, "steps": run.global_step, "val_acc": va, "train_acc": ta, "val_loss": vl,
            "train_loss": tl, "findings": run.findings, "num_classes": c, "run": run}


def _pretrain(s: Scenario, model: nn.Module, opt, xt, yt) -> None:
    """Train without recording: the checkpoint a fine-tuning run starts from."""
    gen = torch.Generator().manual_seed(s.seed + 1)
    for _ in range(s.pretrain_epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), s.batch_size):
            idx = perm[i : i + s.batch_size]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def _loop(s: Scenario, run, model, opt, linears, xt, yt, xv, yv, total: int, steps_per_epoch: int):
    gen = torch.Generator().manual_seed(s.seed)
    step = 0
    for epoch in range(s.epochs):
        perm = torch.randperm(len(xt), generator=gen)
        losses, correct = [], 0
        for i in range(0, len(xt), s.batch_size):
            idx = perm[i : i + s.batch_size]
            xb, yb = xt[idx], yt[idx]
            if s.nan_input_at is not None and step + 1 >= s.nan_input_at:
                xb = xb.clone()
                xb[0] = math.nan
            for g in opt.param_groups:
                g["lr"] = s.lr * _lr_factor(s, step, total, steps_per_epoch)
            out = model(xb)
            loss = nn.functional.cross_entropy(out.softmax(1) if s.double_softmax else out, yb,
                                               label_smoothing=s.label_smoothing)
            if not s.no_zero_grad:
                opt.zero_grad()
            loss.backward()
            opt.step()
            if s.weight_noise:
                with torch.no_grad():
                    linears[0].weight.add_(torch.randn_like(linears[0].weight), alpha=s.weight_noise)
            step += 1
            run.step(loss=loss)
            if s.crash_at is not None and step == s.crash_at:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            if s.step_sleep:
                time.sleep(s.step_sleep)
            losses.append(loss.detach())
            correct += (out.argmax(1) == yb).sum().item()
            if step >= total or run.should_stop:
                break
        tl, ta = torch.stack(losses).mean().item(), correct / max(len(losses) * s.batch_size, 1)
        vl, va = _accuracy(model, xv, yv)
        _, ta = _accuracy(model, xt, yt)
        if (epoch + 1) % s.val_every == 0:
            run.epoch(train_loss=tl, train_acc=ta, val_loss=vl, val_acc=va)
        else:
            run.epoch(train_loss=tl, train_acc=ta)
        if step >= total or run.should_stop:
            break
    return va, ta, vl, tl
