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
    assert run.meta["config"]["lr_find"]["steps"] == 120


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
