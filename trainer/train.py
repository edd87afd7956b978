"""The reference training loop, with the hooks inside.

One step: gather a batch from the on-device training split, augment it on the device, forward (bf16 autocast on
CUDA), loss + regularization penalty, backward, update, max-norm, lr schedule, `run.step(loss)`. Nothing in the
step waits for the device: the loss stays a tensor (the hooks move it to the host in batches), and the trainer's
own divergence check keeps a running maximum on the device that it reads every CHECK_EVERY steps and at the end
of each epoch (where the loop waits for the epoch's metrics anyway).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from babysit import hooks
from babysit.monitor import runfile
from babysit.trainer import distributed, losses, regularize
from babysit.trainer.augment import augment
from babysit.trainer.checkpoint import CHECKPOINT, save_checkpoint
from babysit.trainer.config import TrainConfig
from babysit.trainer.data import Splits, load_splits
from babysit.trainer.device import autocast, resolve_device, use_channels_last
from babysit.trainer.models import build_model
from babysit.trainer.optim import make_optimizer
from babysit.trainer.progress import Progress
from babysit.trainer.schedules import make_scheduler
from babysit.trainer.transfer import freeze_up_to, linear_probe, load_pretrained, train_mode

__all__ = ["TrainConfig", "train", "prepare", "objective", "evaluate", "resolve_device", "CHECK_EVERY",
           "TRAIN_EVAL_MAX"]

# Steps between reads of the divergence monitor: one 8-byte device->host copy, i.e. one wait for the GPU to
# drain, per 50 steps (tens of microseconds per 50 steps of work); an epoch can be thousands of steps long.
CHECK_EVERY = 50
TRAIN_EVAL_MAX = 1000  # training accuracy is measured on this many (already shuffled) examples, as CS231n does


def prepare(cfg: TrainConfig, device: torch.device) -> tuple[Splits, nn.Module, list[nn.Module], list[str]]:
    """Data (train and val only), the model built and initialized, transfer applied, both on `device`."""
    splits = load_splits(cfg)
    if (cfg.crop_pad or cfg.flip) and len(splits.input_shape) != 3:
        raise ValueError(f"--crop-pad and --flip need images; {cfg.dataset} has features")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, splits.input_shape, splits.num_classes)
    notes = load_pretrained(model, cfg.init_from) if cfg.init_from else []
    frozen = freeze_up_to(model, cfg.freeze) if cfg.freeze else []
    model.to(device)
    splits = splits.to(device)
    if use_channels_last(cfg, device, splits.input_shape):
        model.to(memory_format=torch.channels_last)
        splits.x_train = splits.x_train.contiguous(memory_format=torch.channels_last)
        splits.x_val = splits.x_val.contiguous(memory_format=torch.channels_last)
    return splits, model, frozen, notes


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
             batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean data loss, accuracy) as device tensors, in eval mode (dropout off: inverted dropout needs no
    test-time scaling). The caller restores training mode."""
    model.eval()
    loss_fn = losses.get(cfg.loss)
    total = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        with autocast(cfg, x.device):
            scores = model(xb)
        total += loss_fn(scores, yb) * len(yb)
        correct += (scores.argmax(1) == yb).sum()
    return total / max(len(x), 1), correct / max(len(x), 1)


def _check_run_dir(path: str) -> None:
    events = Path(path) / runfile.EVENTS
    if events.exists() and events.stat().st_size:
        raise ValueError(f"{path} already holds a run; pick a new --run-dir")


def _divergence(first: torch.Tensor, peak: torch.Tensor, ratio: float, chance: float) -> str | None:
    """The lecture's "loss > 3x original: quit early", and NaN/inf. One device->host copy."""
    f, p = torch.stack([first, peak]).float().tolist()
    if not math.isfinite(p):
        return f"loss became non-finite ({p}): learning rate too high?"
    reference = max(f, chance)  # a fine-tuned net starts far below chance; measure blow-ups against chance
    if p > ratio * reference:
        return f"loss {p:.4g} exceeded {ratio:g}x the initial {reference:.4g}: learning rate too high?"
    return None


