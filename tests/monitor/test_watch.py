"""`babysit watch` in-process: dedup, escalation, the findings log, rate limit, stop, observers, sinks.

Run directories are written here with the run format's own helpers (no torch); the end-to-end tests with
real training and watcher processes are in test_watch_process.py.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from babysit.monitor import runfile
from babysit.monitor.sinks import Alert, ExecSink, TerminalSink, WebhookSink
from babysit.monitor.watcher import Watcher, WatchError

# --------------------------------------------------------------------------- helpers


def wait_for(cond, timeout: float = 30.0, every: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(every)
    return cond()


def make_run(path: Path, state: str = "running", pid: int | None = None, heartbeat: float | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    runfile.write_json_atomic(path / runfile.META, {"schema": 1, "run_id": path.name, "num_classes": 10})
    set_status(path, state, pid=pid, heartbeat=heartbeat)
    (path / runfile.EVENTS).touch()
    return path


def set_status(path: Path, state: str, pid: int | None = None, heartbeat: float | None = None, **extra) -> None:
    runfile.write_json_atomic(path / runfile.STATUS, {
        "schema": 1, "state": state, "step": 0, "epoch": 0, "heartbeat": heartbeat or time.time(),
        "pid": os.getpid() if pid is None else pid, "host": socket.gethostname(), **extra,
    })


_step = {}


def append_losses(path: Path, losses: list[float]) -> None:
    start = _step.get(path, 0)
    steps = list(range(start + 1, start + 1 + len(losses)))
    _step[path] = steps[-1]
    rec = {"type": "steps", "step": steps, "time": [time.time()] * len(steps), "loss": losses, "lr": [0.1] * len(steps)}
    with open(path / runfile.EVENTS, "ab") as f:
        f.write(runfile.dumps_line(rec).encode())


def append_finding(path: Path, finding: dict) -> None:
    with open(path / runfile.FINDINGS, "ab") as f:
        f.write(runfile.dumps_line(finding).encode())


def log_lines(path: Path) -> list[dict]:
    p = path / runfile.FINDINGS
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def finding(rule: str, severity: str, step: int = 1) -> dict:
    return {"rule": rule, "title": rule, "severity": severity, "step": step, "epoch": 1,
            "message": f"{rule} {severity} at step {step}", "evidence": {}, "fix": [f"fix {rule}", "second fix"]}


class FakeDiagnoser:
    """Scripted rules: NaN loss -> critical nonfinite_loss; loss > 10 warning, > 100 critical loss_explosion.

    Like the real OnlineDiagnoser it reports a rule again only when its severity rises.
    """

    def __init__(self, meta, thresholds=None, run_dir=None):
        self.reported: dict[str, int] = {}

    def update(self, batch, status=None):
        out = []
        for step, loss in zip(batch.steps["step"], batch.steps["loss"], strict=True):
            if math.isnan(loss):
                f = finding("nonfinite_loss", "critical", int(step))
            elif loss > 100:
                f = finding("loss_explosion", "critical", int(step))
            elif loss > 10:
                f = finding("loss_explosion", "warning", int(step))
            else:
                continue
            rank = ["info", "warning", "critical"].index(f["severity"])
            if rank > self.reported.get(f["rule"], -1):
                self.reported[f["rule"]] = rank
                out.append(f)
        return out


class Recorder:
    """A sink that keeps what it was given."""

    def __init__(self, min_severity: str = "info"):
        self.alerts: list[Alert] = []
        self.notes: list[str] = []
        self.min_severity = min_severity
        self.closed = False

    def emit(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def close(self, deadline=None) -> None:
        self.closed = True

    def rules(self) -> list[tuple[str, str, str]]:
        return [(a.run, a.rule, a.severity) for a in self.alerts]


def watcher(targets, rec: Recorder, **kw) -> Watcher:
    kw.setdefault("diagnoser_factory", FakeDiagnoser)
    kw.setdefault("errors", io.StringIO())
    return Watcher([str(t) for t in targets], sinks=[rec], **kw)


# --------------------------------------------------------------------------- announce once


def test_duplicate_and_missed_events_give_one_alert(tmp_path):
    run = make_run(tmp_path / "runs" / "a")
    rec = Recorder()
    w = watcher([tmp_path / "runs"], rec, backstop=3600)
    w.scan()
    append_losses(run, [2.3, 2.2, math.nan])
    for _ in range(5):  # the same change reported five times
        w.notify(str(run / runfile.EVENTS))
    w.tick()
    w.notify(str(run / runfile.EVENTS))
    w.tick()
    assert rec.rules() == [("a", "nonfinite_loss", "critical")]
    append_losses(run, [math.nan, math.nan])  # an event the observer never reported: the backstop reads it
    w.tick(full=True)
    w.tick(full=True)
    assert rec.rules() == [("a", "nonfinite_loss", "critical")]
    w.close()
    assert [f["rule"] for f in log_lines(run)] == ["nonfinite_loss"]


def test_missed_event_is_caught_by_backstop(tmp_path):
    run = make_run(tmp_path / "a")
    rec = Recorder()
    w = watcher([run], rec, backstop=3600)
    w.scan()
    append_losses(run, [2.3, math.nan])
    w.tick()
    assert rec.alerts == []  # nobody said anything changed
    w.tick(full=True)
    assert rec.rules() == [("a", "nonfinite_loss", "critical")]
    w.close()


def test_escalation_is_announced_again_only_upwards(tmp_path):
    run = make_run(tmp_path / "a")
    rec = Recorder()
    w = watcher([run], rec)
    w.scan()
    for losses in ([2.3, 20.0], [30.0], [200.0], [20.0, 300.0]):
        append_losses(run, losses)
        w.notify(str(run / runfile.EVENTS))
        w.tick()
    assert rec.rules() == [("a", "loss_explosion", "warning"), ("a", "loss_explosion", "critical")]
    assert rec.alerts[1].previous == "warning" and "(was warning)" in rec.alerts[1].text()
    w.close()
    assert [(f["rule"], f["severity"], f["source"]) for f in log_lines(run)] == [
        ("loss_explosion", "warning", "watch"), ("loss_explosion", "critical", "watch")]


def test_hooks_findings_are_announced_but_not_logged_twice(tmp_path):
    run = make_run(tmp_path / "a")
    rec = Recorder()
    w = watcher([run], rec)
    w.scan()
    append_losses(run, [2.3, math.nan])
    append_finding(run, {**finding("nonfinite_loss", "critical", 2), "source": "hooks"})
    append_finding(run, {**finding("init_loss_mismatch", "info", 1), "source": "hooks"})
    w.notify(str(run / runfile.EVENTS))
    w.tick()
    assert sorted(rec.rules()) == [("a", "init_loss_mismatch", "info"), ("a", "nonfinite_loss", "critical")]
    w.close()
    assert [(f["rule"], f["source"]) for f in log_lines(run)] == [("nonfinite_loss", "hooks"),
                                                                    ("init_loss_mismatch", "hooks")]


def test_hooks_finding_arriving_during_the_grace_period_is_not_duplicated(tmp_path):
    run = make_run(tmp_path / "a")
    rec = Recorder()
    w = watcher([run], rec, log_grace=0.3)
    w.scan()
    append_losses(run, [2.3, math.nan])
    w.notify(str(run / runfile.EVENTS))
    w.tick()  # the watcher's rules see the NaN first and announce it
    assert rec.rules() == [("a", "nonfinite_loss", "critical")]
    append_finding(run, {**finding("nonfinite_loss", "critical", 2), "source": "hooks"})  # the hooks, a bit later
    time.sleep(0.35)
    w.tick()
    w.close()
    assert [(f["rule"], f["source"]) for f in log_lines(run)] == [("nonfinite_loss", "hooks")]
    assert len(rec.alerts) == 1


def test_watcher_findings_are_logged_once_across_restarts(tmp_path):
    run = make_run(tmp_path / "a")
    append_losses(run, [2.3, math.nan])
    for _ in range(2):  # a second watcher announces again (it has not) but does not log again
        rec = Recorder()
        w = watcher([run], rec, log_grace=0)
        w.scan()
        w.close()
        assert rec.rules() == [("a", "nonfinite_loss", "critical")]
    assert [(f["rule"], f["source"], f["run"]) for f in log_lines(run)] == [("nonfinite_loss", "watch", "a")]


def test_no_log_leaves_findings_file_alone(tmp_path):
    run = make_run(tmp_path / "a")
    append_losses(run, [math.nan])
    rec = Recorder()
    w = watcher([run], rec, log=False)
    w.scan()
    w.close()
    assert len(rec.alerts) == 1 and not (run / runfile.FINDINGS).exists()


def test_rate_limit_holds_back_a_flood_and_summarizes_it(tmp_path):
    root = tmp_path / "runs"
    runs = [make_run(root / f"r{i}") for i in range(8)]
    rec = Recorder()
    w = watcher([root], rec, rate_limit=3, rate_window=0.3)
    w.scan()
    for r in runs:
        append_losses(r, [math.nan])
        w.notify(str(r / runfile.EVENTS))
    w.tick()
    assert len(rec.alerts) == 3
    assert rec.notes == []
    time.sleep(0.35)
    w.tick()
    held = [n for n in rec.notes if "held back" in n]
    assert len(held) == 1 and "nonfinite_loss: 5 more alert(s)" in held[0]
    w.close()
    assert all(len(log_lines(r)) == 1 for r in runs)  # the log of every run still has its finding


def test_ended_runs_are_quiet_when_watching_and_announced_with_once(tmp_path):
    old = make_run(tmp_path / "runs" / "old", state="finished")
    append_losses(old, [math.nan])
    rec = Recorder()
    w = watcher([tmp_path / "runs"], rec)
    w.scan()
    assert rec.alerts == []
    short = make_run(tmp_path / "runs" / "short", state="finished")  # appeared (and ended) after the start
    append_losses(short, [math.nan])
    w.tick(full=True)
    assert rec.rules() == [("short", "nonfinite_loss", "critical")]
    w.close()
    rec = Recorder()
    w = watcher([tmp_path / "runs"], rec, announce_ended=True)
    assert w.evaluate_once() == 2
    assert sorted(rec.rules()) == [("old", "nonfinite_loss", "critical"), ("short", "nonfinite_loss", "critical")]
    w.close()


def test_bad_targets_are_one_line_errors(tmp_path):
    with pytest.raises(WatchError, match="no such directory"):
        watcher([tmp_path / "nope"], Recorder())
    (tmp_path / "file").write_text("x")
    with pytest.raises(WatchError, match="not a directory"):
        watcher([tmp_path / "file"], Recorder())
    with pytest.raises(WatchError, match="stop_on"):
        watcher([tmp_path], Recorder(), stop_on="sometimes")


def test_unreadable_run_is_reported_once_and_skipped(tmp_path):
    root = tmp_path / "runs"
    bad = make_run(root / "bad")
    runfile.write_json_atomic(bad / runfile.META, {"schema": 99})
    good = make_run(root / "good")
    append_losses(good, [math.nan])
    errors = io.StringIO()
    rec = Recorder()
    w = watcher([root], rec, errors=errors)
    w.scan()
    w.tick(full=True)
    w.close()
    assert rec.rules() == [("good", "nonfinite_loss", "critical")]
    assert errors.getvalue().count("upgrade babysit") == 1
    assert str(bad) in w.bad


# --------------------------------------------------------------------------- --once (the CLI, in-process)


def test_once_exit_status_follows_diagnose(tmp_path, capsys):
    from babysit.monitor.cli import main

    root = tmp_path / "runs"
    bad = make_run(root / "bad", state="finished")
    append_losses(bad, [2.3, 2.25, math.nan])
    good = make_run(root / "good", state="finished")
    append_losses(good, [2.3 - 0.01 * i for i in range(30)])

    assert main(["watch", "--once", str(root)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].split()[1:4] == ["CRITICAL", "bad", "nonfinite_loss:"] and "| fix: " in out[0]
    assert main(["watch", "--once", str(good)]) == 0
    assert main(["watch", "--once", "--no-log", str(root)]) == 1  # again: announced again, never logged twice
    assert [f["source"] for f in log_lines(bad)] == ["watch"]
    capsys.readouterr()
    for args in ([str(tmp_path / "missing")], ["--threshold", "no_such_threshold=1", str(root)],
                 ["--threshold", "explosion_factor=lots", str(root)], ["--webhook", "ftp://SECRET", str(root)]):
        status = main(["watch", "--once", *args])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and "Traceback" not in err and "SECRET" not in err, err


def test_once_with_an_unreadable_run_is_bad_input(tmp_path, capsys):
    from babysit.monitor.cli import main

    run = make_run(tmp_path / "a")
    runfile.write_json_atomic(run / runfile.META, {"schema": 99})
    (run / runfile.EVENTS).unlink()
    assert main(["watch", "--once", str(run)]) == 2
    assert "upgrade babysit" in capsys.readouterr().err


# --------------------------------------------------------------------------- stop


def test_stop_on_critical_writes_the_stop_file(tmp_path):
    run = make_run(tmp_path / "a")
    rec = Recorder()
    w = watcher([run], rec, stop_on="critical")
    w.scan()
    append_losses(run, [2.3, 20.0])  # a warning does not stop
    w.tick(full=True)
    assert not (run / runfile.STOP).exists()
    append_losses(run, [math.nan])
    w.tick(full=True)
    stop = json.loads((run / runfile.STOP).read_text())
    assert stop["by"] == "babysit watch" and stop["reason"].startswith("nonfinite_loss: ")
    assert isinstance(stop["time"], float)
    assert any("asked the run to stop" in n for n in rec.notes)
    w.close()


def test_stop_is_never_asked_of_an_ended_run_or_for_a_stall(tmp_path):
    ended = make_run(tmp_path / "ended", state="finished")
    append_losses(ended, [math.nan])
    rec = Recorder()
    w = watcher([ended], rec, stop_on="warning", announce_ended=True)
    w.evaluate_once()
    w.close()
    assert rec.alerts and not (ended / runfile.STOP).exists()

    class Stalls:
        def __init__(self, *args):
            self.done = False

        def update(self, batch, status=None):
            found, self.done = ([] if self.done else [finding("stalled_run", "warning")]), True
            return found

    live = make_run(tmp_path / "live")
    rec = Recorder()
    w = watcher([live], rec, stop_on="warning", diagnoser_factory=Stalls)
    w.scan()
    w.close()
    assert rec.rules() == [("live", "stalled_run", "warning")] and not (live / runfile.STOP).exists()


# --------------------------------------------------------------------------- stalled and crashed (real rules)


def test_crashed_run_is_reported_by_the_rules(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is gone (and reaped)
    run = make_run(tmp_path / "a")
    rec = Recorder()
    w = Watcher([str(run)], sinks=[rec], errors=io.StringIO())
    w.scan()
    assert rec.alerts == []
    set_status(run, "running", pid=dead.pid)
    w.tick(full=True)
    assert rec.rules() == [("a", "stalled_run", "critical")]
    assert rec.alerts[0].finding["evidence"]["state"] == "crashed"
    w.close()


def test_stalled_run_is_reported_after_stall_after(tmp_path):
    run = make_run(tmp_path / "a", heartbeat=time.time())
    rec = Recorder()
    w = Watcher([str(run)], sinks=[rec], stall_after=0.5, errors=io.StringIO())
    w.scan()
    assert rec.alerts == []
    time.sleep(0.6)
    w.tick(full=True)
    assert rec.rules() == [("a", "stalled_run", "warning")]
    w.close()


# --------------------------------------------------------------------------- observers


@contextlib.contextmanager
def looping(w: Watcher):
    """The watcher's loop in a thread, stopped and the watcher closed on the way out."""
    stop = threading.Event()
    t = threading.Thread(target=w.run_forever, args=(stop,), daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        w.wake()
        t.join(10)
        w.close()


@pytest.mark.parametrize("polling", [False, True])
def test_new_runs_under_the_root_are_picked_up(tmp_path, polling):
    root = tmp_path / "runs"
    root.mkdir()
    rec = Recorder()
    w = watcher([root], rec, polling=polling, poll_interval=0.1, backstop=3600)
    w.start()
    assert w.mode == ("polling" if polling else "inotify")
    with looping(w):
        run = make_run(root / "group" / "new")
        append_losses(run, [2.3, math.nan])
        assert wait_for(lambda: rec.alerts), "no alert for a run created after the watcher started"
        assert rec.rules() == [("group/new", "nonfinite_loss", "critical")]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EMFILE])
