"""Hostile input that tries to run code: pickles, HTML and script, paths out of the runs root, leaked secrets.

- nothing on a read path can unpickle: a static scan of the package source, and pickled payloads given to
  every reader (they must be refused without running);
- run names, config values and messages with HTML never reach the report as markup;
- names with '..' or absolute paths never resolve outside the runs root (the dashboard's resolver);
- the dashboard binds 127.0.0.1 unless told otherwise, and says where it listens;
- a webhook URL (the credential) never appears in output, findings.jsonl or a report.
"""

from __future__ import annotations

import ast
import http.server
import io
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from babysit.monitor import runfile
from babysit.monitor.cli import main

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("hooks", "rules", "monitor", "trainer")


def _sources() -> list[Path]:
    files = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts)
    assert len(files) > 20, files  # the scan really looked at the package
    return files


# --------------------------------------------------------------------------- static scan
def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _constant_strings(tree: ast.Module) -> set[str]:
    """Module-level names bound once to a string literal (CSS, templates): safe to hand to st.html."""
    names: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    names[t.id] = names.get(t.id, 0) + 1
    return {n for n, count in names.items() if count == 1}


def scan(path: Path) -> list[str]:
    """Every place in one file that could load pickle or render user data as HTML."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    constants = _constant_strings(tree)
    rel = path.relative_to(REPO)
    out = []
    for node in ast.walk(tree):
        where = f"{rel}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            mods = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            for m in mods:
                if m and m.split(".")[0] in ("pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve",
                                              "marshal", "joblib"):
                    out.append(f"{where}: imports {m}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        last = name.rsplit(".", 1)[-1]
        if name == "torch.load" and not _is_const(_kw(node, "weights_only"), True):
            out.append(f"{where}: torch.load without weights_only=True")
        if name in ("np.load", "numpy.load") and not _is_const(_kw(node, "allow_pickle"), False):
            out.append(f"{where}: np.load without allow_pickle=False")
        if last in ("read_pickle", "to_pickle") or name in ("yaml.load", "yaml.unsafe_load"):
            out.append(f"{where}: {name}")
        unsafe = _kw(node, "unsafe_allow_html")
        if (unsafe is not None and not _is_const(unsafe, False)) or name in ("st.html", "streamlit.html"):
            arg = node.args[0] if node.args else _kw(node, "body")
            literal = isinstance(arg, ast.Constant) or (isinstance(arg, ast.Name) and arg.id in constants)
            if not literal:
                out.append(f"{where}: {name}(...) renders HTML built from something other than a string literal")
        if name in ("eval", "exec"):
            out.append(f"{where}: {name}()")
    return out


def test_no_pickle_on_any_read_path_static_scan():
    offenders = [o for p in _sources() for o in scan(p)]
    assert not offenders, "unsafe loading or HTML rendering:\n" + "\n".join(offenders)


def test_the_scan_catches_what_it_looks_for(tmp_path, monkeypatch):
    """The scanner itself: each unsafe pattern is reported, each safe one is not."""
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport numpy as np\nimport torch\nimport streamlit as st\nimport pandas as pd\n"
        "np.load('a.npy')\nnp.load('a.npy', allow_pickle=True)\ntorch.load('m.pt')\n"
        "torch.load('m.pt', weights_only=False)\npd.read_pickle('x')\nname = input()\n"
        "st.markdown(name, unsafe_allow_html=True)\nst.html(f'<b>{name}</b>')\n"
    )
    good = tmp_path / "good.py"
    good.write_text(
        "import numpy as np\nimport torch\nimport streamlit as st\nCSS = '<style></style>'\n"
        "np.load('a.npy', allow_pickle=False)\ntorch.load('m.pt', map_location='cpu', weights_only=True)\n"
        "st.html(CSS)\nst.markdown('**hi**', unsafe_allow_html=True)\nst.markdown('x', unsafe_allow_html=False)\n"
    )
    found = scan(bad)
    assert len(found) == 8, found
    assert scan(good) == []


# --------------------------------------------------------------------------- pickled payloads
class _Payload:
    """Unpickling this creates `marker` (via open(marker, 'w')): proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _good_run(path: Path, snapshots: list[str] = (), layer: str = "conv1") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    runfile.write_json_atomic(path / runfile.META, {"schema": 1, "run_id": "r", "num_classes": 10,
                                                     "config": {"lr": 0.1}})
    runfile.write_json_atomic(path / runfile.STATUS, {"schema": 1, "state": "finished", "step": 3000})
    n = 3000
    lines = [runfile.dumps_line({"type": "steps", "step": list(range(1, n + 1)), "time": [1.7e9 + i for i in range(n)],
                                 "loss": [2.3 * 0.999**i for i in range(n)], "lr": [0.1] * n})]
    for i, rel in enumerate(snapshots):
        lines.append(runfile.dumps_line({"type": "snapshot", "step": i * 1500, "time": 1.7e9 + i, "layer": layer,
                                         "file": rel, "shape": [8, 1, 5, 5]}))
    (path / runfile.EVENTS).write_text("".join(lines))
    return path


