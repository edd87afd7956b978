"""Every `babysit` command given hostile input: exit 2 with exactly one line on stderr, or (data partly good)
0/1 with the skipped part counted; never a traceback.

The reader's own behaviour on these files is tested in test_hostile_input.py; this file checks what reaches
the user through each command. Commands run in-process through `monitor.cli.main` (fast); two cases run as
a real subprocess to show no traceback reaches a terminal.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from babysit.monitor import runfile
from babysit.monitor.cli import main

REPO = Path(__file__).resolve().parents[2]
N_STEPS = 40


# --------------------------------------------------------------------------- fixtures
def _good(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    runfile.write_json_atomic(path / runfile.META, {"schema": runfile.SCHEMA_VERSION, "run_id": path.name,
                                                     "num_classes": 10, "config": {"lr": 0.1}})
    runfile.write_json_atomic(path / runfile.STATUS, {"schema": 1, "state": "finished", "step": N_STEPS})
    n = N_STEPS
    rec = {"type": "steps", "step": list(range(1, n + 1)), "time": [1.7e9 + i for i in range(n)],
           "loss": [2.3 * 0.98**i for i in range(n)], "lr": [0.1] * n}
    (path / runfile.EVENTS).write_text(runfile.dumps_line(rec))
    return path


def _append(path: Path, data: bytes) -> Path:
    with open(path / runfile.EVENTS, "ab") as f:
        f.write(data)
    return path


EPOCH_LINE = runfile.dumps_line({"type": "epoch", "epoch": 1, "step": N_STEPS, "time": 1.7e9 + N_STEPS,
                                 "metrics": {"train_acc": 0.5, "val_acc": 0.5}}).encode()

GARBAGE = bytes(b for b in range(1, 256) if b not in b"\r\n")  # one line of every other byte

# Runs that cannot be read at all: every command that takes a run says why in one line and exits 2.
UNREADABLE = {
    "missing path": (lambda p: None, "no such"),
    "a file, not a directory": (lambda p: p.write_text("hello"), "not a|neither"),
    "empty directory": (lambda p: p.mkdir(), "run|checkpoint"),
    "garbage meta.json": (lambda p: (_good(p), (p / runfile.META).write_bytes(b"\x00\x01garbage{")), "meta.json"),
    "meta.json not an object": (lambda p: (_good(p), (p / runfile.META).write_text("[1, 2]")), "meta.json"),
    "invalid UTF-8 meta.json": (lambda p: (_good(p), (p / runfile.META).write_bytes(b'{"schema": 1, "x": "\xff"}')),
                                "meta.json"),
    "future schema version": (lambda p: (_good(p), (p / runfile.META).write_text('{"schema": 99}')), "upgrade"),
}

# Runs whose event log is partly bad: the good records are used and the bad lines counted (or, for a partial
# last line, left for later: a run still being written looks exactly like that).
PARTLY_GOOD = {
    "truncated last line": (lambda p: _append(_good(p), EPOCH_LINE[:-10]), 0),
    "garbage bytes line": (lambda p: _append(_good(p), GARBAGE + b"\n" + EPOCH_LINE), 1),
    "invalid UTF-8 line": (lambda p: _append(_good(p), b'{"type": "event", "name": "\xff\xfe"}\n' + EPOCH_LINE), 1),
    "wrong types": (lambda p: _append(_good(p), b'{"type": "steps", "step": "many", "loss": {}}\n'
                                                b'{"type": "epoch", "epoch": [], "step": null}\n'
                                                b'{"type": "layers", "step": 1, "time": 0, "stats": [1]}\n'
                                                + EPOCH_LINE), 3),
    "enormous line": (lambda p: _append(_good(p), b'{"type": "event", "data": "' + b"x" * (3 << 20) + b'"\n'
                                        + EPOCH_LINE), 1),
}


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    """Commands that default to ./runs must never touch the repository."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BABYSIT_LEDGER", str(tmp_path / "ledger.jsonl"))
    monkeypatch.delenv("BABYSIT_WEBHOOK", raising=False)


