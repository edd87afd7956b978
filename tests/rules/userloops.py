"""Tiny training loops written the way users write them, recorded through the real hooks (babysit.Run).

`train(...)` runs one loop on CPU in about a second and returns its run directory. The bug checks read fields
that the hooks record once (meta.json `model.*.trainable/frozen`, `model.head`, `optimizer`, `first_batch`,
`targets_seen`; status.json `optimizer_steps`). Where the hooks of this checkout do not record a field yet,
`_fill_contract` writes it from what the loop saw, exactly as FORMAT.md specifies; a field the hooks did write
is never touched, so these tests exercise the real recording as soon as it exists.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import babysit

FILLED: set[str] = set()  # contract fields this session had to fill in (the hooks did not record them)


def digits(scale: float = 1.0, normalize: bool = True, seed: int = 0):
    """sklearn's 8x8 digits: (x_train, y_train), 10 classes; standardized unless normalize=False."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    if normalize:
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    return x[perm] * scale, y[perm]


def digits28(n: int | None = None):
    """Digits upsampled to 28x28 (MNIST-sized), flat: (x, y)."""
    x, y = digits()
    x = F.interpolate(x.view(-1, 1, 8, 8), size=28, mode="bilinear", align_corners=False).reshape(len(x), -1)
    return (x[:n], y[:n]) if n else (x, y)


def mlp(d_in: int, c: int, hidden: int = 32, act: type = nn.ReLU, head: nn.Module | None = None) -> nn.Sequential:
    layers = [nn.Linear(d_in, hidden), act(), nn.Linear(hidden, c)]
    return nn.Sequential(*layers, *([head] if head is not None else []))


@dataclass
class Loop:
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int | None = 10
    loss: str = "cross_entropy"  # a torch.nn.functional name
    opt: str = "adam"
    lr: float = 1e-2
    weight_decay: float = 0.0
    sequential: bool = False  # batches in the data's order, never shuffled
    steps: int = 300
    batch: int = 32
    params: object = None  # what the optimizer gets (default: the model's parameters)
    step_when: Callable[[int], bool] = lambda i: True  # noqa: E731 - which iterations call optimizer.step()
    zero_when: Callable[[int], bool] | None = None  # which iterations zero the grads (default: as step_when)
    loss_scale: float = 1.0  # accumulation loops divide the loss by k
    to_loss: Callable[[torch.Tensor], torch.Tensor] = lambda out: out  # noqa: E731 - what reaches the loss
    config: dict = field(default_factory=dict)
    input_shape: tuple | None = None
    epoch_every: int = 50  # run.epoch(train_loss, train_acc) every this many steps


def train(run_dir: Path, loop: Loop) -> Path:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, x, y = loop.model, loop.x, loop.y
    params = loop.params if loop.params is not None else model.parameters()
    wd = loop.weight_decay
    opt = (torch.optim.Adam(params, lr=loop.lr, weight_decay=wd) if loop.opt == "adam"
           else torch.optim.SGD(params, lr=loop.lr, momentum=0.9 if loop.opt == "momentum" else 0.0, weight_decay=wd))
    loss_fn = getattr(F, loop.loss)
    run = babysit.Run(run_dir, num_classes=loop.num_classes, config=loop.config)
    run.watch(model, opt, input_shape=loop.input_shape)
    seen: Counter = Counter()
    first = None
    op_steps, correct, count, total = 0, 0, 0, 0.0
    zero_when = loop.zero_when or loop.step_when
    g = torch.Generator().manual_seed(1)
    for i in range(loop.steps):
        idx = (torch.arange(i * loop.batch, (i + 1) * loop.batch) % len(x) if loop.sequential
               else torch.randint(0, len(x), (loop.batch,), generator=g))
        xb, yb = x[idx], y[idx]
        if i > 0 and zero_when(i - 1):  # opt.zero_grad(); loss.backward(); opt.step(): grads stay visible
            opt.zero_grad()
        out = model(xb)
        inp = loop.to_loss(out)
        loss = loss_fn(inp, yb) / loop.loss_scale
        loss.backward()
        if loop.step_when(i):
            opt.step()
            op_steps += 1
        if first is None:
            first = (xb, yb, out.detach(), inp.detach())
        if i < 200 and not yb.is_floating_point():
            seen.update(int(v) for v in yb.flatten())
        run.step(loss)
        if loop.num_classes:
            pred = out.argmax(1)
            if not yb.is_floating_point():
                correct += int((pred == yb).sum())
        count += len(yb)
        total += loss.item() * len(yb)
        if (i + 1) % loop.epoch_every == 0:
            metrics = {"train_loss": total / count}
            if loop.num_classes:
                metrics["train_acc"] = correct / count
            run.epoch(**metrics)
            correct, count, total = 0, 0, 0.0
    run.close()
    _fill_contract(run_dir, loop, opt, first, seen, op_steps)
    return run_dir


