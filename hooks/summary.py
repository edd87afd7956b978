"""A JSON-able summary of a model: what meta.json records so the dashboard and rules know the layers."""

from __future__ import annotations

import torch

__all__ = ["model_summary"]


def model_summary(model: torch.nn.Module) -> dict:
    layers = []
    for name, module in model.named_modules():
        params = {n: list(p.shape) for n, p in module.named_parameters(recurse=False)}
        if not params and list(module.children()):
            continue  # containers are described by their children
        layers.append(
            {
                "name": name or type(module).__name__,
                "type": type(module).__name__,
                "params": params,
                "count": sum(p.numel() for p in module.parameters(recurse=False)),
            }
        )
    return {
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "layers": layers,
    }
