"""`babysit report`: one standalone HTML file, charts and snapshots inline, every user string escaped.

The browser tests open the report in Debian's headless Chromium with every non-file request aborted (an
air-gapped machine) and keep a screenshot in artifacts/.
"""

from __future__ import annotations

import io
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from babysit import hooks
from babysit.monitor import runfile
from babysit.monitor.cli import main
from babysit.monitor.importers import load_any
from babysit.monitor.report import build_report, diagnose_all, not_evaluated, write_report
from babysit.monitor.report_svg import Line, line_chart, minmax_downsample, png_bytes
from babysit.monitor.weights_image import filter_grid
from babysit.rules import diagnose

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
XSS = "<script>alert(1)</script>"
XSS_DIR = "<img src=x onerror=alert(2)>"


def _train(path: Path, *, lr: float = 0.05, steps: int = 60, nan_at: int | None = None, name: str | None = None,
           config: dict | None = None) -> Path:
    """A small conv net on random 8x8 'images' of 4 classes, recorded with per-layer stats and snapshots."""
    torch.manual_seed(0)
    x = torch.randn(256, 1, 8, 8)
    y = (x[:, 0, :4].mean((1, 2)) > 0).long() * 2 + (x[:, 0, :, :4].mean((1, 2)) > 0).long()
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 5, padding=2), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    with hooks.Run(path, num_classes=4, config=config or {"lr": lr, "batch_size": 32}, on_critical=None) as run:
        run.watch(model, opt, every=5, snapshot_every=20)
        for step in range(steps):
            idx = torch.randint(0, 256, (32,))
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            if nan_at is not None and step >= nan_at:
                loss = loss * float("nan")
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss=loss)
            if step % 20 == 19:
                with torch.no_grad():
                    acc = (model(x).argmax(1) == y).float().mean()
                run.epoch(train_loss=loss, train_acc=acc, val_loss=loss * 1.05, val_acc=acc * 0.97)
    if name is not None:
        meta = runfile.read_json(path / runfile.META)
        meta["name"] = name
        runfile.write_json_atomic(path / runfile.META, meta)
    return path


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("report") / "healthy")


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("report") / "nan", nan_at=45)


# --------------------------------------------------------------------------- the document
def test_report_is_standalone_and_holds_every_section(healthy, tmp_path):
    out, data = write_report(healthy, tmp_path / "r.html")
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>")
    for section in ('id="findings"', 'id="charts"', 'id="weights"', 'id="details"'):
        assert section in html
    for title in ("Loss", "Accuracy", "Learning rate", "Gradient norm per layer", "Update / weight ratio"):
        assert f"<figcaption>{title}" in html
    assert html.count("<svg") >= 6 and html.count('src="data:image/png;base64,') >= 2
    # Nothing to fetch, nothing to run.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "<script" not in html.lower() and "@import" not in html
    assert "default-src 'none'" in html
    assert "batch_size" in html and "conv" in html.lower()


def test_findings_grouped_with_evidence_and_fixes(nan_run, tmp_path):
    out, data = write_report(nan_run, tmp_path / "r.html")
    html = out.read_text()
    rules = [f["rule"] for f in data["findings"]]
    assert "nonfinite_loss" in rules
    assert '<h3 class="group sev-critical">Critical' in html
    assert html.index("sev-critical") < html.index('id="charts"')
    assert "What to try, in order" in html and "<summary>Evidence</summary>" in html
    assert 'class="nonfinite"' in html and "first non-finite at step 46" in html


def test_rules_without_data_are_listed_as_not_evaluated(tmp_path, healthy):
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss,val_acc\n" + "".join(f"{s},{2.0 - s / 100},\n" for s in range(60)) + "59,,0.5\n")
    csv_run = load_any(path)
    findings, _ = diagnose_all(csv_run)
    skipped = {s["rule"]: s for s in not_evaluated(csv_run, findings)}
    for rule in ("dead_units", "vanishing_gradients", "exploding_gradients", "update_ratio", "noisy_weights",
                 "stalled_run", "test_set_reuse", "init_loss_mismatch", "chance_accuracy"):
        assert rule in skipped, rule
    assert "nonfinite_loss" not in skipped
    assert "num_classes unknown" in skipped["chance_accuracy"]["why"]
    assert skipped["stalled_run"]["why"].startswith("no process status")
    html = build_report(csv_run)
    assert "Not evaluated for lack of data" in html and "dead_units" in html and "num_classes unknown" in html
    # the report's account is the engine's, rule for rule: what each rule needs is the rule's `needs`
    assert [(s["rule"], s["why"]) for s in not_evaluated(csv_run)] == [
        (s["rule"], s["why"]) for s in diagnose(csv_run).not_evaluated]

    full = load_any(healthy)
    skipped = {s["rule"] for s in not_evaluated(full)}
    assert not skipped & {"dead_units", "noisy_weights", "stalled_run", "test_set_reuse", "exploding_gradients"}


