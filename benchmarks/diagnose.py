"""How fast the rules are: post-hoc diagnosis of a 1,000,000-step run, and one online update.

    python -m benchmarks.diagnose            # 1,000,000 steps; 2,000 online updates of 100 steps
    python -m benchmarks.diagnose --steps 200000 --updates 500

The run is written in the real record format (events.jsonl through monitor.runfile, meta.json, status.json):
step losses flushed 512 per line as hooks.Run does, an epoch record every 1,000 steps, a layer record (6
layers: 3 weight layers, 2 ReLUs, 1 tanh) every 100 steps, first-layer snapshots. The curve is a healthy one
(exponential decay plus batch noise), so the rules scan all of it rather than stopping at a first finding.

Targets (issue 3): post-hoc rules under 1 s for 1,000,000 steps (load time is the reader's and is reported
apart); an online update after 100 new steps under 10 ms (median). Online batches are built before timing
(in the hooks and the watcher the reader builds them); the time is `OnlineDiagnoser.update` alone.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from babysit.monitor import runfile
from babysit.monitor.reader import load_run, records_to_batch
from babysit.rules import OnlineDiagnoser, diagnose

__all__ = ["main", "write_run", "posthoc", "online"]

FLUSH = 512
EPOCH = 1000
LAYER_EVERY = 100
LAYERS = {"0": "weight", "1": "relu", "2": "weight", "3": "tanh", "4": "weight", "5": "relu"}
MODEL = {"class": "Sequential", "layers": [{"name": n, "type": {"weight": "Linear", "relu": "ReLU", "tanh": "Tanh"}[k],
                                           "params": {"weight": [64, 64]} if k == "weight" else {}}
                                          for n, k in LAYERS.items()]}


def _loss(steps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    trend = 0.05 + 2.25 * np.exp(-steps / 20_000)
    return trend * (1 + 0.15 * rng.standard_normal(len(steps)))


def _layer_record(step: int, t: float, rng: np.random.Generator) -> dict:
    stats = {}
    for name, kind in LAYERS.items():
        if kind == "weight":
            stats[name] = {"kind": "weight", "w_norm": 5 + rng.random(), "w_mean": 0.0, "w_std": 0.1,
                           "g_norm": 0.5 + rng.random(), "update_ratio": 1e-3 * (1 + rng.random()),
                           "zero_grad_frac": 0.01}
        elif kind == "relu":
            stats[name] = {"kind": "relu", "dead_frac": 0.05 * rng.random(), "num_units": 64}
        else:
            stats[name] = {"kind": "tanh", "saturated_frac": 0.02 * rng.random(), "num_units": 64}
    return {"type": "layers", "step": step, "time": t, "stats": stats}


def records(n_steps: int, seed: int = 0, start_time: float = 1.7e9, flush: int = FLUSH):
    """The run's records in write order, as hooks.Run would produce them (one dict per JSON line)."""
    rng = np.random.default_rng(seed)
    for lo in range(1, n_steps + 1, flush):
        steps = np.arange(lo, min(lo + flush, n_steps + 1))
        times = start_time + steps * 0.01
        yield {"type": "steps", "step": steps.tolist(), "time": times.tolist(), "loss": _loss(steps, rng).tolist(),
               "lr": [0.01] * len(steps)}
        for s in range((lo + LAYER_EVERY - 1) // LAYER_EVERY * LAYER_EVERY, steps[-1] + 1, LAYER_EVERY):
            yield _layer_record(int(s), start_time + s * 0.01, rng)
        for s in range((lo + EPOCH - 1) // EPOCH * EPOCH, steps[-1] + 1, EPOCH):
            acc = 0.95 - 0.85 * math.exp(-s / 20_000)
            yield {"type": "epoch", "epoch": s // EPOCH, "step": int(s), "time": start_time + s * 0.01,
                   "metrics": {"train_loss": float(_loss(np.array([s]), rng)[0]), "train_acc": acc + 0.01,
                               "val_loss": float(_loss(np.array([s]), rng)[0]) * 1.05, "val_acc": acc}}


def write_run(path: Path, n_steps: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    meta = {"schema": runfile.SCHEMA_VERSION, "run_id": "bench", "name": path.name, "start_time": 1.7e9,
            "config": {"lr": 0.01, "batch_size": 64}, "num_classes": 10, "model": MODEL}
    runfile.write_json_atomic(path / runfile.META, meta)
    with open(path / runfile.EVENTS, "w", encoding="utf-8") as f:
        for rec in records(n_steps):
            f.write(runfile.dumps_line(rec))
    runfile.write_json_atomic(path / runfile.STATUS, {"schema": runfile.SCHEMA_VERSION, "state": "finished",
                                                      "step": n_steps, "heartbeat": 1.7e9 + n_steps * 0.01})
    return path


def posthoc(path: Path, repeats: int = 3) -> tuple[float, float, int]:
    """(best load seconds, best rules seconds, findings at warning+)."""
    loads, rules = [], []
    loud = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        run = load_run(path)
        t1 = time.perf_counter()
        found = diagnose(run)
        t2 = time.perf_counter()
        loads.append(t1 - t0)
        rules.append(t2 - t1)
        loud = sum(f.severity != "info" for f in found)
    return min(loads), min(rules), loud


def online(updates: int, batch_steps: int = 100, warmup_steps: int = 10_000) -> list[float]:
    """Seconds per OnlineDiagnoser.update for batches of `batch_steps` new steps (+ their layer record)."""
    # One batch per flush of batch_steps steps, with the layer/epoch records written in that flush.
    total = warmup_steps + updates * batch_steps
    batches: list[list[dict]] = []
    for rec in records(total, flush=batch_steps):
        if rec["type"] == "steps":
            batches.append([rec])
        else:
            batches[-1].append(rec)
    built = [records_to_batch(b) for b in batches]
    meta = {"num_classes": 10, "config": {"lr": 0.01, "batch_size": 64}, "model": MODEL}
    diagnoser = OnlineDiagnoser(meta)
    status = {"state": "running", "heartbeat": time.time()}
    times = []
    warm = warmup_steps // batch_steps
    for i, batch in enumerate(built):
        t0 = time.perf_counter()
        diagnoser.update(batch, status=status, now=status["heartbeat"])
        if i >= warm:
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--updates", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = write_run(Path(tmp) / "run", args.steps)
        size = (path / runfile.EVENTS).stat().st_size
        print(f"wrote a {args.steps:,}-step run ({size / 1e6:.0f} MB of events) in {time.perf_counter() - t0:.1f} s")
        load_s, rules_s, loud = posthoc(path)
        print(f"post-hoc: load {load_s * 1e3:.0f} ms (reader), rules {rules_s * 1e3:.0f} ms "
              f"(target < 1000 ms: {'ok' if rules_s < 1 else 'MISSED'}); {loud} warnings on this healthy run")
    times = online(args.updates)
    med = statistics.median(times)
    p90 = float(np.percentile(times, 90))
    print(f"online: update after 100 new steps: median {med * 1e3:.2f} ms, p90 {p90 * 1e3:.2f} ms, "
          f"max {max(times) * 1e3:.1f} ms over {len(times)} updates (target median < 10 ms: "
          f"{'ok' if med < 0.01 else 'MISSED'})")
    return 0 if rules_s < 1 and med < 0.01 and loud == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
