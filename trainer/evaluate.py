"""`babysit evaluate RUN [--test]`: a run's checkpoint on its train and val splits; `--test` also on the test split.

The test split is touched only here, and every touch is recorded: in the ledger (trainer/ledger.py, keyed by the
split's id) and as an event in the run's events.jsonl,
    {"type": "event", "name": "test_eval", "step": s, "time": t, "data": {"split_id", "uses", "test_acc", ...}}
From the second use of the same test split on, it warns about false discovery.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from babysit.errors import UsageError
from babysit.monitor import runfile

__all__ = ["configure", "run", "evaluate_run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="a run directory written by babysit train")
    parser.add_argument("--test", action="store_true", help="also evaluate the test split (recorded in the ledger)")
    parser.add_argument("--ledger", default=None, help="the test-use ledger (default $BABYSIT_LEDGER or "
                                                       "~/.cache/babysit/test_ledger.jsonl)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def evaluate_run(run_dir: str, *, test: bool = False, device: str = "auto") -> dict:
    """Metrics of the run's checkpoint: {"train_acc", "train_loss", "val_acc", "val_loss", ["test_acc", ...],
    "split_id", "num_test"}. ValueError (one line) if the run or its checkpoint cannot be used."""
    import torch

    from babysit.monitor.reader import RunReadError, read_meta
    from babysit.trainer.checkpoint import CHECKPOINT, load_checkpoint, state_dict_of
    from babysit.trainer.config import TrainConfig
    from babysit.trainer.data import Preprocess, load_splits
    from babysit.trainer.device import resolve_device
    from babysit.trainer.models import build_model
    from babysit.trainer.train import TRAIN_EVAL_MAX, evaluate

    path = Path(run_dir)
    try:
        meta = read_meta(path)
    except (RunReadError, OSError) as e:
        raise ValueError(str(e)) from None
    cfg = TrainConfig.from_dict(meta.get("config") or {})
    cfg.device = device
    blob = load_checkpoint(path / CHECKPOINT)
    if blob.get("format") != "babysit-checkpoint":
        raise ValueError(f"{path / CHECKPOINT} is a bare state_dict; evaluate needs a checkpoint written by babysit")
    dev = resolve_device(device)
    pre = Preprocess(blob["mean"], blob["std"])
    splits = load_splits(cfg, with_test=test, preprocess=pre).to(dev)
    if list(splits.classes) != list(blob["classes"]):
        raise ValueError(f"{cfg.dataset} now has classes {splits.classes}, the checkpoint {blob['classes']}")
    model = build_model(cfg, tuple(blob["input_shape"]), len(blob["classes"]))
    try:
        model.load_state_dict(state_dict_of(blob))
    except RuntimeError as e:
        raise ValueError(f"checkpoint does not fit the run's model: {str(e).splitlines()[0]}") from None
    model.to(dev)
    out: dict = {"split_id": splits.split_id}
    parts = [("train", splits.x_train[:TRAIN_EVAL_MAX], splits.y_train[:TRAIN_EVAL_MAX]),
             ("val", splits.x_val, splits.y_val)]
    if test:
        parts.append(("test", splits.x_test, splits.y_test))
        out["num_test"] = len(splits.y_test)
        if not len(splits.y_test):
            raise ValueError("this run's split has no test examples (--test-frac 0)")
    for name, x, y in parts:
        loss, acc = evaluate(model, x, y, cfg)
        out[f"{name}_loss"], out[f"{name}_acc"] = torch.stack([loss, acc]).tolist()
    return out


def _record(run_dir: Path, ledger: Path, metrics: dict) -> int:
    from babysit.trainer.ledger import record_use

    try:
        step = int(runfile.read_json(run_dir / runfile.STATUS).get("step") or 0)
    except (OSError, ValueError, AttributeError):
        step = 0
    n = record_use(ledger, metrics["split_id"], run=str(run_dir.resolve()), test_acc=metrics["test_acc"])
    event = {"type": "event", "name": "test_eval", "step": step, "time": time.time(),
             "data": {"split_id": metrics["split_id"], "uses": n, "test_acc": metrics["test_acc"],
                      "test_loss": metrics["test_loss"], "ledger": str(ledger)}}
    with open(run_dir / runfile.EVENTS, "ab") as f:
        f.write(runfile.dumps_line(event).encode("utf-8"))  # one write of one whole line
    return n


def run(args: argparse.Namespace) -> int:
    from babysit.trainer.cli import set_threads
    from babysit.trainer.ledger import ledger_path

    set_threads(args.threads)
    try:
        metrics = evaluate_run(args.run_dir, test=args.test, device=args.device)
    except (ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    for name in ("train", "val", "test"):
        if f"{name}_acc" in metrics:
            print(f"{name:<5} acc {metrics[f'{name}_acc']:.4f}  loss {metrics[f'{name}_loss']:.4f}")
    if args.test:
        ledger = ledger_path(args.ledger)
        n = _record(Path(args.run_dir), ledger, metrics)
        print(f"test split {metrics['split_id']}: use {n} (ledger {ledger})")
        if n >= 2:
            print(f"warning: this test split has now been evaluated {n} times. Each look that informs a choice "
                  "is a chance of false discovery: report the first result and choose models on val "
                  "(use the test set once: a reused test score overestimates).", file=sys.stderr)
    return 0
