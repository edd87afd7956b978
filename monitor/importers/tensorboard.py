"""Read TensorBoard event files (scalars and histograms) without TensorBoard.

An event file is a sequence of TFRecords, each an `Event` protobuf. We decode the few fields we need
straight from the protobuf wire format (about a hundred lines), which buys three things over TensorBoard's
EventAccumulator: no dependency (the `[tensorboard]` extra is only needed to *write* logs), no reservoir
sampling (TensorBoard keeps 1,000 points per tag, and the spikes we look for are what it drops), and no
ten-second import. Record checksums (CRC32C) are not verified: a record that does not decode is counted as
corrupt and skipped, and a truncated last record (a run still writing) is simply not read yet.

Layout handled: one directory of event files (restarts append new files; the last value logged for a step
wins, and a SessionLog START at step s drops what an earlier session logged at s and after); Keras-style
`train/` and `validation/` subdirectories; and `add_scalars("Loss", {"train": ..., "val": ...})`, which
writes subdirectories `Loss_train/`, `Loss_val/` holding the tag `Loss`.

Histograms whose tag names a weight or a gradient (`fc1.weight`, `weights/fc1`, `fc1.weight.grad`,
`grad/fc1`, ...) become per-layer statistics: w_norm, w_mean, w_std from the weight histogram and g_norm from
the gradient's, exactly (a histogram keeps the count, sum and sum of squares).
"""

from __future__ import annotations

import math
import os
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd

from babysit.monitor.importers.series import Imported, read_hparams, series_frame
from babysit.monitor.reader import RunReadError
from babysit.vocabulary import num_classes_of

__all__ = ["load_tensorboard", "event_files", "read_events", "layer_of_tag"]

_SPLITS = {"train", "training", "validation", "valid", "val", "eval", "evaluation", "test"}
_MAX_RECORD = 256 << 20  # a length field beyond this is garbage, not a record
_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 9: "<i8", 19: "<f2"}  # DT_FLOAT, DT_DOUBLE, DT_INT32, DT_INT64, DT_HALF


def _is_event_file(name: str) -> bool:
    return "tfevents" in name and not name.endswith((".tmp", ".lock"))


def event_files(path: str | os.PathLike, max_depth: int = 3) -> list[Path]:
    """Event files at path (a file, or a directory searched `max_depth` levels down), sorted by name."""
    path = Path(path)
    if path.is_file():
        return [path] if _is_event_file(path.name) else []
    found: list[Path] = []
    root_depth = len(path.parts)
    for dirpath, dirnames, filenames in os.walk(path):
        depth = len(Path(dirpath).parts) - root_depth
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < max_depth else []
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_event_file(f))
    return sorted(found)


# --------------------------------------------------------------------------- protobuf wire format
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes, start: int = 0, end: int | None = None):
    """(field number, wire type, value) for each field; length-delimited values are (start, end) offsets."""
    i, end = start, len(buf) if end is None else end
    while i < end:
        key = buf[i]  # one-byte varints are the rule here: decode them inline (half the reading time)
        if key < 0x80:
            i += 1
        else:
            key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            value, i = _varint(buf, i)
        elif wt == 1:
            value, i = buf[i : i + 8], i + 8
        elif wt == 2:
            n = buf[i]
            if n < 0x80:
                i += 1
            else:
                n, i = _varint(buf, i)
            value, i = (i, i + n), i + n
        elif wt == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        if i > end:
            raise ValueError("field past the end of its message")
        yield num, wt, value


def _packed(buf: bytes, value, wt: int, fmt: str) -> list[float]:
    """A repeated double/float field: packed (one length-delimited run) or one element per field."""
    if wt == 2:
        a, b = value
        return list(np.frombuffer(buf[a:b], dtype=fmt).astype(float))
    return [struct.unpack("<d" if wt == 1 else "<f", value)[0]]