def _pickled_npy(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.array([_Payload(marker), 1], dtype=object), allow_pickle=True)
    return path


@pytest.fixture
def evil_run(tmp_path):
    """A run whose two snapshots are pickles that, if loaded, create `marker`."""
    marker = tmp_path / "PWNED"
    run = _good_run(tmp_path / "run", ["snapshots/a.npy", "snapshots/b.npy"])
    for name in ("a", "b"):
        _pickled_npy(run / "snapshots" / f"{name}.npy", marker)
    # the payload works: numpy with allow_pickle=True would run it
    np.load(run / "snapshots" / "a.npy", allow_pickle=True)
    assert marker.exists()
    marker.unlink()
    return run, marker


def test_dashboard_refuses_a_pickled_snapshot(evil_run):
    from babysit.monitor.dashboard.state import RunState

    run, marker = evil_run
    state = RunState(run, diagnose=False)
    state.update()
    assert state.snapshots, "the snapshot records were read"
    assert all(state.load_snapshot(rec) is None for rec in state.snapshots)
    assert not marker.exists()


def test_report_refuses_a_pickled_snapshot(evil_run, tmp_path, capsys):
    run, marker = evil_run
    assert main(["report", str(run), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "snapshot unreadable" in html and "data:image/png" not in html
    assert not marker.exists()


def test_rules_refuse_a_pickled_snapshot(evil_run):
    import warnings

    from babysit.monitor.reader import load_run
    from babysit.rules import RuleWarning, diagnose

    run, marker = evil_run
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuleWarning)  # refusing must not break the rule either
        findings = diagnose(load_run(run))
    assert "noisy_weights" not in {f.rule for f in findings}
    assert not marker.exists()


def test_trainer_folder_dataset_refuses_a_pickled_image(tmp_path):
    from babysit.trainer.folder import load_folder

    marker = tmp_path / "PWNED"
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        np.save(tmp_path / "data" / c / "ok.npy", np.zeros((8, 8), dtype=np.uint8), allow_pickle=False)
        _pickled_npy(tmp_path / "data" / c / "evil.npy", marker)
    with pytest.raises(ValueError):
        load_folder(str(tmp_path / "data"))
    assert not marker.exists()


def _pickled_checkpoint(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"format": "babysit-checkpoint", "model": {}, "payload": _Payload(marker)}, path)
    return path


