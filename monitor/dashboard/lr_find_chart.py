"""The chart of a `babysit lr-find` run: loss against learning rate (log x), the suggestion marked.

An lr-find run is an ordinary run whose steps' `lr` column is the sweep (meta config `lr_find`, written by
trainer/lr_find.py); its `lr_find` event, at the end, holds the suggestion. While the sweep runs, the curve
grows live from the step records; the suggestion appears when the event does. Pure functions of the run's
frames, like charts.py: the spec is tested without a browser.
"""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from babysit.monitor.dashboard.charts import COLORS, ChartPlan, _data, _params
from babysit.rules.lr_range import beta_for, smooth

__all__ = ["is_lr_find", "lr_find_event", "lr_find_curve", "plan_lr_find", "lr_find_plan", "lr_find_caption"]

MARKS = {"suggestion": "#16a34a", "steepest": "#2563eb", "max_stable_div10": "#f59e0b"}
LABELS = {"suggestion": "suggested", "steepest": "steepest descent", "max_stable_div10": "largest stable / 10"}


def is_lr_find(meta: dict | None, events: list[dict] | None = None) -> bool:
    config = (meta or {}).get("config")
    return (isinstance(config, dict) and isinstance(config.get("lr_find"), dict)) or lr_find_event(events) is not None


def lr_find_event(events: list[dict] | None) -> dict | None:
    """The data of the last `lr_find` event, or None (the sweep is still running, or this is no lr-find run)."""
    for e in reversed(events or []):
        if isinstance(e, dict) and e.get("name") == "lr_find" and isinstance(e.get("data"), dict):
            return e["data"]
    return None


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 else None


def lr_find_curve(steps: np.ndarray, losses: np.ndarray, lr_steps: np.ndarray, lrs: np.ndarray,
                  beta: float | None = None) -> pd.DataFrame:
    """Columns lr, loss, smoothed: the loss of each step at that step's lr (steps without a finite positive lr
    dropped), smoothed as rules.lr_range reads it (a non-finite loss ends the smoothed line there)."""
    loss = pd.DataFrame({"step": np.asarray(steps, dtype=float), "loss": np.asarray(losses, dtype=float)})
    lr = pd.DataFrame({"step": np.asarray(lr_steps, dtype=float), "lr": np.asarray(lrs, dtype=float)})
    frame = loss.merge(lr.drop_duplicates("step", keep="last"), on="step", how="inner").sort_values("step")
    frame = frame[np.isfinite(frame["lr"].to_numpy()) & (frame["lr"].to_numpy() > 0)]
    values = frame["loss"].tolist()
    b = beta if beta is not None else beta_for(frame["lr"].tolist())
    frame = frame.assign(smoothed=smooth(values, b) if values else [])
    return frame[["lr", "loss", "smoothed"]].reset_index(drop=True)


def plan_lr_find(curve: pd.DataFrame, event: dict | None = None, *, height: int = 340) -> ChartPlan:
    """Loss (faint) and smoothed loss against lr on a log axis; vertical rules at the suggestion and both
    candidates once the sweep has ended (`event`: the lr_find event's data)."""
    finite = curve[np.isfinite(curve["loss"].to_numpy())] if len(curve) else curve
    smoothed = curve[np.isfinite(curve["smoothed"].to_numpy())] if len(curve) else curve
    marks = []
    for key in ("suggestion", "steepest", "max_stable_div10"):
        lr = _number((event or {}).get(key))
        if lr is not None and not (key != "suggestion" and lr == _number((event or {}).get("suggestion"))):
            marks.append({"lr": lr, "what": LABELS[key], "label": f"{LABELS[key]} {lr:.3g}"})
    hi = float(np.nanpercentile(finite["loss"], 95)) if len(finite) else None
    first = float(smoothed["smoothed"].iloc[0]) if len(smoothed) else None
    # Clip the y axis above the start: the divergence at the end would flatten the rest of the curve.
    top = max(v for v in (hi, first and 1.5 * first) if v is not None) if (hi or first) else None
    top = float(f"{top:.2g}") if top else None  # few distinct structures while the curve grows: cached specs
    return ChartPlan(_structure, _params(height=int(height), top=top),
                     {"raw": finite, "smooth": smoothed, "marks": pd.DataFrame(marks, columns=["lr", "what", "label"])})


def _structure(*, height: int, top: float | None) -> alt.LayerChart:
    x = alt.X("lr:Q", title="learning rate (log)", scale=alt.Scale(type="log", nice=False), axis=alt.Axis(format="~g"))
    y_scale = alt.Scale(zero=False, domainMax=top) if top is not None else alt.Scale(zero=False)
    raw = alt.Chart(_data("raw")).mark_line(color=COLORS["raw"], strokeWidth=1, opacity=0.7, clip=True).encode(
        x=x, y=alt.Y("loss:Q", title="loss", scale=y_scale),
        tooltip=[alt.Tooltip("lr:Q", format=".3g"), alt.Tooltip("loss:Q", format=".4g")])
    smooth_line = alt.Chart(_data("smooth")).mark_line(color=COLORS["smoothed"], strokeWidth=2.5, clip=True).encode(
        x=x, y=alt.Y("smoothed:Q", title="loss", scale=y_scale),
        tooltip=[alt.Tooltip("lr:Q", format=".3g"), alt.Tooltip("smoothed:Q", title="smoothed", format=".4g")])
    color = alt.Color("what:N", title=None, scale=alt.Scale(domain=[LABELS[k] for k in MARKS],
                                                           range=list(MARKS.values())),
                      legend=alt.Legend(orient="top"))
    rules = alt.Chart(_data("marks")).mark_rule(strokeWidth=2, strokeDash=[6, 3]).encode(
        x="lr:Q", color=color, tooltip=[alt.Tooltip("label:N", title="lr")])
    return alt.layer(raw, smooth_line, rules).properties(height=height)


def lr_find_plan(state: Any) -> ChartPlan | None:
    """The plan for a dashboard RunState, or None when the run is no lr-find run (or has no curve yet)."""
    if not is_lr_find(getattr(state, "meta", None), getattr(state, "events", None)):
        return None
    loss, lr = state.loss.view(), state.lr.view()
    if not len(loss.x) or not len(lr.x):
        return None
    config = (state.meta or {}).get("config") or {}
    beta = (config.get("lr_find") or {}).get("beta") if isinstance(config.get("lr_find"), dict) else None
    beta = beta if isinstance(beta, float) and 0 < beta < 1 else None
    curve = lr_find_curve(loss.x, loss.y, lr.x, lr.y, beta)
    return plan_lr_find(curve, lr_find_event(state.events))


def lr_find_caption(events: list[dict] | None) -> str:
    """One plain-text line under the chart: the suggestion and why, or that the sweep is still running."""
    event = lr_find_event(events)
    if event is None:
        return "sweeping the learning rate upwards; the suggestion appears when the loss diverges or the sweep ends"
    lr = _number(event.get("suggestion"))
    reason = " ".join(str(event.get("reason") or "").split())[:400]
    if lr is None:
        return f"no suggestion: {reason}"
    return f"suggested lr {lr:.3g} ({event.get('chosen')}): {reason}"
