"""The learning-rate range test (`babysit lr-find`): sweep the lr exponentially, watch where the loss falls fastest.

    from babysit.trainer.lr_find import lr_find
    result = lr_find(TrainConfig(model="mlp", run_dir="runs/lrf"))
    result.suggestion, result.reason

Starting from a tiny lr (1e-7), each step multiplies it by the same factor, on the trainer's own data, model,
optimizer and loss (regularization included), until `end_lr` or until the loss diverges (smoothed loss above
4x its best, or NaN): a few hundred steps. It is recorded as an ordinary run (the hooks inside: the steps'
`lr` column is the sweep), with one `lr_find` event at the end holding the suggestion and both candidates
(rules/lr_range.py reads the curve). Nothing is saved: the model is thrown away.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from babysit import hooks
from babysit.rules.lr_range import DIVERGE, SETTLE, analyze, beta_for, smooth
from babysit.trainer import losses, regularize
from babysit.trainer.augment import augment
from babysit.trainer.config import TrainConfig
from babysit.trainer.device import resolve_device
from babysit.trainer.optim import make_optimizer
from babysit.trainer.progress import Progress
from babysit.trainer.train import _check_run_dir, objective, prepare
from babysit.trainer.transfer import train_mode

__all__ = ["lr_find", "LRFindResult", "START_LR", "END_LR", "STEPS", "EVENT"]

START_LR = 1e-7
END_LR = 10.0
STEPS = 200
EVENT = "lr_find"
MIN_STEPS = SETTLE  # the divergence check waits this long: the first smoothed points rest on a few losses


@dataclass
class LRFindResult:
    suggestion: float | None  # None when the curve could not be read (diverged at once, or too few steps)
    chosen: str | None  # "steepest" or "max_stable_div10"
    reason: str
    steepest: float | None
    max_stable: float | None
    max_stable_div10: float | None
    diverged_lr: float | None
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    run_dir: str = ""

    def event(self) -> dict:
        """The data of the run's `lr_find` event (the curve itself is in the steps: loss against lr)."""
        keys = ("suggestion", "chosen", "reason", "steepest", "max_stable", "max_stable_div10", "diverged_lr")
        return {k: getattr(self, k) for k in keys}


def _lr_at(i: int, steps: int, start: float, end: float) -> float:
    return start * (end / start) ** (i / max(steps - 1, 1))


def lr_find(cfg: TrainConfig, start_lr: float = START_LR, end_lr: float = END_LR, steps: int = STEPS,
            diverge: float = DIVERGE, beta: float | None = None) -> LRFindResult:
    """Sweep the lr from `start_lr` to `end_lr` over at most `steps` steps, recorded into cfg.run_dir.

    beta: the loss EMA's weight (default: a quarter of a decade of memory, rules.lr_range.beta_for)."""
    cfg.validate()
    if not (0 < start_lr < end_lr and math.isfinite(end_lr)):
        raise ValueError(f"the sweep needs 0 < --start-lr < --end-lr, not {start_lr:g} .. {end_lr:g}")
    if steps < MIN_STEPS:
        raise ValueError(f"--steps must be at least {MIN_STEPS}: the smoothed loss needs that many to settle")
    if cfg.linear_probe:
        raise ValueError("--linear-probe fits no learning rate: nothing to sweep")
    _check_run_dir(cfg.run_dir)
    plan = [_lr_at(i, steps, start_lr, end_lr) for i in range(steps)]
    beta = beta_for(plan) if beta is None else beta
    device = resolve_device(cfg.device)
    splits, model, frozen, _ = prepare(cfg, device)
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg.optimizer, params, start_lr, cfg.momentum)
    loss_fn = losses.get(cfg.loss)
    reg_params = regularize.penalized(model, cfg.reg_bias)
    n, batch = len(splits.x_train), min(cfg.batch_size, len(splits.x_train))
    order = torch.Generator().manual_seed(cfg.seed)
    perm, pos = torch.randperm(n, generator=order).to(device), 0
    lrs: list[float] = []
    values: list[float] = []
    # No single "lr" in the config: the sweep is the lr (the dashboard's run table and search view read "lr").
    config = {k: v for k, v in asdict(cfg).items() if k != "lr"}
    config["lr_find"] = {"start_lr": start_lr, "end_lr": end_lr, "steps": steps, "beta": beta}
    progress = Progress(steps, "steps", cfg.progress)
    # on_critical=None: this run is meant to diverge at its end; the rules still record what they see.
    with hooks.Run(cfg.run_dir, num_classes=splits.num_classes, config=config, on_critical=None) as run:
        run.watch(model, optimizer, input_shape=splits.input_shape)
        train_mode(model, frozen)
        best, avg = math.inf, 0.0
        for i in range(steps):
            lr = plan[i]
            for group in optimizer.param_groups:
                group["lr"] = lr
            if pos + batch > n:  # a new epoch: reshuffle
                perm, pos = torch.randperm(n, generator=order).to(device), 0
            idx = perm[pos:pos + batch]
            pos += batch
            x = augment(splits.x_train[idx], cfg.crop_pad, cfg.flip)
            loss = objective(model, x, splits.y_train[idx], loss_fn, reg_params, cfg, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            run.step(loss=loss.detach())
            # The stop test needs the value now: one sync per step, fine for a few hundred steps.
            value = float(loss.detach())
            lrs.append(lr)
            values.append(value)
            avg = beta * avg + (1 - beta) * value if math.isfinite(value) else math.nan
            smoothed = avg / (1 - beta ** (i + 1))
            progress.update(i + 1, f"lr {lr:.2e}  loss {smoothed:.4f}")
            if not math.isfinite(smoothed) or (i >= MIN_STEPS and smoothed > diverge * best):
                break
            best = min(best, smoothed)
        progress.close()
        reading = analyze(lrs, values, beta=beta, diverge=diverge)
        result = LRFindResult(
            suggestion=reading["suggestion"], chosen=reading["chosen"], reason=reading["reason"],
            steepest=reading["steepest"], max_stable=reading["max_stable"],
            max_stable_div10=reading["max_stable_div10"], diverged_lr=reading["diverged_lr"], lrs=lrs,
            losses=values, smoothed=smooth(values, beta), run_dir=str(run.path))
        run.log_event(EVENT, **result.event(), start_lr=start_lr, end_lr=end_lr, steps=len(lrs), beta=beta)
    return result