def _histogram(buf: bytes, a: int, b: int) -> dict:
    h: dict = {"bucket_limit": [], "bucket": []}
    names = {1: "min", 2: "max", 3: "num", 4: "sum", 5: "sum_squares"}
    for num, wt, value in _fields(buf, a, b):
        if num in names and wt == 1:
            h[names[num]] = struct.unpack("<d", value)[0]
        elif num == 6:
            h["bucket_limit"].extend(_packed(buf, value, wt, "<f8"))
        elif num == 7:
            h["bucket"].extend(_packed(buf, value, wt, "<f8"))
    return h


def _tensor(buf: bytes, a: int, b: int) -> np.ndarray | None:
    dtype, shape, content = 0, [], None
    values: list[float] = []
    for num, wt, value in _fields(buf, a, b):
        if num == 1 and wt == 0:
            dtype = value
        elif num == 2 and wt == 2:
            for dnum, dwt, dim in _fields(buf, *value):
                if dnum == 2 and dwt == 2:
                    size = next((v for n, w, v in _fields(buf, *dim) if n == 1 and w == 0), 0)
                    shape.append(size)
        elif num == 4 and wt == 2:
            content = buf[value[0] : value[1]]
        elif num == 5:
            values.extend(_packed(buf, value, wt, "<f4"))
        elif num == 6:
            values.extend(_packed(buf, value, wt, "<f8"))
    if content is not None and dtype in _DTYPES:
        arr = np.frombuffer(content, dtype=_DTYPES[dtype]).astype(float)
    elif values:
        arr = np.asarray(values, dtype=float)
    else:
        return None
    size = math.prod(shape) if shape else arr.size
    if shape and size == arr.size:
        arr = arr.reshape(shape)
    elif shape and arr.size == 1:
        arr = np.full(shape, arr[0])  # a constant tensor stored as its one value
    return arr


def _plugin(buf: bytes, a: int, b: int) -> str:
    for num, wt, value in _fields(buf, a, b):
        if num == 1 and wt == 2:  # plugin_data
            for pnum, pwt, pval in _fields(buf, *value):
                if pnum == 1 and pwt == 2:
                    return bytes(buf[pval[0] : pval[1]]).decode("utf-8", "replace")
    return ""


def _summary_values(buf: bytes, a: int, b: int):
    """(tag, kind, value) for each Summary.Value: kind "scalar" (a float) or "histogram" (a dict)."""
    for num, wt, value in _fields(buf, a, b):
        if num != 1 or wt != 2:
            continue
        tag, plugin, scalar, histo, tensor = "", "", None, None, None
        for vnum, vwt, v in _fields(buf, *value):
            if vnum == 1 and vwt == 2:
                tag = bytes(buf[v[0] : v[1]]).decode("utf-8", "replace")
            elif vnum == 2 and vwt == 5:
                scalar = struct.unpack("<f", v)[0]
            elif vnum == 5 and vwt == 2:
                histo = _histogram(buf, *v)
            elif vnum == 8 and vwt == 2:
                tensor = v
            elif vnum == 9 and vwt == 2:
                plugin = _plugin(buf, *v)
        if scalar is not None:
            yield tag, "scalar", scalar
        elif histo is not None:
            yield tag, "histogram", histo
        elif tensor is not None and plugin in ("scalars", ""):
            arr = _tensor(buf, *tensor)
            if arr is not None and arr.size == 1:
                yield tag, "scalar", float(arr.reshape(-1)[0])
        elif tensor is not None and plugin == "histograms":
            arr = _tensor(buf, *tensor)
            if arr is not None and arr.ndim == 2 and arr.shape[1] == 3:
                yield tag, "histogram", _buckets_to_histogram(arr)


def _buckets_to_histogram(arr: np.ndarray) -> dict:
    """TF2's histogram tensor (left, right, count) per bucket; moments from bucket centres (approximate)."""
    left, right, count = arr[:, 0], arr[:, 1], arr[:, 2]
    centre = (left + right) / 2
    return {"num": float(count.sum()), "sum": float((centre * count).sum()),
            "sum_squares": float((centre * centre * count).sum()),
            "min": float(left.min()) if len(left) else math.nan, "max": float(right.max()) if len(right) else math.nan}


