"""The charts of the Run view as data: `run_plans(state, ...)` is everything a refresh computes for a run.

The app draws these plans; the benchmark (benchmarks/dashboard.py) times exactly this function, so the
numbers it reports are the app's data path, not a copy of it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from babysit.monitor.dashboard import charts
from babysit.monitor.dashboard.downsample import ema
from babysit.monitor.dashboard.lr_find_chart import lr_find_plan
from babysit.monitor.dashboard.state import RunState

__all__ = ["run_plans", "spans_decades", "UPDATE_RATIO_BAND"]

UPDATE_RATIO_BAND = (1e-4, 1e-2)  # a decade either side of CS231n's ~1e-3


def spans_decades(values: np.ndarray, decades: float) -> bool:
    """True when the positive finite values span more than `decades` orders of magnitude (an exploding loss)."""
    values = np.asarray(values, dtype=float)
    v = values[np.isfinite(values) & (values > 0)]
    return bool(len(v)) and float(v.max()) / float(v.min()) > 10.0**decades


def heal_marks(events: list[dict]) -> pd.DataFrame:
    """One row (step, label) per rollback of a self-healing run: the heal events (docs/FORMAT.md)."""
    rows = [(e.get("step"), f"healed: {str(e['data'].get('action'))[:40]}") for e in events
            if e.get("name") == "heal" and isinstance(e.get("data"), dict) and isinstance(e.get("step"), (int, float))
            and not isinstance(e.get("step"), bool)]
    return pd.DataFrame(rows, columns=["step", "label"])


def run_plans(
    state: RunState,
    *,
    domain: tuple[float, float] | None = None,
    marker: dict | None = None,
    scale: str = "auto",
    smoothing: float = 0.8,
) -> dict[str, charts.ChartPlan]:
    """Chart plans of one run: loss, accuracy, lr and the per-layer small multiples (those with data).

    domain: zoom the step axis to this range (a finding's neighbourhood); scale: "auto" (log when the loss
    spans three decades), "linear" or "log".
    """
    plans: dict[str, charts.ChartPlan] = {}
    view = state.loss.window(*domain) if domain else state.loss.view()
    smooth = pd.DataFrame({"step": view.mean_x, "loss": ema(view.mean_y, smoothing)})
    log = scale == "log" or (scale == "auto" and spans_decades(view.y, 3))
    c = state.num_classes()
    plans["loss"] = charts.plan_loss(
        view.frame(y="loss"), smooth, state.loss.view().nonfinite if domain else view.nonfinite,
        initial_loss=state.initial_loss(), ln_c=math.log(c) if c else None, log_scale=log, domain=domain,
        marker=marker if domain else None, height=340, heals=heal_marks(state.events),
    )
    epochs = state.epochs
    if len(epochs) and {"train_acc", "val_acc"} & set(epochs.columns):
        plans["accuracy"] = charts.plan_accuracy(epochs, chance=1.0 / c if c else None, height=260)
    lr = state.lr.window(*domain) if domain else state.lr.view()
    if len(lr.x):
        plans["lr"] = charts.plan_lr(lr.frame(y="lr"), domain=domain, height=260)
    lr_find = lr_find_plan(state)  # a `babysit lr-find` run: loss against lr (lr_find_chart.py)
    if lr_find is not None:
        plans["lr_find"] = lr_find
    lo, hi = domain if domain else (None, None)
    columns = min(4, max(1, len(state.layer_order)))
    grad = state.layer_frame("g_norm", lo, hi)
    if len(grad):
        plans["grad"] = charts.plan_layers(grad, title="Gradient norm", log_scale=True, independent_y=True,
                                           columns=columns, domain=domain)
    ratio = state.layer_frame("update_ratio", lo, hi)
    if len(ratio):
        plans["ratio"] = charts.plan_layers(ratio, title="Update / weight ratio (healthy ≈ 1e-3)", log_scale=True,
                                            band=UPDATE_RATIO_BAND, reference=1e-3, color="#8b5cf6",
                                            columns=columns, domain=domain)
    dead = pd.concat([state.layer_frame("dead_frac", lo, hi), state.layer_frame("saturated_frac", lo, hi)],
                     ignore_index=True)
    if len(dead):
        plans["dead"] = charts.plan_layers(dead, title="Dead (ReLU) or saturated (tanh, sigmoid) fraction",
                                           y_domain=(0, 1), color="#f97316",
                                           columns=min(4, dead["layer"].nunique()), domain=domain)
    return plans
