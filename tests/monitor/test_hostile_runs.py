"""One bad run directory never takes anything down (issue 13).

A corpus of hostile runs (tests/monitor/hostile_corpus.py: huge pids, JSON nested 100,000 deep, 1e400, FIFOs,
symlinks planted where we write, 16 PiB .npy headers, Markdown and HTML in every field, non-UTF-8 and backslash
names) goes through every reader: diagnose, diagnose --json, report, watch --once, a live `babysit watch`
process and the dashboard (AppTest here; the real browser in test_dashboard_browser.py). For each: exit 2 with
one line, or a normal result with at most a one-line note; no traceback; no hang (every call under a timeout);
the good runs beside it unaffected; nothing outside the run directories written.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from hostile_corpus import CASES, GOOD, HUGE_SHAPE, NON_UTF8, _npy_header, build_corpus, good_run

from babysit.monitor import runfile
from babysit.monitor.cli import main
from babysit.monitor.reader import _pid_alive, effective_state, read_meta, read_status
from babysit.monitor.sinks import Alert, ExecSink, FindingsLog, printable

REPO = Path(__file__).resolve().parents[2]
NON_UTF8_NAME = os.fsdecode(NON_UTF8)
ALL = [*CASES, NON_UTF8_NAME]
CALL_TIMEOUT = 60.0  # seconds for one in-process command: a FIFO that blocks fails here instead of hanging


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    runs, outside = build_corpus(root)
    before = _tree(outside)
    yield runs, outside
    assert _tree(outside) == before, "a command wrote outside the run directories"
    assert (outside / "victim.txt").read_text() == "do not touch\n"


def _tree(folder: Path) -> dict:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # report's default output for imported logs lands here, never in the repo
    monkeypatch.delenv("BABYSIT_WEBHOOK", raising=False)
    monkeypatch.delenv("BABYSIT_DEBUG", raising=False)


def call(argv: list) -> tuple[int, str, list[str]]:
    """(exit status, stdout, stderr lines) of `babysit ARGV` in-process, failing if it takes over CALL_TIMEOUT."""
    # stdout as a terminal has it: strict UTF-8 (a surrogate from a non-UTF-8 name would raise there)
    out, err, result = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True), io.StringIO(), {}

    def target() -> None:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                result["rc"] = main([os.fspath(a) if isinstance(a, Path) else a for a in argv])
            except SystemExit as e:
                result["rc"] = e.code if isinstance(e.code, int) else 2
            except BaseException as e:  # noqa: BLE001 - reported below as the failure it is
                result["exc"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(CALL_TIMEOUT)
    assert not t.is_alive(), f"babysit {argv} hung for {CALL_TIMEOUT:.0f} s"
    assert "exc" not in result, f"babysit {argv} raised {result.get('exc')!r}"
    stdout = out.buffer.getvalue().decode("utf-8")
    text = stdout + err.getvalue()
    assert "Traceback" not in text and 'File "' not in text, text[-2000:]
    return result["rc"], stdout, err.getvalue().splitlines()


def _argv(command: str, run: Path, tmp_path: Path) -> list:
    return {"diagnose": ["diagnose", run], "json": ["diagnose", run, "--json"],
            "report": ["report", run, "-o", tmp_path / "r.html"],
            "watch": ["watch", "--once", "--no-log", run]}[command]


# --------------------------------------------------------------------------- every case through every command
@pytest.mark.parametrize("command", ["diagnose", "json", "report", "watch"])
@pytest.mark.parametrize("case", ALL, ids=[printable(c) for c in ALL])
def test_every_hostile_run_through_every_command(corpus, tmp_path, case, command):
    runs, _ = corpus
    rc, out, err = call(_argv(command, runs / case, tmp_path))
    prog = "diagnose" if command == "json" else command
    if rc == 2:  # cannot be read: exactly one line saying why
        assert len(err) == 1 and err[0].startswith(f"babysit {prog}: error: "), err
        assert "unexpected" not in err[0], err  # a known refusal, not the safety net
        assert out == ""
        return
    assert rc in (0, 1), (rc, err)
    assert all(line.startswith(f"babysit {prog}: ") for line in err), err  # notes are one line each
    assert len(err) <= 3, err
    if command == "json":
        assert json.loads(out)["run"].endswith(printable(case)) or json.loads(out)["run"]
    if command == "report":
        assert out.startswith("report written to") and (tmp_path / "r.html").stat().st_size > 1000
    if command == "watch":
        assert err[-1].startswith("babysit watch: 1 run(s)"), err


# These cannot be read at all: a one-line refusal names the file and says why.
REFUSED = {"nested-meta": "nested too deep", "nested-meta-config": "nested too deep",
           "fifo-meta": "not a regular file", "fifo-events": "not a regular file",
           "fifo-findings": "not a regular file", "dir-as-meta": "not a regular file"}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unreadable_runs_say_why_in_one_line(corpus, tmp_path, case):
    runs, _ = corpus
    rc, out, err = call(["diagnose", runs / case])
    assert rc == 2 and len(err) == 1 and REFUSED[case] in err[0], err


def test_fields_of_the_wrong_type_read_as_absent(corpus):
    runs, _ = corpus
    assert _pid_alive(10**30) is False and _pid_alive(-1) is False and _pid_alive(0) is False
    assert _pid_alive(True) is False and _pid_alive(os.getpid()) is True
    status = read_status(runs / "huge-pid")
    assert status["pid"] is None and status["state"] in ("running", "crashed")
    assert read_status(runs / "float-overflow-status")["heartbeat"] is None
    assert read_meta(runs / "num-classes-inf")["num_classes"] is None
    md = read_status(runs / "markdown-state")
    assert md["state"] == "unknown" and md["recorded_state"].startswith("**bold**")
    bad = read_status(runs / "nested-status")
    assert bad["state"] == "unknown" and "not a run status" in bad["error"]["message"]
    assert effective_state({"state": "running", "pid": 10**30, "host": socket.gethostname()}) == "running"
    assert effective_state({"state": "<b>x</b>"}) == "unknown" and effective_state([1]) == "unknown"


def test_snapshot_headers_are_checked_before_allocating(tmp_path):
    huge = tmp_path / "huge.npy"
    huge.write_bytes(_npy_header(HUGE_SHAPE))
    with pytest.raises(ValueError, match="claims"):
        runfile.read_npy(huge)
    short = tmp_path / "short.npy"
    short.write_bytes(_npy_header((1000,)))
    with pytest.raises(ValueError, match="holds"):
        runfile.read_npy(short)
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        runfile.read_npy(pickled)
    fifo = tmp_path / "fifo.npy"
    os.mkfifo(fifo)
    with pytest.raises(OSError):
        runfile.read_npy(fifo)
    good = tmp_path / "good.npy"
    w = np.random.default_rng(0).standard_normal((8, 1, 3, 3)).astype(np.float32)
    np.save(good, w)
    assert np.array_equal(runfile.read_npy(good), w)
    np.save(good, np.asfortranarray(w[:, 0, :, 0]))
    assert np.array_equal(runfile.read_npy(good), w[:, 0, :, 0])


def test_json_is_read_with_bounded_depth_and_size(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    with pytest.raises(ValueError, match="nested"):
        runfile.read_json(deep)
    deep.write_text("[" * 100 + "]" * 100)  # parses, but deeper than any writer of ours
    with pytest.raises(ValueError, match="nested"):
        runfile.read_json(deep)
    with pytest.raises(ValueError, match="larger"):
        runfile.read_json(deep, max_bytes=10)
    deep.write_text('{"a": {"b": [1, 2, {"c": null}]}}')
    assert runfile.read_json(deep) == {"a": {"b": [1, 2, {"c": None}]}}


# --------------------------------------------------------------------------- writes never follow links
def test_report_replaces_a_planted_symlink_instead_of_writing_through_it(corpus):
    runs, outside = corpus
    run = runs / "report-symlink"
    rc, out, err = call(["report", run])  # default output: RUN/report.html, which is a link to the victim
    assert rc == 0 and err == [], err
    assert not (run / "report.html").is_symlink() and (run / "report.html").read_text().startswith("<!DOCTYPE")
    assert (outside / "victim.txt").read_text() == "do not touch\n"


def test_watch_never_appends_through_a_findings_symlink(corpus):
    runs, outside = corpus
    rc, out, err = call(["watch", "--once", runs / "findings-symlink"])  # logs its findings by default
    assert rc == 1 and "nonfinite_loss" in out  # the NaN is still announced
    assert (outside / "victim.txt").read_text() == "do not touch\n"
    assert any("not a regular file; not written" in line for line in err), err
    assert len(err) == 2, err  # that one line, then the summary


def test_findings_log_refuses_links_and_fifos(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("x")
    run = good_run(tmp_path / "run")
    alert = Alert("run", run, {"rule": "r", "severity": "critical", "message": "m"})
    (run / runfile.FINDINGS).symlink_to(victim)
    with pytest.raises(OSError, match="not a regular file"):
        FindingsLog().write(alert)
    (run / runfile.FINDINGS).unlink()
    os.mkfifo(run / runfile.FINDINGS)
    with pytest.raises(OSError):
        FindingsLog().write(alert)  # no reader on the FIFO: refused at once, never blocks
    (run / runfile.FINDINGS).unlink()
    FindingsLog().write(alert)
    assert json.loads((run / runfile.FINDINGS).read_text())["rule"] == "r" and victim.read_text() == "x"


# --------------------------------------------------------------------------- the whole corpus at once
def test_watch_once_over_the_corpus_skips_each_bad_run_in_one_line(corpus):
    runs, _ = corpus
    rc, out, err = call(["watch", "--once", "--no-log", runs])
    assert rc in (0, 1)
    assert err[-1].startswith("babysit watch: ") and "run(s)" in err[-1], err
    notes = err[:-1]
    for name in REFUSED:  # each unreadable run: one line, naming it
        assert sum(f"skipped {name}:" in line for line in notes) == 1, (name, notes)
    assert all(line.startswith("babysit watch: ") for line in notes)
    assert not any(g in line for g in GOOD for line in notes)
    assert len(notes) <= len(REFUSED) + 4, notes  # + the unreadable status.json notes
    n = int(err[-1].split()[2])
    assert n >= len(ALL) + len(GOOD) - len(REFUSED) - 1  # every other run was read


def test_printable_escapes_terminal_controls_and_undecodable_bytes():
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable(NON_UTF8_NAME) == "bad-\\xff\\xfe-name"
    assert printable("caf\u00e9 \u2713") == "caf\u00e9 \u2713"
    assert printable("\ud800x") == "\\ud800x"


def test_exec_child_does_not_inherit_the_webhook_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("BABYSIT_WEBHOOK", "https://hooks.example.invalid/T0/B0/secret-token")
    dump = tmp_path / "env.txt"
    sink = ExecSink(f"env > {dump}")
    try:
        sink.handle(Alert("run", tmp_path, {"rule": "nonfinite_loss", "severity": "critical", "message": "m"}))
    finally:
        sink.close(time.monotonic() + 5)
    env = dump.read_text()
    assert "BABYSIT_RULE=nonfinite_loss" in env and "secret-token" not in env and "BABYSIT_WEBHOOK" not in env


# --------------------------------------------------------------------------- a live `babysit watch` process
def test_a_live_watch_keeps_alerting_on_good_runs_beside_hostile_ones(corpus, tmp_path):
    runs, outside = corpus
    live = good_run(runs / "zz-live", state="running")
    status = runfile.read_json(live / runfile.STATUS)
    runfile.write_json_atomic(live / runfile.STATUS, {**status, "pid": os.getpid(), "heartbeat": time.time(),
                                                      "end_time": None})
    env = {**os.environ, "PYTHONPATH": str(REPO), "BABYSIT_WEBHOOK": ""}
    proc = subprocess.Popen([sys.executable, "-m", "babysit", "watch", "--polling", "--poll-interval", "0.2",
                             "--backstop", "0.5", "--color", "never", str(runs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not (live / runfile.FINDINGS).exists():
            with open(live / runfile.EVENTS, "a", encoding="utf-8") as f:
                f.write(runfile.dumps_line({"type": "steps", "step": [41], "time": [time.time()],
                                            "loss": [float("nan")], "lr": [0.1]}))
            time.sleep(1.0)
        assert proc.poll() is None, proc.stderr.read()[-3000:]  # still alive beside every hostile run
        assert (live / runfile.FINDINGS).exists(), "the live run's NaN was never logged"
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        reader.join(5)
        (live / runfile.STATUS).unlink()  # leave the corpus as the other tests expect it
        import shutil

        shutil.rmtree(live)
    err = proc.stderr.read()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err + "".join(lines), err[-3000:]
    assert any("zz-live" in ln and "nonfinite_loss" in ln for ln in lines), lines
    assert all(ln.startswith("babysit watch: ") for ln in err.splitlines()), err
    for name in REFUSED:
        assert sum(f"skipped {name}:" in ln for ln in err.splitlines()) == 1, (name, err)
    assert (outside / "victim.txt").read_text() == "do not touch\n"


# --------------------------------------------------------------------------- the dashboard (AppTest, no browser)
@pytest.fixture
def app(corpus, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from babysit.monitor.dashboard_cli import APP

    runs, _ = corpus
    monkeypatch.setenv("BABYSIT_ROOT", str(runs))

    def open_page(**params) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=90)
        for k, v in params.items():
            at.query_params[k] = v
        return at.run()

    return open_page


def test_the_runs_view_greys_bad_runs_and_shows_the_good_ones(app):
    at = app(view="Runs")
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    table = getattr(table, "data", table)  # a Styler: the greyed rows
    rows = dict(zip(table["run"], table["state"], strict=True))
    assert rows["good-a"] == "finished" and rows["good-b"] == "finished"
    for name in REFUSED:
        assert rows[name] == "unreadable", (name, rows[name])
    assert rows["bad-\\xff\\xfe-name"] == "finished" and rows["back\\slash"] == "finished"
    assert rows["markdown-state"] == "unknown"


@pytest.mark.parametrize("case", [*CASES, "bad-\\xff\\xfe-name", *GOOD], ids=[printable(c) for c in
                                                                               [*CASES, NON_UTF8_NAME, *GOOD]])
def test_every_run_page_renders_or_says_why_in_one_grey_line(app, case):
    at = app(run=case)
    assert not at.exception, [e.value for e in at.exception]
    captions = [c.value for c in at.caption]
    blocked = [c for c in captions if c.startswith(":material/block:")]
    if case in REFUSED:
        assert len(blocked) == 1, captions
        return
    assert not blocked, blocked
    steps = [m.value for m in at.metric if m.label == "Step"]
    assert len(steps) == 1 and steps[0].replace(",", "").isdigit(), steps
    markdown = [m.value for m in at.markdown]
    assert not any("**bold**" in v or "](https://example.invalid)" in v for v in markdown), markdown
    if case == "markdown-state":  # the badge says "unknown": the file's Markdown is never rendered
        assert any("badge[" in v and "unknown" in v for v in markdown), markdown
    if case == "no-epochs":
        assert [m.value for m in at.metric if m.label == "Epoch"] == ["—"]


# --------------------------------------------------------------------------- the dashboard in a real browser
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.browser
def test_the_dashboard_in_a_real_browser_with_hostile_runs_among_good_ones(corpus):
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")

    runs, outside = corpus
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "babysit", "dashboard", str(runs), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                return r.read().strip() == b"ok"
        except OSError:
            return False

    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    try:
        _wait(healthy, 120, "the dashboard to serve")
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 1400})
                page.goto(f"http://127.0.0.1:{port}/?view=Runs")
                _wait(lambda: page.get_by_text("run(s)", exact=False).count() > 0, 90, "the runs table")
                page.wait_for_timeout(4000)
                page.screenshot(path=str(artifacts / "dashboard_hostile_runs.png"), full_page=True)
                assert page.get_by_test_id("stException").count() == 0
                assert page.title() != "pwned"
                for name, expect in [("markdown-state", "unknown"), ("html-everywhere", "Step"),
                                     ("nested-meta", "cannot be shown"), ("bad-\\xff\\xfe-name", "Step"),
                                     ("back\\slash", "Step"), ("fifo-events", "cannot be shown"),
                                     ("rule-dict", "Step"), ("good-a", "Step")]:
                    page.goto(f"http://127.0.0.1:{port}/?" + urllib.parse.urlencode({"view": "Run", "run": name}))
                    _wait(lambda expect=expect: page.get_by_text(expect, exact=False).count() > 0, 60,
                          f"{name}'s page")
                    page.wait_for_timeout(1500)
                    assert page.get_by_test_id("stException").count() == 0, name
                    assert page.title() != "pwned", name
                    body = page.inner_text("body")
                    assert "Traceback" not in body and ".py" not in body, (name, body[-800:])
                    assert "**bold**" not in body or name != "markdown-state"
                    if name == "html-everywhere":
                        page.screenshot(path=str(artifacts / "dashboard_hostile_html.png"))
            finally:
                browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    err = proc.stderr.read().decode(errors="replace")
    assert "Traceback" not in err, err[-3000:]
    assert (outside / "victim.txt").read_text() == "do not touch\n"
