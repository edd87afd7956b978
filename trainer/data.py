"""Datasets, the train/val/test split, and preprocessing computed on the training split only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split

__all__ = ["Split", "load_digits_split"]


@dataclass
class Split:
    """Tensors for the three splits; the test split is kept apart (see `babysit evaluate --test`)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    mean: torch.Tensor

    def to(self, device: torch.device) -> Split:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()}
        return Split(**moved)


def load_digits_split(seed: int = 0, val_frac: float = 0.2, test_frac: float = 0.2) -> Split:
    """scikit-learn's bundled 8x8 digits (no download), stratified and seeded, mean image subtracted."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0
    y = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test_frac, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_frac / (1 - test_frac), stratify=y_rest, random_state=seed
    )
    mean = x_train.mean(axis=0, keepdims=True)  # the lecture's X -= mean, from the training split only
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a - mean)).unsqueeze(1)  # noqa: E731
    return Split(
        as_t(x_train), torch.from_numpy(y_train),
        as_t(x_val), torch.from_numpy(y_val),
        as_t(x_test), torch.from_numpy(y_test),
        num_classes=10, input_shape=(1, 8, 8), mean=torch.from_numpy(mean),
    )