def test_inotify_refusal_falls_back_to_polling(tmp_path, monkeypatch, code):
    from watchdog.observers.inotify import InotifyObserver

    def refuse(self, *args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(InotifyObserver, "schedule", refuse)
    run = make_run(tmp_path / "runs" / "a")
    errors = io.StringIO()
    rec = Recorder()
    w = watcher([tmp_path / "runs"], rec, poll_interval=0.1, backstop=3600, errors=errors)
    w.start()
    assert w.mode == "polling"
    message = errors.getvalue()
    assert message.count("\n") == 1 and "inotify" in message and "falling back to polling every 0.1 s" in message
    with looping(w):
        append_losses(run, [2.3, math.nan])
        assert wait_for(lambda: rec.alerts), "polling fallback never delivered the alert"
        assert rec.rules() == [("a", "nonfinite_loss", "critical")]


def test_an_idle_watcher_stays_idle(tmp_path):
    """Its own reads raise inotify events (open, close): they must not turn into a busy loop of re-reads."""
    run = make_run(tmp_path / "a")
    append_losses(run, [2.3])
    w = watcher([run], Recorder(), backstop=3600)
    w.start()
    ticks, polls = [], []
    real_tick, real_poll = w.tick, w.runs[str(run)].tailer.poll
    w.tick = lambda full=False: ticks.append(1) or real_tick(full)
    w.runs[str(run)].tailer.poll = lambda: polls.append(1) or real_poll()
    with looping(w):
        w.tick(full=True)  # reads status.json and friends
        time.sleep(0.5)
        ticks.clear()
        polls.clear()
        time.sleep(1.0)
        assert polls == [] and len(ticks) <= 1
        append_losses(run, [2.2])  # and it still wakes for real data
        assert wait_for(lambda: polls)


# --------------------------------------------------------------------------- sinks


def an_alert(tmp_path: Path, severity: str = "critical") -> Alert:
    return Alert("exp1", tmp_path, finding("nonfinite_loss", severity, 212))


def test_terminal_line_is_concise_and_coloured_only_when_asked(tmp_path):
    plain = io.StringIO()
    TerminalSink(plain).emit(an_alert(tmp_path))  # StringIO is not a TTY: no colour
    line = plain.getvalue()
    assert line.count("\n") == 1 and "\033[" not in line
    assert "CRITICAL exp1 nonfinite_loss: nonfinite_loss critical at step 212 | fix: fix nonfinite_loss" in line
    assert "second fix" not in line
    coloured = io.StringIO()
    TerminalSink(coloured, color=True).emit(an_alert(tmp_path))
    assert "\033[1;31m" in coloured.getvalue() and "fix: fix nonfinite_loss" in coloured.getvalue()


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server = self.server
        server.bodies.append(json.loads(body))
        code = server.codes.pop(0) if server.codes else 200
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def hook_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.bodies, server.codes = [], []
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def test_webhook_posts_slack_json_with_retries(tmp_path, hook_server):
    hook_server.codes = [500, 503]  # two failures, then 200
    url = f"http://127.0.0.1:{hook_server.server_address[1]}/services/T000/SECRET-TOKEN"
    errors = io.StringIO()
    sink = WebhookSink(url, timeout=5, retries=3, backoff=0.01, errors=errors)
    sink.emit(an_alert(tmp_path))
    assert wait_for(lambda: sink.delivered == 1)
    sink.close(time.monotonic() + 5)
    assert len(hook_server.bodies) == 3
    body = hook_server.bodies[-1]
    assert body["text"].startswith("babysit: CRITICAL exp1 nonfinite_loss")
    assert "fix: fix nonfinite_loss" in body["text"]
    assert body["rule"] == "nonfinite_loss" and body["severity"] == "critical" and body["run"] == "exp1"
    assert body["fix"] == ["fix nonfinite_loss", "second fix"] and body["finding"]["step"] == 212
    assert "SECRET" not in repr(sink) and "SECRET" not in errors.getvalue()


def test_webhook_failure_is_reported_without_the_url(tmp_path, hook_server):
    hook_server.codes = [404]  # a client error is not retried
    url = f"http://127.0.0.1:{hook_server.server_address[1]}/SECRET-TOKEN"
    errors = io.StringIO()
    sink = WebhookSink(url, retries=3, backoff=0.01, errors=errors)
    sink.emit(an_alert(tmp_path))
    assert wait_for(lambda: sink.failed == 1)
    sink.close(time.monotonic() + 5)
    assert len(hook_server.bodies) == 1
    said = errors.getvalue()
    assert "HTTP 404" in said and "SECRET" not in said and "127.0.0.1" not in said
    with pytest.raises(ValueError) as e:
        WebhookSink("ftp://host/SECRET-TOKEN")
    assert "SECRET" not in str(e.value)


def test_dead_webhook_never_delays_emit_and_close_respects_its_deadline(tmp_path):
    listener = socket.socket()  # accepts connections and never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        sink = WebhookSink(f"http://127.0.0.1:{listener.getsockname()[1]}/x", timeout=30, retries=5,
                           errors=io.StringIO())
        for _ in range(50):
            sink.emit(an_alert(tmp_path))  # queued: returns at once
        assert sink.pending() >= 49
        sink.close(time.monotonic() + 0.2)  # returns once the deadline passes, with the request still hanging
        assert sink.delivered == 0
    finally:
        listener.close()


