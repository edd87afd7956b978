"""Chart builders are pure functions: each test reads the Vega-Lite spec (`chart.to_dict()`)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from babysit.monitor.dashboard import charts


def _layers(spec: dict) -> list[dict]:
    out = []
    for layer in spec.get("layer", []):
        out.extend(_layers(layer) if "layer" in layer else [layer])
    return out


def _mark(layer: dict) -> str:
    m = layer["mark"]
    return m["type"] if isinstance(m, dict) else m


def _loss_frames(n: int = 50, peak: float | None = None):
    steps = np.arange(1, n + 1, dtype=float)
    loss = 2.3 * np.exp(-steps / 20)
    if peak is not None:
        loss[-1] = peak
    points = pd.DataFrame({"step": steps, "loss": loss})
    return points, points.assign(loss=loss * 0.99)


def test_loss_chart_draws_raw_smoothed_and_the_reference_levels():
    points, smooth = _loss_frames(peak=9.0)
    spec = charts.plan_loss(points, smooth, initial_loss=2.3, ln_c=math.log(10)).chart().to_dict()
    data = spec["datasets"]
    assert {r["series"] for r in data["loss"]} == {"raw", "smoothed"}
    assert len(data["loss"]) == 100
    levels = {r["series"]: r["loss"] for r in data["refs"]}
    assert levels["initial"] == pytest.approx(2.3)
    assert levels["ln(C)"] == pytest.approx(math.log(10))
    assert levels["3× initial"] == pytest.approx(6.9)  # drawn: the loss went past 1.5x initial
    rules = [lyr for lyr in _layers(spec) if _mark(lyr) == "rule" and lyr.get("data", {}).get("name") == "refs"]
    assert rules and rules[0]["encoding"]["y"]["field"] == "loss"
    colors = spec["layer"][0]["encoding"]["color"]["scale"]
    assert colors["range"][colors["domain"].index("3× initial")] == charts.COLORS["3× initial"]


def test_a_healthy_curve_is_not_squashed_by_the_danger_line():
    points, smooth = _loss_frames()
    spec = charts.plan_loss(points, smooth, initial_loss=2.3).chart().to_dict()
    assert "3× initial" not in {r["series"] for r in spec["datasets"]["refs"]}
    assert "6.9" in spec["datasets"]["danger"][0]["label"]  # said in words at the top edge instead


def test_loss_chart_marks_nonfinite_steps_and_never_plots_them():
    points, smooth = _loss_frames()
    points.loc[10, "loss"] = np.nan
    nonfinite = pd.DataFrame({"start": [11.0, 30.0], "end": [11.0, 40.0], "kind": ["NaN", "+inf"], "count": [1, 11]})
    spec = charts.plan_loss(points, smooth, nonfinite, initial_loss=2.3).chart().to_dict()
    assert spec["datasets"]["nonfinite"] == [
        {"start": 11.0, "end": 11.0, "kind": "NaN", "count": 1},
        {"start": 30.0, "end": 40.0, "kind": "+inf", "count": 11},
    ]
    marks = [(_mark(lyr), lyr.get("mark", {}).get("color")) for lyr in _layers(spec)
             if lyr.get("data", {}).get("name") == "nonfinite"]
    assert ("rule", charts.COLORS["NaN/inf"]) in marks and ("rect", charts.COLORS["NaN/inf"]) in marks
    assert all(math.isfinite(r["loss"]) for r in spec["datasets"]["loss"])


def test_log_scale_drops_nonpositive_values_and_sets_a_log_axis():
    points = pd.DataFrame({"step": [1.0, 2.0, 3.0], "loss": [1.0, 0.0, -1.0]})
    spec = charts.plan_loss(points, None, log_scale=True).chart().to_dict()
    assert [r["loss"] for r in spec["datasets"]["loss"]] == [1.0]
    assert spec["layer"][0]["encoding"]["y"]["scale"]["type"] == "log"


def test_focusing_on_a_finding_sets_the_step_range_and_draws_a_marker():
    points, smooth = _loss_frames()
    spec = charts.plan_loss(points, smooth, domain=(10, 30),
                            marker={"step": 20, "severity": "critical", "label": "Loss is NaN"}).chart().to_dict()
    assert spec["layer"][0]["encoding"]["x"]["scale"]["domain"] == [10.0, 30.0]
    assert spec["datasets"]["marker"] == [{"step": 20.0, "label": "Loss is NaN"}]
    marker = [lyr for lyr in _layers(spec) if lyr.get("data", {}).get("name") == "marker" and _mark(lyr) == "rule"]
    assert marker[0]["mark"]["color"] == charts.SEVERITY_COLORS["critical"]


def test_accuracy_chart_shades_the_gap_between_train_and_val():
    epochs = pd.DataFrame({"epoch": [1, 2, 3], "train_acc": [0.5, 0.8, 0.99], "val_acc": [0.45, 0.6, 0.62]})
    spec = charts.plan_accuracy(epochs, chance=0.1).chart().to_dict()
    gap = spec["datasets"]["gap"]
    assert [round(r["gap"], 2) for r in gap] == [0.05, 0.2, 0.37]
    area = [lyr for lyr in _layers(spec) if _mark(lyr) == "area"][0]
    assert area["encoding"]["y"]["field"] == "train_acc" and area["encoding"]["y2"]["field"] == "val_acc"
    assert {(r["split"], r["epoch"]) for r in spec["datasets"]["acc"]} >= {("train", 1), ("val", 3)}
    assert spec["datasets"]["chance"][0]["acc"] == pytest.approx(0.1)


def test_accuracy_chart_with_val_only_has_no_gap():
    spec = charts.plan_accuracy(pd.DataFrame({"epoch": [1, 2], "val_acc": [0.3, 0.4]})).chart().to_dict()
    assert "gap" not in spec["datasets"] and len(spec["datasets"]["acc"]) == 2


def test_lr_chart_goes_log_when_the_rate_spans_decades():
    flat = charts.plan_lr(pd.DataFrame({"step": [1.0, 2.0], "lr": [0.1, 0.1]})).chart().to_dict()
    decayed = charts.plan_lr(pd.DataFrame({"step": [1.0, 2.0, 3.0], "lr": [0.1, 0.01, 0.001]})).chart().to_dict()
    assert flat["encoding"]["y"]["scale"]["type"] == "linear"
    assert decayed["encoding"]["y"]["scale"]["type"] == "log"
    assert decayed["mark"]["interpolate"] == "step-after"


def test_layer_chart_is_small_multiples_with_the_healthy_update_ratio_band():
    frame = pd.DataFrame({"step": [1.0, 2.0] * 2, "layer": ["conv1", "conv1", "fc", "fc"],
                          "value": [1e-3, 2e-3, 5e-4, 0.0]})
    plan = charts.plan_layers(frame, title="update ratio", log_scale=True, band=(1e-4, 1e-2), reference=1e-3)
    spec = plan.chart().to_dict()
    assert spec["facet"]["field"] == "layer" and spec["facet"]["sort"] == {"field": "order", "op": "min"}
    assert [(r["layer"], r["order"]) for r in spec["datasets"]["layers"]][::2] == [("conv1", 0), ("fc", 1)]
    assert len(spec["datasets"]["layers"]) == 3  # the zero cannot sit on a log axis
    inner = spec["spec"]["layer"]
    band = [lyr for lyr in inner if _mark(lyr) == "rect"][0]
    assert band["encoding"]["y"]["datum"] == 1e-4 and band["encoding"]["y2"]["datum"] == 1e-2
    ref = [lyr for lyr in inner if _mark(lyr) == "rule"][0]
    assert ref["encoding"]["y"]["datum"] == 1e-3
    line = [lyr for lyr in inner if _mark(lyr) == "line"][0]
    assert line["encoding"]["y"]["scale"]["type"] == "log"


def test_compare_charts_colour_by_run():
    loss = pd.DataFrame({"run": ["a", "a", "b"], "step": [1.0, 2.0, 1.0], "loss": [1.0, 0.5, np.nan]})
    spec = charts.plan_compare_loss(loss).chart().to_dict()
    assert spec["encoding"]["color"]["field"] == "run" and len(spec["datasets"]["runs"]) == 2
    acc = pd.DataFrame({"run": ["a", "b"], "epoch": [1, 1], "split": ["val", "train"], "acc": [0.5, 0.6]})
    spec = charts.plan_compare_accuracy(acc).chart().to_dict()
    assert spec["encoding"]["strokeDash"]["field"] == "split"


def test_search_chart_is_log_x_with_a_click_selection_on_run():
    frame = pd.DataFrame({"run": ["a", "b", "c"], "lr": [1e-3, 1e-1, 0.0], "best_val_acc": [0.5, 0.9, 0.7],
                          "state": ["finished"] * 3})
    spec = charts.plan_search(frame, "lr", x_title="learning rate", current="b").chart().to_dict()
    assert spec["encoding"]["x"]["scale"]["type"] == "log"
    assert spec["params"][0]["name"] == "pick" and spec["params"][0]["select"]["fields"] == ["run"]
    assert [(r["run"], r["current"]) for r in spec["datasets"]["points"]] == [("a", False), ("b", True)]


def test_a_plan_builds_its_structure_once_and_then_only_swaps_data():
    points, smooth = _loss_frames()
    first = charts.plan_loss(points, smooth, initial_loss=2.3, height=123)
    hits = charts._spec.cache_info().hits
    spec1 = first.spec()
    again = charts.plan_loss(points.assign(loss=points["loss"] * 0.5), smooth, initial_loss=2.3, height=123)
    spec2 = again.spec()
    assert charts._spec.cache_info().hits >= hits + 1
    assert isinstance(spec2["datasets"]["loss"], pd.DataFrame)  # frames travel as DataFrames (Arrow)
    assert spec2["datasets"]["loss"]["loss"].iloc[0] == pytest.approx(0.5 * spec1["datasets"]["loss"]["loss"].iloc[0])
    spec2["layer"].clear()  # a caller mutating its spec must not corrupt the cache
    assert again.spec()["layer"]


def test_limit_intervals_bounds_the_marks():
    n = 5000
    frame = pd.DataFrame({"start": np.arange(n) * 2.0, "end": np.arange(n) * 2.0, "kind": "NaN", "count": 1})
    out = charts.limit_intervals(frame, 200)
    assert len(out) <= 200 and out["count"].sum() == n
    assert out["start"].min() == 0 and out["end"].max() == 2 * (n - 1)


def test_weight_grid_tiles_filters_and_flags_nonfinite_weights():
    rng = np.random.default_rng(0)
    conv = rng.standard_normal((16, 1, 5, 5))
    conv[3, 0, 2, 2] = np.nan
    img = charts.weight_grid(conv, target_px=0, pad=1)
    assert img.shape == (4 * 6 + 1, 4 * 6 + 1, 3)
    assert img.min() >= 0 and img.max() <= 1
    tile3 = img[1:6, 3 * 6 + 1 : 3 * 6 + 6]
    np.testing.assert_array_equal(tile3[2, 2], [1.0, 0.0, 1.0])  # magenta
    linear = charts.weight_grid(rng.standard_normal((10, 64)), target_px=0, pad=0)
    assert linear.shape == (3 * 8, 4 * 8, 3)  # ten 8x8 templates in 3 rows of 4
    rgb = charts.weight_grid(rng.standard_normal((4, 3, 4, 4)), target_px=0, pad=0)
    assert not np.allclose(rgb[..., 0], rgb[..., 1])  # colour filters stay in colour
