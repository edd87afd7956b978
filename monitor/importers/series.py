"""Turn named scalar series (from TensorBoard tags or CSV columns) into the same `RunData` the hooks produce.

An importer reads `Imported`: every metric as a series of (step, time, value), plus per-layer statistics
where it has them. `assemble` decides which series is our loss, lr, train/val loss and accuracy
(monitor/importers/names.py, or the user's `--map`), numbers the epochs, and builds the frames, so every
rule that the data supports runs exactly as on a recorded run.

Conventions kept from the hooks: step k is the k-th optimizer step (1-based; a log whose loss series
starts at step 0 is shifted by one), epochs are 1-based, and non-finite values are kept (a NaN loss is the
signal, not a gap). A missing value is simply absent from a series.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from babysit.monitor import runfile
from babysit.monitor.importers.names import ROLES, is_epoch_level, normalize, resolve
from babysit.monitor.reader import RunData, RunReadError

__all__ = ["Imported", "assemble", "series_frame", "read_hparams"]


def series_frame(steps, values, times=None) -> pd.DataFrame:
    """A series sorted by step with one value per step (the last one logged wins, as after a restart)."""
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=float)
    times = np.full(len(steps), np.nan) if times is None else np.asarray(times, dtype=float)
    frame = pd.DataFrame({"step": steps, "time": times, "value": values})
    frame = frame.drop_duplicates("step", keep="last").sort_values("step", kind="stable")
    return frame.reset_index(drop=True)


@dataclass
class Imported:
    """What an importer read, before we decide what it means."""

    source: str  # "tensorboard" | "csv"
    path: Path
    scalars: dict[str, pd.DataFrame]  # their name -> series_frame
    layers: pd.DataFrame | None = None  # step, time, layer, kind, and stats named as in reader.LAYER_STATS
    config: dict = field(default_factory=dict)
    num_classes: int | None = None
    steps_are_epochs: bool = False  # a per-epoch history: step k is epoch k
    name: str = ""
    notes: list[str] = field(default_factory=list)
    corrupt: int = 0


def _epoch_numbers(values: np.ndarray) -> np.ndarray:
    """Their epoch counter to ours (1-based): fractional epochs (Hugging Face) round up, 0-based shift by one."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return np.ones(len(values), dtype=np.int64)
    values = np.where(np.isfinite(values), values, finite.min())
    if np.any(np.abs(finite - np.round(finite)) > 1e-6):
        return np.maximum(np.ceil(values - 1e-6), 1).astype(np.int64)
    out = np.round(values).astype(np.int64)
    return out + 1 if finite.min() < 0.5 else np.maximum(out, 1)


class _Epochs:
    """Which epoch a record at a given step belongs to."""

    def __init__(self, imp: Imported, roles: dict[str, str], epoch_roles: list[str]):
        self.counter = imp.scalars[roles["epoch"]] if "epoch" in roles else None
        self.steps_are_epochs = imp.steps_are_epochs
        names = [normalize(roles[r]) for r in epoch_roles]
        # Keras: "epoch_loss", "epoch_accuracy" logged with step = epoch index (0-based)
        self.keras = bool(names) and all("epoch" in n.split("_") for n in names) and self.counter is None
        all_steps = [imp.scalars[roles[r]]["step"].to_numpy() for r in epoch_roles]
        self.distinct = np.unique(np.concatenate(all_steps)) if all_steps else np.array([], dtype=np.int64)

    def __call__(self, steps: np.ndarray) -> np.ndarray:
        if self.steps_are_epochs:
            return steps.astype(np.int64)
        if self.counter is not None and len(self.counter):
            at = np.searchsorted(self.counter["step"].to_numpy(), steps, side="right") - 1
            return _epoch_numbers(self.counter["value"].to_numpy())[np.clip(at, 0, None)]
        if self.keras:  # epoch indices: 0-based when the first one is 0
            return steps.astype(np.int64) + (1 if len(self.distinct) and self.distinct.min() == 0 else 0)
        return np.searchsorted(self.distinct, steps).astype(np.int64) + 1


def _epochs_frame(imp: Imported, roles: dict[str, str], epoch_roles: list[str]) -> pd.DataFrame:
    epoch_of = _Epochs(imp, roles, epoch_roles)
    merged: pd.DataFrame | None = None
    for role in epoch_roles:
        s = imp.scalars[roles[role]]
        part = pd.DataFrame({"epoch": epoch_of(s["step"].to_numpy()), "step": s["step"].to_numpy(),
                             "time": s["time"].to_numpy(), role: s["value"].to_numpy()})
        part = part.groupby("epoch", sort=True).last().reset_index()  # the value at the epoch's end
        if merged is None:
            merged = part
        else:
            merged = merged.merge(part, on="epoch", how="outer", suffixes=("", "_r"))
            merged["step"] = merged[["step", "step_r"]].max(axis=1)
            merged["time"] = merged[["time", "time_r"]].max(axis=1)
            merged = merged.drop(columns=["step_r", "time_r"])
    if merged is None:
        return pd.DataFrame({"epoch": np.array([], dtype=np.int64), "step": np.array([], dtype=np.int64),
                             "time": np.array([], dtype=float)})
    merged = merged.sort_values("epoch").reset_index(drop=True)
    merged["epoch"] = merged["epoch"].astype(np.int64)
    merged["step"] = merged["step"].astype(np.int64)
    return merged


