"""Read a CSV of training metrics: PyTorch Lightning's CSVLogger `metrics.csv`, or an exported history.

Two shapes are understood:
- a step log: a step column (step, global_step, iteration, ...) and metrics that may be sparse, each row
  holding what was logged at that step (Lightning writes training rows and validation rows separately);
- a history: no step column, one row per epoch (Keras' `history.history`, or any per-epoch table).

Column names are matched by monitor/importers/names.py (train_loss_step, val_loss, val_acc, lr-SGD, ...);
`--map our_name=their_column` names the rest. An empty cell is a value not logged; the text "nan" or "inf"
is a value that was logged non-finite, and is kept as such.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from babysit.monitor.importers.names import resolve
from babysit.monitor.importers.series import Imported, read_hparams, series_frame
from babysit.monitor.reader import RunReadError
from babysit.vocabulary import num_classes_of

__all__ = ["load_csv", "MISSING"]

MISSING = frozenset({"", "none", "null", "na", "n/a", "<na>", "nat"})
_MAX_BYTES = 512 << 20
_GENERIC = {"metrics", "history", "log", "logs", "progress", "results", "training", "train"}


def _numbers(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values, present): text to floats ("nan"/"inf" kept); present is False for empty cells."""
    text = column.astype(str).str.strip()
    present = ~text.str.lower().isin(MISSING).to_numpy()
    values = pd.to_numeric(text.where(present), errors="coerce").to_numpy(dtype=float)
    garbage = present & np.isnan(values) & ~text.str.lower().isin(["nan", "-nan", "+nan"]).to_numpy()
    return values, present & ~garbage


def _times(column: pd.Series) -> np.ndarray:
    values, present = _numbers(column)
    if present.any():
        return np.where(present, values, np.nan)
    try:  # ISO timestamps
        parsed = pd.to_datetime(column, errors="coerce", utc=True)
    except (ValueError, TypeError):
        return np.full(len(column), np.nan)
    seconds = (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return seconds.to_numpy(dtype=float, na_value=np.nan)


def _run_name(path: Path) -> str:
    if path.stem.lower() not in _GENERIC:
        return path.stem
    parent = path.parent.resolve()
    if re.fullmatch(r"version_\d+", parent.name) and parent.parent.name:
        return f"{parent.parent.name}/{parent.name}"
    return parent.name or path.stem


def load_csv(path: str | os.PathLike, mapping: dict[str, str] | None = None) -> Imported:
    """The metric series in a CSV file. RunReadError (one line) when it is not a usable table."""
    path = Path(path)
    try:
        if path.stat().st_size > _MAX_BYTES:
            raise RunReadError(f"{path} is larger than {_MAX_BYTES >> 20} MB; is it a metrics CSV?")
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise RunReadError(f"no such file: {path}") from None
    except pd.errors.EmptyDataError:
        raise RunReadError(f"{path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunReadError(f"{path} is not a readable CSV: {first}") from None
    except OSError as e:
        raise RunReadError(f"cannot read {path}: {e.strerror or e}") from None
    table.columns = [str(c).strip() for c in table.columns]
    if not len(table):
        raise RunReadError(f"{path} has a header but no rows")

    axes_map = {k: v for k, v in (mapping or {}).items() if k in ("step", "time", "epoch")}
    try:
        axes = resolve(table.columns, axes_map)
    except KeyError as e:
        raise RunReadError(f"--map names column {e.args[0]!r}, which is not in {path} "
                           f"(columns: {', '.join(table.columns)})") from None
    notes: list[str] = []
    epoch_col = axes.get("epoch")
    steps_are_epochs = "step" not in axes
    if not steps_are_epochs:
        steps, keep = _numbers(table[axes["step"]])
        if not keep.any():
            raise RunReadError(f"column {axes['step']!r} of {path} holds no step numbers")
        if (~keep).any():
            notes.append(f"{int((~keep).sum())} rows without a step number were skipped")
    elif epoch_col is not None:
        steps, keep = _numbers(table[epoch_col])
        finite = steps[keep & np.isfinite(steps)]
        if len(finite) and finite.min() < 0.5:
            steps = steps + 1  # a 0-based epoch column: our epochs count from 1
        notes.append(f"no step column: one row per epoch, numbered by {epoch_col!r}")
    else:
        steps, keep = np.arange(1, len(table) + 1, dtype=float), np.ones(len(table), dtype=bool)
        notes.append("no step or epoch column: one row per epoch, in file order")
    keep &= np.isfinite(steps)
    steps = np.where(keep, np.round(np.where(keep, steps, 0)), 0).astype(np.int64)
    times = _times(table[axes["time"]]) if "time" in axes else np.full(len(table), np.nan)

    skip = {axes.get("step"), axes.get("time")}
    if steps_are_epochs:
        skip.add(epoch_col)
    scalars: dict[str, pd.DataFrame] = {}
    text_columns = []
    for col in table.columns:
        if col in skip or col in scalars:
            continue
        values, present = _numbers(table[col])
        present &= keep
        if not present.any():
            if (table[col].astype(str).str.strip() != "").any():
                text_columns.append(col)
            continue
        scalars[col] = series_frame(steps[present], values[present], times[present])
    if text_columns:
        notes.append(f"columns without numbers were not read: {text_columns[:5]}")
    config = read_hparams(path.parent)
    return Imported(
        source="csv",
        path=path,
        scalars=scalars,
        config=config,
        num_classes=num_classes_of(config),
        steps_are_epochs=steps_are_epochs,
        name=_run_name(path),
        notes=notes,
    )
