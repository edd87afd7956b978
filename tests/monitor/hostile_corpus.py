"""A corpus of hostile run directories, generated (never committed as binaries): one builder per attack.

Each builder makes one run directory under a root, next to good runs, the way an attacker (or a crashed
writer, or a shared filesystem) could leave it. `build_corpus(root)` writes them all plus two good runs and
an "outside" folder that no command may ever write into. Used by test_hostile_runs.py and by the dashboard
screenshot.
"""

from __future__ import annotations

import os
import socket
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

from babysit.monitor import runfile

N_STEPS = 40
GOOD = ("good-a", "good-b")
HTML = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'


def good_run(path: Path, *, epochs: int = 2, state: str = "finished", name: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    runfile.write_json_atomic(path / runfile.META, {
        "schema": 1, "run_id": "0123456789ab", "name": name or path.name, "num_classes": 10,
        "config": {"lr": 0.1}, "host": socket.gethostname(), "pid": 1, "start_time": 1.7e9,
        "model": {"class": "Net", "parameters": 650, "trainable": 650,
                  "layers": [{"name": "fc", "type": "Linear", "params": {"weight": [10, 64], "bias": [10]},
                              "count": 650}]},
    })
    runfile.write_json_atomic(path / runfile.STATUS, {
        "schema": 1, "state": state, "step": N_STEPS, "epoch": epochs, "heartbeat": 1.7e9 + N_STEPS,
        "start_time": 1.7e9, "end_time": 1.7e9 + N_STEPS, "reason": None, "error": None,
        "pid": 1, "host": socket.gethostname(),
    })
    n = N_STEPS
    lines = [runfile.dumps_line({"type": "steps", "step": list(range(1, n + 1)),
                                 "time": [1.7e9 + i for i in range(n)],
                                 "loss": [2.3 * 0.97**i for i in range(n)], "lr": [0.1] * n})]
    for e in range(1, epochs + 1):
        lines.append(runfile.dumps_line({"type": "epoch", "epoch": e, "step": e * n // max(epochs, 1),
                                         "time": 1.7e9 + e, "metrics": {"train_loss": 1.0 / e, "val_loss": 1.1 / e,
                                                                        "train_acc": 0.5 + 0.1 * e,
                                                                        "val_acc": 0.45 + 0.1 * e}}))
    (path / runfile.EVENTS).write_text("".join(lines))
    return path


def _write_meta(path: Path, **changes) -> None:
    meta = runfile.read_json(path / runfile.META)
    meta.update(changes)
    runfile.write_json_atomic(path / runfile.META, meta)


def _finding(path: Path, rec: dict | str) -> None:
    with open(path / runfile.FINDINGS, "a", encoding="utf-8") as f:
        f.write((rec if isinstance(rec, str) else runfile.dumps_line(rec)).rstrip("\n") + "\n")


def _nan_step(path: Path) -> None:
    with open(path / runfile.EVENTS, "a", encoding="utf-8") as f:
        f.write(runfile.dumps_line({"type": "steps", "step": [N_STEPS + 1], "time": [1.7e9 + N_STEPS + 1],
                                    "loss": [float("nan")], "lr": [0.1]}))


def _npy_header(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    """A valid .npy v1 header that claims `shape`, followed by almost no data."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\x00" * 64


def _snapshot(path: Path, file: str, data: bytes | None, shape=(8, 1, 3, 3)) -> None:
    (path / runfile.SNAPSHOTS).mkdir(exist_ok=True)
    target = path / runfile.SNAPSHOTS / file
    if data is None:
        os.mkfifo(target)
    else:
        target.write_bytes(data)
    with open(path / runfile.EVENTS, "a", encoding="utf-8") as f:
        for step in (10, 20):
            f.write(runfile.dumps_line({"type": "snapshot", "step": step, "time": 1.7e9 + step, "layer": "fc",
                                        "file": f"{runfile.SNAPSHOTS}/{file}", "shape": list(shape)}))


def _replace_with_fifo(path: Path, name: str) -> None:
    (path / name).unlink(missing_ok=True)
    os.mkfifo(path / name)


HUGE_SHAPE = (1 << 48, 8)  # 2**51 float64 = 16 PiB claimed (~14 PiB in the issue)


def _huge_npz() -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("arr_0.npy", _npy_header(HUGE_SHAPE))
    return buf.getvalue()


# name -> (builder(path, outside), what it attacks). `outside` is a folder no command may write into.
Builder = Callable[[Path, Path], object]
CASES: dict[str, tuple[Builder, str]] = {
    "huge-pid": (lambda p, o: runfile.write_json_atomic(p / runfile.STATUS, {
        "schema": 1, "state": "running", "pid": 10**30, "host": socket.gethostname(), "step": 3}),
        "pid 10**30 in status.json (OverflowError in os.kill)"),
    "huge-pid-meta": (lambda p, o: ((p / runfile.STATUS).unlink(), _write_meta(p, pid=10**30)),
                      "pid 10**30 in meta.json of a run without status.json"),
    "negative-pid": (lambda p, o: runfile.write_json_atomic(p / runfile.STATUS, {
        "schema": 1, "state": "running", "pid": -1, "host": socket.gethostname(), "step": 3}),
        "pid -1: os.kill(-1, 0) would ask about every process"),
    "nested-meta": (lambda p, o: (p / runfile.META).write_text("[" * 100_000), "meta.json nested 100,000 deep"),
    "nested-status": (lambda p, o: (p / runfile.STATUS).write_text("[" * 100_000), "status.json nested 100,000 deep"),
    "nested-meta-config": (lambda p, o: (p / runfile.META).write_text(
        '{"schema": 1, "config": ' + "{\"a\": " * 5000 + "1" + "}" * 5000 + "}"), "config nested 5,000 deep"),
    "float-overflow": (lambda p, o: (p / runfile.EVENTS).open("a").write(
        '{"type":"steps","step":[41],"time":[1e400],"loss":[1e400],"lr":[1e400]}\n'
        '{"type":"epoch","epoch":3,"step":41,"time":1e400,"metrics":{"val_acc":1e400,"train_acc":-1e400}}\n'
        '{"type":"epoch","epoch":1e400,"step":1e400,"time":1}\n'
        '{"type":"layers","step":41,"time":1e400,"stats":{"fc":{"kind":"weight","w_norm":1e400}}}\n'),
        "1e400 in events.jsonl (JSON reads it as inf)"),
    "float-overflow-status": (lambda p, o: (p / runfile.STATUS).write_text(
        '{"schema":1,"state":"running","step":1e400,"epoch":1e400,"heartbeat":1e400,"start_time":-1e400,'
        '"pid":1e400,"host":"elsewhere"}'), "1e400 in status.json's numbers"),
    "report-symlink": (lambda p, o: (p / "report.html").symlink_to(o / "victim.txt"),
                       "report.html is a symlink to a file outside"),
    "findings-symlink": (lambda p, o: ((p / runfile.FINDINGS).symlink_to(o / "victim.txt"), _nan_step(p)),
                         "findings.jsonl is a symlink to a file outside (and a NaN loss to report)"),
    "deep-evidence": (lambda p, o: _finding(p, '{"rule":"nonfinite_loss","severity":"critical","message":"m",'
                                               '"evidence":' + '{"a":' * 900 + "1" + "}" * 900 + "}"),
                      "a finding whose evidence is nested 900 deep"),
    "num-classes-inf": (lambda p, o: (p / runfile.META).write_text('{"schema":1,"num_classes":1e400,'
                                                                   '"config":{"num_classes":1e400}}'),
                        "num_classes 1e400"),
    "params-list": (lambda p, o: _write_meta(p, model={"class": "Net", "parameters": [1], "trainable": "x",
                                                       "layers": [{"name": "fc", "type": "Linear",
                                                                   "params": [1, 2], "count": [3]}, "junk", 7]}),
                    "a model layer whose params is a list"),
    "rule-dict": (lambda p, o: _finding(p, {"rule": {"x": 1}, "severity": {"y": 2}, "message": ["a"],
                                            "fix": {"z": 1}, "step": {"s": 1}, "evidence": [1, 2], "title": 3}),
                  "a finding whose rule is a dict"),
    "npy-huge": (lambda p, o: _snapshot(p, "w.npy", _npy_header(HUGE_SHAPE)),
                 "a .npy snapshot whose header claims 16 PiB"),
    "npz-huge": (lambda p, o: _snapshot(p, "w.npz", _huge_npz()), "an .npz snapshot whose member claims 16 PiB"),
    "fifo-meta": (lambda p, o: _replace_with_fifo(p, runfile.META), "meta.json is a FIFO"),
    "fifo-status": (lambda p, o: _replace_with_fifo(p, runfile.STATUS), "status.json is a FIFO"),
    "fifo-events": (lambda p, o: _replace_with_fifo(p, runfile.EVENTS), "events.jsonl is a FIFO"),
    "fifo-findings": (lambda p, o: _replace_with_fifo(p, runfile.FINDINGS), "findings.jsonl is a FIFO"),
    "fifo-snapshot": (lambda p, o: _snapshot(p, "w.npy", None), "a snapshot is a FIFO"),
    "dir-as-meta": (lambda p, o: ((p / runfile.META).unlink(), (p / runfile.META).mkdir()),
                    "meta.json is a directory"),
    "markdown-state": (lambda p, o: runfile.write_json_atomic(p / runfile.STATUS, {
        "schema": 1, "state": "**bold** [click](https://example.invalid) :material/warning: <b>x</b>",
        "step": 3}), "Markdown in status.json's state"),
    "html-everywhere": (lambda p, o: (
        _write_meta(p, name=HTML, config={HTML: HTML, "lr": HTML}),
        runfile.write_json_atomic(p / runfile.STATUS, {"schema": 1, "state": "crashed", "reason": HTML,
                                                       "error": {"type": HTML, "message": HTML}}),
        _finding(p, {"rule": HTML, "severity": "critical", "message": HTML, "fix": [HTML], "title": HTML,
                     "evidence": {HTML: HTML}})), "HTML in the name, config, status and findings"),
    "back\\slash": (lambda p, o: None, "a run name with a backslash"),
    "no-epochs": (lambda p, o: good_run(p, epochs=0), "a run with steps and no epochs"),
}
NON_UTF8 = b"bad-\xff\xfe-name"  # a directory name that is not UTF-8 (a good run inside)


def build_corpus(root: Path, cases: list[str] | None = None) -> tuple[Path, Path]:
    """Write the good runs, the hostile ones and the non-UTF-8 one under root/runs. Returns (runs, outside)."""
    runs, outside = root / "runs", root / "outside"
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "victim.txt").write_text("do not touch\n")
    for name in GOOD:
        good_run(runs / name)
    for name in cases if cases is not None else CASES:
        build, _ = CASES[name]
        path = good_run(runs / name)
        build(path, outside)
    if cases is None:
        good_run(Path(os.fsdecode(os.fsencode(str(runs)) + b"/" + NON_UTF8)))
    return runs, outside


def snapshot_tree(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under folder: compare before and after to prove nothing was written."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            out[os.path.join(dirpath, f)] = (st.st_size, st.st_mtime_ns)
    return out
