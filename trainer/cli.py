"""`babysit train`: the reference trainer on the command line."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from monitor.cli import UsageError

__all__ = ["configure", "run"]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="digits", choices=["digits"])
    parser.add_argument("--model", default="convnet", choices=["convnet", "mlp"])
    parser.add_argument("--lr", type=_positive_float, default=0.05, help="learning rate (default 0.05)")
    parser.add_argument("--reg", type=_positive_float, default=1e-4, help="L2 strength on weights (default 1e-4)")
    parser.add_argument("--momentum", type=_positive_float, default=0.9)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--run-dir", default=None, help="where to record the run (default runs/<time>)")
    parser.add_argument("--on-critical", default="stop", choices=["warn", "stop", "raise"],
                        help="what a critical finding does to the run (default: stop it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from trainer.train import TrainConfig, train

    if args.epochs < 1 or args.batch_size < 1:
        raise UsageError("--epochs and --batch-size must be at least 1")
    run_dir = args.run_dir or str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    cfg = TrainConfig(
        dataset=args.dataset, model=args.model, lr=args.lr, reg=args.reg, momentum=args.momentum,
        epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, device=args.device,
        run_dir=run_dir, on_critical=args.on_critical, progress=not args.no_progress,
    )
    try:
        result = train(cfg)
    except (ValueError, FileExistsError) as e:
        raise UsageError(str(e)) from None
    print(f"train acc {result.get('train_acc', float('nan')):.4f}  val acc {result.get('val_acc', float('nan')):.4f}"
          f"  ({result['steps']} steps, {result['state']})")
    for f in result["findings"]:
        print(f"  {f.get('severity')}: {f.get('rule')}: {f.get('message')}")
    if result.get("reason"):
        print(f"stopped: {result['reason']}")
    print(f"run written to {result['run_dir']}")
    return 0
