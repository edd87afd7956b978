"""`babysit dashboard [RUNS_ROOT] [--port 8501] [--host 127.0.0.1]`: the live dashboard over a folder of runs.

Starts `streamlit run monitor/dashboard/app.py` as a child process: bound to localhost unless told otherwise,
headless (no browser is opened), no usage statistics sent, no file watcher (the app polls the runs itself).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from babysit.errors import UsageError

__all__ = ["configure", "run", "streamlit_command", "APP"]

APP = Path(__file__).resolve().parent / "dashboard" / "app.py"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", nargs="?", default="runs", metavar="RUNS_ROOT",
                        help="folder holding run directories, or one run directory (default: runs)")
    parser.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes your runs)")


def streamlit_command(root: Path, host: str, port: int) -> list[str]:
    """The command line that serves the app (kept separate so it can be tested without starting a server)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false",
        "--global.developmentMode", "false",
        "--client.toolbarMode", "minimal",
        "--client.showErrorDetails", "false",
        "--", str(root),
    ]


def _check_port(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise UsageError(f"cannot resolve --host {host!r}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} is already in use on {host}; pick another with --port") from None
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def run(args: argparse.Namespace) -> int:
    root = Path(args.root).expanduser()
    if not root.exists():
        raise UsageError(f"no such folder: {root} (train a run into it first, e.g. babysit train --run-dir "
                         f"{root / 'first'})")
    if not root.is_dir():
        raise UsageError(f"not a folder: {root}")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, not {args.port}")
    try:
        import streamlit  # noqa: F401 - fail here with one line rather than in the child
    except ImportError:
        raise UsageError("streamlit is not installed: pip install streamlit") from None
    _check_port(args.host, args.port)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    if args.host in ("0.0.0.0", "::"):
        print("babysit dashboard: warning: listening on every interface: anyone who can reach this machine can "
              "read these runs", file=sys.stderr)
        shown = "localhost"
    print(f"babysit dashboard: http://{shown}:{args.port}  (runs under {root.resolve()}; Ctrl-C to stop)", flush=True)
    env = dict(os.environ, BABYSIT_ROOT=str(root.resolve()), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    proc = subprocess.Popen(streamlit_command(root.resolve(), args.host, args.port), env=env,
                            stdout=subprocess.DEVNULL)
    # The server must not outlive this command: on Ctrl-C or a SIGTERM (a service manager, a test), stop it.
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: nobody can send us SIGTERM handling anyway
        previous = None
    try:
        return proc.wait()
    except _Terminated:
        return 128 + signal.SIGTERM
    finally:
        _stop(proc)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Terminated(Exception):
    pass


def _on_sigterm(signum, frame) -> None:
    raise _Terminated


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