def _asof(series: pd.DataFrame, steps: np.ndarray) -> np.ndarray:
    """The last value logged at or before each step (NaN before the first)."""
    at = np.searchsorted(series["step"].to_numpy(), steps, side="right") - 1
    values = series["value"].to_numpy()[np.clip(at, 0, None)]
    return np.where(at >= 0, values, np.nan)


def _exact(series: pd.DataFrame, steps: np.ndarray) -> np.ndarray:
    lookup = pd.Series(series["value"].to_numpy(), index=series["step"].to_numpy())
    return lookup.reindex(steps).to_numpy(dtype=float)


def _shift_steps(imp: Imported, by: int) -> None:
    for name, s in imp.scalars.items():
        imp.scalars[name] = s.assign(step=s["step"] + by)
    if imp.layers is not None and len(imp.layers):
        imp.layers = imp.layers.assign(step=imp.layers["step"] + by)


def assemble(imp: Imported, mapping: dict[str, str] | None = None, num_classes: int | None = None) -> RunData:
    """The RunData of an imported log. RunReadError (one line) when nothing in it is usable."""
    try:
        roles = resolve(imp.scalars, mapping)
    except KeyError as e:
        names = ", ".join(sorted(imp.scalars)) or "none"
        raise RunReadError(f"--map names {e.args[0]!r}, which is not in {imp.path} (it has: {names})") from None
    notes = list(imp.notes)
    # Axis roles are columns, not metrics (a CSV's epoch column is the epoch counter).
    roles = {k: v for k, v in roles.items() if k not in ("step", "time")}
    epoch_roles = [r for r in roles if is_epoch_level(r) and r != "epoch"]
    if "loss" in roles and not imp.steps_are_epochs and len(imp.scalars[roles["loss"]]):
        if int(imp.scalars[roles["loss"]]["step"].min()) == 0:
            _shift_steps(imp, 1)  # 0-based global steps: our step 1 is the first optimizer step
            notes.append("steps were counted from 0; shifted by one to count optimizer steps from 1")

    epochs = _epochs_frame(imp, roles, epoch_roles)
    derived: list[str] = []
    if "loss" in roles:
        loss = imp.scalars[roles["loss"]]
        steps = loss["step"].to_numpy()
        frame = {"step": steps, "time": loss["time"].to_numpy(), "loss": loss["value"].to_numpy()}
    elif "train_loss" in epochs and epochs["train_loss"].notna().any():
        ep = epochs[epochs["train_loss"].notna()]
        steps = ep["epoch"].to_numpy()
        frame = {"step": steps, "time": ep["time"].to_numpy(), "loss": ep["train_loss"].to_numpy()}
        roles_loss = roles["train_loss"]
        notes.append(f"no per-step loss: the loss curve is {roles_loss!r}, one value per epoch")
        imp.steps_are_epochs = True
    else:
        steps = np.array([], dtype=np.int64)
        frame = {"step": steps, "time": np.array([], dtype=float), "loss": np.array([], dtype=float)}
    frame["lr"] = _asof(imp.scalars[roles["lr"]], steps) if "lr" in roles else np.full(len(steps), np.nan)
    if imp.steps_are_epochs and len(steps):
        # One row per epoch: epoch k ends at step k, and the loss of that row is the epoch's training loss.
        per_step = pd.DataFrame({"epoch": steps.astype(np.int64), "step": steps.astype(np.int64),
                                 "time": frame["time"]})
        if "train_loss" not in epochs:
            per_step["train_loss"] = frame["loss"]
        epochs = per_step.merge(epochs.drop(columns=["step", "time"]), on="epoch", how="outer")
        epochs["step"] = epochs["epoch"]
        epochs = epochs.sort_values("epoch").reset_index(drop=True)

    used = set(roles.values())
    extras = []
    for role, theirs in roles.items():
        if role not in ROLES and not is_epoch_level(role):
            extras.append((role, imp.scalars[theirs]))  # mapped by the user to a name of their choice
    for theirs, s in imp.scalars.items():
        if theirs not in used and theirs not in (roles.get("step"), roles.get("time")):
            extras.append((theirs, s))
    for name, s in extras:
        if name in frame or not len(steps):
            continue
        col = _exact(s, steps)
        if np.isfinite(col).any() or (len(s) and np.isin(steps, s["step"].to_numpy()).any()):
            frame[name] = col
    steps_df = pd.DataFrame(frame)
    steps_df["step"] = steps_df["step"].astype(np.int64)

    # Overfitting and underfitting compare train with val per epoch. A training loss logged per step is
    # summarized per epoch (its mean over the epoch's steps, as Keras and Lightning's on_epoch do).
    if len(epochs) and "train_loss" not in epochs and len(steps_df) and not imp.steps_are_epochs:
        ends = epochs["step"].to_numpy()
        which = np.searchsorted(ends, steps_df["step"].to_numpy(), side="left")
        inside = which < len(ends)
        groups = pd.Series(steps_df["loss"].to_numpy()[inside]).groupby(which[inside])
        counts = groups.size()
        if len(counts) == len(ends):  # every epoch has logged losses: else a mean would mislead
            epochs = epochs.copy()
            epochs["train_loss"] = groups.mean().to_numpy()
            derived.append(f"train_loss per epoch: the mean of {roles['loss']!r} over the epoch's logged steps")

    if not len(steps_df) and not len(epochs) and (imp.layers is None or not len(imp.layers)):
        names = ", ".join(sorted(imp.scalars)[:20]) or "none"
        raise RunReadError(
            f"found no loss, accuracy or layer statistics in {imp.path} (names: {names}); "
            "say which is which with --map loss=NAME (or val_acc=NAME, ...)"
        )

    layers = imp.layers if imp.layers is not None else pd.DataFrame(
        {"step": np.array([], dtype=np.int64), "time": np.array([], dtype=float),
         "layer": np.array([], dtype=object)})
    last_step = max([int(steps_df["step"].max()) if len(steps_df) else 0,
                     int(epochs["step"].max()) if len(epochs) else 0,
                     int(layers["step"].max()) if len(layers) else 0])
    times = np.concatenate([steps_df["time"].to_numpy(dtype=float), epochs["time"].to_numpy(dtype=float)])
    times = times[np.isfinite(times)]
    name = imp.name or imp.path.name
    c = num_classes if num_classes is not None else imp.num_classes
    meta = {
        "schema": runfile.SCHEMA_VERSION,
        "run_id": name,
        "name": name,
        "source": imp.source,
        "imported_from": str(imp.path),
        "num_classes": c,
        "config": dict(imp.config),
        "start_time": float(times.min()) if len(times) else None,
        "import": {
            "columns": {role: theirs for role, theirs in roles.items()},
            "loss_per": "epoch" if imp.steps_are_epochs else "step",
            "derived": derived,
            "notes": notes,
            "unmapped": sorted(n for n in imp.scalars if n not in used),
        },
    }
    # An imported log says nothing of the process that wrote it: its state is unknown, never "running"
    # (a stall rule must not fire on a log that simply ended).
    status = {
        "state": "unknown",
        "recorded_state": None,
        "step": last_step,
        "epoch": int(epochs["epoch"].max()) if len(epochs) else 0,
        "start_time": meta["start_time"],
        "end_time": float(times.max()) if len(times) else None,
        "reason": None,
        "error": None,
    }
    empty_snapshots = pd.DataFrame({"step": np.array([], dtype=np.int64), "time": np.array([], dtype=float),
                                    "layer": np.array([], dtype=object), "file": np.array([], dtype=object),
                                    "shape": np.array([], dtype=object)})
    return RunData(
        steps=steps_df.reset_index(drop=True),
        epochs=epochs.reset_index(drop=True),
        layers=layers.reset_index(drop=True),
        snapshots=empty_snapshots,
        events=[],
        corrupt_lines=imp.corrupt,
        path=imp.path,
        meta=meta,
        status=status,
        findings=[],
    )



def _scalar(text: str):
    text = text.strip().strip("'\"")
    low = text.lower()
    if low in ("null", "none", "~", ""):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_hparams(directory: Path) -> dict:
    """Hyperparameters from the hparams.yaml Lightning writes next to its logs ({} if none).

    PyYAML's safe loader when it is installed (it builds no objects); else the flat `key: value` lines.
    """
    path = Path(directory) / "hparams.yaml"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")[: 1 << 20]
    except OSError:
        return {}
    try:
        import yaml

        data = yaml.safe_load(text)
        if isinstance(data, dict):
            return {str(k): v for k, v in data.items()}
    except Exception:  # noqa: BLE001 - not installed, or tags it will not build: read the flat lines
        pass
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_][\w.-]*):\s*(.*)$", line)
        if m and not m.group(2).startswith(("!!", "{", "[", "|", ">")):
            out[m.group(1)] = _scalar(m.group(2))
    return out
