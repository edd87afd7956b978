"""`babysit dashboard`: safe defaults (localhost, headless, no usage stats) and one-line errors."""

from __future__ import annotations

import argparse
import socket
import subprocess

import pytest

from babysit.monitor import cli, dashboard_cli


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    dashboard_cli.configure(parser)
    return parser.parse_args(list(argv))


def test_defaults_are_localhost_port_8501_and_runs():
    args = _args()
    assert (args.root, args.port, args.host) == ("runs", 8501, "127.0.0.1")


def test_the_server_is_local_headless_and_sends_no_usage_stats(tmp_path):
    cmd = dashboard_cli.streamlit_command(tmp_path, "127.0.0.1", 8600)
    flags = dict(zip(cmd[5:-2:2], cmd[6:-2:2], strict=True))
    assert cmd[2:5] == ["streamlit", "run", str(dashboard_cli.APP)] and dashboard_cli.APP.is_file()
    assert flags["--server.address"] == "127.0.0.1" and flags["--server.port"] == "8600"
    assert flags["--server.headless"] == "true" and flags["--browser.gatherUsageStats"] == "false"
    assert flags["--server.fileWatcherType"] == "none"
    assert cmd[-2:] == ["--", str(tmp_path)]


def test_run_prints_the_url_and_starts_streamlit_with_the_root(tmp_path, monkeypatch, capsys):
    started = {}

    class FakePopen:
        def __init__(self, cmd, env, stdout):
            started.update(cmd=cmd, env=env)

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    port = _free_port()
    assert cli.main(["dashboard", str(tmp_path), "--port", str(port)]) == 0
    assert f"http://127.0.0.1:{port}" in capsys.readouterr().out
    assert started["env"]["BABYSIT_ROOT"] == str(tmp_path.resolve())
    assert "--server.address" in started["cmd"] and "127.0.0.1" in started["cmd"]


@pytest.mark.parametrize("argv, message", [
    (["/no/such/folder"], "no such folder"),
    (["{root}", "--port", "0"], "--port must be between"),
    (["{root}", "--port", "70000"], "--port must be between"),
    (["{root}", "--host", "no.such.host.invalid"], "cannot resolve"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    argv = [a.replace("{root}", str(tmp_path)) for a in argv]
    assert cli.main(["dashboard", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_a_port_in_use_is_a_clear_error(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["dashboard", str(tmp_path), "--port", str(port)]) == 2
    assert f"port {port} is already in use" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stopping_the_command_stops_the_server(tmp_path):
    """A SIGTERM to `babysit dashboard` (a service manager, a test) must not leave Streamlit running."""
    import os
    import signal
    import sys
    import time
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "babysit", "dashboard", str(tmp_path), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(dashboard_cli.APP.parents[2])))

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                return r.read().strip() == b"ok"
        except OSError:
            return False

    try:
        deadline = time.monotonic() + 90
        while not healthy():
            assert proc.poll() is None and time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        with socket.socket() as s:  # nobody listens on the port any more: the server went with the command
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of our health checks is fine
            s.bind(("127.0.0.1", port))
    finally:
        if proc.poll() is None:
            proc.kill()
