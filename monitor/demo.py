"""`babysit demo`: two short runs on the bundled digits (one healthy, one with a learning rate far too high) and
the dashboard over them. The terminal narrates what the babysitter finds; Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from babysit.errors import UsageError

__all__ = ["configure", "run", "DEMO_RUNS"]

# name -> extra `babysit train` arguments. The broken run's learning rate is ~400x the healthy one: the lecture's
# "loss is NaN or explodes: the learning rate is too high" case, which the hooks flag and stop.
DEMO_RUNS: dict[str, list[str]] = {
    "healthy": ["--lr", "0.02", "--epochs", "40"],
    "lr-too-high": ["--lr", "8", "--epochs", "40"],
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=None, help="folder for the demo's runs (default runs/demo-<time>)")
    parser.add_argument("--port", type=int, default=8501, help="dashboard port (default 8501)")
    parser.add_argument("--host", default="127.0.0.1", help="dashboard address (default 127.0.0.1)")
    parser.add_argument("--step-delay", type=float, default=0.03,
                        help="seconds to pause per step so the runs can be watched live (default 0.03)")
    parser.add_argument("--no-dashboard", action="store_true", help="only train and narrate")


def _train_command(run_dir: Path, extra: list[str], step_delay: float) -> list[str]:
    return [
        sys.executable, "-m", "babysit", "train", "--dataset", "digits", "--model", "convnet",
        "--run-dir", str(run_dir), "--threads", "1", "--no-progress", "--step-delay", str(step_delay), *extra,
    ]


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGINT first, so trainers close their runs as 'stopped'; then terminate, then kill."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


class _Narrator:
    """Prints each run's progress once per epoch milestone and each new warning/critical with its first fix."""

    def __init__(self, runs: dict[str, Path]):
        self.runs = runs
        self.tailers: dict = {}
        self.seen: set[tuple[str, str, str]] = set()
        self.epochs: dict[str, int] = {}

    def poll(self) -> None:
        from babysit.monitor.reader import RunReadError, RunTailer

        for name, path in self.runs.items():
            if name not in self.tailers:
                try:
                    self.tailers[name] = RunTailer(path)
                except RunReadError:
                    continue  # not started yet
            tailer = self.tailers[name]
            batch = tailer.poll()
            for row in batch.epochs.itertuples(index=False):
                if row.epoch == 1 or row.epoch % 5 == 0:
                    val = getattr(row, "val_acc", float("nan"))
                    print(f"  {name:<12} epoch {row.epoch:>3}  val acc {val:.3f}", flush=True)
            for f in tailer.findings:
                key = (name, str(f.get("rule")), str(f.get("severity")))
                if f.get("severity") in ("warning", "critical") and key not in self.seen:
                    self.seen.add(key)
                    fix = f.get("fix") or []
                    first = fix[0] if isinstance(fix, list) and fix else fix
                    print(f"  {name:<12} {str(f.get('severity')).upper()} {f.get('rule')}: {f.get('message')}",
                          flush=True)
                    if first:
                        print(f"  {'':<12} fix: {first}", flush=True)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    return lines[-1][:300] if lines else f"no output; see {path}"


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, not {args.port}")
    if not (math.isfinite(args.step_delay) and args.step_delay >= 0):
        raise UsageError(f"--step-delay must be a finite number >= 0, not {args.step_delay}")
    root = Path(args.root or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")).expanduser()
    if root.exists() and not root.is_dir():
        raise UsageError(f"--root {root} is a file, not a folder")
    runs = {name: root / name for name in DEMO_RUNS}
    taken = [str(p) for p in runs.values() if (p / "events.jsonl").exists()]
    if taken:
        raise UsageError(f"{taken[0]} already holds a run; pick a new --root")
    root.mkdir(parents=True, exist_ok=True)

    procs: list[subprocess.Popen] = []
    try:
        if not args.no_dashboard:
            from babysit.monitor.dashboard_cli import _check_port, streamlit_command

            _check_port(args.host, args.port)
            env = dict(os.environ, BABYSIT_ROOT=str(root.resolve()), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
            procs.append(subprocess.Popen(streamlit_command(root.resolve(), args.host, args.port), env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            print(f"babysit demo: dashboard at http://{args.host}:{args.port}  (Ctrl-C stops everything)", flush=True)
        print(f"babysit demo: training two runs under {root}:", flush=True)
        print("  healthy      lr 0.02: should learn to ~97% val accuracy", flush=True)
        print("  lr-too-high  lr 8: the loss blows up; the babysitter flags it with the fix and stops it", flush=True)
        logs = {name: root / f"{name}.log" for name in runs}  # a trainer that fails says why here
        trainers = [
            subprocess.Popen(_train_command(path, DEMO_RUNS[name], args.step_delay),
                             stdout=subprocess.DEVNULL, stderr=open(logs[name], "wb"))  # noqa: SIM115
            for name, path in runs.items()
        ]
        procs.extend(trainers)
        narrator = _Narrator(runs)
        while any(p.poll() is None for p in trainers):
            narrator.poll()
            time.sleep(0.5)
        narrator.poll()
        failed = [(name, p.returncode) for name, p in zip(runs, trainers, strict=True) if p.returncode]
        if failed:
            name, code = failed[0]
            raise UsageError(f"the {name} trainer failed (exit {code}): {_last_line(logs[name])}")
        print("babysit demo: both runs are done. Diagnose them any time:", flush=True)
        for name, path in runs.items():
            status = narrator.tailers[name].status if name in narrator.tailers else {}
            reason = f" ({status['reason']})" if status.get("reason") else ""
            print(f"  {name:<12} {status.get('state', 'not started')}{reason}", flush=True)
            print(f"  {'':<12} babysit diagnose {path}", flush=True)
        if args.no_dashboard:
            return 0
        print(f"babysit demo: the dashboard stays up at http://{args.host}:{args.port}; Ctrl-C to stop.", flush=True)
        while procs[0].poll() is None:
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        print("\nbabysit demo: stopping.", flush=True)
        return 0
    finally:
        _stop(procs)
