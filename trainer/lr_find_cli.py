"""`babysit lr-find`: the learning-rate range test on the command line (same data and model options as train).

    babysit lr-find --model mlp [--start-lr 1e-7 --end-lr 10 --steps 200] [any babysit train option]

Prints both candidates, the suggestion and why, and the `babysit train` line to use it. `--json` prints the
same as one JSON object (what `babysit search` reads). Torch is imported only to run the sweep.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from babysit.errors import UsageError
from babysit.trainer.cli import set_threads
from babysit.trainer.options import add_train_options, config_from_args

__all__ = ["configure", "run", "NOT_OPTIONS"]

# `babysit train` options that mean nothing to a sweep (it sets the lr itself, runs no epochs, never stops early)
NOT_OPTIONS = frozenset({"lr", "epochs", "schedule", "lr_gamma", "lr_step", "lr_decay", "warmup", "max_loss_ratio",
                         "on_critical", "linear_probe", "run_dir", "step_delay"})


def configure(parser: argparse.ArgumentParser) -> None:
    s = parser.add_argument_group("sweep")
    s.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate of the sweep (default 1e-7)")
    s.add_argument("--end-lr", type=float, default=10.0, help="last learning rate, if the loss has not diverged "
                   "before (default 10)")
    s.add_argument("--steps", type=int, default=200, help="steps of the sweep at most (default 200)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_train_options(parser, skip=NOT_OPTIONS - {"run_dir"})
    parser.set_defaults(run_dir=None)


def _g(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    run_dir = args.run_dir or str(Path("runs") / time.strftime("lr-find-%Y%m%d-%H%M%S"))
    try:
        cfg = config_from_args(args, run_dir=run_dir, progress=not (args.no_progress or args.json))
        from babysit.trainer.lr_find import lr_find

        result = lr_find(cfg, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps)
    except (ValueError, FileExistsError, OSError) as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps({**result.event(), "run_dir": result.run_dir, "steps": len(result.lrs)}))
        return 0 if result.suggestion is not None else 1
    print(f"swept lr {result.lrs[0]:.3g} .. {result.lrs[-1]:.3g} in {len(result.lrs)} steps"
          + (f" (diverged at {result.diverged_lr:.3g})" if result.diverged_lr is not None else " (no divergence)"))
    print(f"  steepest descent of the smoothed loss: lr {_g(result.steepest)}")
    print(f"  largest lr before divergence / 10:    lr {_g(result.max_stable_div10)}"
          f"  (largest stable {_g(result.max_stable)})")
    if result.suggestion is None:
        print(f"no suggestion: {result.reason}")
        print(f"run written to {result.run_dir}")
        return 1
    print(f"suggested lr {result.suggestion:.3g} ({result.chosen}): {result.reason}")
    print(f"  try: babysit train --lr {result.suggestion:.2g} ...  (or babysit search, centred on it)")
    print(f"run written to {result.run_dir}")
    return 0
