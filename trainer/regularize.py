"""Regularization as the lecture writes it: a penalty added to the loss (so the recorded loss is the objective,
and cranking the strength visibly raises it), plus the max-norm constraint applied after each update.

    l2       reg * 1/2 |W|^2          ("weight decay": its gradient is reg * W)
    l1       reg * |W|_1              (pushes weights to exactly zero)
    elastic  reg * (a |W|_1 + (1 - a) 1/2 |W|^2), a = l1_ratio
    max-norm each unit's incoming weight vector is rescaled to L2 norm <= c
Biases (every 1-D parameter, which includes norm layers' scales and shifts) are excluded unless asked for.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["penalized", "penalty", "apply_max_norm"]


def penalized(model: nn.Module, include_bias: bool = False) -> list[nn.Parameter]:
    """The trainable parameters the penalty covers."""
    return [p for p in model.parameters() if p.requires_grad and (include_bias or p.ndim > 1)]


def penalty(
    params: list[torch.Tensor], strength: float, kind: str = "l2", l1_ratio: float = 0.5
) -> torch.Tensor | None:
    """The regularization term (a 0-d tensor on the parameters' device), or None when strength is 0."""
    if strength == 0 or not params:
        return None
    l1_share = {"l2": 0.0, "l1": 1.0, "elastic": l1_ratio}[kind]
    total = 0.0
    if l1_share > 0:
        total = total + l1_share * torch.stack([p.abs().sum() for p in params]).sum()
    if l1_share < 1:
        total = total + (1 - l1_share) * 0.5 * torch.stack([p.square().sum() for p in params]).sum()
    return strength * total


@torch.no_grad()
def apply_max_norm(params: list[torch.Tensor], max_norm: float) -> None:
    """Rescale, in place, each output unit's weights (row of a Linear, filter of a Conv) to norm <= max_norm."""
    for p in params:
        if p.ndim > 1:
            p.renorm_(2, 0, max_norm)