def test_checkpoints_with_code_are_refused_without_running_it(tmp_path, capsys):
    from babysit.trainer.checkpoint import load_checkpoint

    marker = tmp_path / "PWNED"
    ckpt = _pickled_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(ValueError):
        load_checkpoint(ckpt)
    run = _good_run(tmp_path / "run")
    _pickled_checkpoint(run / "checkpoint.pt", marker)
    assert main(["evaluate", str(run)]) == 2
    assert main(["train", "--run-dir", str(tmp_path / "new"), "--init-from", str(ckpt), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert err.count("\n") == 2 and "Traceback" not in err


@pytest.mark.parametrize("payload", ["code", "garbage"])
def test_refused_checkpoint_message_does_not_advise_unpickling(tmp_path, payload):
    from babysit.trainer.checkpoint import load_checkpoint

    path = tmp_path / "evil.pt"
    if payload == "code":
        _pickled_checkpoint(path, tmp_path / "PWNED")
    else:
        path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert "weights_only" not in text and "can still be loaded" not in text and "\x1b" not in text, text


# --------------------------------------------------------------------------- HTML in user data
SCRIPT = "<script>alert('{}')</script>"
IMG = "<img src=x onerror=alert(1)>"


def _html_run(tmp_path: Path) -> Path:
    run = tmp_path / f"run{IMG}"  # a directory name can hold markup (no '/': no closing tag)
    n = 300
    run.mkdir()
    runfile.write_json_atomic(run / runfile.META, {
        "schema": 1, "run_id": SCRIPT.format("id"), "name": SCRIPT.format("name"), "num_classes": 10,
        "config": {"lr": 0.1, SCRIPT.format("key"): SCRIPT.format("value"), "note": IMG},
        "model": {"class": SCRIPT.format("model"), "layers": [{"name": IMG, "type": SCRIPT.format("type"),
                                                              "params": {"weight": [4, 4]}}]}})
    runfile.write_json_atomic(run / runfile.STATUS, {"schema": 1, "state": "crashed", "step": n,
                                                     "reason": SCRIPT.format("reason"),
                                                     "error": {"type": IMG, "message": SCRIPT.format("error")}})
    lines = [
        {"type": "steps", "step": list(range(1, n + 1)), "time": [1.7e9 + i for i in range(n)],
         "loss": [2.3 if i < 200 else float("nan") for i in range(n)], "lr": [0.1] * n,
         "scalars": {SCRIPT.format("scalar"): [1.0] * n}},
        {"type": "epoch", "epoch": 1, "step": 100, "time": 1.7e9 + 100,
         "metrics": {"train_acc": 0.1, "val_acc": 0.1, SCRIPT.format("metric"): 1.0}},
        {"type": "layers", "step": 100, "time": 1.7e9 + 100,
         "stats": {IMG: {"kind": "weight", "w_norm": 1.0, "g_norm": 1e-12, "update_ratio": 1e-12},
                   SCRIPT.format("layer"): {"kind": SCRIPT.format("kind"), "dead_frac": 0.99}}},
        {"type": "event", "name": SCRIPT.format("event"), "step": 5, "time": 1.7e9, "data": {"x": IMG}},
    ]
    (run / runfile.EVENTS).write_text("".join(runfile.dumps_line(r) for r in lines))
    finding = {"rule": SCRIPT.format("rule"), "title": IMG, "severity": "critical", "step": 5, "epoch": None,
               "message": SCRIPT.format("message"), "evidence": {IMG: SCRIPT.format("evidence")},
               "fix": [SCRIPT.format("fix"), IMG]}
    (run / runfile.FINDINGS).write_text(runfile.dumps_line(finding))
    return run


def test_report_escapes_every_string_from_the_run(tmp_path, capsys):
    run = _html_run(tmp_path)
    out = tmp_path / "r.html"
    assert main(["report", str(run), "-o", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    assert not re.search(r"<\s*script", html, re.I), "a <script> element reached the report"
    assert not re.search(r"<img[^>]*onerror", html, re.I), "an <img onerror> element reached the report"
    for what in ("name", "message", "fix", "value"):  # the data is there, as text
        assert f"&lt;script&gt;alert(&#x27;{what}&#x27;)&lt;/script&gt;" in html, what
    assert "Content-Security-Policy" in html


def test_report_of_html_run_names_written_beside_it(tmp_path, capsys, monkeypatch):
    """The default output name is derived from the run's name: it must stay a plain file in the cwd."""
    from babysit.monitor.reader import load_run
    from babysit.monitor.report import default_output

    run = _html_run(tmp_path)
    data = load_run(run)
    data.meta["source"] = "csv"  # an imported log: the name comes from meta["name"]
    data.meta["name"] = "../../" + SCRIPT.format("x")
    out = default_output(run, data)
    assert out.parent == Path(".") and "/" not in out.name and "<" not in out.name


# --------------------------------------------------------------------------- paths out of the root
ESCAPES = ["..", "../", "../outside", "a/../../outside", "a/../..", "/etc", "/etc/passwd", "//etc", "~", "~root",
           "~/x", "C:\\Windows", "C:", "a\\..\\..\\outside", "..\\outside", "\x00", "a\x00b", "a/\nb", "", "../" * 300,
           "x" * 2000, "link_out", "link_out/inner", "./../outside"]


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "root"
    _good_run(root / "ok")
    _good_run(root / "nested" / "deep")
    outside = _good_run(tmp_path / "outside")
    (root / "link_out").symlink_to(outside, target_is_directory=True)
    return root


@pytest.mark.parametrize("name", ESCAPES, ids=[repr(e)[:30] for e in ESCAPES])
def test_dashboard_never_resolves_a_run_outside_its_root(runs_root, name):
    from babysit.monitor.dashboard.state import resolve_run

    assert resolve_run(runs_root, name) is None


def test_dashboard_resolves_plain_names(runs_root):
    from babysit.monitor.dashboard.state import resolve_run

    assert resolve_run(runs_root, "ok") == runs_root / "ok"
    assert resolve_run(runs_root, "nested/deep") == runs_root / "nested" / "deep"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["..", ".", "ok", "nested", "deep", "link_out", "", "~", "/", "\\", "C:", "%2e%2e",
                                 "\x00"]), max_size=6).map("/".join) | st.text(max_size=40))
def test_fuzz_run_names_stay_inside_the_root(runs_root, name):
    from babysit.monitor.dashboard.state import resolve_run

    path = resolve_run(runs_root, name)
    if path is not None:
        assert path.resolve().is_relative_to(runs_root.resolve()), name


@pytest.mark.parametrize("rel", ["../outside.npy", "/tmp/outside.npy", "snapshots/../../outside.npy",
                                 "snapshots/link.npy"])
def test_snapshot_paths_never_leave_the_run_directory(tmp_path, rel):
    from babysit.monitor.dashboard.state import RunState

    outside = tmp_path / "outside.npy"
    np.save(outside, np.random.default_rng(0).standard_normal((8, 1, 5, 5)), allow_pickle=False)
    rel = rel.replace("/tmp/outside.npy", str(outside))
    run = _good_run(tmp_path / "run", [rel, rel])
    (run / "snapshots").mkdir()
    (run / "snapshots" / "link.npy").symlink_to(outside)
    state = RunState(run, diagnose=False)
    state.update()
    assert state.snapshots and all(state.load_snapshot(r) is None for r in state.snapshots)
    assert main(["report", str(run), "-o", str(tmp_path / "r.html")]) == 0
    assert "data:image/png" not in (tmp_path / "r.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the dashboard's address
def test_dashboard_binds_localhost_by_default(tmp_path, monkeypatch, capsys):
    import argparse

    from babysit.monitor import dashboard_cli

    parser = argparse.ArgumentParser()
    dashboard_cli.configure(parser)
    assert "127.0.0.1" in parser.format_help()  # the help says so
    args = parser.parse_args([str(tmp_path)])
    assert args.host == "127.0.0.1"
    cmd = dashboard_cli.streamlit_command(tmp_path, args.host, args.port)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"

    started = []

    class FakePopen:
        def __init__(self, argv, **kwargs):
            started.append(argv)

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    with socket.socket() as s:  # a free port, so the bind check passes without a server
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(dashboard_cli.subprocess, "Popen", FakePopen)
    assert main(["dashboard", str(tmp_path), "--port", str(port)]) == 0
    out, err = capsys.readouterr()
    assert f"http://127.0.0.1:{port}" in out and err == ""
    assert started[0][started[0].index("--server.address") + 1] == "127.0.0.1"

    assert main(["dashboard", str(tmp_path), "--port", str(port), "--host", "0.0.0.0"]) == 0
    out, err = capsys.readouterr()
    assert "every interface" in err  # exposing the runs is said out loud


# --------------------------------------------------------------------------- the webhook secret
SECRET = "T0PSECRET-hook-token"


class _Hook(http.server.BaseHTTPRequestHandler):
    status = 200
    bodies: list[bytes] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        self.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook_server():
    servers = []

    def start(status: int):
        handler = type("Hook", (_Hook,), {"status": status, "bodies": []})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/services/{SECRET}?token={SECRET}", handler

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _everything_written(root: Path) -> str:
    return "".join(p.read_text(encoding="utf-8", errors="replace") for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("status", [200, 400])
def test_webhook_url_never_written_anywhere(tmp_path, capsys, hook_server, status, monkeypatch):
    url, handler = hook_server(status)
    run = _good_run(tmp_path / "runs" / "r")
    with open(run / runfile.EVENTS, "a", encoding="utf-8") as f:  # a NaN: a critical finding to send
        f.write(runfile.dumps_line({"type": "steps", "step": [3001], "time": [1.8e9], "loss": [float("nan")],
                                    "lr": [0.1]}))
    rc = main(["watch", "--once", str(tmp_path / "runs"), "--webhook", url, "--webhook-timeout", "5"])
    out, err = capsys.readouterr()
    assert rc == 1 and "nonfinite_loss" in out
    assert len(handler.bodies) == 1 and b"nonfinite_loss" in handler.bodies[0]
    if status != 200:
        assert "webhook delivery" in err and "HTTP 400" in err
    monkeypatch.setenv("BABYSIT_WEBHOOK", url)  # from the environment too
    assert main(["report", str(run), "-o", str(tmp_path / "runs" / "report.html")]) == 0
    out2, err2 = capsys.readouterr()
    written = _everything_written(tmp_path / "runs")
    assert "nonfinite_loss" in written  # the watcher's finding was logged and reported
    for text in (out, err, out2, err2, written):
        assert SECRET not in text and "127.0.0.1:" not in text


def test_webhook_sink_never_shows_its_url(tmp_path):
    from babysit.monitor.sinks import Alert, WebhookSink

    errors = io.StringIO()
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = WebhookSink(f"http://127.0.0.1:{port}/{SECRET}", retries=0, backoff=0, timeout=2, errors=errors)
    assert SECRET not in repr(sink) and SECRET not in str(sink)
    sink.emit(Alert("r", tmp_path, {"rule": "nonfinite_loss", "severity": "critical", "message": "NaN"}))
    sink.close(deadline=None)
    assert "failed" in errors.getvalue() and SECRET not in errors.getvalue()
    with pytest.raises(ValueError) as bad:
        WebhookSink(f"ftp://{SECRET}@example.invalid/")
    assert SECRET not in str(bad.value)
