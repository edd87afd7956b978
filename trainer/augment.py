"""Live augmentation on the device, a whole batch at a time: pad-and-crop jitter and horizontal flips.

The lecture: "extract random crops from the input, with slightly jittered offsets ... randomly reflect
horizontally ... perform the augmentation live during training". Each example gets its own offset and flip;
the work is two or three batched kernels, no Python loop over examples and no host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["random_crop", "random_flip", "augment"]


def random_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad (N, C, H, W) by `pad` and cut each example back to H x W at a random offset in [0, 2*pad].

    Zero is the training mean after mean subtraction, so the padding looks like "average" pixels.
    """
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    rows = dy + torch.arange(h, device=x.device)  # (n, h)
    cols = dx + torch.arange(w, device=x.device)  # (n, w)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # one gather; advanced indices around the channel slice put their dims first: (n, h, w, c)
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror each example left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
    return torch.where(flip, x.flip(3), x)


def augment(x: torch.Tensor, crop_pad: int = 0, flip: bool = False) -> torch.Tensor:
    if crop_pad > 0:
        x = random_crop(x, crop_pad)
    if flip:
        x = random_flip(x)
    return x