def _stats(t: torch.Tensor) -> dict:
    t = t.detach().float()
    out = {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "min": float(t.min()),
           "max": float(t.max()), "mean": float(t.mean()), "std": float(t.std()) if t.numel() > 1 else 0.0}
    return out


def _probs(t: torch.Tensor) -> dict:
    s = _stats(t)
    s["nonneg"] = bool((t >= 0).all())
    s["rows_sum_to_one"] = bool(t.dim() >= 2 and torch.allclose(t.sum(1), torch.ones(()), atol=1e-3))
    return s


def _head(model: nn.Module, xb: torch.Tensor) -> dict | None:
    last = []
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: last.append((n, type(mod).__name__)))
             for n, m in model.named_modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(xb)
    finally:
        for h in hooks:
            h.remove()
    return {"name": last[-1][0], "type": last[-1][1]} if last else None


def _fill_contract(run_dir: Path, loop: Loop, opt, first, seen: Counter, op_steps: int) -> None:
    meta_path, status_path = run_dir / "meta.json", run_dir / "status.json"
    meta, status = json.loads(meta_path.read_text()), json.loads(status_path.read_text())
    model = loop.model
    xb, yb, out, inp = first
    summary = meta.setdefault("model", {})
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    by_name = {(n or type(m).__name__): m for n, m in model.named_modules()}
    for layer in summary.get("layers", []):
        m = by_name.get(layer.get("name"))
        if m is None or "trainable" in layer:
            continue
        ps = list(m.parameters(recurse=False))
        layer["trainable"] = sum(p.numel() for p in ps if p.requires_grad)
        layer["frozen"] = sum(p.numel() for p in ps if not p.requires_grad)
        FILLED.add("model.layers.trainable")

    def fill(d: dict, key: str, value, name: str) -> None:
        if key not in d:
            d[key] = value
            FILLED.add(name)

    fill(summary, "frozen", sum(p.numel() for p in model.parameters() if not p.requires_grad), "model.frozen")
    fill(summary, "head", _head(model, xb), "model.head")
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fill(meta, "optimizer", {
        "class": type(opt).__name__,
        "param_groups": [{"lr": g["lr"], "weight_decay": g.get("weight_decay", 0), "momentum": g.get("momentum"),
                          "params": sum(p.numel() for p in g["params"])} for g in opt.param_groups],
        "params_in_optimizer": sum(p.numel() for g in opt.param_groups for p in g["params"]),
        "trainable_not_in_optimizer": sum(p.numel() for _, p in trainable if id(p) not in in_opt),
        "layers_not_in_optimizer": sorted({n.rpartition(".")[0] or n for n, p in trainable if id(p) not in in_opt}),
    }, "optimizer")
    x_stats = _stats(xb)
    x_stats["integer"] = not xb.is_floating_point()
    if xb.is_floating_point() and xb.dim() >= 2:
        dims = [d for d in range(xb.dim()) if d != 1]
        x_stats["channel_mean"] = xb.float().mean(dim=dims).tolist()
        x_stats["channel_std"] = xb.float().std(dim=dims).tolist()
    t_stats = _stats(yb)
    t_stats["integer"] = not yb.is_floating_point()
    if t_stats["integer"]:
        t_stats["histogram"] = {str(k): int(v) for k, v in Counter(int(v) for v in yb.flatten()).items()}
    fill(meta, "first_batch", {"inputs": x_stats, "outputs": _probs(out), "loss_fn": loop.loss,
                               "loss_input": _probs(inp), "targets": t_stats}, "first_batch")
    if seen:
        fill(meta, "targets_seen", {"steps": min(loop.steps, 200), "count": sum(seen.values()), "min": min(seen),
                                    "max": max(seen), "histogram": {str(k): v for k, v in seen.items()}},
             "targets_seen")
    fill(status, "optimizer_steps", op_steps, "optimizer_steps")
    meta_path.write_text(json.dumps(meta))
    status_path.write_text(json.dumps(status))


def findings(run_dir: Path) -> dict:
    """rule id -> Finding of the post-hoc diagnosis of a run directory."""
    from babysit.monitor.reader import load_run
    from babysit.rules import diagnose

    return {f.rule: f for f in diagnose(load_run(run_dir))}


def online(run_dir: Path) -> dict:
    """rule id -> the highest severity the rules running inside training (the hooks) reported."""
    rank = {"info": 0, "warning": 1, "critical": 2}
    out: dict[str, str] = {}
    path = run_dir / "findings.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        f = json.loads(line)
        if rank.get(f.get("severity"), -1) > rank.get(out.get(f.get("rule")), -1):
            out[f["rule"]] = f["severity"]
    return out


def severity(run_dir: Path, rule: str) -> str | None:
    f = findings(run_dir).get(rule)
    return None if f is None else f.severity


def finite(x: float) -> bool:
    return x is not None and math.isfinite(x) and not np.isnan(x)
