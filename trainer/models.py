"""The reference models: the lecture's two-layer net (mlp), a small convnet and a small residual net.

Every model is an nn.Sequential of named top-level layers, so `--freeze conv2` names a layer, and the last one
is always `head` (the linear classifier; its input is the penultimate feature for `--linear-probe`).
Activations are modules (not functional calls) so the hooks' probes can see dead ReLUs and saturated tanh.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from babysit.trainer.config import TrainConfig

__all__ = ["mlp", "convnet", "resnet", "build_model", "layer_names", "is_conv"]


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] = (50,),
        activation: str = "relu", dropout: float = 0.0) -> nn.Sequential:
    """Fully connected: flatten, then (linear, activation, dropout) per hidden size, then the head."""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    width = math.prod(input_shape)
    for i, h in enumerate(hidden, 1):
        act = nn.ReLU() if activation == "relu" else nn.Tanh()
        layers += [(f"fc{i}", nn.Linear(width, h)), (f"{activation}{i}", act)]
        if dropout > 0:
            layers.append((f"dropout{i}", nn.Dropout(dropout)))
        width = h
    layers.append(("head", nn.Linear(width, num_classes)))
    return nn.Sequential(OrderedDict(layers))


def convnet(input_shape: tuple[int, ...], num_classes: int, width: int = 16, dropout: float = 0.0) -> nn.Sequential:
    """conv-relu-conv-relu-pool, then a linear head; pooled to at most 4x4 so large images stay cheap."""
    c, h, w = input_shape
    layers: list[tuple[str, nn.Module]] = [
        ("conv1", nn.Conv2d(c, width, 3, padding=1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(width, 2 * width, 3, padding=1)), ("relu2", nn.ReLU()),
        ("pool", nn.MaxPool2d(2)),
    ]
    side_h, side_w = max(h // 2, 1), max(w // 2, 1)
    if side_h > 4 or side_w > 4:
        layers.append(("avgpool", nn.AdaptiveAvgPool2d((min(side_h, 4), min(side_w, 4)))))
        side_h, side_w = min(side_h, 4), min(side_w, 4)
    layers.append(("flatten", nn.Flatten()))
    if dropout > 0:
        layers.append(("dropout", nn.Dropout(dropout)))
    layers.append(("head", nn.Linear(2 * width * side_h * side_w, num_classes)))
    return nn.Sequential(OrderedDict(layers))


class ResidualBlock(nn.Module):
    """relu(x + bn(conv(relu(bn(conv(x)))))), with a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.shortcut(x) + self.bn2(self.conv2(out)))


def resnet(input_shape: tuple[int, ...], num_classes: int, width: int = 16, dropout: float = 0.0) -> nn.Sequential:
    """A stem, two residual blocks (the second halves the resolution), global average pool, head."""
    c = input_shape[0]
    layers: list[tuple[str, nn.Module]] = [
        ("stem", nn.Sequential(nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())),
        ("block1", ResidualBlock(width, width)),
        ("block2", ResidualBlock(width, 2 * width, stride=2)),
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
    ]
    if dropout > 0:
        layers.append(("dropout", nn.Dropout(dropout)))
    layers.append(("head", nn.Linear(2 * width, num_classes)))
    return nn.Sequential(OrderedDict(layers))


def is_conv(model_name: str) -> bool:
    return model_name in ("convnet", "resnet")


def build_model(cfg: TrainConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """The model cfg names, initialized as cfg says (seed the RNG first for a reproducible init)."""
    from babysit.trainer.initialize import initialize

    if cfg.model == "mlp":
        model = mlp(input_shape, num_classes, cfg.hidden_sizes(), cfg.activation, cfg.dropout)
    elif cfg.model in ("convnet", "resnet"):
        if len(input_shape) != 3:
            raise ValueError(f"--model {cfg.model} needs images; {cfg.dataset} has features of shape "
                             f"{tuple(input_shape)}: use --model mlp")
        model = (convnet if cfg.model == "convnet" else resnet)(input_shape, num_classes, cfg.width, cfg.dropout)
    else:
        raise ValueError(f"unknown model {cfg.model!r}; choose from mlp, convnet, resnet")
    initialize(model, cfg.init, cfg.init_scale, cfg.bias_init)
    return model


def layer_names(model: nn.Module) -> list[str]:
    """Top-level layer names, in order (what --freeze accepts)."""
    return [name for name, _ in model.named_children()]
