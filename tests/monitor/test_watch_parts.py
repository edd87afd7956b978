"""The parts of `babysit watch`, each alone: observe, diagnose, announce, and the sink wrappers (Fanout, the
rate limit, --stop-on). The composed Watcher is tested in test_watch.py, the real processes in
test_watch_process.py. Run directories are written with the run format's own helpers (test_watch.py's)."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_watch import (
    FakeDiagnoser,
    Recorder,
    append_finding,
    append_losses,
    finding,
    log_lines,
    make_run,
    set_status,
    wait_for,
)

from babysit.monitor import runfile
from babysit.monitor.ratelimit import RateLimit, RateLimited
from babysit.monitor.reader import RunTailer
from babysit.monitor.sinks import Alert, Fanout
from babysit.monitor.watch_announce import Announcer, LogQueue, News
from babysit.monitor.watch_diagnose import RunDiagnosis, Unreadable, stall_thresholds
from babysit.monitor.watch_observe import Observe, WatchError, discover, split_targets
from babysit.monitor.watch_stop import StopOn
from babysit.monitor.watcher import Watcher


class Feed:
    """What the diagnose part hands on, in order."""

    def __init__(self):
        self.items: list[tuple] = []

    def finding(self, f: dict, from_log: bool = False) -> None:
        self.items.append(("finding", f["rule"], f["severity"], from_log))

    def note(self, text: str) -> None:
        self.items.append(("note", text))


def alert(run_dir: Path, rule: str = "nonfinite_loss", severity: str = "critical", run: str | None = None) -> Alert:
    return Alert(run or run_dir.name, run_dir, finding(rule, severity))


# --------------------------------------------------------------------------- observe


def test_observe_turns_events_into_dirty_runs_rescans_and_backstops(tmp_path):
    run = tmp_path / "a"
    obs = Observe([tmp_path], [], {str(run)}, backstop=3600)
    for name in (runfile.EVENTS, runfile.EVENTS, f"{runfile.SNAPSHOTS}/w.npy"):  # duplicates cost nothing
        obs.notify(str(run / name))
    due = obs.take()
    assert due.dirty == {str(run)} and not due.rescan and not due.backstop
    assert obs.take().dirty == set()  # each event is taken once
    obs.notify(str(tmp_path / "new" / runfile.META))  # not a known run: maybe a new one
    due = obs.take()
    assert due.rescan and due.dirty == set()
    due = obs.take(full=True)
    assert due.backstop and due.rescan and obs.next_backstop > due.now + 3000


@pytest.mark.parametrize("polling", [False, True])
def test_observe_sees_real_appends_and_new_runs(tmp_path, polling):
    root = tmp_path / "runs"
    run = make_run(root / "a")
    obs = Observe([root], [], {str(run)}, polling=polling, poll_interval=0.1, backstop=3600)
    obs.start()
    seen, rescans = set(), []

    def collect() -> None:
        due = obs.take()
        seen.update(due.dirty)
        rescans.append(due.rescan)

    try:
        assert obs.mode == ("polling" if polling else "inotify")
        append_losses(run, [2.3])
        assert wait_for(lambda: collect() or str(run) in seen), "an append was never reported"
        make_run(root / "b")
        assert wait_for(lambda: collect() or any(rescans)), "a new run never asked for a rescan"
    finally:
        obs.stop()


def test_targets_split_into_roots_and_runs_and_discovery_names_them(tmp_path):
    run = make_run(tmp_path / "single")
    root = tmp_path / "runs"
    make_run(root / "group" / "x")
    roots, runs = split_targets([str(root), str(run)])
    assert roots == [root] and runs == [run]
    assert [name for _, name in discover(roots, runs)] == ["single", "group/x"]
    (tmp_path / "file").write_text("x")
    for bad, why in (("nope", "no such directory"), ("file", "not a directory")):
        with pytest.raises(WatchError, match=why):
            split_targets([str(tmp_path / bad)])


# --------------------------------------------------------------------------- diagnose


def test_diagnosis_reads_each_record_once_logged_findings_first_then_the_rules(tmp_path):
    run = make_run(tmp_path / "a")
    d = RunDiagnosis(run, "a", RunTailer(run), FakeDiagnoser(None))
    feed = Feed()
    append_losses(run, [2.3, math.nan])
    append_finding(run, {**finding("init_loss_mismatch", "info"), "source": "hooks"})
    assert d.read(feed) is True
    assert feed.items == [("finding", "init_loss_mismatch", "info", True),
                          ("finding", "nonfinite_loss", "critical", False)]
    assert d.read(feed) is False and len(feed.items) == 2  # nothing changed on disk: nothing read
    set_status(run, "finished", reason="done")
    d.read(feed)
    assert feed.items[-1] == ("note", "a finished at step 0: done") and not d.running


def test_diagnosis_liveness_check_gives_the_real_rules_a_stall(tmp_path):
    from babysit.rules import OnlineDiagnoser

    run = make_run(tmp_path / "a", heartbeat=time.time())
    tailer = RunTailer(run)
    d = RunDiagnosis(run, "a", tailer, OnlineDiagnoser(tailer.meta, stall_thresholds(0.2), run_dir=run))
    feed = Feed()
    d.read(feed)
    assert feed.items == []
    time.sleep(0.3)
    d.check(feed, time.monotonic(), silent_for=3600)  # not silent long enough: no liveness check yet
    assert feed.items == []
    d.check(feed, time.monotonic(), silent_for=0.0)  # nothing new on disk, and silent: the status goes to the rules
    assert feed.items == [("finding", "stalled_run", "warning", False)]


def test_diagnosis_of_a_crashed_run_is_critical(tmp_path):
    from babysit.rules import OnlineDiagnoser

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is gone (and reaped)
    run = make_run(tmp_path / "a", pid=dead.pid)
    tailer = RunTailer(run)
    d = RunDiagnosis(run, "a", tailer, OnlineDiagnoser(tailer.meta, None, run_dir=run))
    feed = Feed()
    d.read(feed)
    assert feed.items == [("finding", "stalled_run", "critical", False)]


def test_diagnosis_that_never_reads_is_unreadable_and_a_broken_rule_is_one_warning(tmp_path):
    fifo = make_run(tmp_path / "fifo")
    (fifo / runfile.EVENTS).unlink()
    os.mkfifo(fifo / runfile.EVENTS)
    with pytest.raises(Unreadable):
        RunDiagnosis(fifo, "fifo", RunTailer(fifo), None).read(Feed())

    class Broken:
        def update(self, batch, status=None):
            raise RuntimeError("boom")

    run = make_run(tmp_path / "a")
    warnings: list[str] = []
    d = RunDiagnosis(run, "a", RunTailer(run), Broken(), warn=warnings.append)
    feed = Feed()
    append_losses(run, [math.nan])
    d.read(feed)
    set_status(run, "finished")
    d.read(feed)
    assert len(warnings) == 1 and "rules failed on a (RuntimeError: boom)" in warnings[0]
    assert feed.items == [("note", "a finished at step 0")]  # the notes still flow


# --------------------------------------------------------------------------- announce


def test_news_is_once_per_rule_and_again_only_upwards(tmp_path):
    news = News("a", tmp_path)
    first = news.consider(finding("loss_explosion", "warning"))
    assert first is not None and first.previous is None
    assert news.consider(finding("loss_explosion", "warning")) is None
    assert news.consider(finding("loss_explosion", "info")) is None
    up = news.consider(finding("loss_explosion", "critical"))
    assert up is not None and up.previous == "warning" and up.run == "a" and up.run_dir == tmp_path
    assert news.consider(finding("lr_high", "info")) is not None  # another rule is its own news
    assert news.worst() == 2

    quiet = News("old", tmp_path, quiet=True)  # an ended run at the first scan: remembered, not announced
    assert quiet.consider(finding("nonfinite_loss", "critical")) is None and quiet.worst() == 2
    quiet.quiet = False
    assert quiet.consider(finding("nonfinite_loss", "critical")) is None  # already known: not news later either


def test_log_queue_waits_its_turn_and_never_logs_what_the_log_holds(tmp_path):
    run = make_run(tmp_path / "a")
    q = LogQueue()
    q.add(alert(run, "loss_explosion", "warning"), due=10.0)
    q.add(alert(run, "nonfinite_loss", "critical"), due=20.0)
    assert not q.is_due(5.0) and q.is_due(10.0) and q.next_due() == 10.0
    q.seen(finding("loss_explosion", "critical"))  # the hooks logged it (worse) meanwhile
    assert q.flush(10.0) == 0 and q.next_due() == 20.0
    assert q.flush(10.0, force=True) == 1
    assert [(f["rule"], f["source"], f["run"]) for f in log_lines(run)] == [("nonfinite_loss", "watch", "a")]

    class Full:
        def write(self, a):
            raise OSError(28, "No space left on device")

    warnings: list[str] = []
    q = LogQueue(Full(), warn=warnings.append)
    for rule in ("x", "y"):
        q.add(alert(run, rule), due=0.0)
    assert q.flush(1.0) == 0 and len(warnings) == 1 and "No space left" in warnings[0]


def test_announcer_sends_news_queues_the_log_and_keeps_quiet_runs_quiet(tmp_path):
    run = make_run(tmp_path / "a")
    rec, q = Recorder(), LogQueue()
    news = News("a", run)
    ann = Announcer(news, rec, q, grace=30.0, status=lambda: {"recorded_state": "running"})
    start = time.monotonic()
    ann.finding(finding("nonfinite_loss", "critical"))  # the hooks may log it too: it waits out the grace
    ann.finding(finding("stalled_run", "warning"))  # the hooks never log a stall: due at once
    ann.finding({**finding("lr_high", "warning"), "source": "hooks"}, from_log=True)  # news, already logged
    ann.finding(finding("nonfinite_loss", "critical"))  # not news
    assert rec.rules() == [("a", "nonfinite_loss", "critical"), ("a", "stalled_run", "warning"),
                           ("a", "lr_high", "warning")]
    assert [(a.rule, d - start >= 29) for d, a in q.pending] == [("nonfinite_loss", True), ("stalled_run", False)]
    assert q.logged == {"lr_high": 1}
    ann.note("a finished at step 3")
    news.quiet = True
    ann.note("not news")
    assert rec.notes == ["a finished at step 3"]

    rec = Recorder()
    Announcer(News("b", run), rec, log=None).finding(finding("nonfinite_loss", "critical"))
    assert len(rec.alerts) == 1  # --no-log: announced, nothing queued


# --------------------------------------------------------------------------- sinks and wrappers


def test_fanout_gives_each_sink_what_it_asked_for_and_survives_a_broken_one(tmp_path):
    class Broken(Recorder):
        def emit(self, a):
            raise RuntimeError("boom")

    everything, serious, warnings = Recorder(), Recorder(min_severity="critical"), []
    out = Fanout([Broken(), everything, serious], warn=warnings.append)
    out.emit(alert(tmp_path, "loss_explosion", "warning"))
    out.emit(alert(tmp_path, "nonfinite_loss", "critical"))
    out.note("a note")
    out.close()
    assert [a.rule for a in everything.alerts] == ["loss_explosion", "nonfinite_loss"]
    assert [a.rule for a in serious.alerts] == ["nonfinite_loss"] and serious.notes == ["a note"]
    assert warnings == ["Broken failed: RuntimeError"] * 2 and everything.closed and serious.closed


def test_rate_limited_sink_holds_back_then_summarizes(tmp_path):
    now = [0.0]
    rec = Recorder()
    out = RateLimited(rec, RateLimit(2, 10.0, clock=lambda: now[0]))
    for i in range(5):
        out.emit(alert(tmp_path, run=f"r{i}"))
    out.note("notes are never held")
    out.flush()
    assert [a.run for a in rec.alerts] == ["r0", "r1"] and rec.notes == ["notes are never held"] and out.sent == 2
    assert out.next_due() == 10.0
    now[0] = 10.0
    out.flush()
    assert rec.notes[-1].startswith("nonfinite_loss: 3 more alert(s) held back") and "r2, r3, r4" in rec.notes[-1]
    out.emit(alert(tmp_path, run="r5"))  # the summary counted as one alert: one more fits the window
    out.emit(alert(tmp_path, run="r6"))
    out.close()  # what is still held is summarized before the sinks close
    assert [a.run for a in rec.alerts][-1] == "r5" and "r6" in rec.notes[-1] and rec.closed


def test_stop_on_writes_stop_only_for_stoppable_rules_at_or_above_the_threshold(tmp_path):
    live, ended, asked = (make_run(tmp_path / n) for n in ("live", "ended", "asked"))
    runfile.write_json_atomic(asked / runfile.STOP, {"reason": "a person", "by": "me", "time": 0.0})
    rec = Recorder()
    out = StopOn(rec, "critical", running=lambda d: d.name != "ended")
    out.emit(alert(live, "loss_explosion", "warning"))  # below the threshold
    out.emit(alert(live, "stalled_run", "critical"))  # a stuck process cannot act on STOP
    out.emit(alert(ended, "nonfinite_loss", "critical"))  # not running
    assert not any((r / runfile.STOP).exists() for r in (live, ended))
    out.emit(alert(live, "nonfinite_loss", "critical"))
    stop = json.loads((live / runfile.STOP).read_text())
    assert stop["by"] == "babysit watch" and stop["reason"] == "nonfinite_loss: nonfinite_loss critical at step 1"
    out.emit(alert(live, "loss_explosion", "critical"))  # asked once per run
    out.emit(alert(asked, "nonfinite_loss", "critical"))  # a STOP already there is left alone
    assert json.loads((asked / runfile.STOP).read_text())["by"] == "me"
    assert len(rec.alerts) == 6  # every alert passes through
    assert rec.notes == ["live: asked the run to stop (nonfinite_loss); it stops at its next flush"]
    with pytest.raises(ValueError, match="stop_on"):
        StopOn(rec, "info", running=lambda d: True)


def test_a_rate_limited_alert_still_stops_its_run(tmp_path):
    """The composition: --stop-on wraps the rate limit, so a flood stops every run it hits."""
    runs = [make_run(tmp_path / "runs" / f"r{i}") for i in range(3)]
    rec = Recorder()
    w = Watcher([str(tmp_path / "runs")], sinks=[rec], rate_limit=1, stop_on="critical",
                diagnoser_factory=FakeDiagnoser, errors=io.StringIO())
    w.scan()
    for r in runs:
        append_losses(r, [math.nan])
    w.tick(full=True)
    w.close()
    assert len(rec.alerts) == 1 and all((r / runfile.STOP).exists() for r in runs)
    assert sum("asked the run to stop" in n for n in rec.notes) == 3
    assert any("2 more alert(s) held back" in n for n in rec.notes)
