"""The epoch metric names users write, read as the four the rules know (`train_loss`, `train_acc`, `val_loss`,
`val_acc`).

`run.epoch(accuracy=..., val_accuracy=...)`, `valid_loss`, `val/loss` (TensorBoard style) or Keras' names are the
same measurements; a rule that only knew the canonical spelling would be blind to them (no overfitting, no
chance-accuracy check). A name is mapped only when its canonical column is absent, so a run that logs both
keeps its own `val_loss`. `test_*` is not mapped: a test split is not a validation split (test_set_reuse).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ALIASES", "canonical_epochs"]

ALIASES: dict[str, tuple[str, ...]] = {
    "train_loss": ("loss", "training_loss", "train/loss", "train_epoch_loss", "epoch_loss"),
    "train_acc": ("acc", "accuracy", "train_accuracy", "training_accuracy", "train/acc", "train/accuracy"),
    "val_loss": ("valid_loss", "validation_loss", "val/loss", "valid/loss", "validation/loss", "eval_loss",
                 "eval/loss", "dev_loss"),
    "val_acc": ("val_accuracy", "valid_acc", "valid_accuracy", "validation_accuracy", "val/acc", "val/accuracy",
                "valid/acc", "validation/accuracy", "eval_acc", "eval_accuracy", "eval/accuracy", "dev_acc"),
}


def canonical_epochs(frame: Any) -> Any:
    """The epoch records with user spellings renamed to the canonical four (a frame with `.columns` and
    `.rename`, e.g. pandas); anything else, or a frame with nothing to rename, is returned as is."""
    cols = getattr(frame, "columns", None)
    if cols is None or not hasattr(frame, "rename"):
        return frame
    have = {str(c) for c in cols}
    rename = {}
    for canon, names in ALIASES.items():
        if canon in have:
            continue
        alias = next((n for n in names if n in have), None)
        if alias is not None:
            rename[alias] = canon
    return frame.rename(columns=rename) if rename else frame
