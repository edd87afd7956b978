"""The dashboard in a real browser: a run trains, the page updates without a reload, and a finding appears
when the run goes wrong. Screenshots are kept in artifacts/ (look at them: the page must look good).

Needs Debian's chromium (/usr/bin/chromium) driven by Playwright; skipped cleanly where either is missing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from benchmarks.synthetic import write_run

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
ROOT = Path(__file__).resolve().parents[2]

# A slow training run that goes bad: healthy for BAD_AT steps, then the learning rate jumps by 1e6.
TRAINER = textwrap.dedent("""
    import sys, time
    import torch
    from babysit import hooks

    run_dir, bad_at, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = torch.randn(512, 1, 8, 8)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    config = {"model": "tiny-convnet", "lr": 0.05, "reg": 0.0, "batch_size": 32}
    with hooks.Run(run_dir, num_classes=4, config=config, flush_interval=0.2, on_critical="warn") as run:
        run.watch(model, opt, every=5, snapshot_every=25, input_shape=(1, 8, 8))
        for step in range(total):
            if step == bad_at:
                for group in opt.param_groups:
                    group["lr"] = 1e6
            i = (step * 32) % 512
            loss = torch.nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss=loss)
            if (step + 1) % 16 == 0:
                with torch.no_grad():
                    acc = (model(x).argmax(1) == y).float().mean().item()
                run.epoch(train_loss=loss.item(), train_acc=acc, val_loss=loss.item(), val_acc=acc * 0.95)
            time.sleep(0.05)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.read().strip() == b"ok"
    except OSError:
        return False


def _step_value(page) -> int | None:
    metric = page.get_by_test_id("stMetric").filter(has=page.get_by_text("Step", exact=True))
    if not metric.count():
        return None
    text = metric.first.get_by_test_id("stMetricValue").inner_text()
    digits = re.sub(r"[^0-9]", "", text)
    return int(digits) if digits else None


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_live_dashboard_in_a_real_browser(tmp_path, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    root = tmp_path / "runs"
    root.mkdir()
    # Finished neighbours, so that Runs, Compare and Search have something to show.
    for i, (lr, reg) in enumerate([(0.003, 1e-4), (0.02, 3e-3), (0.1, 1e-5), (0.6, 1e-3)]):
        write_run(root / f"search/lr{lr:g}_reg{reg:g}", steps=1500, epochs=10, seed=i, config={"lr": lr, "reg": reg})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    script = tmp_path / "slow_train.py"
    script.write_text(TRAINER)
    procs = []
    try:
        trainer = subprocess.Popen([sys.executable, str(script), str(root / "live"), "300", "3000"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(trainer)
        port = _free_port()
        dashboard = subprocess.Popen([sys.executable, "-m", "babysit", "dashboard", str(root), "--port", str(port)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(dashboard)
        _wait(lambda: _healthy(port), 120, "the dashboard to serve")
        _wait(lambda: (root / "live" / "meta.json").exists() or trainer.poll() is not None, 90, "the run to start")
        assert trainer.poll() is None, trainer.stderr.read().decode()[-2000:]

        page = browser.new_page(viewport={"width": 1500, "height": 1250})
        page.goto(f"http://127.0.0.1:{port}/?run=live")
        first = _wait(lambda: _step_value(page), 120, "the Step metric")
        page.evaluate("window.__not_reloaded = true")  # gone if anything reloads the page
        # New steps appear without a reload: the same page, its fragment rerunning on its own.
        later = _wait(lambda: (v := _step_value(page)) is not None and v > first and v, 60, "the step counter to grow")
        assert later > first and page.evaluate("window.__not_reloaded === true")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "dashboard_live.png"))

        if importlib.util.find_spec("babysit.rules") is None:
            pytest.xfail("pending on rules: no rule engine to flag the run")
        card = page.locator('[class*="st-key-finding-critical"], [class*="st-key-finding-warning"]')
        _wait(lambda: card.count() > 0, 120, "a finding to appear once the run goes wrong", interval=0.5)
        assert page.evaluate("window.__not_reloaded === true")  # still the same page: nothing reloaded it
        page.wait_for_timeout(2500)
        page.screenshot(path=str(ARTIFACTS / "dashboard_finding.png"))
        text = card.first.inner_text()
        assert "Try:" in text or "step" in text

        page.get_by_role("button", name="Show on charts").first.click()
        _wait(lambda: page.get_by_text("Zoomed to step").count() > 0, 30, "the charts to zoom on the finding")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "dashboard_focus.png"))

        for view in ("Runs", "Compare", "Search"):
            page.get_by_role("tab", name=view, exact=True).click()
            page.wait_for_timeout(3500)
            if view == "Runs":  # a run started now shows up in the table by itself
                assert page.get_by_text("5 run(s)", exact=False).count() == 1
                write_run(root / "late-arrival", steps=300, epochs=3, state="running", config={"lr": 0.01})
                _wait(lambda: page.get_by_text("6 run(s)", exact=False).count() > 0, 30,
                      "a new run to appear by itself")
                page.wait_for_timeout(2500)
            page.screenshot(path=str(ARTIFACTS / f"dashboard_{view.lower()}.png"))
        assert page.evaluate("window.__not_reloaded === true")
        healthy = browser.new_page(viewport={"width": 1500, "height": 1250})
        healthy.goto(f"http://127.0.0.1:{port}/?run=search/lr0.02_reg0.003")
        _wait(lambda: _step_value(healthy), 60, "a finished run's page")
        healthy.wait_for_timeout(3000)
        healthy.screenshot(path=str(ARTIFACTS / "dashboard_healthy.png"))
        healthy.close()

        page.get_by_role("tab", name="Run", exact=True).click()
        page.get_by_role("tab", name="Weights", exact=True).click()
        page.wait_for_timeout(2500)
        page.screenshot(path=str(ARTIFACTS / "dashboard_weights.png"), full_page=True)
        page.get_by_role("tab", name="Layers", exact=True).click()
        page.wait_for_timeout(2000)
        page.mouse.wheel(0, 1400)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "dashboard_layers.png"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