def test_exec_gets_the_finding_on_stdin_and_is_killed_after_its_timeout(tmp_path):
    out = tmp_path / "got.json"
    errors = io.StringIO()
    sink = ExecSink(f'cat > "{out}"; echo "$BABYSIT_RULE $BABYSIT_SEVERITY" >> "{out}.env"', errors=errors)
    sink.emit(an_alert(tmp_path))
    assert wait_for(lambda: sink.ran == 1)
    sink.close(time.monotonic() + 5)
    got = json.loads(out.read_text())
    assert got["rule"] == "nonfinite_loss" and got["run"] == "exp1" and got["source"] == "watch"
    assert Path(f"{out}.env").read_text().strip() == "nonfinite_loss critical"

    slow = ExecSink("sleep 30", timeout=0.2, errors=errors)
    slow.emit(an_alert(tmp_path))
    assert wait_for(lambda: "killed after" in errors.getvalue())
    slow.close(time.monotonic() + 5)


def test_sink_min_severity_and_a_failing_sink(tmp_path):
    run = make_run(tmp_path / "a")

    class Broken(Recorder):
        def emit(self, alert):
            raise RuntimeError("boom")

    everything, serious, errors = Recorder(), Recorder(min_severity="critical"), io.StringIO()
    w = Watcher([str(run)], sinks=[Broken(), everything, serious], diagnoser_factory=FakeDiagnoser, errors=errors)
    w.scan()
    append_losses(run, [20.0])
    w.tick(full=True)
    append_losses(run, [math.nan])
    w.tick(full=True)
    w.close()
    assert [a.rule for a in everything.alerts] == ["loss_explosion", "nonfinite_loss"]
    assert [a.rule for a in serious.alerts] == ["nonfinite_loss"]
    assert "Broken failed: RuntimeError" in errors.getvalue()


def test_rate_limit_is_a_sliding_window_per_rule():
    from babysit.monitor.ratelimit import RateLimit

    now = [0.0]
    rate = RateLimit(2, 10.0, clock=lambda: now[0])
    assert [rate.allow("nan", r) for r in ("a", "b", "c", "d")] == [True, True, False, False]
    assert rate.allow("flat", "a")  # another rule has its own window
    assert rate.due() == [] and rate.next_due() == 10.0
    now[0] = 10.0
    assert rate.due() == [("nan", ["c", "d"])]  # the window freed: one summary, counted as one alert
    assert rate.allow("nan", "e") and not rate.allow("nan", "f")
    assert rate.due(force=True) == [("nan", ["f"])] and rate.next_due() is None
    assert "2 more alert(s)" in rate.summary("nan", ["c", "d"])
