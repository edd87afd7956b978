"""Chart builders: pure functions from small (already downsampled) DataFrames to `alt.Chart` objects.

No Streamlit and no file access here, so every chart is tested on its spec (`chart.to_dict()`). Colours are
fixed by meaning (red is always danger) and chosen to read on both light and dark backgrounds.

Altair is slow to build and validate a layered chart (tens of milliseconds each), far too slow to redo on
every live refresh. So each chart is split in two: a *structure* that depends only on a few hashable
parameters (log scale or not, which reference lines, the zoom range) and references its data by name, and
the *frames* (small DataFrames) it names. `plan_*` functions return a `ChartPlan` holding both; the structure's
spec is built and validated once per parameter set and reused, so a refresh only recomputes the frames.
`*_chart` functions are the same plans as ordinary self-contained `alt.Chart` objects.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from babysit.monitor.weights_image import filter_grid

__all__ = [
    "COLORS",
    "SEVERITY_COLORS",
    "ChartPlan",
    "plan_loss",
    "plan_accuracy",
    "plan_lr",
    "plan_layers",
    "plan_compare_loss",
    "plan_compare_accuracy",
    "plan_search",
    "limit_intervals",
    "weight_grid",
]

COLORS = {
    "raw": "#93c5fd",
    "smoothed": "#2563eb",
    "initial": "#9ca3af",
    "ln(C)": "#8b5cf6",
    "3× initial": "#ef4444",
    "NaN/inf": "#dc2626",
    "train": "#3b82f6",
    "val": "#f59e0b",
    "chance": "#9ca3af",
    "lr": "#14b8a6",
    "band": "#22c55e",
    "healed": "#16a34a",
}
SEVERITY_COLORS = {"critical": "#ef4444", "warning": "#f59e0b", "info": "#60a5fa"}
MAX_INTERVALS = 200


# ----------------------------------------------------------------- plans
@dataclass(frozen=True)
class ChartPlan:
    """A chart as (structure builder, its hashable parameters, the named frames it draws)."""

    build: Callable[..., Any]
    params: tuple
    frames: dict = field(default_factory=dict, compare=False, hash=False)

    def structure(self) -> alt.TopLevelMixin:
        return _structure(self.build, self.params)

    def chart(self) -> alt.TopLevelMixin:
        """A self-contained alt.Chart: the structure with its frames inlined as named datasets."""
        datasets = {name: _records(frame) for name, frame in self.frames.items()}
        return self.structure().properties(datasets=datasets)

    def spec(self) -> dict:
        """A Vega-Lite spec whose `datasets` are the DataFrames (st.vega_lite_chart sends them as Arrow)."""
        spec = copy.deepcopy(_spec(self.build, self.params))
        spec["datasets"] = dict(self.frames)
        return spec


@lru_cache(maxsize=512)
def _structure(build: Callable[..., Any], params: tuple) -> alt.TopLevelMixin:
    return build(**dict(params))


@lru_cache(maxsize=512)
def _spec(build: Callable[..., Any], params: tuple) -> dict:
    # Not validated against the Vega-Lite schema here (that is half the cost of a cold chart): every
    # structure is validated by the tests, through ChartPlan.chart().to_dict().
    spec = _structure(build, params).to_dict(validate=False)
    view = spec.get("config", {}).get("view", {})
    view.pop("continuousWidth", None)  # Altair's default 300 px would stop the chart filling its column
    view.pop("continuousHeight", None)
    if spec.get("config") == {"view": {}}:
        del spec["config"]
    return spec


def _records(frame: pd.DataFrame) -> list[dict]:
    return alt.utils.data.to_values(frame)["values"] if len(frame) else []


def _params(**kwargs: Any) -> tuple:
    return tuple(sorted(kwargs.items()))


def _data(name: str) -> alt.NamedData:
    return alt.NamedData(name=name)


def _finite(frame: pd.DataFrame, col: str, positive: bool = False) -> pd.DataFrame:
    if not len(frame):
        return frame
    v = frame[col].to_numpy(dtype=float)
    keep = np.isfinite(v) & (v > 0) if positive else np.isfinite(v)
    return frame[keep] if not keep.all() else frame


def _x_scale(domain: tuple[float, float] | None) -> alt.Scale:
    return alt.Scale(domain=list(domain), nice=False) if domain else alt.Scale(nice=False)


def _domain(domain: Any) -> tuple[float, float] | None:
    return (float(domain[0]), float(domain[1])) if domain is not None else None


def limit_intervals(frame: pd.DataFrame, max_rows: int = MAX_INTERVALS) -> pd.DataFrame:
    """At most about max_rows NaN/inf intervals: neighbours of one kind merge into bins over the step range."""
    if len(frame) <= max_rows:
        return frame
    lo, hi = float(frame["start"].min()), float(frame["end"].max())
    nbins = max(1, max_rows // 3)
    bins = np.minimum(((frame["start"] - lo) / max(hi - lo, 1.0) * nbins).astype(int), nbins)
    g = frame.assign(bin=bins).groupby(["bin", "kind"], sort=True)
    return g.agg(start=("start", "min"), end=("end", "max"), count=("count", "sum")).reset_index()[
        ["start", "end", "kind", "count"]
    ]


# ----------------------------------------------------------------- loss
def plan_loss(
    points: pd.DataFrame,
    smoothed: pd.DataFrame | None = None,
    nonfinite: pd.DataFrame | None = None,
    *,
    initial_loss: float | None = None,
    ln_c: float | None = None,
    log_scale: bool = False,
    domain: tuple[float, float] | None = None,
    marker: dict | None = None,
    height: int = 320,
    heals: pd.DataFrame | None = None,
) -> ChartPlan:
    """Per-step loss (the min/max envelope, light), smoothed (bold), reference levels and NaN/inf marks.

    points, smoothed: columns step, loss. nonfinite: start, end, kind, count (one row per run of NaN/inf
    steps). References drawn when given: the initial loss, ln(C) (what the initial loss should be with C
    classes, regularization off), and 3x the initial loss (the lecture's "quit early" level). marker: a
    finding to point at: {"step", "severity", "label"}. heals: columns step, label (one row per rollback of a
    self-healing run), drawn as green rules.
    """
    parts = [points[["step", "loss"]].assign(series="raw")] if len(points) else []
    if smoothed is not None and len(smoothed):
        parts.append(smoothed[["step", "loss"]].assign(series="smoothed"))
    loss = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"step": np.empty(0), "loss": np.empty(0), "series": np.empty(0, dtype=object)})
    frames = {"loss": _finite(loss, "loss", positive=log_scale)}
    refs = []
    danger_note = False
    if initial_loss is not None and math.isfinite(initial_loss):
        refs.append(("initial", initial_loss, f"initial {initial_loss:.3g}"))
        danger = (f"3× initial {3 * initial_loss:.3g}: quit early above", 3 * initial_loss)
        peak = float(frames["loss"]["loss"].max()) if len(frames["loss"]) else -math.inf
        if peak >= 1.5 * initial_loss or initial_loss <= 0:
            refs.append(("3× initial", danger[1], danger[0]))
        else:
            # Far above a healthy curve: say where it is instead of squashing the curve to make room.
            danger_note = True
            frames["danger"] = pd.DataFrame({"label": [f"↑ {danger[0]}"]})
    if ln_c is not None and math.isfinite(ln_c):
        refs.append(("ln(C)", ln_c, f"ln(C) = {ln_c:.3g}"))
    refs = [r for r in refs if r[1] > 0 or not log_scale]
    if refs:
        frames["refs"] = pd.DataFrame({"series": [r[0] for r in refs], "loss": [float(r[1]) for r in refs],
                                       "label": [r[2] for r in refs]})
    if nonfinite is not None and len(nonfinite):
        nf = limit_intervals(nonfinite)
        frames["nonfinite"] = nf
        frames["nonfinite_label"] = nf.head(1).assign(label=lambda d: "loss " + d["kind"].astype(str) + " from here")
    if marker and marker.get("step") is not None:
        frames["marker"] = pd.DataFrame({"step": [float(marker["step"])], "label": [str(marker.get("label", ""))]})
    if heals is not None and len(heals):
        frames["heals"] = heals[["step", "label"]].astype({"step": float, "label": str})
    return ChartPlan(_loss_structure, _params(
        refs=tuple(r[0] for r in refs), log_scale=bool(log_scale), domain=_domain(domain),
        nonfinite="nonfinite" in frames, danger_note=danger_note,
        marker=str(marker.get("severity", "info")) if "marker" in frames else None, height=int(height),
        heals="heals" in frames), frames)


def _loss_structure(*, refs: tuple, log_scale: bool, domain, nonfinite: bool, danger_note: bool,
                    marker: str | None, height: int, heals: bool = False) -> alt.LayerChart:
    names = ["raw", "smoothed", *refs, *(["3× initial"] if danger_note else [])]
    color = alt.Color("series:N", scale=alt.Scale(domain=names, range=[COLORS[n] for n in names]),
                      legend=alt.Legend(orient="top", title=None, symbolType="stroke"))
    y_scale = alt.Scale(type="log" if log_scale else "linear", zero=False, nice=not log_scale)
    x = alt.X("step:Q", title="step", scale=_x_scale(domain), axis=alt.Axis(format="~s"))
    y = alt.Y("loss:Q", title="loss", scale=y_scale, axis=alt.Axis(format=".3~g"))
    base = alt.Chart(_data("loss")).encode(
        x=x, y=y, color=color,
        tooltip=[alt.Tooltip("step:Q", format=","), alt.Tooltip("loss:Q", format=".4g"), alt.Tooltip("series:N")])
    layers: list[alt.Chart] = [
        base.transform_filter("datum.series == 'raw'").mark_line(strokeWidth=1, opacity=0.6, clip=True),
        base.transform_filter("datum.series == 'smoothed'").mark_line(strokeWidth=2.5, clip=True),
    ]
    if refs:
        dash = alt.StrokeDash("series:N", legend=None, scale=alt.Scale(
            domain=list(refs), range=[[1, 3] if r == "ln(C)" else [5, 4] for r in refs]))
        ref = alt.Chart(_data("refs"))
        layers.append(ref.mark_rule(strokeWidth=1.5).encode(y=y, color=color, strokeDash=dash,
                                                            tooltip=[alt.Tooltip("label:N", title="level")]))
        # Labels placed so that levels close together do not overprint: the initial loss above its line and
        # ln(C) (which it should be close to) below its line at the left edge, 3x initial at the right edge.
        for series, align, dy, x_pos in (("initial", "left", -7, 0), ("ln(C)", "left", 8, 0),
                                         ("3× initial", "right", -7, "width")):
            if series in refs:
                layers.append(ref.transform_filter(f"datum.series == '{series}'").mark_text(
                    align=align, dx=4 if align == "left" else -4, dy=dy, fontSize=11).encode(
                    x=alt.value(x_pos), y=y, text="label:N", color=color))
    if danger_note:
        layers.append(alt.Chart(_data("danger")).mark_text(
            align="right", baseline="top", dx=-4, dy=4, fontSize=11, color=COLORS["3× initial"]).encode(
            x=alt.value("width"), y=alt.value(0), text="label:N"))
    if nonfinite:
        layers += _nonfinite_layers()
    if marker:
        layers += _marker_layers(marker)
    if heals:
        layers += _heal_layers()
    return alt.layer(*layers).properties(height=height)


def _heal_layers() -> list[alt.Chart]:
    """A green rule at every rollback of a self-healing run, labelled with what changed."""
    base = alt.Chart(_data("heals"))
    tooltip = [alt.Tooltip("label:N", title="healed"), alt.Tooltip("step:Q", format=",")]
    return [
        base.mark_rule(color=COLORS["healed"], strokeWidth=2, clip=True).encode(x="step:Q", tooltip=tooltip),
        base.mark_text(color=COLORS["healed"], align="left", dx=4, baseline="bottom", angle=0, clip=True).encode(
            x="step:Q", y=alt.value(34), text="label:N"),
    ]


def _nonfinite_layers() -> list[alt.Chart]:
    """Red marks at every run of NaN/inf steps: a rule at its first step, a band over its extent."""
    red = COLORS["NaN/inf"]
    tooltip = [alt.Tooltip("kind:N", title="loss is"), alt.Tooltip("start:Q", title="first step", format=","),
               alt.Tooltip("end:Q", title="last step", format=","), alt.Tooltip("count:Q", title="steps", format=",")]
    base = alt.Chart(_data("nonfinite"))
    return [
        base.transform_filter("datum.end > datum.start").mark_rect(color=red, opacity=0.15, clip=True).encode(
            x="start:Q", x2="end:Q", tooltip=tooltip),
        base.mark_rule(color=red, strokeWidth=2, opacity=0.9, clip=True).encode(x="start:Q", tooltip=tooltip),
        alt.Chart(_data("nonfinite_label")).mark_text(
            color=red, align="left", dx=4, baseline="top", fontWeight="bold", clip=True).encode(
            x="start:Q", y=alt.value(18), text="label:N"),
    ]


def _marker_layers(severity: str) -> list[alt.Chart]:
    """A vertical line at a finding's step (the one the user picked), coloured by its severity."""
    colour = SEVERITY_COLORS.get(severity, SEVERITY_COLORS["info"])
    base = alt.Chart(_data("marker"))
    return [
        base.mark_rule(color=colour, strokeWidth=2, strokeDash=[2, 2], clip=True).encode(
            x="step:Q", tooltip=[alt.Tooltip("label:N", title="finding"), alt.Tooltip("step:Q", format=",")]),
        base.mark_text(color=colour, align="left", dx=4, baseline="top", fontWeight="bold", clip=True).encode(
            x="step:Q", y=alt.value(4), text="label:N"),
    ]


# ----------------------------------------------------------------- accuracy
def plan_accuracy(epochs: pd.DataFrame, *, chance: float | None = None, height: int = 280) -> ChartPlan:
    """Train and val accuracy per epoch with the gap between them shaded (big gap: overfitting; none: underfit).

    epochs: columns epoch and any of train_acc, val_acc. chance: 1/C, drawn as a dotted line.
    """
    cols = [c for c in ("train_acc", "val_acc") if c in epochs.columns]
    if len(epochs) and cols:
        n = len(epochs)
        long = pd.DataFrame({
            "epoch": np.tile(epochs["epoch"].to_numpy(), len(cols)),
            "split": np.repeat(np.array([c.removesuffix("_acc") for c in cols], dtype=object), n),
            "acc": np.concatenate([epochs[c].to_numpy(dtype=float) for c in cols]),
        })
    else:
        long = pd.DataFrame({"epoch": np.empty(0), "split": np.empty(0, dtype=object), "acc": np.empty(0)})
    frames = {"acc": _finite(long, "acc")}
    if len(cols) == 2 and len(epochs):
        gap = epochs[["epoch", "train_acc", "val_acc"]].dropna()
        frames["gap"] = gap.assign(gap=gap["train_acc"] - gap["val_acc"])
    if chance is not None and math.isfinite(chance):
        frames["chance"] = pd.DataFrame({"acc": [float(chance)], "label": [f"chance {chance:.0%}"]})
    return ChartPlan(_accuracy_structure, _params(gap="gap" in frames, chance="chance" in frames,
                                                  height=int(height)), frames)


def _accuracy_structure(*, gap: bool, chance: bool, height: int) -> alt.LayerChart:
    color = alt.Color("split:N", scale=alt.Scale(domain=["train", "val"], range=[COLORS["train"], COLORS["val"]]),
                      legend=alt.Legend(orient="top", title=None))
    x = alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d"))
    y = alt.Y("acc:Q", title="accuracy", axis=alt.Axis(format="%"), scale=alt.Scale(zero=False))
    layers: list[alt.Chart] = []
    if gap:
        layers.append(alt.Chart(_data("gap")).mark_area(opacity=0.16, color=COLORS["val"]).encode(
            x=x, y=alt.Y("train_acc:Q", title="accuracy"), y2="val_acc:Q",
            tooltip=[alt.Tooltip("epoch:Q"), alt.Tooltip("gap:Q", title="train − val", format="+.2%")]))
    lines = alt.Chart(_data("acc")).encode(x=x, y=y, color=color, tooltip=[
        alt.Tooltip("epoch:Q"), alt.Tooltip("split:N"), alt.Tooltip("acc:Q", format=".2%")])
    layers += [lines.mark_line(strokeWidth=2.5), lines.mark_point(filled=True, size=40)]
    if chance:
        ch = alt.Chart(_data("chance"))
        layers.append(ch.mark_rule(color=COLORS["chance"], strokeDash=[1, 3]).encode(y="acc:Q"))
        layers.append(ch.mark_text(color=COLORS["chance"], align="left", dx=4, dy=-7, fontSize=11).encode(
            x=alt.value(0), y="acc:Q", text="label:N"))
    return alt.layer(*layers).properties(height=height)


# ----------------------------------------------------------------- learning rate
def plan_lr(points: pd.DataFrame, *, log_scale: bool | None = None, domain: tuple[float, float] | None = None,
            height: int = 280) -> ChartPlan:
    """Learning rate over steps (columns step, lr); log scale by default when it spans more than 30x."""
    data = _finite(points, "lr")
    if log_scale is None:
        pos = data["lr"][data["lr"] > 0] if len(data) else pd.Series(dtype=float)
        log_scale = bool(len(pos)) and float(pos.max()) / float(pos.min()) > 30
    if log_scale:
        data = _finite(data, "lr", positive=True)
    return ChartPlan(_lr_structure, _params(log_scale=bool(log_scale), domain=_domain(domain), height=int(height)),
                     {"lr": data})


def _lr_structure(*, log_scale: bool, domain, height: int) -> alt.Chart:
    return alt.Chart(_data("lr")).mark_line(color=COLORS["lr"], strokeWidth=2, interpolate="step-after",
                                            clip=True).encode(
        x=alt.X("step:Q", title="step", scale=_x_scale(domain), axis=alt.Axis(format="~s")),
        y=alt.Y("lr:Q", title="learning rate", scale=alt.Scale(type="log" if log_scale else "linear", zero=False),
                axis=alt.Axis(format="~g")),
        tooltip=[alt.Tooltip("step:Q", format=","), alt.Tooltip("lr:Q", format=".3g")],
    ).properties(height=height)


# ----------------------------------------------------------------- layers
def plan_layers(
    frame: pd.DataFrame,
    *,
    title: str,
    log_scale: bool = False,
    band: tuple[float, float] | None = None,
    reference: float | None = None,
    y_domain: tuple[float, float] | None = None,
    independent_y: bool = False,
    color: str = "#3b82f6",
    columns: int = 4,
    width: int = 190,
    height: int = 90,
    domain: tuple[float, float] | None = None,
) -> ChartPlan:
    """Small multiples, one panel per layer (in first-seen order), of one statistic (columns step, layer, value).

    band: a shaded healthy range (e.g. the update/weight ratio's decade around 1e-3); reference: a dashed line.
    """
    data = _finite(frame, "value", positive=log_scale)
    if len(data):  # panels in the order layers first appear (the model's order), carried by the data
        codes, _ = pd.factorize(data["layer"])
        data = data.assign(order=codes)
    else:
        data = data.assign(order=np.empty(0, dtype=np.int64))
    return ChartPlan(_layers_structure, _params(
        title=str(title), log_scale=bool(log_scale), band=_domain(band),
        reference=float(reference) if reference is not None else None, y_domain=_domain(y_domain),
        independent_y=bool(independent_y), color=str(color), columns=int(columns), width=int(width),
        height=int(height), domain=_domain(domain)), {"layers": data})


def _layers_structure(*, title: str, log_scale: bool, band, reference, y_domain, independent_y: bool, color: str,
                      columns: int, width: int, height: int, domain) -> alt.FacetChart:
    y_scale = alt.Scale(type="log" if log_scale else "linear", zero=False,
                        domain=list(y_domain) if y_domain else alt.Undefined)
    y = alt.Y("value:Q", title=None, scale=y_scale, axis=alt.Axis(format="~g", tickCount=3))
    x = alt.X("step:Q", title=None, scale=_x_scale(domain), axis=alt.Axis(format="~s", tickCount=4))
    layers: list[alt.Chart] = []
    if band is not None:
        # One rectangle per panel: aggregate the panel's rows to one before drawing it.
        layers.append(alt.Chart().transform_aggregate(n="count()").mark_rect(
            color=COLORS["band"], opacity=0.14).encode(y=alt.datum(band[0]), y2=alt.datum(band[1])))
    if reference is not None:
        layers.append(alt.Chart().transform_aggregate(n="count()").mark_rule(
            color=COLORS["band"], strokeDash=[4, 3], opacity=0.9).encode(y=alt.datum(reference)))
    layers.append(alt.Chart().mark_line(color=color, strokeWidth=1.8, clip=True).encode(
        x=x, y=y, tooltip=[alt.Tooltip("layer:N"), alt.Tooltip("step:Q", format=","),
                           alt.Tooltip("value:Q", title=title, format=".3g")]))
    chart = alt.layer(*layers, data=_data("layers")).properties(width=width, height=height).facet(
        facet=alt.Facet("layer:N", title=None, sort=alt.EncodingSortField("order", op="min"),
                        header=alt.Header(labelFontSize=12)),
        columns=columns,
    ).properties(title=alt.TitleParams(title, anchor="start", fontSize=14))
    if independent_y:
        chart = chart.resolve_scale(y="independent")
    return chart


# ----------------------------------------------------------------- several runs
def plan_compare_loss(frame: pd.DataFrame, *, log_scale: bool = False, height: int = 340) -> ChartPlan:
    """Smoothed loss of several runs (columns run, step, loss), one colour per run."""
    return ChartPlan(_compare_loss_structure, _params(log_scale=bool(log_scale), height=int(height)),
                     {"runs": _finite(frame, "loss", positive=log_scale)})


def _compare_loss_structure(*, log_scale: bool, height: int) -> alt.Chart:
    return alt.Chart(_data("runs")).mark_line(strokeWidth=2, clip=True).encode(
        x=alt.X("step:Q", title="step", axis=alt.Axis(format="~s")),
        y=alt.Y("loss:Q", title="loss (smoothed)", scale=alt.Scale(type="log" if log_scale else "linear", zero=False),
                axis=alt.Axis(format=".3~g")),
        color=alt.Color("run:N", title=None, legend=alt.Legend(orient="bottom", columns=2, labelLimit=320)),
        tooltip=[alt.Tooltip("run:N"), alt.Tooltip("step:Q", format=","), alt.Tooltip("loss:Q", format=".4g")],
    ).properties(height=height)


def plan_compare_accuracy(frame: pd.DataFrame, *, height: int = 340) -> ChartPlan:
    """Train (dashed) and val (solid) accuracy per epoch of several runs (columns run, epoch, split, acc)."""
    return ChartPlan(_compare_accuracy_structure, _params(height=int(height)), {"runs": _finite(frame, "acc")})


def _compare_accuracy_structure(*, height: int) -> alt.Chart:
    return alt.Chart(_data("runs")).mark_line(point=True, strokeWidth=2).encode(
        x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("acc:Q", title="accuracy", axis=alt.Axis(format="%"), scale=alt.Scale(zero=False)),
        color=alt.Color("run:N", title=None, legend=alt.Legend(orient="bottom", columns=2, labelLimit=320)),
        strokeDash=alt.StrokeDash("split:N", title=None,
                                  scale=alt.Scale(domain=["val", "train"], range=[[1, 0], [4, 3]])),
        tooltip=[alt.Tooltip("run:N"), alt.Tooltip("epoch:Q"), alt.Tooltip("split:N"),
                 alt.Tooltip("acc:Q", format=".2%")],
    ).properties(height=height)


# ----------------------------------------------------------------- search
def plan_search(frame: pd.DataFrame, x: str, *, x_title: str, current: str | None = None,
                height: int = 320) -> ChartPlan:
    """Best val accuracy against a hyperparameter on a log axis: the lecture's coarse-to-fine picture.

    frame: columns run, <x>, best_val_acc, state. Clicking a point selects its run (selection param "pick");
    the current run is drawn with a thick outline.
    """
    data = frame
    if len(data):
        v, acc = data[x].to_numpy(dtype=float), data["best_val_acc"].to_numpy(dtype=float)
        data = data[np.isfinite(v) & (v > 0) & np.isfinite(acc)]
    data = data[["run", x, "best_val_acc", "state"]].assign(current=(data["run"] == current) if len(data) else [])
    return ChartPlan(_search_structure, _params(x=str(x), x_title=str(x_title), height=int(height)), {"points": data})


def _search_structure(*, x: str, x_title: str, height: int) -> alt.Chart:
    pick = alt.selection_point(name="pick", fields=["run"], on="click", clear="dblclick")
    return alt.Chart(_data("points")).mark_circle(size=120, stroke="#111827").encode(
        x=alt.X(f"{x}:Q", title=x_title, scale=alt.Scale(type="log"), axis=alt.Axis(format="~e")),
        y=alt.Y("best_val_acc:Q", title="best val accuracy", axis=alt.Axis(format=".1%"),
                scale=alt.Scale(zero=False)),
        color=alt.Color("best_val_acc:Q", title="val acc", scale=alt.Scale(scheme="viridis"),
                        legend=alt.Legend(format=".0%")),
        strokeWidth=alt.condition("datum.current", alt.value(3), alt.value(0.5)),
        opacity=alt.condition(pick, alt.value(0.95), alt.value(0.3)),
        tooltip=[alt.Tooltip("run:N"), alt.Tooltip(f"{x}:Q", title=x_title, format=".3g"),
                 alt.Tooltip("best_val_acc:Q", title="best val acc", format=".2%"), alt.Tooltip("state:N")],
    ).add_params(pick).properties(height=height)


# ----------------------------------------------------------------- weights
def weight_grid(arr: np.ndarray, *, max_tiles: int = 256, pad: int = 1, target_px: int = 420,
                background: float = 0.35) -> np.ndarray:
    """First-layer filters (conv) or templates (linear) as one RGB image in [0, 1], each tile scaled on its own
    (the report's picture, monitor/weights_image.py, scaled up for the page).

    Smooth, structured tiles mean a healthy layer; salt-and-pepper tiles mean noise (too high a learning rate,
    too little regularization, or not trained long enough). NaN/inf weights show as magenta pixels, impossible
    to miss (the page says so under the pictures).
    """
    grid = filter_grid(arr, max_filters=max_tiles, gap=pad, background=round(255 * background),
                       bad=(255, 0, 255)).pixels
    scale = max(1, target_px // max(grid.shape[0], grid.shape[1]))
    if scale > 1:
        grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    return grid.astype(np.float32) / 255