def read_events(path: str | os.PathLike) -> tuple[list[tuple], int]:
    """Every (wall_time, step, tag, kind, value) in one event file, in file order; and the corrupt count.

    A SessionLog START is returned as (wall_time, step, "", "start", None).
    """
    data = Path(path).read_bytes()
    out: list[tuple] = []
    corrupt = 0
    i = 0
    while i + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, i)
        if length > _MAX_RECORD:
            corrupt += 1
            break  # framing lost: nothing after this can be trusted
        start, end = i + 12, i + 12 + length
        if end + 4 > len(data):
            break  # the last record is still being written
        i = end + 4
        try:
            wall, step, summary, session = 0.0, 0, None, None
            for num, wt, value in _fields(data, start, end):
                if num == 1 and wt == 1:
                    (wall,) = struct.unpack("<d", value)
                elif num == 2 and wt == 0:
                    step = value - (1 << 64) if value >= 1 << 63 else value
                elif num == 5 and wt == 2:
                    summary = value
                elif num == 7 and wt == 2:
                    session = value
            if session is not None:
                status = next((v for n, w, v in _fields(data, *session) if n == 1 and w == 0), 0)
                if status == 1:  # START: a restart from a checkpoint at this step
                    out.append((wall, step, "", "start", None))
            if summary is not None:
                for tag, kind, value in _summary_values(data, *summary):
                    out.append((wall, step, tag, kind, value))
        except (ValueError, IndexError, struct.error):
            corrupt += 1
    return out, corrupt


# --------------------------------------------------------------------------- tags to our names
def layer_of_tag(tag: str) -> tuple[str, str] | None:
    """("fc1", "weight") for "fc1.weight" or "weights/fc1"; ("fc1", "grad") for "fc1.weight.grad" or
    "grad/fc1"; None for biases and for histograms that name neither a weight nor a gradient."""
    parts = [p for p in re.split(r"[/.]", tag) if p]
    low = [p.lower() for p in parts]
    grad = any(p in ("grad", "grads", "gradient", "gradients") or p.endswith("_grad") for p in low)
    weight = any(p in ("weight", "weights", "kernel", "param", "params", "parameters") for p in low)
    if not (grad or weight) or any(p == "bias" or p.endswith("_bias") for p in low):
        return None
    drop = {"grad", "grads", "gradient", "gradients", "weight", "weights", "kernel", "param", "params",
            "parameters", "histogram", "histograms", "hist"}
    keep = [p.removesuffix("_grad") if p.lower().endswith("_grad") else p
            for p, lp in zip(parts, low, strict=True) if lp not in drop]
    layer = ".".join(keep)
    return (layer, "grad" if grad else "weight") if layer else None


def _run_dirs(files: list[Path], root: Path) -> tuple[dict[Path, str], Path]:
    """Directory holding event files -> the prefix its tags get, and the run's own directory.

    One run is: one directory; or a directory plus direct subdirectories (what `add_scalars` writes); or
    sibling split directories (Keras: train/, validation/). Anything else is several runs: RunReadError.
    """
    dirs = sorted({f.parent for f in files})
    tops = [d for d in dirs if not any(o != d and d.is_relative_to(o) for o in dirs)]
    if len(tops) == 1 and all(d == tops[0] or d.parent == tops[0] for d in dirs):
        return {d: ("" if d == tops[0] else d.name) for d in dirs}, tops[0]
    parents = {d.parent for d in dirs}
    if len(parents) == 1 and all(d.name.lower() in _SPLITS for d in dirs):
        return {d: d.name for d in dirs}, dirs[0].parent
    listing = ", ".join(str(d.relative_to(root) if d.is_relative_to(root) else d) for d in tops[:8])
    raise RunReadError(f"{root} holds {len(tops)} TensorBoard runs; point at one of them: {listing}")


