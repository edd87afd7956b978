"""`babysit demo` end to end: both runs progress, the broken one is flagged within a minute, the dashboard
answers, and Ctrl-C stops everything cleanly."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _findings(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.joinpath("findings.jsonl").read_text().splitlines() if line]
    except FileNotFoundError:
        return []


def _epochs(path: Path) -> int:
    try:
        return sum('"type":"epoch"' in line for line in path.joinpath("events.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _dashboard_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_demo_trains_flags_the_broken_run_and_stops_cleanly(tmp_path):
    root = tmp_path / "demo"
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "babysit", "demo", "--root", str(root), "--port", str(port),
         "--step-delay", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 180  # generous: torch imports are slow on a loaded 2-core machine
        flagged = progressed = dashboard = False
        while time.monotonic() < deadline and not (flagged and progressed and dashboard):
            assert proc.poll() is None, proc.stdout.read()
            flagged = flagged or any(f.get("severity") in ("warning", "critical")
                                     for f in _findings(root / "lr-too-high"))
            progressed = progressed or _epochs(root / "healthy") >= 2
            dashboard = dashboard or _dashboard_up(port)
            time.sleep(0.5)
        assert flagged, "the broken run was not flagged"
        assert progressed, "the healthy run did not progress"
        assert dashboard, "the dashboard did not answer"
        # the healthy run is clean so far
        assert not any(f.get("severity") in ("warning", "critical") for f in _findings(root / "healthy"))
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert f"http://127.0.0.1:{port}" in out
    assert "fix:" in out  # the terminal narrates the finding with its fix
    status = json.loads((root / "healthy" / "status.json").read_text())
    assert status["state"] in ("stopped", "finished")
    assert not _dashboard_up(port)