def test_imported_logs_report_what_was_mapped(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train_loss_step,val_acc\n" + "".join(f"0,{s},{1 / (s + 1)},\n" for s in range(30))
                    + "0,29,,0.7\n")
    out, _ = write_report(path, tmp_path / "out.html")
    html = out.read_text()
    assert "CSV of metrics imported from" in html and "train_loss_step" in html and "Imported as" in html


# --------------------------------------------------------------------------- escaping
def _hostile_run(tmp_path: Path) -> Path:
    path = _train(tmp_path / XSS_DIR, steps=25, name=XSS, config={"<b>key</b>": XSS, "lr": "'\"><svg onload=x>"})
    with open(path / runfile.FINDINGS, "a") as f:
        f.write(runfile.dumps_line({"rule": "x<script>", "title": XSS, "severity": "warning", "step": 3,
                                    "epoch": 1, "message": "</p><script>alert(3)</script>",
                                    "evidence": {"<i>k</i>": "<img src=y onerror=alert(4)>"},
                                    "fix": ["<a href='javascript:alert(5)'>click</a>"]}))
    return path


def test_every_user_string_is_escaped(tmp_path):
    path = _hostile_run(tmp_path)
    out, _ = write_report(path, tmp_path / "r.html")
    html = out.read_text()
    assert "<script" not in html.lower()
    assert "<img src=x" not in html and "<img src=y" not in html and "<svg onload" not in html
    assert "<a href=" not in html and "<b>key" not in html and "<i>k" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown as text, not dropped
    assert "&lt;img src=y onerror=alert(4)&gt;" in html
    assert "<title>babysit report: &lt;script&gt;" in html


# --------------------------------------------------------------------------- pictures
def test_downsampling_keeps_spikes_and_non_finite_values():
    y = np.ones(100_000)
    y[31_337] = 1e6
    y[77_777] = np.nan
    x, yy = minmax_downsample(np.arange(len(y)), y, 300)
    assert len(x) <= 900 and 1e6 in yy and np.isnan(yy).sum() == 1 and 31_337 in x
    assert np.all(np.diff(x) > 0)


def test_chart_marks_nan_and_inf_and_escapes_labels():
    svg = line_chart([Line("<b>loss</b>", np.arange(10), np.array([1, 2, np.nan, 3, np.inf, 2, 1, 1, -np.inf, 1.0]))])
    assert svg.count('class="nonfinite"') == 3 and "first non-finite at step 2" in svg
    assert "<b>" not in svg and "&lt;b&gt;loss" in svg
    assert ">lr (log)</text>" in line_chart([Line("lr", np.arange(50), np.logspace(-5, 0, 50))], y_label="lr")
    assert ">lr</text>" in line_chart([Line("lr", np.arange(50), np.linspace(1, 2, 50))], y_label="lr")


def test_png_encoders_agree_and_nan_weights_are_red():
    from PIL import Image

    w = np.random.default_rng(0).normal(size=(6, 3, 5, 5))
    w[2, 1, 3, 3] = np.nan
    grid = filter_grid(w)
    assert grid.nonfinite == 1 and "RGB" in grid.caption
    a = np.asarray(Image.open(io.BytesIO(png_bytes(grid.pixels, use_pillow=True))))
    b = np.asarray(Image.open(io.BytesIO(png_bytes(grid.pixels, use_pillow=False))))
    assert np.array_equal(a, b) and np.array_equal(a, grid.pixels)
    assert (grid.pixels == (214, 39, 40)).all(axis=-1).sum() == 1
    assert filter_grid(np.ones((10, 7))).caption.endswith("matrix")


