"""JSON-able summaries of a model and its optimizer: what meta.json records so the dashboard and the rules
know the layers, what is frozen, and what the optimizer holds. Host-only (shapes and flags, no values)."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["model_summary", "optimizer_summary"]


def model_summary(model: torch.nn.Module) -> dict:
    layers = []
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own and list(module.children()):
            continue  # containers are described by their children
        trainable = sum(p.numel() for _, p in own if p.requires_grad)
        count = sum(p.numel() for _, p in own)
        layers.append(
            {
                "name": name or type(module).__name__,
                "type": type(module).__name__,
                "params": {n: list(p.shape) for n, p in own},
                "count": count,
                "trainable": trainable,
                "frozen": count - trainable,
                # a dropout layer's rate: the rules weigh heavy dropout without a config that declares it
                **({"p": float(module.p)} if "Dropout" in type(module).__name__
                   and isinstance(getattr(module, "p", None), (int, float)) else {}),
            }
        )
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "class": type(model).__name__,
        "parameters": total,
        "trainable": trainable,
        "frozen": total - trainable,
        "layers": layers,
    }


def _number(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()  # once, at watch(): a tensor lr (capturable optimizers)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def optimizer_summary(model: torch.nn.Module, optimizer: Any) -> dict:
    """Which of the model's trainable parameters the optimizer holds (a parameter with requires_grad that no
    group holds never changes: a classic bug), and each group's lr, weight decay and momentum."""
    groups = []
    held: set[int] = set()
    for group in getattr(optimizer, "param_groups", []) or []:
        params = [p for p in group.get("params", []) if isinstance(p, torch.Tensor)]
        held.update(id(p) for p in params)
        momentum = group.get("momentum")
        if momentum is None and isinstance(group.get("betas"), (tuple, list)) and group["betas"]:
            momentum = group["betas"][0]  # Adam's beta1 plays momentum's part
        groups.append(
            {
                "lr": _number(group.get("lr")),
                "weight_decay": _number(group.get("weight_decay")),
                "momentum": _number(momentum),
                "params": sum(p.numel() for p in params),
            }
        )
    missing = 0
    layers_missing = []
    root = type(model).__name__
    for name, module in model.named_modules():
        lost = [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in held]
        if lost:
            missing += sum(p.numel() for p in lost)
            layers_missing.append(name or root)
    in_model = {id(p) for p in model.parameters()}
    return {
        "class": type(optimizer).__name__,
        "param_groups": groups,
        "params_in_optimizer": sum(g["params"] for g in groups),
        "params_in_model_held": sum(p.numel() for p in model.parameters() if id(p) in held),
        "trainable_not_in_optimizer": missing,
        "layers_not_in_optimizer": layers_missing,
        "optimizer_params_not_in_model": sum(
            p.numel() for g in getattr(optimizer, "param_groups", []) or [] for p in g.get("params", [])
            if isinstance(p, torch.Tensor) and id(p) not in in_model
        ),
    }
