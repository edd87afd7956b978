"""The learning-rate range test: the curve's reading (synthetic curves), the sweep as a recorded run (real
training on digits), the CLI, `babysit search` centred on it, and the proof in small: the suggestion is within
3x of the best lr of a grid of real trainings around it (benchmarks/lr_find.py does the full grid)."""

from __future__ import annotations

import json
import math

import pytest

from babysit.monitor.cli import main
from babysit.monitor.reader import load_run
from babysit.rules.lr_range import analyze, beta_for, smooth
from babysit.trainer.lr_find import lr_find
from babysit.trainer.train import train


def _sweep(n=200, start=1e-7, end=10.0):
    return [start * (end / start) ** (i / (n - 1)) for i in range(n)]


def _curve(lrs, fall_at=1e-2, blow_at=1.0):
    """A range-test loss: flat at ln 10, falls around `fall_at` (steepest there), blows up past `blow_at`."""
    out = []
    for lr in lrs:
        x = math.log10(lr / fall_at)
        loss = 0.3 + 2.0 / (1 + math.exp(4 * x))  # logistic in log lr: steepest exactly at fall_at
        if lr > blow_at:
            loss *= (lr / blow_at) ** 6
        out.append(loss)
    return out


# --------------------------------------------------------------------------- reading a curve
def test_smooth_is_a_debiased_ema():
    assert smooth([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0 at the start
    assert math.isnan(smooth([1.0, float("nan"), 1.0], 0.9)[2])


def test_beta_keeps_a_quarter_decade_of_memory():
    assert 1 / (1 - beta_for(_sweep(200))) == pytest.approx(200 / 8 / 4, rel=0.05)
    assert beta_for(_sweep(5000)) == 0.98 and beta_for(_sweep(30)) == 0.5  # clipped both ways


def test_analyze_reads_steepest_descent_and_divergence():
    lrs = _sweep()
    r = analyze(lrs, _curve(lrs))
    assert r["steepest"] == pytest.approx(1e-2, rel=0.6)  # the EMA lags a little behind the raw curve
    assert 1.0 < r["diverged_lr"] < 3.0 and r["max_stable"] < r["diverged_lr"]
    assert r["chosen"] == "max_stable_div10" and r["suggestion"] == pytest.approx(r["max_stable"] / 10)
    assert "diverged" in r["reason"] and f"{r['steepest']:.3g}" in r["reason"]


def test_analyze_without_divergence_suggests_the_steepest_descent():
    lrs = _sweep(end=0.3)
    r = analyze(lrs, _curve(lrs))
    assert r["diverged_lr"] is None and r["chosen"] == "steepest" and r["suggestion"] == r["steepest"]
    assert "never diverged" in r["reason"]


def test_analyze_says_why_when_it_cannot_suggest():
    lrs = _sweep(50)
    r = analyze(lrs, [2.3, float("nan")] + [math.nan] * 48)
    assert r["suggestion"] is None and "start the sweep lower" in r["reason"]
    with pytest.raises(ValueError, match="learning rates"):
        analyze(lrs, [1.0])


# --------------------------------------------------------------------------- the sweep, on digits
def test_lr_find_records_an_ordinary_run_with_the_sweep_and_its_reading(quick_cfg):
    cfg = quick_cfg("lrf", batch_size=32)
    result = lr_find(cfg, steps=120)
    run = load_run(cfg.run_dir)
    assert run.status["state"] == "finished" and len(run.steps) == len(result.lrs) <= 120
    lrs = run.steps["lr"].to_numpy()
    assert lrs[0] == pytest.approx(1e-7) and (lrs[1:] > lrs[:-1]).all()  # the lr column is the sweep
    ratios = lrs[1:] / lrs[:-1]
    assert ratios.max() == pytest.approx(ratios.min(), rel=1e-6)  # exponential
    assert run.steps["loss"].iloc[0] == pytest.approx(math.log(10), abs=0.2)
    (event,) = [e for e in run.events if e.get("name") == "lr_find"]
    assert event["data"]["suggestion"] == pytest.approx(result.suggestion)
    assert {"steepest", "max_stable_div10", "reason", "chosen", "diverged_lr"} <= set(event["data"])
    assert result.diverged_lr is not None and result.suggestion < result.diverged_lr
    assert run.meta["config"]["lr_find"]["steps"] == 120 and "lr" not in run.meta["config"]  # the sweep is the lr


def test_lr_find_suggestion_is_within_3x_of_the_best_of_real_trainings(quick_cfg):
    """The proof in small: train the MLP on digits at the suggestion and around it; the best lr of that grid
    is within 3x of the suggestion. A suggestion 10x off would put the best at the grid's edge."""
    suggestion = lr_find(quick_cfg("lrf"), steps=150).suggestion
    assert suggestion is not None
    factors = (1 / 9, 1 / 2.5, 1.0, 2.5, 9.0)
    accs = {}
    for f in factors:
        r = train(quick_cfg(f"t{f:.3f}", lr=suggestion * f, epochs=4, on_critical="warn", max_loss_ratio=0))
        accs[f] = r["best_val_acc"] if math.isfinite(r["best_val_acc"]) else 0.0
    best = max(factors, key=lambda f: accs[f])
    assert 1 / 3 <= best <= 3, (suggestion, accs)
    assert accs[best] > 0.9


def test_lr_find_refuses_bad_input_in_one_line(quick_cfg, capsys, tmp_path):
    with pytest.raises(ValueError, match="start-lr"):
        lr_find(quick_cfg("a"), start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="--steps"):
        lr_find(quick_cfg("b"), steps=5)
    assert main(["lr-find", "--start-lr", "0", "--run-dir", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "start-lr" in err[0]


def test_cli_prints_both_candidates_and_why(tmp_path, capsys):
    run_dir = tmp_path / "cli"
    assert main(["lr-find", "--model", "mlp", "--steps", "100", "--run-dir", str(run_dir), "--no-progress",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "steepest descent" in out and "largest lr before divergence / 10" in out and "suggested lr" in out
    assert main(["lr-find", "--model", "mlp", "--steps", "100", "--run-dir", str(run_dir), "--json"]) == 2
    assert main(["lr-find", "--model", "mlp", "--steps", "100", "--run-dir", str(tmp_path / "j"), "--json",
                 "--threads", "1"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["suggestion"] > 0 and data["run_dir"] == str(tmp_path / "j")


@pytest.mark.slow  # an lr-find and one trial, each in its own process
def test_search_without_lr_centres_stage_one_on_the_suggestion(tmp_path):
    folder = tmp_path / "search"
    assert main(["search", "--model", "mlp", "--trials", "1", "--fine-trials", "0", "--epochs", "1",
                 "--search-dir", str(folder), "--no-progress", "--threads", "1"]) == 0
    header = json.loads((folder / "search.json").read_text())
    suggestion = header["lr_find"]["suggestion"]
    lo, hi = header["stages"][0]["lr_range"]
    assert suggestion > 0 and math.sqrt(lo * hi) == pytest.approx(suggestion, rel=0.01)
    assert math.log10(hi / lo) == pytest.approx(3, abs=0.01)
    assert lo <= header["trials"][0]["lr"] <= hi
    assert load_run(folder / "lr-find").status["state"] == "finished"


# --------------------------------------------------------------------------- dashboard and report
def _fake_sweep(path, n=60, event=None):
    """A run recorded the way lr_find records one (config lr_find, lr column), without training."""
    import torch

    from babysit import hooks

    lrs = _sweep(n, end=3.0)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)  # the lr column comes from it
    with hooks.Run(path, num_classes=10, config={"lr_find": {"start_lr": 1e-7, "end_lr": 3.0, "steps": n}},
                   on_critical=None, flush_interval=0.0) as run:
        run.watch(None, opt)
        for lr, loss in zip(lrs, _curve(lrs), strict=True):
            opt.param_groups[0]["lr"] = lr
            run.step(loss=loss)
        if event is not None:
            run.log_event("lr_find", **event)
    return lrs


def test_dashboard_draws_loss_against_lr_with_the_suggestion(tmp_path):
    from babysit.monitor.dashboard.lr_find_chart import lr_find_caption
    from babysit.monitor.dashboard.state import RunState
    from babysit.monitor.dashboard.views import run_plans

    _fake_sweep(tmp_path / "live")  # still sweeping: the curve, no suggestion yet
    state = RunState(tmp_path / "live")
    state.update()
    plan = run_plans(state)["lr_find"]
    assert len(plan.frames["raw"]) == 60 and not len(plan.frames["marks"])
    assert "sweeping" in lr_find_caption(state.events)

    _fake_sweep(tmp_path / "done", event={"suggestion": 0.1, "steepest": 0.01, "max_stable_div10": 0.1,
                                          "chosen": "max_stable_div10", "reason": "diverged at 1.2"})
    state = RunState(tmp_path / "done")
    state.update()
    plan = run_plans(state)["lr_find"]
    spec = plan.chart().to_dict()  # validated against the Vega-Lite schema
    assert spec["layer"][0]["encoding"]["x"]["scale"]["type"] == "log"
    assert list(plan.frames["marks"]["lr"]) == [0.1, 0.01]  # max_stable_div10 is the suggestion: one rule
    assert plan.frames["raw"]["lr"].is_monotonic_increasing
    assert lr_find_caption(state.events).startswith("suggested lr 0.1 (max_stable_div10)")


def test_report_has_the_curve_as_inline_svg_with_the_reason_escaped(tmp_path):
    from babysit.monitor.report import build_report

    _fake_sweep(tmp_path / "r", event={"suggestion": 0.1, "steepest": 0.01, "max_stable_div10": 0.1,
                                       "chosen": "max_stable_div10", "reason": "<script>x</script> diverged"})
    html = build_report(load_run(tmp_path / "r"))
    section = html[html.index('<section id="lr-find">'):]
    section = section[:section.index("</section>")]
    assert "<svg" in section and "learning rate (log)" in section and "suggested 0.1" in section
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt; diverged" in section


def test_an_ordinary_run_gets_no_lr_find_chart_nor_section(run_dir):
    from babysit import hooks
    from babysit.monitor.dashboard.state import RunState
    from babysit.monitor.dashboard.views import run_plans
    from babysit.monitor.report_lr_find import lr_find_section

    with hooks.Run(run_dir, flush_interval=0.0) as run:
        for i in range(30):
            run.step(loss=2.0 - i / 30, lr=0.1)
    state = RunState(run_dir)
    state.update()
    assert "lr_find" not in run_plans(state) and lr_find_section(load_run(run_dir)) == ""


def test_search_dry_run_without_lr_says_lr_find_would_run_first(tmp_path, capsys):
    assert main(["search", "--dry-run", "--trials", "2", "--search-dir", str(tmp_path / "s")]) == 0
    captured = capsys.readouterr()
    assert "lr-find" in captured.err and captured.out.count("babysit train") == 2
    assert not (tmp_path / "s").exists()  # a dry run trains nothing, not even the sweep
