"""The train/val/test split and the preprocessing learned from the training split only.

The split is stratified and seeded. The test split is locked away: `load_splits` hands out train and val only;
`babysit evaluate --test` asks for the test split explicitly and records the use in the ledger (trainer/ledger.py)
under the split's `split_id`, a hash of what defines the split: dataset, seed and fractions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

import numpy as np
import torch

from babysit.trainer.config import TrainConfig
from babysit.trainer.datasets import describe, load_examples

__all__ = ["Preprocess", "Splits", "stratified_split", "split_id", "load_splits"]


def stratified_split(
    y: np.ndarray, val_frac: float, test_frac: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, val, test): each class is cut in the same proportions. Train order is shuffled."""
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = round(len(idx) * test_frac) if test_frac else 0
        n_val = round(len(idx) * val_frac) if val_frac else 0
        n_test, n_val = max(n_test, int(test_frac > 0)), max(n_val, int(val_frac > 0))  # >= 1 where asked for
        if len(idx) - n_test - n_val < 1:
            raise ValueError(f"class {c} has only {len(idx)} examples: too few for a train/val/test split")
        parts[0].append(idx[n_test + n_val:])
        parts[1].append(idx[n_test:n_test + n_val])
        parts[2].append(idx[:n_test])
    train, val, test = (np.concatenate(p) for p in parts)
    return rng.permutation(train), np.sort(val), np.sort(test)


def split_id(cfg: TrainConfig) -> str:
    """Names the test split: the same dataset, seed and fractions give the same test examples."""
    val, test = cfg.fractions()
    key = {**describe(cfg), "split_seed": cfg.seed, "val": round(val, 6), "test": round(test, 6)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Preprocess:
    """x -> (x - mean) / std, with mean (and std) computed on the training split: the lecture's X -= mean."""

    mean: torch.Tensor  # shaped like one example, or (C, 1, 1) per channel
    std: torch.Tensor | None = None

    @classmethod
    def fit(cls, x: torch.Tensor, mode: str, use_std: bool) -> Preprocess:
        if mode == "none":
            zero = torch.zeros(x.shape[1:2] + (1,) * (x.ndim - 2))
            return cls(zero, torch.ones_like(zero) if use_std else None)
        dims = (0, 2, 3) if mode == "channel-mean" and x.ndim == 4 else (0,)  # features: one "channel" each
        mean = x.mean(dim=dims, keepdim=True)[0]
        std = None
        if use_std:
            std = x.std(dim=dims, keepdim=True)[0]
            std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant pixels (digit corners) stay put
        return cls(mean, std)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x - self.mean.to(x.device)
        return x / self.std.to(x.device) if self.std is not None else x


@dataclass
class Splits:
    """Preprocessed tensors. `x_test`/`y_test` are None unless asked for (only `babysit evaluate --test`)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    classes: list[str]
    preprocess: Preprocess
    split_id: str
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> Splits:
        moved = {k: v.to(device) for k, v in self.__dict__.items() if isinstance(v, torch.Tensor)}
        return replace(self, **moved)


def load_splits(cfg: TrainConfig, *, with_test: bool = False, preprocess: Preprocess | None = None) -> Splits:
    """Load cfg.dataset, split it, fit preprocessing on train (or use the given one, e.g. a checkpoint's).
    The test split only if `with_test`."""
    ex = load_examples(cfg)
    val_frac, test_frac = cfg.fractions()
    train, val, test = stratified_split(ex.y, val_frac, test_frac, cfg.seed)
    x = torch.from_numpy(np.ascontiguousarray(ex.x))
    y = torch.from_numpy(ex.y)
    pre = preprocess or Preprocess.fit(x[train], cfg.normalize, cfg.std)
    splits = Splits(pre(x[train]), y[train], pre(x[val]), y[val], list(ex.classes), pre, split_id(cfg))
    if with_test:
        splits.x_test, splits.y_test = pre(x[test]), y[test]
    return splits
