"""What the user hands `run.step` / `run.epoch` / `run.log_event`, made recordable, one value at a time.

A bad value costs only itself: each function here returns what can be recorded and, when the value had to
be changed or dropped, a short description of what happened (the caller says it once, in one warning).
Nothing here moves a tensor to the host except `jsonable` (events are rare and their data free-form).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import math
import numbers
import os
from typing import Any

import numpy as np
import torch

__all__ = ["scalar", "clean_name", "jsonable", "config_dict"]

MAX_LIST = 1000  # longer arrays in event data / config are described, not stored
_INT_LIMIT = 2**63  # JSON readers (orjson, pandas) choke on larger integers
_REAL = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _huge_int(value: int) -> tuple[float, str]:
    inf = math.inf if value > 0 else -math.inf
    return inf, f"an integer too large for a float ({_short(value)}): recorded as {inf}"


def _short(value: Any, limit: int = 40) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not cost the warning
        text = f"<{type(value).__name__}>"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def scalar(value: Any) -> tuple[torch.Tensor | float | None, str | None]:
    """(value to record, problem). A tensor stays on its device (detached); numbers become floats.

    None is "not measured": (None, None), no warning. A vector becomes its mean; strings, bytes, paths,
    dates and other objects are dropped: (None, "a str ('n/a'): dropped").
    """
    if value is None:
        return None, None
    if isinstance(value, torch.Tensor):
        if value.dtype in _REAL and value.dim() == 0:  # the common case, first: a per-step cost
            return value.detach(), None
        if value.is_complex() or value.is_sparse or value.dtype in (torch.quint8, torch.qint8, torch.qint32):
            return None, f"a {value.dtype} tensor: dropped"
        n = value.numel()
        if n == 1:
            return value.detach().reshape(()), None
        if n == 0:
            return None, "an empty tensor: dropped"
        dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
        with torch.no_grad():
            return value.detach().to(dtype).mean(), f"a tensor of {n} values (shape {list(value.shape)}): " \
                "recorded its mean"
    if isinstance(value, bool):
        return float(value), None
    if isinstance(value, int):
        if abs(value) >= _INT_LIMIT:
            try:
                return float(value), None
            except OverflowError:
                return _huge_int(value)
        return float(value), None
    if isinstance(value, float):
        return value, None
    if isinstance(value, (str, bytes, bytearray, os.PathLike, _dt.date, _dt.time, _dt.timedelta)):
        return None, f"{_a(type(value).__name__)} ({_short(value)}), not a number: dropped"
    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            return None, f"a {type(value).__name__} that is not numeric ({_short(value)}): dropped"
        if array.size == 1:
            return float(array.reshape(())), None
        if array.size == 0:
            return None, f"an empty {type(value).__name__}: dropped"
        return float(array.mean()), f"a {type(value).__name__} of {array.size} values: recorded its mean"
    if isinstance(value, np.generic) or (isinstance(value, numbers.Real)):
        try:
            return float(value), None
        except OverflowError:
            return _huge_int(int(value))
        except (TypeError, ValueError):
            pass
    return None, f"{_a(type(value).__name__)} ({_short(value)}), not a number: dropped"


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


def clean_name(name: Any) -> tuple[str, str | None]:
    """A name that encodes as UTF-8: lone surrogates (e.g. from os.fsdecode) become U+FFFD."""
    text = name if isinstance(name, str) else str(name)
    try:
        text.encode("utf-8")
        return text, None
    except UnicodeEncodeError:
        fixed = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
        return fixed, f"a name that is not valid Unicode ({_short(text)}): recorded as {fixed!r}"


def jsonable(obj: Any, problems: list[str] | None = None, _depth: int = 0) -> Any:
    """Free-form data (event data, config) as JSON values. Paths, dates, numpy and torch scalars convert
    naturally; what can only be described (objects, bytes, long arrays) becomes text, noted in `problems`."""
    problems = problems if problems is not None else []
    if _depth > 20:
        problems.append("data nested deeper than 20 levels: cut")
        return None
    if obj is None or isinstance(obj, (bool, float)):
        return obj
    if isinstance(obj, int):
        if abs(obj) < _INT_LIMIT:
            return int(obj)
        value, problem = scalar(obj)
        problems.append(problem or f"an integer beyond 64 bits ({_short(obj)}): recorded as a float")
        return value
    if isinstance(obj, str):
        text, problem = clean_name(obj)
        if problem:
            problems.append(problem)
        return text
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            key = jsonable(k if isinstance(k, str) else str(k), problems, _depth + 1)
            out[key] = jsonable(v, problems, _depth + 1)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = list(obj)
        if len(items) > MAX_LIST:
            problems.append(f"a {type(obj).__name__} of {len(items)} items: kept the first {MAX_LIST}")
            items = items[:MAX_LIST]
        return [jsonable(v, problems, _depth + 1) for v in items]
    if isinstance(obj, enum.Enum):
        return jsonable(obj.value, problems, _depth + 1)
    if isinstance(obj, os.PathLike):
        path = os.fspath(obj)
        return jsonable(path if isinstance(path, str) else os.fsdecode(path), problems, _depth + 1)
    if isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        return obj.isoformat()
    if isinstance(obj, _dt.timedelta):
        return obj.total_seconds()
    if isinstance(obj, (bytes, bytearray)):
        problems.append(f"bytes ({_short(bytes(obj))}): recorded as text")
        return bytes(obj).decode("utf-8", "backslashreplace")
    if isinstance(obj, np.generic):
        return jsonable(obj.item(), problems, _depth + 1)
    if isinstance(obj, np.ndarray):
        if obj.size > MAX_LIST:
            problems.append(f"an array of {obj.size} values: described, not stored")
            return f"array(shape={list(obj.shape)}, dtype={obj.dtype})"
        return jsonable(obj.tolist(), problems, _depth + 1)
    if isinstance(obj, torch.Tensor):
        if obj.numel() == 1 and not obj.is_complex():
            return obj.detach().reshape(())  # materialized with the flush's one transfer
        if obj.numel() > MAX_LIST:
            problems.append(f"a tensor of {obj.numel()} values: described, not stored")
            return f"tensor(shape={list(obj.shape)}, dtype={obj.dtype})"
        return jsonable(obj.detach().cpu().tolist(), problems, _depth + 1)  # a sync, but events are rare
    if isinstance(obj, numbers.Number):
        value, problem = scalar(obj)
        if value is not None:
            return value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable({f.name: getattr(obj, f.name, None) for f in dataclasses.fields(obj)}, problems, _depth + 1)
    text = _short(obj, 200)
    problems.append(f"{_a(type(obj).__name__)}: recorded as its text")
    return jsonable(text, problems, _depth + 1)


def config_dict(config: Any) -> tuple[dict, list[str]]:
    """`Run(config=...)` as a JSON dict: a mapping, a dataclass, an argparse.Namespace or any object with
    attributes (its fields); anything else is stored as {"value": its text}."""
    problems: list[str] = []
    if config is None:
        return {}, problems
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        fields = {f.name: getattr(config, f.name, None) for f in dataclasses.fields(config)}
    elif hasattr(config, "items") and callable(config.items):
        try:
            fields = dict(config.items())
        except Exception:  # noqa: BLE001 - a mapping that fails to iterate is described instead
            fields = {"value": _short(config, 200)}
            problems.append(f"config of type {type(config).__name__} could not be read: stored as text")
    elif hasattr(config, "__dict__"):
        fields = {k: v for k, v in vars(config).items() if not k.startswith("_")}
    else:
        fields = {"value": config}
        problems.append(f"config is a {type(config).__name__}, not a mapping: stored as {{'value': ...}}")
    out = jsonable(fields, problems)
    return (out if isinstance(out, dict) else {"value": out}), problems
