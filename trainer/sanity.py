"""`babysit sanity`: the lecture's checks before a real run, as a pass/fail table (exit 1 on any failure).

    1. the loss at init with regularization off reads what chance predicts: ln(C) for softmax, C - 1 for the SVM
    2. the loss goes up when regularization is cranked up (the lecture's 2.30 -> 3.07)
    3. the model overfits 20 training examples to 100% training accuracy with regularization and dropout off,
       plain SGD, constant learning rate, full batch (the lecture: 200 epochs)
The checks run the trainer's own pieces (trainer.models, trainer.losses, trainer.regularize), looked up at call
time, so a bug planted in any of them (`--plant-bug`, or a test that swaps one in) fails a check.
"""

from __future__ import annotations

import argparse
import math
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, replace
from unittest import mock

from babysit.errors import UsageError
from babysit.trainer.options import add_train_options, config_from_args

__all__ = ["configure", "run", "Check", "run_checks", "plain_sgd_lr", "BUGS"]

BUGS = ("init", "reg", "labels")  # what --plant-bug can break: a check must catch each


@dataclass
class Check:
    name: str
    measured: str
    expected: str
    passed: bool


def configure(parser: argparse.ArgumentParser) -> None:
    add_train_options(parser, skip={"epochs", "run_dir", "on_critical", "heal", "init_from", "freeze", "linear_probe",
                                    "compile", "max_loss_ratio", "crop_pad", "flip"})
    s = parser.add_argument_group("sanity")
    s.add_argument("--overfit-n", type=int, default=20, help="examples to overfit (default 20)")
    s.add_argument("--overfit-steps", type=int, default=200, help="full-batch SGD steps allowed (default 200)")
    s.add_argument("--overfit-lr", type=float, default=None,
                   help="lr of the overfit check's plain SGD (default: the configured optimizer's effective step, "
                        "lr / (1 - momentum) for momentum and nesterov; 0.1 for adam)")
    s.add_argument("--crank", type=float, default=1e3, help="regularization strength of check 2 (default 1e3)")
    s.add_argument("--init-tol", type=float, default=0.1,
                   help="check 1 passes within this relative distance of ln(C) (default 0.1)")
    s.add_argument("--run-dir", default=None, help="also record the overfit run here (for the dashboard)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    s.add_argument("--plant-bug", choices=BUGS, default=None, help=argparse.SUPPRESS)


def _planted(bug: str | None) -> ExitStack:
    """Patch one piece of the trainer the way real bugs look; the checks must notice."""
    from babysit.trainer import losses, models, regularize

    stack = ExitStack()
    if bug == "init":  # the head is initialized 100x too large: confident wrong guesses at step 0
        build = models.build_model

        def build_loud(*args, **kwargs):
            model = build(*args, **kwargs)
            model.head.weight.data.mul_(100)
            return model

        stack.enter_context(mock.patch.object(models, "build_model", build_loud))
    elif bug == "reg":  # the penalty's sign is flipped: more regularization, lower loss
        penalty = regularize.penalty
        stack.enter_context(mock.patch.object(
            regularize, "penalty", lambda *a, **k: None if (p := penalty(*a, **k)) is None else -p))
    elif bug == "labels":  # the loss sees labels shuffled against their inputs (a misaligned data pipeline)
        stack.enter_context(mock.patch.dict(losses.LOSSES, {k: _misaligned(f) for k, f in losses.LOSSES.items()}))
    return stack


def _misaligned(loss_fn):
    import torch

    def loss(scores, y):
        return loss_fn(scores, y[torch.randperm(len(y), device=y.device)])

    return loss


def run_checks(cfg, *, overfit_n: int = 20, overfit_steps: int = 200, overfit_lr: float | None = None,
               crank: float = 1e3, init_tol: float = 0.1, run_dir: str | None = None) -> list[Check]:
    """The three checks on cfg's data and model (cfg: a TrainConfig)."""
    import torch

    from babysit.trainer import losses, models, regularize
    from babysit.trainer.data import load_splits
    from babysit.trainer.device import resolve_device

    device = resolve_device(cfg.device)
    splits = load_splits(cfg).to(device)
    loss_fn = losses.get(cfg.loss)
    expected = losses.initial_loss(cfg.loss, splits.num_classes)
    x, y = splits.x_train[:512], splits.y_train[:512]
    checks = []

    torch.manual_seed(cfg.seed)
    model = models.build_model(cfg, splits.input_shape, splits.num_classes).to(device)
    with torch.no_grad():  # train mode: batch-norm uses batch statistics, as in the first training step
        data_loss = loss_fn(model(x), y)
        l0 = float(data_loss)
        reg_on = regularize.penalty(regularize.penalized(model, cfg.reg_bias), crank, cfg.reg_type, cfg.l1_ratio)
        l_crank = float(data_loss + (reg_on if reg_on is not None else 0.0))
    what = f"ln({splits.num_classes})" if cfg.loss == "softmax" else f"C-1 = {splits.num_classes - 1}"
    checks.append(Check("initial loss, reg off", f"{l0:.4f}", f"{what} = {expected:.4f} +-{init_tol:.0%}",
                        math.isfinite(l0) and abs(l0 - expected) <= init_tol * expected))
    checks.append(Check(f"loss rises with reg {crank:g}", f"{l0:.4f} -> {l_crank:.4g}", "higher",
                        math.isfinite(l_crank) and l_crank > l0 * (1 + 1e-3)))
    checks.append(_overfit(cfg, splits, overfit_n, overfit_steps, overfit_lr or plain_sgd_lr(cfg), run_dir))
    return checks


def plain_sgd_lr(cfg) -> float:
    """The plain-SGD step size that moves as far as cfg's optimizer: momentum m multiplies the step by 1/(1-m).
    Adam's lr is on another scale altogether, so it gets a value that works for our models."""
    if cfg.optimizer in ("momentum", "nesterov"):
        return cfg.lr / max(1.0 - cfg.momentum, 1e-3)
    return 0.1 if cfg.optimizer == "adam" else cfg.lr


def _overfit(cfg, splits, n: int, max_steps: int, lr: float, run_dir: str | None) -> Check:
    import torch

    from babysit import hooks
    from babysit.trainer import losses, models
    from babysit.trainer.train import _check_run_dir

    cfg = replace(cfg, dropout=0.0, reg=0.0, optimizer="sgd", schedule="constant", warmup=0)
    x, y = splits.x_train[:n], splits.y_train[:n]
    torch.manual_seed(cfg.seed)
    model = models.build_model(cfg, splits.input_shape, splits.num_classes).to(x.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = losses.get(cfg.loss)
    acc, steps = 0.0, 0
    run = None
    if run_dir is not None:  # on_critical=None: memorizing 20 examples is the point, no rule may stop it
        _check_run_dir(run_dir)
        run = hooks.Run(run_dir, num_classes=splits.num_classes,
                        config={**asdict(cfg), "lr": lr, "sanity": f"overfit {n}"}, on_critical=None)
    with run or nullcontext():
        for steps in range(1, max_steps + 1):
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if run is not None:
                run.step(loss=loss.detach())
            if steps % 10 == 0 or steps == max_steps:
                model.eval()
                with torch.no_grad():
                    acc = float((model(x).argmax(1) == y).float().mean())
                model.train()
                if run is not None:
                    run.epoch(train_loss=loss.detach(), train_acc=acc)
                if acc == 1.0:
                    break
    return Check(f"overfit {n} examples (sgd, lr {lr:g})", f"train acc {acc:.3f} at step {steps}",
                 f"1.000 within {max_steps} steps", acc == 1.0)


def _table(checks: list[Check]) -> str:
    rows = [("check", "measured", "expected", "result")]
    rows += [(c.name, c.measured, c.expected, "PASS" if c.passed else "FAIL") for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def run(args: argparse.Namespace) -> int:
    from babysit.trainer.cli import set_threads

    set_threads(args.threads)
    if args.overfit_n < 1 or args.overfit_steps < 1:
        raise UsageError("--overfit-n and --overfit-steps must be at least 1")
    try:
        cfg = config_from_args(args).validate()
        with _planted(args.plant_bug):
            checks = run_checks(cfg, overfit_n=args.overfit_n, overfit_steps=args.overfit_steps,
                                overfit_lr=args.overfit_lr, crank=args.crank, init_tol=args.init_tol,
                                run_dir=args.run_dir)
    except (ValueError, FileExistsError, OSError) as e:
        raise UsageError(str(e)) from None
    print(_table(checks))
    failed = [c for c in checks if not c.passed]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed" + ("" if not failed else
          ": fix these before tuning anything (babysit train --help lists the knobs)"))
    return 1 if failed else 0
