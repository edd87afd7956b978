"""How fast the reader is: a whole run through `load_run`, and one refresh of the incremental `RunTailer`.

    python -m benchmarks.reading                 # a 1,000,000-step run; 30 refreshes of 100 new steps
    python -m benchmarks.reading --steps 100000 --refreshes 20

The run is written in the real record format by benchmarks.diagnose.write_run (512 steps a line, a layer
record every 100 steps, an epoch every 1,000). `load_run` is timed end to end (open, parse, DataFrames, status,
findings) and reported as steps per second and JSON lines per second. A refresh appends what hooks.Run writes
for 100 new steps (one steps line and one layer record) and times `RunTailer.poll()`, which also re-reads
status.json and the findings log, as the dashboard and the watcher do. The same refresh on a run 10x or 100x
shorter shows that its cost follows the new data, not the run's length.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from babysit.monitor import runfile
from babysit.monitor.reader import RunTailer, load_run

__all__ = ["main", "load_rate", "tailer_refresh", "append_flush", "count_lines"]


def count_lines(path: Path) -> int:
    with open(Path(path) / runfile.EVENTS, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def load_rate(path: Path, repeats: int = 3) -> tuple[list[float], list[float], int, int]:
    """Wall and CPU seconds per `load_run(path)` over `repeats` loads, and the run's (steps, JSON lines)."""
    wall, cpu, steps = [], [], 0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        run = load_run(path)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        steps = len(run.steps)
    return wall, cpu, steps, count_lines(path)


def append_flush(path: Path, first_step: int, n: int = 100, t0: float = 1.7e9, rng=None) -> int:
    """Append what hooks.Run writes for `n` new steps: one steps line and one layer record. Returns the next step."""
    rng = rng or np.random.default_rng(first_step)
    steps = np.arange(first_step, first_step + n)
    loss = (0.05 + 0.1 * rng.random(n)).tolist()
    layer = {"type": "layers", "step": int(steps[-1]), "time": t0 + steps[-1] * 0.01,
             "stats": {"0": {"kind": "weight", "w_norm": 5.0, "w_mean": 0.0, "w_std": 0.1, "g_norm": 0.6,
                             "update_ratio": 1e-3, "zero_grad_frac": 0.01},
                       "1": {"kind": "relu", "dead_frac": 0.02, "num_units": 64}}}
    lines = runfile.dumps_line({"type": "steps", "step": steps.tolist(), "time": (t0 + steps * 0.01).tolist(),
                                "loss": loss, "lr": [0.01] * n}) + runfile.dumps_line(layer)
    with open(Path(path) / runfile.EVENTS, "a", encoding="utf-8") as f:
        f.write(lines)  # one write, as the hooks do
    return first_step + n


def tailer_refresh(path: Path, refreshes: int = 30, new_steps: int = 100) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds per `RunTailer.poll()` after `new_steps` new steps were appended, `refreshes` times.

    The first poll (the whole file) is not timed. Appends to the run: use a run written for this.
    """
    tailer = RunTailer(path)
    step = 1
    while True:  # the first read of a big run takes several bounded polls
        first = tailer.poll()
        step = int(first.steps["step"].iloc[-1]) + 1 if len(first.steps) else step
        if not tailer.behind:
            break
    rng = np.random.default_rng(0)
    wall, cpu = [], []
    for _ in range(refreshes):
        step = append_flush(path, step, new_steps, rng=rng)
        t0, c0 = time.perf_counter(), time.thread_time()
        batch = tailer.poll()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        if len(batch.steps) != new_steps:  # the benchmark measures the real thing or nothing
            raise RuntimeError(f"tailer returned {len(batch.steps)} steps, expected {new_steps}")
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    from benchmarks.diagnose import write_run

    parser = argparse.ArgumentParser(prog="python -m benchmarks.reading", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="load_run repetitions")
    parser.add_argument("--refreshes", type=int, default=30)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="babysit-bench-") as tmp:
        big = write_run(Path(tmp) / "big", args.steps)
        small = write_run(Path(tmp) / "small", max(args.steps // 100, 1000))
        times, cpu, steps, lines = load_rate(big, args.repeats)
        med = statistics.median(times)
        print(f"load_run, {steps:,} steps in {lines:,} lines: median {med:.2f} s = {steps / med:,.0f} steps/s, "
              f"{lines / med:,.0f} lines/s (min {min(times):.2f} s, max {max(times):.2f} s; CPU median "
              f"{statistics.median(cpu):.2f} s)")
        for label, path in (("long", big), ("short", small)):
            t, c = tailer_refresh(path, args.refreshes)
            print(f"RunTailer.poll, +100 steps, {label} run: median {1e3 * statistics.median(t):.2f} ms wall, "
                  f"{1e3 * statistics.median(c):.2f} ms CPU, max {1e3 * max(t):.2f} ms wall (n={len(t)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
