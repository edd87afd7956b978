"""Runs you did not record with the hooks: TensorBoard logs and CSVs of metrics, read into the same `RunData`.

    from babysit.monitor.importers import load_any
    run = load_any("lightning_logs/version_0")          # a babysit run, a TensorBoard log, or a CSV
    run = load_any("history.csv", mapping={"val_acc": "acc/valid"})

Torch-free and dependency-free (TensorBoard's own package is not needed to read its event files).
"""

from __future__ import annotations

import os
from pathlib import Path

from babysit.monitor.importers.names import parse_map
from babysit.monitor.reader import RunData, RunReadError, is_run_dir, load_run

__all__ = ["load_any", "detect", "parse_map"]


def detect(path: str | os.PathLike) -> str:
    """What path holds: "run" (a babysit run directory), "tensorboard", or "csv". RunReadError otherwise."""
    from babysit.monitor.importers.tensorboard import event_files

    path = Path(path)
    if not path.exists():
        raise RunReadError(f"no such file or directory: {path}")
    if path.is_dir() and is_run_dir(path):
        return "run"
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        if event_files(path):
            return "tensorboard"
        raise RunReadError(f"{path} is neither a CSV of metrics nor a TensorBoard event file")
    if event_files(path):
        return "tensorboard"
    if (path / "metrics.csv").is_file():  # Lightning's CSVLogger version directory
        return "csv"
    raise RunReadError(
        f"{path} is not a babysit run, a TensorBoard log directory (no event files) or a CSV of metrics"
    )


def load_any(
    path: str | os.PathLike,
    mapping: dict[str, str] | None = None,
    num_classes: int | None = None,
) -> RunData:
    """Read a babysit run directory, a TensorBoard log (directory or event file) or a CSV of metrics.

    `mapping` (our name -> their tag or column, from `--map`) names what the defaults do not recognize;
    `num_classes` supplies C when the log does not (it lets the accuracy and ln(C) rules run).
    Raises RunReadError with a one-line message.
    """
    path = Path(path)
    kind = detect(path)
    if kind == "run":
        run = load_run(path)
        if num_classes is not None and run.meta.get("num_classes") is None:
            run.meta["num_classes"] = int(num_classes)
        return run
    from babysit.monitor.importers.series import assemble

    if kind == "tensorboard":
        from babysit.monitor.importers.tensorboard import load_tensorboard

        imported = load_tensorboard(path)
    else:
        from babysit.monitor.importers.csv import load_csv

        imported = load_csv(path / "metrics.csv" if path.is_dir() else path, mapping)
    return assemble(imported, mapping, num_classes)
