"""The two losses of the lecture: softmax (cross-entropy) and the multiclass SVM (hinge).

Both are computed in float32 whatever the autocast dtype. `initial_loss` is what each should read at init,
with small weights and regularization off: ln(C) for softmax (2.30 for 10 classes) and C - 1 for the SVM
(every wrong class sits at the margin).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["softmax_loss", "svm_loss", "LOSSES", "get", "initial_loss"]


def softmax_loss(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(scores.float(), y)


def svm_loss(scores: torch.Tensor, y: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Mean over the batch of sum_{j != y} max(0, s_j - s_y + margin) (CS231n's form, not divided by C)."""
    s = scores.float()
    margins = (s - s.gather(1, y[:, None]) + margin).clamp_min(0)
    return margins.masked_fill(F.one_hot(y, s.shape[1]).bool(), 0.0).sum(1).mean()


LOSSES = {"softmax": softmax_loss, "svm": svm_loss}


def get(name: str):
    """The loss function by name (looked up at call time, so a test can swap one in)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    return LOSSES[name]


def initial_loss(name: str, num_classes: int) -> float:
    return math.log(num_classes) if name == "softmax" else float(num_classes - 1)
