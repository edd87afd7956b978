"""Which of someone else's metric names means our loss, lr, train/val loss and accuracy.

One table serves every importer (TensorBoard tags, CSV columns) and the trainer callbacks (Lightning's
`callback_metrics`, Hugging Face's logs). Names are compared normalized: lower case, every run of other
characters than letters and digits turned into one "_" ("Loss/train" -> "loss_train", "lr-SGD" -> "lr_sgd").
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["ROLES", "ALIASES", "normalize", "resolve", "parse_map", "is_epoch_level", "epoch_metrics"]

# Our names. Step-level: loss, lr. Epoch-level: train_loss, train_acc, val_loss, val_acc. Axes: step, epoch, time.
ROLES = ("step", "epoch", "time", "loss", "lr", "train_loss", "train_acc", "val_loss", "val_acc")

# In order of preference: the first name present wins.
ALIASES: dict[str, tuple[str, ...]] = {
    "step": ("step", "global_step", "train_global_step", "trainer_global_step", "iteration", "iter", "it",
             "steps", "batch", "batches"),
    "epoch": ("epoch", "train_epoch", "epochs", "trainer_epoch"),
    "time": ("wall_time", "time", "walltime", "timestamp", "wall_clock", "time_s"),
    # the loss of each (logged) optimizer step
    "loss": ("train_loss_step", "loss_step", "train_loss", "loss", "train_batch_loss", "batch_loss",
             "train_loss_iter", "loss_train", "training_loss", "train_step_loss", "loss_training"),
    "lr": ("lr", "learning_rate", "train_learning_rate", "train_lr", "lr_abs", "lr_sgd", "lr_adam", "lr_adamw",
           "optimizer_lr", "epoch_learning_rate", "train_epoch_learning_rate", "epoch_lr"),
    # one value per epoch
    "train_loss": ("train_loss_epoch", "loss_epoch", "train_epoch_loss", "epoch_loss", "epoch_train_loss",
                   "avg_train_loss", "train_loss_avg", "train_loss_mean"),
    "train_acc": ("train_acc_epoch", "train_acc", "train_accuracy", "train_epoch_accuracy", "epoch_accuracy",
                  "epoch_acc", "acc_epoch", "accuracy_epoch", "acc", "accuracy", "acc_train", "accuracy_train",
                  "training_accuracy", "train_top1", "sparse_categorical_accuracy", "categorical_accuracy",
                  "train_acc_step", "acc_step"),
    "val_loss": ("val_loss", "val_loss_epoch", "valid_loss", "validation_loss", "eval_loss", "val_epoch_loss",
                 "validation_epoch_loss", "loss_val", "loss_valid", "loss_validation", "loss_eval", "dev_loss"),
    "val_acc": ("val_acc", "val_acc_epoch", "val_accuracy", "valid_acc", "valid_accuracy", "validation_acc",
                "validation_accuracy", "eval_acc", "eval_accuracy", "val_epoch_accuracy",
                "validation_epoch_accuracy", "acc_val", "accuracy_val", "acc_valid", "accuracy_validation",
                "val_top1", "val_sparse_categorical_accuracy", "val_categorical_accuracy", "dev_acc",
                "dev_accuracy"),
}

_EPOCH_LEVEL = ("train_loss", "train_acc", "val_loss", "val_acc")


def normalize(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_")


def is_epoch_level(role: str) -> bool:
    return role in _EPOCH_LEVEL or role.startswith(("train_", "val_", "test_"))


def resolve(names: Iterable[str], mapping: dict[str, str] | None = None) -> dict[str, str]:
    """Our name -> their name, for every role found among `names` (each of their names used once).

    `mapping` (ours -> theirs, from `--map`) wins over the defaults; a mapped name that is not among `names`
    raises KeyError with that name. Names of ours outside ROLES may be mapped too (extra metrics).
    """
    names = list(dict.fromkeys(str(n) for n in names))
    by_norm: dict[str, str] = {}
    for n in names:
        by_norm.setdefault(normalize(n), n)
    found: dict[str, str] = {}
    used: set[str] = set()
    for ours, theirs in (mapping or {}).items():
        if theirs in names:
            actual = theirs
        elif normalize(theirs) in by_norm:
            actual = by_norm[normalize(theirs)]
        else:
            raise KeyError(theirs)
        found[ours] = actual
        used.add(actual)
    for role in ROLES:
        if role in found:
            continue
        for alias in ALIASES[role]:
            actual = by_norm.get(alias)
            if actual is not None and actual not in used:
                found[role] = actual
                used.add(actual)
                break
        else:
            if role == "lr":  # Lightning's LearningRateMonitor: "lr-SGD", "lr-Adam/pg1", ...
                lr = next((n for n in names if normalize(n).startswith("lr_") and n not in used), None)
                if lr is not None:
                    found[role] = lr
                    used.add(lr)
    return found


def parse_map(items: Iterable[str] | None) -> dict[str, str]:
    """`["loss=train/loss", "val_acc=acc/val"]` -> {"loss": "train/loss", ...}; ValueError on a bad item."""
    mapping: dict[str, str] = {}
    for item in items or ():
        ours, sep, theirs = str(item).partition("=")
        ours, theirs = ours.strip(), theirs.strip()
        if not sep or not ours or not theirs:
            raise ValueError(f"--map wants OUR_NAME=THEIR_NAME, not {item!r}")
        mapping[ours] = theirs
    return mapping


def epoch_metrics(metrics: dict) -> dict:
    """A trainer's end-of-epoch metrics under our names (train_loss, train_acc, val_loss, val_acc), the
    others kept under their own. Used by the Lightning and Hugging Face callbacks.

    At the end of an epoch a loss logged per step (Lightning's `train_loss`) is the training loss we have.
    """
    names = [str(k) for k in metrics]
    roles = resolve(names)
    if "train_loss" not in roles and "loss" in roles:
        roles["train_loss"] = roles.pop("loss")
    out = {}
    taken = set()
    for role in ("train_loss", "train_acc", "val_loss", "val_acc"):
        if role in roles:
            out[role] = metrics[roles[role]]
            taken.add(roles[role])
    for k in names:
        if k not in taken and k not in out and normalize(k) not in ("epoch", "step", "global_step"):
            out[k] = metrics[k]
    return out