def objective(net, x, y, loss_fn, reg_params, cfg: TrainConfig, device) -> torch.Tensor:
    """What one step minimizes: the data loss plus the regularization penalty (so the recorded loss is the
    objective, and cranking the regularization raises it)."""
    with autocast(cfg, device):
        scores = net(x)
    loss = loss_fn(scores, y)
    penalty = regularize.penalty(reg_params, cfg.reg, cfg.reg_type, cfg.l1_ratio)
    return loss if penalty is None else loss + penalty


def train(cfg: TrainConfig) -> dict:
    """Train, recording into cfg.run_dir (rank 0). Returns final metrics and the run's state."""
    cfg.validate()
    d, device = distributed.setup(cfg.device)
    try:
        return _train(cfg, d, device)
    finally:
        distributed.teardown(d)


def _train(cfg: TrainConfig, d: distributed.Dist, device: torch.device) -> dict:
    if d.is_main:
        _check_run_dir(cfg.run_dir)
    splits, model, frozen, notes = prepare(cfg, device)
    if cfg.linear_probe:
        if d.world > 1:
            raise ValueError("--linear-probe runs in one process, not under torchrun")
        return _linear_probe_run(cfg, splits, model, notes)

    torch.manual_seed(cfg.seed + d.rank)  # dropout and augmentation differ across ranks
    optimizer = make_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad], cfg.lr,
                               cfg.momentum)
    n = len(splits.x_train)
    batch = max(1, cfg.batch_size // d.world)  # --batch-size is the global batch
    steps_per_epoch = math.ceil((n // d.world) / batch)
    scheduler = make_scheduler(optimizer, cfg.schedule, steps_per_epoch, steps_per_epoch * cfg.epochs,
                               gamma=cfg.lr_gamma, lr_step=cfg.lr_step, decay=cfg.lr_decay, warmup=cfg.warmup)
    loss_fn = losses.get(cfg.loss)
    reg_params = regularize.penalized(model, cfg.reg_bias)
    norm_params = [p for p in model.parameters() if p.requires_grad and p.ndim > 1] if cfg.max_norm else []
    chance = losses.initial_loss(cfg.loss, splits.num_classes)
    fmt = torch.channels_last if use_channels_last(cfg, device, splits.input_shape) else torch.contiguous_format

    net: nn.Module = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    order = torch.Generator().manual_seed(cfg.seed)  # the same permutations on every rank
    progress = Progress(cfg.epochs, "epoch", cfg.progress and d.is_main)
    first = peak = None
    reason = None
    result: dict = {"notes": notes}
    best_val = -math.inf
    heal = cfg.heal or cfg.on_critical == "heal"  # the hooks roll back and fix; the loss-ratio quit would stop it
    with hooks.Run(cfg.run_dir, num_classes=splits.num_classes, config=asdict(cfg),
                   on_critical="heal" if heal else cfg.on_critical) as run:
        run.watch(model, optimizer, input_shape=splits.input_shape, scheduler=scheduler)
        for epoch in range(1, cfg.epochs + 1):
            train_mode(model, frozen)
            perm = distributed.shard(torch.randperm(n, generator=order), d).to(device, non_blocking=True)
            total = torch.zeros((), device=device)
            steps = 0
            stopping = False
            for i in range(steps_per_epoch):
                idx = perm[i * batch:(i + 1) * batch]
                x = augment(splits.x_train[idx], cfg.crop_pad, cfg.flip).contiguous(memory_format=fmt)
                loss = objective(net, x, splits.y_train[idx], loss_fn, reg_params, cfg, device)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if norm_params:
                    regularize.apply_max_norm(norm_params, cfg.max_norm)
                value = loss.detach()
                run.step(loss=value)  # records the lr this step used, so before the scheduler moves it
                scheduler.step()
                if cfg.step_delay:
                    time.sleep(cfg.step_delay)
                total += value
                steps += 1
                if first is None:
                    first = value
                peak = value if peak is None else torch.maximum(peak, value)  # NaN propagates
                if run.global_step % CHECK_EVERY == 0:
                    if cfg.max_loss_ratio and not reason and not heal:
                        reason = _divergence(first, peak, cfg.max_loss_ratio, chance)
                    stopping = distributed.any_rank(bool(reason) or run.should_stop, d, device)
                elif d.world == 1:
                    stopping = run.should_stop  # a plain bool the hooks set at a flush: free to read
                if stopping:
                    break

            metrics = {}
            if d.is_main:
                train_loss, train_acc = evaluate(model, splits.x_train[:TRAIN_EVAL_MAX],
                                                 splits.y_train[:TRAIN_EVAL_MAX], cfg)
                val_loss, val_acc = evaluate(model, splits.x_val, splits.y_val, cfg)
                values = torch.stack([train_loss, train_acc, val_loss, val_acc, total / max(steps, 1)]).tolist()
                names = ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_loss")
                metrics = dict(zip(names, values, strict=True))
                metrics["lr"] = optimizer.param_groups[0]["lr"]
                run.epoch(**metrics)
                best_val = max(best_val, metrics["val_acc"])
                progress.update(epoch, f"loss {metrics['epoch_loss']:.4f}  val acc {metrics['val_acc']:.3f}")
                result.update(metrics)
            if cfg.max_loss_ratio and first is not None and not reason and not heal:
                reason = _divergence(first, peak, cfg.max_loss_ratio, chance)
            if distributed.any_rank(bool(reason) or run.should_stop, d, device):
                break
        progress.close()
        if reason:
            run.request_stop(reason)
        elif d.world > 1 and not run.should_stop and epoch < cfg.epochs:
            run.request_stop("stopped by another rank")
        if d.is_main:
            save_checkpoint(Path(cfg.run_dir) / CHECKPOINT, model, splits.preprocess, splits.classes,
                            splits.input_shape, cfg)
    result.update(
        state="stopped" if run.should_stop else "finished", reason=run.stop_reason, steps=run.global_step,
        epochs=run.epoch_count, best_val_acc=best_val if best_val > -math.inf else math.nan,
        run_dir=str(run.path), split_id=splits.split_id, rank=d.rank,
        findings=[f for f in run.findings if f.get("severity") in ("warning", "critical")],
    )
    return result


def _linear_probe_run(cfg: TrainConfig, splits: Splits, model: nn.Module, notes: list[str]) -> dict:
    with hooks.Run(cfg.run_dir, num_classes=splits.num_classes, config=asdict(cfg), on_critical=None) as run:
        run.watch(model, input_shape=splits.input_shape)
        probe = linear_probe(model, splits.x_train, splits.y_train, splits.x_val, splits.y_val, cfg.reg)
        train_loss, train_acc = evaluate(model, splits.x_train[:TRAIN_EVAL_MAX], splits.y_train[:TRAIN_EVAL_MAX], cfg)
        val_loss, val_acc = evaluate(model, splits.x_val, splits.y_val, cfg)
        values = torch.stack([train_loss, train_acc, val_loss, val_acc]).tolist()
        metrics = dict(zip(("train_loss", "train_acc", "val_loss", "val_acc"), values, strict=True))
        run.epoch(**metrics)
        run.log_event("linear_probe", **probe)
        save_checkpoint(Path(cfg.run_dir) / CHECKPOINT, model, splits.preprocess, splits.classes,
                        splits.input_shape, cfg)
    return {**metrics, **probe, "notes": notes, "state": "finished", "reason": None, "steps": 0, "epochs": 1,
            "best_val_acc": metrics["val_acc"], "run_dir": str(run.path), "split_id": splits.split_id,
            "findings": []}
