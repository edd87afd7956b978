"""The reference models: the lecture's two-layer net and a small convnet."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["build_model", "MODELS"]


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 50) -> nn.Module:
    """The lecture's toy: one hidden layer of 50 units."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )


def convnet(input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> nn.Module:
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * (h // 2) * (w // 2), num_classes),
    )


MODELS = {"mlp": mlp, "convnet": convnet}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](input_shape, num_classes)
