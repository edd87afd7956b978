"""The run directory's on-disk format: file names, schema version, and a JSON codec that keeps NaN and inf.

Torch-free: the writer (hooks/), the reader, the rules and the watcher all agree through this module.
See docs/FORMAT.md for the full description.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "META",
    "STATUS",
    "EVENTS",
    "FINDINGS",
    "SNAPSHOTS",
    "STOP",
    "encode",
    "decode_float",
    "dumps_line",
    "write_json_atomic",
    "read_json",
]

SCHEMA_VERSION = 1

META = "meta.json"
STATUS = "status.json"
EVENTS = "events.jsonl"
FINDINGS = "findings.jsonl"
SNAPSHOTS = "snapshots"
STOP = "STOP"

# JSON has no NaN or inf. Python's json writes non-standard tokens, other encoders write null and lose the
# very signal this tool exists for; we write these three strings, which every JSON parser accepts.
_TOKENS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _float_token(x: float) -> float | str:
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


def encode(obj: Any) -> Any:
    """Replace non-finite floats (anywhere in dicts/lists) by their string tokens."""
    if isinstance(obj, float):
        return _float_token(obj)
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        try:
            if all(map(math.isfinite, obj)):  # the common case: a column of finite numbers, as it is
                return list(obj)
        except TypeError:
            pass
        return [encode(v) for v in obj]
    return obj


def decode_float(x: Any) -> float:
    """A number from the log: a float, an int, one of the non-finite tokens, or null (read as NaN)."""
    if x is None:
        return math.nan
    if isinstance(x, str):
        try:
            return _TOKENS[x]
        except KeyError:
            return float(x)  # raises ValueError for garbage, which the reader counts as corrupt
    if isinstance(x, bool):
        raise ValueError("boolean where a number was expected")
    return float(x)


def dumps_line(record: dict) -> str:
    """One complete JSON line (with its newline) for the event log."""
    return json.dumps(encode(record), separators=(",", ":"), allow_nan=False) + "\n"


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(encode(obj), f, allow_nan=False, indent=1)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
