"""Checkpoints: a plain dict of tensors and JSON-like values, so loading never needs pickle (weights_only=True).

    {"format": "babysit-checkpoint", "version": 1, "model": state_dict, "mean": tensor, "std": tensor | None,
     "classes": [...], "input_shape": [...], "config": {...}}
`--init-from` also accepts a bare state_dict saved by any PyTorch code.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from babysit.trainer.config import TrainConfig
from babysit.trainer.data import Preprocess

__all__ = ["CHECKPOINT", "save_checkpoint", "load_checkpoint", "state_dict_of"]

CHECKPOINT = "checkpoint.pt"
FORMAT = "babysit-checkpoint"


def save_checkpoint(path: str | os.PathLike, model: nn.Module, preprocess: Preprocess, classes: list[str],
                    input_shape: tuple[int, ...], cfg: TrainConfig) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in asdict(cfg).items() if v is None or isinstance(v, (bool, int, float, str))}
    blob = {
        "format": FORMAT, "version": 1,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "mean": preprocess.mean.cpu(), "std": None if preprocess.std is None else preprocess.std.cpu(),
        "classes": list(classes), "input_shape": list(input_shape), "config": config,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)  # a reader never sees half a checkpoint


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint's dict (or a bare state_dict). ValueError with a one-line message if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt file, pickle that needs code, wrong format: one line
        # Never repeat torch's text: it advises loading with weights_only=False (running the file's code)
        # and carries terminal escape codes.
        raise ValueError(f"cannot load checkpoint {path}: {_refusal(e)}") from None
    if not isinstance(blob, dict):
        raise ValueError(f"{path} holds a {type(blob).__name__}, not a checkpoint or state_dict")
    return blob


def _refusal(exc: Exception) -> str:
    """Our own one-line reason for a torch.load(weights_only=True) failure."""
    if isinstance(exc, torch.serialization.pickle.UnpicklingError) and "GLOBAL" in str(exc):
        return "not a plain-tensor checkpoint (refused: loading it would run pickle code)"
    return "not a readable checkpoint"


def state_dict_of(blob: dict) -> dict[str, torch.Tensor]:
    state = blob["model"] if blob.get("format") == FORMAT else blob
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