def _tag_name(prefix: str, tag: str) -> str:
    if not prefix:
        return tag
    if prefix.startswith(tag + "_"):  # add_scalars("Loss", {"train": x}) -> dir "Loss_train", tag "Loss"
        return f"{tag}/{prefix[len(tag) + 1:]}"
    return f"{prefix}/{tag}"


def load_tensorboard(path: str | os.PathLike) -> Imported:
    """The scalars and weight/gradient histograms of one TensorBoard run (a directory or one event file)."""
    root = Path(path)
    files = event_files(root)
    if not files:
        raise RunReadError(f"no TensorBoard event files in {root}")
    prefixes, run_dir = _run_dirs(files, root if root.is_dir() else root.parent)
    scalars: dict[str, list[tuple[float, int, float]]] = {}
    histos: dict[tuple[str, str], list[tuple[float, int, dict]]] = {}
    skipped: set[str] = set()
    corrupt = 0
    for f in files:  # sorted by name, and TensorBoard names files by creation time: older sessions first
        try:
            events, bad = read_events(f)
        except OSError as e:
            raise RunReadError(f"cannot read {f}: {e.strerror or e}") from None
        corrupt += bad
        prefix = prefixes.get(f.parent, "")
        for wall, step, tag, kind, value in events:
            if kind == "start":
                for store in (scalars, histos):
                    for key, rows in store.items():
                        store[key] = [r for r in rows if r[1] < step]
                continue
            name = _tag_name(prefix, tag)
            if kind == "scalar":
                scalars.setdefault(name, []).append((wall, step, value))
            else:
                which = layer_of_tag(tag)
                if which is None:
                    skipped.add(name)
                else:
                    histos.setdefault(which, []).append((wall, step, value))
    series = {name: series_frame([r[1] for r in rows], [r[2] for r in rows], [r[0] for r in rows])
              for name, rows in scalars.items() if rows}
    config = read_hparams(run_dir)
    notes = []
    if skipped:
        notes.append(f"histograms that name neither a weight nor a gradient were not read: {sorted(skipped)[:5]}")
    return Imported(
        source="tensorboard",
        path=root,
        scalars=series,
        layers=_layers(histos),
        config=config,
        num_classes=num_classes_of(config),
        name=_run_name(root, run_dir),
        notes=notes,
        corrupt=corrupt,
    )


def _layers(histos: dict[tuple[str, str], list[tuple[float, int, dict]]]) -> pd.DataFrame | None:
    rows: dict[tuple[int, str], dict] = {}
    order: dict[str, int] = {}
    for (layer, kind), records in histos.items():
        order.setdefault(layer, len(order))
        for wall, step, h in records:
            num, total, sq = h.get("num", 0.0), h.get("sum", 0.0), h.get("sum_squares", 0.0)
            if not num > 0:
                continue
            row = rows.setdefault((step, layer), {"step": step, "time": wall, "layer": layer, "kind": "weight"})
            if kind == "grad":
                row["g_norm"] = math.sqrt(max(sq, 0.0)) if math.isfinite(sq) else sq
            else:
                mean = total / num
                row["w_mean"] = mean
                row["w_std"] = math.sqrt(max(sq / num - mean * mean, 0.0)) if math.isfinite(sq) else math.nan
                row["w_norm"] = math.sqrt(max(sq, 0.0)) if math.isfinite(sq) else sq
    if not rows:
        return None
    frame = pd.DataFrame(sorted(rows.values(), key=lambda r: (r["step"], order[r["layer"]])))
    frame["step"] = frame["step"].astype(np.int64)
    return frame


def _run_name(root: Path, run_dir: Path) -> str:
    name = run_dir.name if run_dir.is_dir() else root.name
    if re.fullmatch(r"version_\d+", name) and run_dir.parent.name:
        return f"{run_dir.parent.name}/{name}"
    return name
