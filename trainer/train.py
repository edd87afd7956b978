"""The reference training loop, with the hooks inside."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import hooks
from trainer.data import load_digits_split
from trainer.models import build_model

__all__ = ["TrainConfig", "train", "resolve_device"]


@dataclass
class TrainConfig:
    dataset: str = "digits"
    model: str = "convnet"
    lr: float = 0.05
    reg: float = 1e-4
    momentum: float = 0.9
    epochs: int = 20
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    run_dir: str = "runs/train"
    on_critical: str = "stop"
    progress: bool = True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available")
    return torch.device(name)


@torch.no_grad()
def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    logits = model(x)
    model.train()
    return F.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()


class _Progress:
    """One line on stderr, rewritten in place: epoch, loss, speed."""

    def __init__(self, enabled: bool, total_epochs: int):
        self.enabled = enabled and sys.stderr is not None
        self.total = total_epochs
        self.start = time.perf_counter()

    def update(self, epoch: int, steps: int, loss: float, val_acc: float) -> None:
        if not self.enabled:
            return
        rate = steps / max(time.perf_counter() - self.start, 1e-9)
        done = int(20 * epoch / self.total)
        bar = "#" * done + "." * (20 - done)
        sys.stderr.write(
            f"\r[{bar}] epoch {epoch}/{self.total}  loss {loss:.4f}  val acc {val_acc:.3f}  {rate:,.0f} steps/s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def train(cfg: TrainConfig) -> dict:
    """Train, recording into cfg.run_dir. Returns final metrics and the run's state."""
    if cfg.dataset != "digits":
        raise ValueError(f"unknown dataset {cfg.dataset!r}")
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    data = load_digits_split(cfg.seed).to(device)  # small enough to live on the device: no loader, no copies
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(device)
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.reg}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        momentum=cfg.momentum,
    )
    n = len(data.x_train)
    progress = _Progress(cfg.progress, cfg.epochs)
    result: dict = {}
    with hooks.Run(cfg.run_dir, num_classes=data.num_classes, config=asdict(cfg), on_critical=cfg.on_critical) as run:
        run.watch(model, optimizer, input_shape=data.input_shape)
        for epoch in range(1, cfg.epochs + 1):
            perm = torch.randperm(n, device=device)
            total, batches = torch.zeros((), device=device), 0
            for i in range(0, n, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                run.step(loss=loss)
                total += loss.detach()
                batches += 1
                if run.should_stop:
                    break
            train_loss, train_acc = _evaluate(model, data.x_train, data.y_train)
            val_loss, val_acc = _evaluate(model, data.x_val, data.y_val)
            metrics = {
                "train_loss": train_loss.item(), "train_acc": train_acc.item(),
                "val_loss": val_loss.item(), "val_acc": val_acc.item(),
                "epoch_loss": (total / max(batches, 1)).item(),
            }
            run.epoch(**metrics)
            result = metrics
            progress.update(epoch, run.global_step, metrics["epoch_loss"], metrics["val_acc"])
            if run.should_stop:
                break
        progress.close()
        Path(cfg.run_dir, "checkpoint.pt").parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), Path(cfg.run_dir) / "checkpoint.pt")
    result.update(state="stopped" if run.should_stop else "finished", reason=run.stop_reason,
                  steps=run.global_step, run_dir=str(run.path),
                  findings=[f for f in run.findings if f.get("severity") in ("warning", "critical")])
    if not math.isfinite(result.get("epoch_loss", 0.0)):
        result["state"] = "stopped"
    return result
