"""`babysit watch` end to end: a real watcher process over a real training process.

The training (TRAIN below) uses hooks.Run with on_critical=None, so only the watcher alerts. Waits poll for
the condition with generous timeouts; nothing here asserts how fast anything happened (see
benchmarks/alerts.py for that).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_watch import wait_for as _wait_for

from babysit.monitor import runfile
from babysit.monitor.reader import load_run

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CLI = "import sys; from babysit.monitor.cli import main; sys.exit(main())"
TRAIN = r'''
import argparse, time
import torch
torch.set_num_threads(1)
from babysit import hooks

p = argparse.ArgumentParser()
p.add_argument("run_dir")
p.add_argument("--steps", type=int, default=150)
p.add_argument("--nan-at", type=int, default=0)
p.add_argument("--sleep", type=float, default=0.01)
p.add_argument("--flush", type=float, default=0.1)
a = p.parse_args()
torch.manual_seed(0)
x = torch.randn(256, 2)
y = (x[:, 0] * x[:, 1] > 0).long()
model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with hooks.Run(a.run_dir, num_classes=2, on_critical=None, flush_interval=a.flush) as run:
    run.watch(optimizer=opt)
    for step in range(1, a.steps + 1):
        if step == a.nan_at:  # the fault: one weight becomes NaN, so every loss from here on is NaN
            with torch.no_grad():
                model[0].weight[0, 0] = float("nan")
        idx = torch.randint(0, 256, (32,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.step(loss=loss)
        if run.should_stop:
            break
        time.sleep(a.sleep)
print("trained", run.global_step, run.should_stop, flush=True)
'''


def _env() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("BABYSIT_WEBHOOK", None)
    return env


def wait_for(cond, timeout: float = 90.0):
    return _wait_for(cond, timeout)  # real processes on a busy machine: longer than the in-process tests


class WatchProcess:
    """`babysit watch ...` in a subprocess, its stdout and stderr collected line by line."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLI, "watch", *args], cwd=REPO, env=_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, into), daemon=True).start()
        assert wait_for(lambda: any("Ctrl-C to stop" in line for line in self.err) or self.proc.poll() is not None,
                        60), "watcher did not start"
        assert self.proc.poll() is None, "".join(self.err)

    @staticmethod
    def _pump(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def lines(self, *words: str) -> list[str]:
        return [line for line in list(self.out) if all(w in line for w in words)]

    def interrupt(self) -> int:
        """Ctrl-C: the watcher must exit by itself, with status 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)


@pytest.fixture
def watch_process():
    started: list[WatchProcess] = []

    def start(*args: str) -> WatchProcess:
        w = WatchProcess(*args)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


@pytest.fixture
def train(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    procs: list[subprocess.Popen] = []

    def start(run_dir: Path, *args: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, str(script), str(run_dir), *args], cwd=REPO, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def finished(proc: subprocess.Popen, timeout: float = 180) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def logged(run_dir: Path, rule: str) -> list[dict]:
    p = run_dir / runfile.FINDINGS
    lines = [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []
    return [f for f in lines if f.get("rule") == rule]


# --------------------------------------------------------------------------- the alert


def test_injected_nan_gives_exactly_one_alert_with_its_fix_and_the_webhook_gets_it(tmp_path, watch_process, train):
    bodies: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = tmp_path / "runs"
    root.mkdir()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/SECRET-TOKEN"
        w = watch_process(str(root), "--webhook", url)
        finished(train(root / "a", "--steps", "150", "--nan-at", "60"))
        assert wait_for(lambda: w.lines("nonfinite_loss")), w.text()
        assert wait_for(lambda: w.lines("a finished at step 150")), w.text()  # the watcher saw the whole run
        got = wait_for(lambda: [b for b in bodies if b.get("rule") == "nonfinite_loss"])
        assert w.interrupt() == 0
    finally:
        server.shutdown()
        server.server_close()
    # the terminal: exactly one line, with the first fix of the finding
    alerts = w.lines("nonfinite_loss")
    assert len(alerts) == 1, alerts
    entry = logged(root / "a", "nonfinite_loss")
    assert len(entry) == 1 and entry[0]["source"] == "watch" and entry[0]["step"] == 60
    assert " CRITICAL a nonfinite_loss: " in alerts[0]
    assert alerts[0].rstrip("\n").endswith(f"| fix: {entry[0]['fix'][0]}")
    # the webhook: one Slack-compatible JSON body with the structured finding
    assert len(got) == 1, bodies
    body = got[0]
    assert body["text"].startswith("babysit: CRITICAL a nonfinite_loss") and "| fix: " in body["text"]
    assert body["severity"] == "critical" and body["run"] == "a" and body["step"] == 60
    assert body["fix"] == entry[0]["fix"] and body["finding"]["evidence"]
    # the URL is a secret
    assert "SECRET" not in w.text() and "SECRET" not in (root / "a" / runfile.FINDINGS).read_text()
    assert "Traceback" not in w.text()


@pytest.mark.parametrize("endpoint", ["hangs", "closed"])
def test_dead_webhook_does_not_block_the_terminal(tmp_path, watch_process, train, endpoint):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if endpoint == "hangs":
        listener.listen(16)  # connections complete, and no answer ever comes
    else:
        listener.close()  # connection refused
    try:
        root = tmp_path / "runs"
        root.mkdir()
        # with a 10-minute timeout a webhook call that blocked the watcher would hold back the second alert
        w = watch_process(str(root), "--webhook", f"http://127.0.0.1:{port}/SECRET", "--webhook-timeout", "600")
        # two runs at once: with a hanging endpoint the second alert must not wait for the first delivery
        runs = ["a", "b"] if endpoint == "hangs" else ["a"]
        for p in [train(root / name, "--nan-at", "30") for name in runs]:
            finished(p)
        assert wait_for(lambda: len(w.lines("nonfinite_loss")) == len(runs)), w.text()
        if endpoint == "closed":
            assert wait_for(lambda: "connection failed" in w.text()), w.text()
        assert w.interrupt() == 0  # and Ctrl-C does not wait for a dead endpoint beyond its short deadline
    finally:
        listener.close()
    assert "SECRET" not in w.text()


# --------------------------------------------------------------------------- crashed, stopped


def test_sigkill_of_the_training_is_reported(tmp_path, watch_process, train):
    root = tmp_path / "runs"
    root.mkdir()
    w = watch_process(str(root), "--stall-after", "3")
    proc = train(root / "a", "--steps", "100000", "--sleep", "0.01")

    def steps() -> int:
        try:
            return runfile.read_json(root / "a" / runfile.STATUS).get("step", 0)
        except (OSError, ValueError):
            return 0

    assert wait_for(lambda: steps() > 20, 120)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    alerts = wait_for(lambda: w.lines(" a stalled_run: "))
    assert alerts, w.text()
    assert len(alerts) == 1 and ("crashed" in alerts[0] or "no heartbeat" in alerts[0])
    assert w.interrupt() == 0
    assert logged(root / "a", "stalled_run")


def test_stop_on_critical_stops_a_diverging_run_within_one_flush(tmp_path, watch_process, train):
    root = tmp_path / "runs"
    root.mkdir()
    flush, sleep = 0.2, 0.01
    w = watch_process(str(root), "--stop-on", "critical")
    proc = train(root / "a", "--steps", "100000", "--nan-at", "80", "--sleep", str(sleep), "--flush", str(flush))
    out = finished(proc)  # it ends by itself: the loop saw run.should_stop
    assert "trained" in out and out.split()[-1] == "True"
    status = runfile.read_json(root / "a" / runfile.STATUS)
    assert status["state"] == "stopped" and status["reason"].startswith("nonfinite_loss: ")
    stop = runfile.read_json(root / "a" / runfile.STOP)
    assert stop["by"] == "babysit watch" and stop["reason"] == status["reason"]
    run = load_run(root / "a")
    after = int((run.steps["time"] > stop["time"]).sum())
    # the hooks check the STOP file at every flush: at most one flush interval of steps follows it
    assert after <= flush / sleep + 2, (after, len(run.steps))
    assert wait_for(lambda: w.lines("a stopped at step"))
    assert w.interrupt() == 0
    assert len(w.lines("nonfinite_loss", "CRITICAL")) == 1