def call(capsys, argv: list[str]) -> tuple[int, str, list[str]]:
    """(exit status, stdout, stderr lines) of `babysit ARGV`, in-process; argparse's SystemExit included."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return rc, out, err.splitlines()


def assert_one_line_error(rc: int, out: str, err: list[str], command: str, *words: str) -> None:
    assert rc == 2, (rc, out, err)
    assert len(err) == 1, err
    assert err[0].startswith(f"babysit {command}: error: "), err
    for w in words:  # "a|b": either will do
        assert any(alt.lower() in err[0].lower() for alt in w.split("|")), (w, err)
    assert out == "", out


def _with_output(command: str, path: Path, tmp_path: Path) -> list:
    """argv for a command that takes one run (report gets an output file inside tmp_path)."""
    return {"diagnose": ["diagnose", path], "report": ["report", path, "-o", tmp_path / "out" / "r.html"],
            "watch": ["watch", "--once", path], "evaluate": ["evaluate", path]}[command]


# --------------------------------------------------------------------------- unreadable runs
def _unreadable_cases():
    for command in ("diagnose", "report", "watch", "evaluate"):
        for case in UNREADABLE:
            yield pytest.param(command, case, id=f"{command}-{case}")


@pytest.mark.parametrize(("command", "case"), list(_unreadable_cases()))
def test_unreadable_run_is_one_line_exit_2(capsys, tmp_path, command, case):
    build, word = UNREADABLE[case]
    path = tmp_path / "run"
    build(path)
    rc, out, err = call(capsys, _with_output(command, path, tmp_path))
    assert_one_line_error(rc, out, err, command, word)
    assert not (tmp_path / "out").exists()  # report wrote nothing


def test_wrong_type_schema_is_called_corrupt_not_future(capsys, tmp_path):
    path = _good(tmp_path / "run")
    (path / runfile.META).write_text('{"schema": "1"}')
    rc, out, err = call(capsys, ["diagnose", path])
    assert_one_line_error(rc, out, err, "diagnose")
    assert "upgrade" not in err[0]


def test_meta_model_of_the_wrong_type(capsys, tmp_path):
    path = _good(tmp_path / "run")
    runfile.write_json_atomic(path / runfile.META, {"schema": 1, "num_classes": 10, "model": "resnet"})
    _append(path, runfile.dumps_line({"type": "layers", "step": 10, "time": 1.0,
                                      "stats": {"fc": {"kind": "weight", "w_norm": 1.0, "g_norm": 0.1}}}).encode())
    rc, out, err = call(capsys, ["diagnose", path])
    assert rc in (0, 1, 2) and len(err) <= 1, err


def test_infinite_threshold_on_the_command_line(capsys, tmp_path):
    rc, out, err = call(capsys, ["diagnose", _good(tmp_path / "run"), "--threshold", "flat_window=inf"])
    assert_one_line_error(rc, out, err, "diagnose", "flat_window")


# --------------------------------------------------------------------------- partly good runs
@pytest.mark.parametrize("case", list(PARTLY_GOOD))
def test_diagnose_counts_what_it_skipped(capsys, tmp_path, case):
    build, skipped = PARTLY_GOOD[case]
    path = build(tmp_path / "run")
    rc, out, err = call(capsys, ["diagnose", path])
    assert rc in (0, 1) and err == [], (rc, err)
    assert f"{N_STEPS} steps" in out  # the good data was all read
    if skipped:
        assert f"{skipped} corrupt log lines skipped" in out, out
    else:
        assert "corrupt" not in out


@pytest.mark.parametrize("case", list(PARTLY_GOOD))
def test_diagnose_json_stays_valid_json(capsys, tmp_path, case):
    import json

    path = PARTLY_GOOD[case][0](tmp_path / "run")
    rc, out, err = call(capsys, ["diagnose", path, "--json"])
    assert rc in (0, 1) and err == []
    assert json.loads(out)["run"] == str(path)


@pytest.mark.parametrize("case", list(PARTLY_GOOD))
def test_report_counts_what_it_skipped(capsys, tmp_path, case):
    build, skipped = PARTLY_GOOD[case]
    path = build(tmp_path / "run")
    rc, out, err = call(capsys, ["report", path, "-o", tmp_path / "r.html"])
    assert rc == 0 and err == [], (rc, err)
    assert out.startswith("report written to") and out.count("\n") == 1
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    found = re.search(r"corrupt log lines skipped</th><td>(\d+)<", html)
    assert (int(found.group(1)) if found else 0) == skipped


@pytest.mark.parametrize("case", list(PARTLY_GOOD))
def test_watch_once_reads_partly_good_runs(capsys, tmp_path, case):
    path = PARTLY_GOOD[case][0](tmp_path / "run")
    rc, out, err = call(capsys, ["watch", "--once", path])
    assert rc in (0, 1)
    assert len(err) == 1 and err[0].startswith("babysit watch: 1 run(s)"), err


def test_watch_once_counts_what_it_skipped(capsys, tmp_path):
    path = PARTLY_GOOD["garbage bytes line"][0](tmp_path / "run")
    rc, out, err = call(capsys, ["watch", "--once", path])
    assert rc in (0, 1)
    assert "corrupt" in " ".join(err) + out


def test_watch_once_over_a_root_skips_the_bad_run_with_one_warning(capsys, tmp_path):
    root = tmp_path / "root"
    _good(root / "fine")
    _good(root / "broken")
    (root / "broken" / runfile.META).write_text('{"schema": 99}')
    rc, out, err = call(capsys, ["watch", "--once", root])
    assert rc == 0, err
    assert len(err) == 2 and "broken" in err[0] and "upgrade" in err[0], err
    assert err[1].startswith("babysit watch: 1 run(s)"), err


# --------------------------------------------------------------------------- files that are not runs
def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("random.bin", bytes(range(256)) * 8),
        ("metrics.csv", b"step,loss\n1,\xff\xfe\n2,abc\n"),
        ("header.csv", b"step,loss\n"),
        ("empty.csv", b""),
        ("events.out.tfevents.1.host", b"\x00" * 12 + bytes(range(200))),
    ],
)
def test_report_on_files_that_are_not_runs(capsys, tmp_path, name, data):
    path = _file(tmp_path, name, data)
    rc, out, err = call(capsys, ["report", path, "-o", tmp_path / "r.html"])
    assert_one_line_error(rc, out, err, "report", name)


# --------------------------------------------------------------------------- evaluate's checkpoint
@pytest.mark.parametrize(
    ("case", "data"),
    [("garbage bytes", bytes(range(256)) * 4), ("empty", b""), ("truncated zip", b"PK\x03\x04" + b"\x00" * 40)],
)
def test_evaluate_with_a_bad_checkpoint(capsys, tmp_path, case, data):
    path = _good(tmp_path / "run")
    (path / "checkpoint.pt").write_bytes(data)
    rc, out, err = call(capsys, ["evaluate", path])
    assert_one_line_error(rc, out, err, "evaluate", "checkpoint")


def test_evaluate_without_a_checkpoint(capsys, tmp_path):
    rc, out, err = call(capsys, ["evaluate", _good(tmp_path / "run")])
    assert_one_line_error(rc, out, err, "evaluate", "no checkpoint")


# --------------------------------------------------------------------------- bad arguments
def _bad_values(tmp_path: Path) -> list:
    """(argv, word in the message): values argparse accepts but the command refuses (a UsageError)."""
    run = _good(tmp_path / "good")
    afile = _file(tmp_path, "afile", b"x")
    _file(tmp_path, "bad.toml", b"\xff\x00 not toml [")
    new = tmp_path / "new"
    return [
        (["diagnose", run, "--threshold", "no_such_threshold=1"], "no_such_threshold"),
        (["diagnose", run, "--threshold", "explosion_factor=abc"], "explosion_factor"),
        (["diagnose", run, "--threshold", "garbage"], "threshold|NAME=VALUE"),
        (["diagnose", run, "--config", tmp_path / "missing.toml"], "missing.toml"),
        (["diagnose", run, "--config", tmp_path / "bad.toml"], "bad.toml"),
        (["report", run, "--map", "junk"], "map"),
        (["report", run, "--num-classes", "1"], "num-classes"),
        (["report", run, "-o", afile / "r.html"], "cannot write"),
        (["watch", "--once", run, "--threshold", "no_such_threshold=1"], "no_such_threshold"),
        (["watch", "--once", run, "--threshold", "explosion_factor=abc"], "explosion_factor"),
        (["watch", "--once", run, "--webhook", "ftp://example.invalid/x"], "webhook"),
        (["dashboard", tmp_path / "missing"], "no such folder"),
        (["dashboard", afile], "not a folder"),
        (["dashboard", run, "--port", "99999"], "port"),
        (["dashboard", run, "--port", "0"], "port"),
        (["train", "--run-dir", new, "--lr", "-1"], "lr"),
        (["train", "--run-dir", new, "--lr", "nan"], "lr"),
        (["train", "--run-dir", new, "--epochs", "0"], "epochs"),
        (["train", "--run-dir", new, "--threads", "0"], "threads"),
        (["train", "--run-dir", new, "--dataset", "no_such_dataset"], "no_such_dataset"),
        (["train", "--run-dir", new, "--dataset", f"folder:{tmp_path / 'missing'}"], "folder"),
        (["train", "--run-dir", new, "--init-from", tmp_path / "missing.pt"], "checkpoint"),
        (["train", "--run-dir", run], "already holds a run"),
        (["evaluate", run, "--device", "cuda"], ""),  # no checkpoint is found before a device is needed
        (["sanity", "--overfit-n", "0"], "overfit-n"),
        (["sanity", "--dataset", "no_such_dataset"], "no_such_dataset"),
        (["sanity", "--threads", "0"], "threads"),
        (["search", "--trials", "0", "--dry-run", "--search-dir", new], "trials"),
        (["search", "--workers", "0", "--dry-run", "--search-dir", new], "workers"),
        (["search", "--lr", "abc", "--dry-run", "--search-dir", new], "--lr"),
        (["search", "--reg", "x:y", "--dry-run", "--search-dir", new], "--reg"),
        (["demo", "--no-dashboard", "--root", new, "--port", "99999"], "port"),
        (["demo", "--no-dashboard", "--root", new, "--step-delay", "-1"], "step-delay"),
        (["demo", "--no-dashboard", "--root", _good(tmp_path / "demo" / "healthy").parent], "already holds a run"),
    ]


def test_bad_values_are_one_line_errors(capsys, tmp_path):
    """One test over every case (the fixture run is built once); each failure names its command line."""
    failures = []
    for argv, word in _bad_values(tmp_path):
        rc, out, err = call(capsys, argv)
        try:
            assert_one_line_error(rc, out, err, argv[0], word)
        except AssertionError:
            failures.append(f"babysit {' '.join(map(str, argv))}: rc={rc} stderr={err!r}")
    assert not failures, "\n".join(failures)


def test_train_run_dir_that_is_a_file(capsys, tmp_path, recwarn):
    afile = _file(tmp_path, "afile", b"x")
    rc, out, err = call(capsys, ["train", "--run-dir", afile, "--dataset", "xor", "--model", "mlp", "--samples", "64",
                                 "--epochs", "1", "--no-progress", "--threads", "1"])
    assert_one_line_error(rc, out, err, "train", "afile")
    assert "Errno" not in err[0]
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)], "trained before refusing"


def test_demo_root_that_is_a_file(capsys, tmp_path):
    rc, out, err = call(capsys, ["demo", "--no-dashboard", "--root", _file(tmp_path, "afile", b"x")])
    assert_one_line_error(rc, out, err, "demo", "afile")


def test_demo_step_delay_nan(capsys, tmp_path, monkeypatch):
    import babysit.monitor.demo

    class DeadTrainer:  # what `babysit train --step-delay nan` does: exit 2 at once (without torch's import time)
        returncode = 2

        def __init__(self, *args, **kwargs):
            pass

        def poll(self, *args, **kwargs):
            return 2

        wait = terminate = kill = poll

    monkeypatch.setattr(babysit.monitor.demo.subprocess, "Popen", DeadTrainer)
    rc, out, err = call(capsys, ["demo", "--no-dashboard", "--root", tmp_path / "d", "--step-delay", "nan"])
    assert_one_line_error(rc, out, err, "demo", "step-delay")


# argparse refuses these itself (wrong type, missing argument, bad choice).
WRONG_TYPES = [
    ["diagnose"],
    ["diagnose", "run", "--fail-on", "bogus"],
    ["report", "run", "--num-classes", "ten"],
    ["watch", "--once", "run", "--poll-interval", "-1"],
    ["watch", "--once", "run", "--rate-limit", "zero"],
    ["dashboard", ".", "--port", "abc"],
    ["train", "--epochs", "abc"],
    ["train", "--model", "no_such_model"],
    ["evaluate", "run", "--threads", "x"],
    ["sanity", "--overfit-n", "abc"],
    ["search", "--trials", "abc"],
    ["demo", "--port", "abc"],
]


@pytest.mark.parametrize("argv", WRONG_TYPES, ids=[" ".join(a) for a in WRONG_TYPES])
def test_wrong_argument_types_exit_2_with_the_error_last(capsys, argv):
    rc, out, err = call(capsys, argv)
    assert rc == 2 and out == ""
    assert err and err[-1].startswith(f"babysit {argv[0]}: error: "), err


@pytest.mark.parametrize("argv", [WRONG_TYPES[0], WRONG_TYPES[6]], ids=["diagnose", "train --epochs abc"])
def test_wrong_argument_types_are_exactly_one_line(capsys, argv):
    rc, out, err = call(capsys, argv)
    assert rc == 2 and len(err) == 1, err


def test_unknown_command(capsys):
    rc, out, err = call(capsys, ["no-such-command"])
    assert rc == 2 and out == ""
    assert err[-1].startswith("babysit: error: unknown command"), err


# --------------------------------------------------------------------------- a real terminal
def _subprocess(argv: list) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "babysit", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_no_traceback_reaches_a_terminal(tmp_path):
    run = tmp_path / "run"
    UNREADABLE["invalid UTF-8 meta.json"][0](run)
    junk = _file(tmp_path, "junk.bin", bytes(range(256)) * 8)
    for argv in (["diagnose", run], ["report", junk, "-o", tmp_path / "r.html"]):
        proc = _subprocess(argv)
        assert proc.returncode == 2, proc
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and proc.stdout == "", proc