def test_snapshot_paths_outside_the_run_are_not_read(tmp_path):
    path = _train(tmp_path / "run", steps=25)
    secret = tmp_path / "secret.npy"
    np.save(secret, np.full((4, 1, 5, 5), 7.0))
    with open(path / runfile.EVENTS, "a") as f:
        f.write(runfile.dumps_line({"type": "snapshot", "step": 99, "time": 1.0, "layer": "0",
                                    "file": "../secret.npy", "shape": [4, 1, 5, 5]}))
    html = build_report(load_any(path))
    assert "snapshot unreadable" in html


# --------------------------------------------------------------------------- the command
def test_cli_writes_the_report_and_fails_in_one_line(healthy, tmp_path, capsys):
    out = tmp_path / "sub" / "report.html"
    assert main(["report", str(healthy), "-o", str(out)]) == 0
    assert out.exists() and "report written to" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such" in err
    assert main(["report", str(healthy), "--map", "loss"]) == 2
    assert main(["report", str(healthy), "--threshold", "no_such_threshold=1", "-o", str(out)]) == 2
    assert main(["report", str(healthy), "--threshold", "explosion_factor=5", "-o", str(out)]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(healthy, copy)
    assert main(["report", str(copy)]) == 0 and (copy / "report.html").exists()


def test_recorded_findings_the_diagnosis_does_not_reproduce_are_kept(tmp_path):
    path = _train(tmp_path / "run", steps=25)
    with open(path / runfile.FINDINGS, "a") as f:
        for severity in ("info", "warning", "info"):  # the log keeps each escalation
            f.write(runfile.dumps_line({"rule": "custom_rule", "title": "Custom", "severity": severity, "step": 1,
                                        "epoch": 1, "message": severity, "evidence": {"x": math.nan}, "fix": []}))
    findings, problems = diagnose_all(load_any(path))
    custom = [f for f in findings if f["rule"] == "custom_rule"]
    assert len(custom) == 1 and custom[0]["recorded"] and custom[0]["severity"] == "warning" and not problems
    assert "recorded during training" in build_report(load_any(path), findings)


# --------------------------------------------------------------------------- in a browser, offline
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser():
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian chromium not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        try:
            yield b
        finally:
            b.close()


def _open_offline(browser, path: Path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    blocked, dialogs, errors = [], [], []

    def route(r):
        if r.request.url.startswith("file:"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return page, blocked, dialogs, errors


@pytest.mark.browser
def test_report_shows_its_charts_offline_in_chromium(browser, nan_run, tmp_path):
    out, _ = write_report(nan_run, tmp_path / "report.html")
    page, blocked, dialogs, errors = _open_offline(browser, out)
    charts = page.locator("svg.chart")
    assert charts.count() >= 6
    for i in range(charts.count()):
        box = charts.nth(i).bounding_box()
        assert charts.nth(i).is_visible() and box["width"] > 300 and box["height"] > 100
    imgs = page.locator("#weights img")
    assert imgs.count() >= 2 and imgs.first.is_visible()
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("svg.chart path[stroke]").count() >= 6  # the series were drawn
    assert page.locator("svg.chart .nonfinite").count() >= 1
    assert page.locator(".finding.sev-critical").first.is_visible()
    assert not blocked and not dialogs and not errors
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    healthy_page, *_ = _open_offline(browser, write_report(_train(tmp_path / "ok", steps=120), tmp_path / "ok.html")[0])
    healthy_page.screenshot(path=str(ARTIFACTS / "report_healthy.png"), full_page=True)


@pytest.mark.browser
def test_hostile_run_names_do_not_execute_in_chromium(browser, tmp_path):
    out, _ = write_report(_hostile_run(tmp_path), tmp_path / "r.html")
    page, blocked, dialogs, errors = _open_offline(browser, out)
    page.wait_for_timeout(300)
    assert dialogs == [] and blocked == []
    assert page.locator("h1").inner_text() == XSS
    assert page.locator("script").count() == 0
    assert page.locator("img[src='x'], img[src='y'], a[href^='javascript']").count() == 0
    assert "</p><script>alert(3)</script>" in page.locator(".finding .msg").first.inner_text()
    assert not errors
