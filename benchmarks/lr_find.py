"""Does `babysit lr-find` suggest a learning rate close to the best one real trainings find?

    python -m benchmarks.lr_find                      # MLP and convnet on digits (~10 min on 2 busy cores)
    python -m benchmarks.lr_find --quick              # half-decade grid, one seed (~3 min)
    python -m benchmarks.lr_find --model mlp --grid 1e-3:10 --epochs 10 --seeds 2

For each model: one lr-find sweep (its defaults: 1e-7 .. 10, 200 steps), then a grid of ordinary trainings
(`babysit train`'s defaults but the lr: SGD + momentum 0.9, reg 1e-4, batch 64) at lrs a quarter decade apart,
each for `--epochs` epochs and averaged over `--seeds` seeds (the split, init and batches change with the seed).
The best lr of the grid is the one with the highest mean best-validation accuracy. The table gives the
suggestion, both candidates, the best lr, their ratio, and the band of grid lrs within 1 point of the best
accuracy (on digits the optimum is flat: the band shows how much the exact best lr means). The target, from
issue 14: the suggestion within 3x of the best lr.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "grid_lrs", "measure"]


def grid_lrs(lo: float, hi: float, per_decade: int) -> list[float]:
    a, b = math.floor(math.log10(lo) * per_decade + 1e-9), math.ceil(math.log10(hi) * per_decade - 1e-9)
    return [float(f"{10 ** (k / per_decade):.4g}") for k in range(a, b + 1)]


def measure(model: str, lrs: list[float], epochs: int, seeds: int, folder: Path, optimizer: str = "momentum") -> dict:
    """lr-find once, then the grid of real trainings. Returns every number the table shows."""
    import torch

    from babysit.trainer.config import TrainConfig
    from babysit.trainer.lr_find import lr_find
    from babysit.trainer.train import train

    torch.set_num_threads(1)
    start = time.perf_counter()
    found = lr_find(TrainConfig(model=model, optimizer=optimizer, run_dir=str(folder / f"{model}-lr-find"),
                                progress=False))
    sweep_s = time.perf_counter() - start
    accs: dict[float, float] = {}
    for lr in lrs:
        values = []
        for seed in range(seeds):
            cfg = TrainConfig(model=model, optimizer=optimizer, lr=lr, epochs=epochs, seed=seed, progress=False,
                              on_critical="warn", max_loss_ratio=0, run_dir=str(folder / f"{model}-{lr:g}-{seed}"))
            acc = train(cfg)["best_val_acc"]
            values.append(acc if math.isfinite(acc) else 0.0)
        accs[lr] = sum(values) / len(values)
        print(f"  {model} lr {lr:<8g} val acc {accs[lr]:.4f}", file=sys.stderr, flush=True)
    best = max(accs, key=lambda lr: accs[lr])
    band = [lr for lr in lrs if accs[lr] >= accs[best] - 0.01]
    name = model if optimizer == "momentum" else f"{model} ({optimizer})"
    return {"model": name, "suggestion": found.suggestion, "chosen": found.chosen, "steepest": found.steepest,
            "max_stable_div10": found.max_stable_div10, "diverged_lr": found.diverged_lr, "steps": len(found.lrs),
            "sweep_s": sweep_s, "best": best, "best_acc": accs[best], "band": (min(band), max(band)), "accs": accs,
            "reason": found.reason}


def _ratio(a: float | None, b: float) -> float:
    return max(a / b, b / a) if a else math.inf


def _table(results: list[dict], epochs: int, seeds: int) -> str:
    rows = ["| model | suggestion (rule) | steepest | largest stable / 10 | diverged at | best lr of the grid "
            f"(val acc, {epochs} epochs x {seeds} seeds) | band within 1 point | suggestion vs best | target "
            "| result |", "|---|---|---:|---:|---:|---|---|---:|---|---|"]
    for r in results:
        ratio = _ratio(r["suggestion"], r["best"])
        sug = "none" if r["suggestion"] is None else f"{r['suggestion']:.3g} ({r['chosen']})"
        rows.append(
            f"| {r['model']} | {sug} | {r['steepest'] or float('nan'):.3g} ({_ratio(r['steepest'], r['best']):.1f}x) "
            f"| {r['max_stable_div10'] or float('nan'):.3g} ({_ratio(r['max_stable_div10'], r['best']):.1f}x) "
            f"| {r['diverged_lr'] or float('nan'):.3g} | {r['best']:.3g} ({r['best_acc']:.4f}) "
            f"| {r['band'][0]:.3g} .. {r['band'][1]:.3g} | {ratio:.2f}x | <= 3x | {'pass' if ratio <= 3 else 'FAIL'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lr_find", description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", choices=("mlp", "convnet"), help="default: both")
    p.add_argument("--grid", default=None, help="lr range LO:HI of the grid (default 1e-3:10 mlp, 1e-2:3 convnet)")
    p.add_argument("--epochs", type=int, default=10, help="epochs per training (default 10)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per lr (default 2)")
    p.add_argument("--optimizer", default="momentum", choices=("sgd", "momentum", "nesterov", "adam"),
                   help="the trainer's optimizer, for the sweep and the grid (default momentum)")
    p.add_argument("--quick", action="store_true", help="half-decade grid, one seed")
    args = p.parse_args(argv)
    models = args.model or ["mlp", "convnet"]
    seeds = 1 if args.quick else args.seeds
    per_decade = 2 if args.quick else 4
    default_grid = {"mlp": (1e-3, 10.0), "convnet": (1e-2, 3.0)}
    results = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="babysit-lr-find-") as tmp:
        for model in models:
            lo, hi = (tuple(float(v) for v in args.grid.split(":")) if args.grid else default_grid[model])
            print(f"{model}: lr-find, then {args.epochs}-epoch trainings on a grid {lo:g} .. {hi:g}",
                  file=sys.stderr, flush=True)
            results.append(measure(model, grid_lrs(lo, hi, per_decade), args.epochs, seeds, Path(tmp),
                                   args.optimizer))
    given = " ".join(sys.argv[1:] if argv is None else argv)
    print(f"Command: `python -m benchmarks.lr_find{' ' + given if given else ''}` "
          f"({(time.perf_counter() - start) / 60:.1f} min)\n")
    print(_table(results, args.epochs, seeds))
    for r in results:
        print(f"\n{r['model']}: {r['steps']} sweep steps in {r['sweep_s']:.1f} s; {r['reason']}")
    return 0 if all(_ratio(r["suggestion"], r["best"]) <= 3 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
