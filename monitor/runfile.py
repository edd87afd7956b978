"""The run directory's on-disk format: file names, schema version, and a JSON codec that keeps NaN and inf.

Torch-free: the writer (hooks/), the reader, the rules and the watcher all agree through this module.
See docs/FORMAT.md for the full description.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from babysit.vocabulary import SEVERITIES

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
    "read_bytes",
    "read_npy",
    "open_regular",
    "NotRegularFile",
    "MAX_JSON_BYTES",
    "MAX_DEPTH",
    "MAX_SNAPSHOT_BYTES",
    "clean_finding",
    "clean_findings",
    "load_snapshot",
    "append_findings",
    "inside_run",
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
    write_text_atomic(path, json.dumps(encode(obj), allow_nan=False, indent=1))


def write_text_atomic(path: str | os.PathLike, text: str, mode: int | None = None) -> None:
    """Write a new file beside `path` and rename it over it: a reader sees the old file or the new one, and a
    symlink planted at `path` is replaced, never written through. `mode` (e.g. 0o644, less the umask) for files
    meant for others; by default the temporary file's 0o600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if mode is not None:
                os.fchmod(f.fileno(), mode & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- reading what others wrote
# Everything in a run directory may have been written by a crashed process, a shared filesystem or an
# attacker. Readers open only regular files (a FIFO would block forever, a device never end), read a bounded
# number of bytes, and refuse JSON nested deeper than any writer of ours produces (deep nesting costs a
# RecursionError in json, and again in every recursive consumer: encoders, renderers, Streamlit).
MAX_JSON_BYTES = 64 << 20  # meta.json / status.json / STOP: a real one is a few KB
MAX_DEPTH = 64  # nesting levels of a JSON document we accept (a config dict of dicts is a handful)
MAX_SNAPSHOT_BYTES = 256 << 20  # a first-layer weight snapshot is kilobytes to a few MB


class NotRegularFile(OSError):
    """A FIFO, device, socket or directory where a regular file was expected."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(errno.EINVAL, "not a regular file", os.fspath(path))


def open_regular(path: str | os.PathLike, flags: int = 0) -> int:
    """A file descriptor of `path` opened for reading, only if it is a regular file (never blocks).

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; fstat on the open file (not
    a stat before the open, which a rename could race) then refuses anything that is not a regular file.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The whole content of a regular file of at most `max_bytes`; OSError or ValueError (too large) else."""
    with os.fdopen(open_regular(path), "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes:,} bytes")
    return data


def _depth_exceeds(obj: Any, limit: int) -> bool:
    """Whether a decoded JSON value nests deeper than `limit` (iterative: deep input cannot overflow it)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        elif not isinstance(value, list):
            continue
        if depth > limit:
            return True
        stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return False


def loads_bounded(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """json.loads that raises ValueError (never RecursionError) on nesting deeper than `max_depth`."""
    try:
        obj = json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
    if _depth_exceeds(obj, max_depth):
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    return obj


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """A small JSON file (meta.json, status.json, STOP). FileNotFoundError, other OSError (a FIFO, a directory:
    NotRegularFile) or ValueError (not UTF-8, not JSON, too large, nested too deep); nothing else."""
    return loads_bounded(read_bytes(path, max_bytes).decode("utf-8"), max_depth)


def read_npy(path: str | os.PathLike, max_bytes: int = MAX_SNAPSHOT_BYTES) -> Any:
    """A numeric .npy array, checked before anything is allocated: ValueError or OSError when it is not one.

    np.load trusts the header: a 100-byte file that claims 14 PiB makes it try to allocate them, and an .npz
    (a zip) or a pickle is a different thing altogether. Here the header's shape times the item size must be
    what the file holds and at most `max_bytes`; the dtype must be a plain number; no pickle, no zip.
    """
    import numpy as np

    fmt = np.lib.format
    with os.fdopen(open_regular(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes + 65536:
            raise ValueError(f"larger than {max_bytes:,} bytes")
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=10000)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=10000)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except (ValueError, SyntaxError, TypeError, OverflowError) as e:
            raise ValueError(f"not a .npy array ({type(e).__name__})") from None
        if dtype.hasobject or dtype.kind not in "biuf" or dtype.itemsize == 0:
            raise ValueError(f"not a numeric array (dtype {dtype})")
        if len(shape) > 32 or any(not isinstance(n, int) or n < 0 for n in shape):
            raise ValueError("not a .npy array (bad shape)")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if nbytes > max_bytes:
            raise ValueError(f"claims {nbytes:,} bytes (more than {max_bytes:,})")
        if nbytes > size - f.tell():
            raise ValueError(f"claims {nbytes:,} bytes but holds {max(size - f.tell(), 0):,}")
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError("truncated .npy array")
    arr = np.frombuffer(data, dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C").copy()


def inside_run(run_dir: str | os.PathLike, rel: Any) -> Path | None:
    """run_dir/rel when `rel` (read from a file or a URL: untrusted) is a relative path that stays inside the run
    directory once symlinks are resolved; None otherwise (absolute, '..', NUL or control characters, too long)."""
    if not isinstance(rel, str) or not rel or len(rel) > 1000 or any(ord(c) < 32 for c in rel):
        return None
    if os.path.isabs(rel) or rel.startswith("~") or ".." in Path(rel).parts:
        return None
    try:
        root = Path(run_dir).resolve()
        path = (root / rel).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, an odd name
        return None
    return path if path.is_relative_to(root) else None


def load_snapshot(run_dir: str | os.PathLike, rel: Any) -> Any:
    """A snapshot's numeric array (`rel`: its path in the run directory, as the snapshot record gives it), or None.

    The one way anything reads a snapshot (rules, report, dashboard): only from inside the run directory, only a
    regular file, header checked against the file's size before anything is allocated, never a pickle or an
    .npz (`read_npy`); an empty or 0-d array is no picture of anything and reads as None too.
    """
    path = inside_run(run_dir, rel)
    if path is None:
        return None
    try:
        arr = read_npy(path)
    except (OSError, ValueError):
        return None
    return arr if arr.ndim >= 1 and arr.size else None


def append_findings(run_dir: str | os.PathLike, findings: list[dict], source: str | None = None) -> None:
    """Append findings to the run's findings.jsonl, one write(2) per line (concurrent writers interleave whole
    lines), with `source` ("hooks", "watch") set on each when given.

    Only to a regular file inside the run: a findings.jsonl that is a symlink (to ~/.bashrc, say) is never
    written through and a FIFO never waited on. Any failure is an OSError with a one-line message, for the caller
    to report its way (the hooks warn and train on, the watcher notes it).
    """
    lines = [dumps_line(f if source is None else {**f, "source": source}).encode("utf-8") for f in findings]
    path = Path(run_dir) / FINDINGS
    flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
             | getattr(os, "O_CLOEXEC", 0))
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO):  # a symlink; a FIFO nobody reads
            raise OSError(e.errno, f"{FINDINGS} is not a regular file; not written") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{FINDINGS} is not a regular file; not written")
        for line in lines:
            view = memoryview(line)
            while view:  # a regular file takes it whole; a short write (a full disk) goes on or raises
                view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _finite_number(v: Any) -> int | float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return v if math.isfinite(v) else None
    except OverflowError:  # an int too large for a float
        return None


MAX_EVIDENCE_DEPTH = 16  # a rule's evidence nests two or three levels; copying 900 levels overflows the stack


def _shallow(evidence: dict) -> dict:
    """Evidence with any value nested deeper than MAX_EVIDENCE_DEPTH replaced by a note (the rest kept)."""
    if not _depth_exceeds(evidence, MAX_EVIDENCE_DEPTH):
        return evidence
    return {k: "(nested too deep)" if _depth_exceeds(v, MAX_EVIDENCE_DEPTH - 1) else v for k, v in evidence.items()}


def clean_finding(f: dict) -> dict:
    """A finding read from findings.jsonl (anyone may have written it) with the types every consumer relies on:
    text rule/severity/title/message, a list of text fixes, a dict of evidence (nested at most
    MAX_EVIDENCE_DEPTH levels), finite step/epoch or None.
    Other keys are kept as they are."""
    sev = f.get("severity")
    fix = f.get("fix")
    fixes = [fix] if isinstance(fix, str) else fix if isinstance(fix, list) else []
    title = f.get("title")
    out = {**f, "rule": str(f.get("rule", "?"))[:200], "severity": sev if sev in SEVERITIES else "info",
           "title": title[:500] if isinstance(title, str) else None, "message": str(f.get("message", ""))[:4000],
           "fix": [str(x)[:2000] for x in fixes[:10]],
           "evidence": _shallow(f.get("evidence")) if isinstance(f.get("evidence"), dict) else {}}
    for key in ("step", "epoch"):
        out[key] = _finite_number(f.get(key))
    return out


def clean_findings(records: Any) -> list[dict]:
    """The dict lines of a findings log (RunData.findings, a tailer's), each through `clean_finding`."""
    return [clean_finding(f) for f in records or () if isinstance(f, dict)]
