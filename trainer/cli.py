"""`babysit train`: the reference trainer on the command line (every option: `babysit train --help`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from babysit.errors import UsageError
from babysit.rules.base import fmt
from babysit.trainer.options import add_train_options, config_from_args

__all__ = ["configure", "run", "set_threads"]


def configure(parser: argparse.ArgumentParser) -> None:
    add_train_options(parser)
    parser.set_defaults(run_dir=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        if threads < 1:
            raise UsageError("--threads must be at least 1")
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    run_dir = args.run_dir or str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    try:
        cfg = config_from_args(args, run_dir=run_dir, progress=not args.no_progress).validate()
        from babysit.trainer.train import train

        result = train(cfg)
    except (ValueError, FileExistsError, OSError) as e:
        raise UsageError(str(e)) from None
    if result.get("rank", 0) != 0:
        return 0  # under torchrun, rank 0 reports
    for note in result.get("notes", []):
        print(note)
    names = ("train_acc", "val_acc", "best_val_acc", "probe_train_acc", "probe_val_acc")
    acc = {k: fmt(result.get(k), 4) for k in names}
    print(f"train acc {acc['train_acc']}  val acc {acc['val_acc']}  best val acc {acc['best_val_acc']}"
          f"  ({result['steps']} steps, {result['state']})")
    if "probe_val_acc" in result:
        print(f"linear probe: train acc {acc['probe_train_acc']}  val acc {acc['probe_val_acc']}")
    for f in result["findings"]:
        print(f"  {f.get('severity')}: {f.get('rule')}: {f.get('message')}")
    if result.get("reason"):
        print(f"stopped: {result['reason']}")
    print(f"run written to {result['run_dir']}")
    return 0
