"""Synthetic runs in the real on-disk format, for the dashboard's benchmark and tests (not shipped: tests
import it from here, as they import the fault zoo).

Records are written exactly as `hooks.Run` writes them (`runfile.dumps_line`, one line per flush of
`flush_steps` steps), so reading them exercises the same code paths as a real run, at any size.
"""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path

import numpy as np

from babysit.monitor import runfile

__all__ = ["write_run", "append_steps", "LAYERS"]

LAYERS = {"conv1": "weight", "relu1": "relu", "conv2": "weight", "relu2": "relu", "fc": "weight"}


def _loss(steps: np.ndarray, total: int, rng: np.random.Generator, nan_from: int | None) -> np.ndarray:
    t = steps / max(total, 1)
    loss = 2.3 * np.exp(-4 * t) + 0.08 + 0.05 * np.abs(rng.standard_normal(len(steps)))
    if nan_from is not None:
        loss = np.where(steps >= nan_from, np.nan, loss)
    return loss


def write_run(
    path: str | os.PathLike,
    *,
    steps: int = 1000,
    epochs: int = 10,
    layer_every: int = 100,
    snapshots: int = 5,
    flush_steps: int = 512,
    state: str = "finished",
    config: dict | None = None,
    num_classes: int = 10,
    nan_from: int | None = None,
    findings: list[dict] | None = None,
    seed: int = 0,
) -> Path:
    """Write a complete run directory; returns its path."""
    path = Path(path)
    (path / runfile.SNAPSHOTS).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    now = time.time()
    cfg = {"model": "convnet", "lr": 0.05, "reg": 1e-4, "batch_size": 64, "epochs": epochs}
    cfg.update(config or {})
    meta = {"schema": runfile.SCHEMA_VERSION, "run_id": f"syn{seed}", "name": path.name, "start_time": now - 60,
            "config": cfg, "num_classes": num_classes, "host": socket.gethostname(), "pid": os.getpid()}
    runfile.write_json_atomic(path / runfile.META, meta)
    lines: list[str] = []
    all_steps = np.arange(1, steps + 1)
    loss = _loss(all_steps, steps, rng, nan_from)
    lr = cfg["lr"] * 0.5 ** (all_steps // max(steps // 3, 1))
    per_epoch = max(steps // max(epochs, 1), 1)
    # How good this configuration is: best near lr 3e-2 and reg 1e-4, worse a decade away (a search landscape).
    quality = math.exp(-0.5 * math.log10(max(float(cfg["lr"]), 1e-12) / 3e-2) ** 2
                       - 0.15 * math.log10(max(float(cfg.get("reg") or 1e-4), 1e-12) / 1e-4) ** 2)
    snap_at = set(np.linspace(0, steps, snapshots).astype(int).tolist()) if snapshots else set()
    times = now - 60 + 60 * all_steps / max(steps, 1)
    for a in range(0, steps, flush_steps):
        b = min(steps, a + flush_steps)
        lines.append(runfile.dumps_line({"type": "steps", "step": all_steps[a:b].tolist(), "time": times[a:b].tolist(),
                                         "loss": loss[a:b].tolist(), "lr": lr[a:b].tolist()}))
        for s in range(a + 1, b + 1):
            if layer_every and s % layer_every == 0:
                lines.append(runfile.dumps_line({"type": "layers", "step": s, "time": now,
                                                 "stats": _layer_stats(s, steps, rng)}))
            if s % per_epoch == 0 and s // per_epoch <= epochs:
                e = s // per_epoch
                train = 0.1 + (0.9 - 0.9 * math.exp(-3 * e / max(epochs, 1))) * quality
                val = train - 0.04 * e / max(epochs, 1)
                lines.append(runfile.dumps_line({"type": "epoch", "epoch": e, "step": s, "time": now, "metrics": {
                    "train_loss": float(loss[s - 1]), "train_acc": train, "val_loss": float(loss[s - 1]) + 0.1,
                    "val_acc": val}}))
            if s in snap_at or (s == 1 and 0 in snap_at):
                snap_step = 0 if s == 1 and 0 in snap_at else s
                rel = f"{runfile.SNAPSHOTS}/conv1_{snap_step:08d}.npy"
                w = rng.standard_normal((16, 1, 5, 5)) * (1.0 - 0.8 * snap_step / max(steps, 1))
                w[:, 0, 2, :] += snap_step / max(steps, 1)  # structure that grows with training
                np.save(path / rel, w.astype(np.float32), allow_pickle=False)
                lines.append(runfile.dumps_line({"type": "snapshot", "step": snap_step, "time": now,
                                                 "layer": "conv1", "file": rel, "shape": list(w.shape)}))
    with open(path / runfile.EVENTS, "w", encoding="utf-8") as f:
        f.write("".join(lines))
    if findings:
        with open(path / runfile.FINDINGS, "w", encoding="utf-8") as f:
            f.write("".join(runfile.dumps_line(x) for x in findings))
    status = {"schema": runfile.SCHEMA_VERSION, "state": state, "step": steps, "epoch": epochs,
              "start_time": now - 60, "heartbeat": now, "end_time": None if state == "running" else now,
              "reason": None, "error": None, "pid": os.getpid(), "host": socket.gethostname()}
    runfile.write_json_atomic(path / runfile.STATUS, status)
    return path


def _layer_stats(step: int, total: int, rng: np.random.Generator) -> dict:
    stats = {}
    for name, kind in LAYERS.items():
        if kind == "weight":
            stats[name] = {"kind": "weight", "w_norm": 3.0 + step / total, "w_mean": 0.0, "w_std": 0.1,
                           "g_norm": float(0.5 * math.exp(-step / total) + 0.01 * rng.random()),
                           "update_ratio": float(1e-3 * (1 + 0.3 * rng.standard_normal())),
                           "zero_grad_frac": 0.0, "num_units": 16}
        else:
            stats[name] = {"kind": kind, "dead_frac": float(min(1.0, 0.05 + 0.2 * step / total)), "num_units": 16}
    return stats


def append_steps(path: str | os.PathLike, start: int, n: int, *, loss: float | None = None) -> None:
    """Append n steps (start+1 .. start+n) as one flush, the way a live run does."""
    steps = list(range(start + 1, start + n + 1))
    values = [loss if loss is not None else 0.1 + 0.01 * (i % 7) for i in range(n)]
    line = runfile.dumps_line({"type": "steps", "step": steps, "time": [time.time()] * n, "loss": values,
                               "lr": [0.01] * n})
    with open(Path(path) / runfile.EVENTS, "a", encoding="utf-8") as f:
        f.write(line)
