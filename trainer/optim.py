"""The update rules: plain SGD (the lecture's sanity checks use it), SGD + momentum (its recommendation),
Nesterov momentum, Adam. Regularization is in the loss (trainer/regularize.py), never in weight_decay, so every
optimizer sees the same objective.
"""

from __future__ import annotations

import torch

__all__ = ["make_optimizer"]


def make_optimizer(
    name: str, params: list[torch.nn.Parameter], lr: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=name == "nesterov" and momentum > 0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose from sgd, momentum, nesterov, adam")
