"""Where the trainer runs and how fast: the device, bf16 autocast, channels_last memory format.

On CUDA the defaults are the fast ones: bf16 autocast (no loss scaling needed, unlike fp16) and channels_last
for the conv nets (tensor cores want NHWC). On the CPU both are off unless asked for (`--amp bf16` and
`--channels-last on` work there too, which is how the tests exercise them).
"""

from __future__ import annotations

import contextlib

import torch

from babysit.trainer.config import TrainConfig
from babysit.trainer.models import is_conv

__all__ = ["resolve_device", "autocast", "use_channels_last"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available")
    return torch.device(name)


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's autocast context: bf16 where asked (auto: on CUDA), else a no-op."""
    use = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def use_channels_last(cfg: TrainConfig, device: torch.device, input_shape: tuple[int, ...]) -> bool:
    if cfg.channels_last == "off" or len(input_shape) != 3 or not is_conv(cfg.model):
        return False
    return cfg.channels_last == "on" or device.type == "cuda"
