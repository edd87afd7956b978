"""The babysit dashboard, a Streamlit script: `babysit dashboard RUNS_ROOT` starts it.

Views: Run (loss, accuracy, learning rate, findings, layers, weights), Runs (every run under the root),
Compare (several runs overlaid) and Search (val accuracy against learning rate and regularization).
Each view is a fragment that reruns on its own every few seconds; the data behind it lives in
`st.cache_resource` (monitor/dashboard/state.py), so a refresh reads only what the runs appended.

Everything a run wrote (names, config, messages) is user data: it is shown as text, through `st.text`,
`st.json`, dataframes, chart tooltips, or Markdown with every special character escaped. Never as HTML.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from babysit.monitor.dashboard import charts
from babysit.monitor.dashboard.downsample import ema
from babysit.monitor.dashboard.lr_find_chart import lr_find_caption
from babysit.monitor.dashboard.state import (
    SEVERITIES,
    RunState,
    cached_run_state,
    cached_runs_index,
    inside,
    severity_rank,
)
from babysit.monitor.dashboard.views import run_plans, spans_decades
from babysit.monitor.reader import RunReadError
from babysit.rules.base import fmt as format_number

VIEWS = ["Run", "Runs", "Compare", "Search"]
REFRESH = {"off": None, "1 s": 1.0, "2 s": 2.0, "5 s": 5.0, "10 s": 10.0, "30 s": 30.0}
# A badge's (colour, icon) for a run state and for a finding's severity.
STATE_STYLE = {word: (colour, f":material/{icon}:") for word, colour, icon in (
    ("running", "green", "play_circle"), ("finished", "blue", "check_circle"), ("stopped", "orange", "stop_circle"),
    ("crashed", "red", "error"), ("unknown", "gray", "help"), ("unreadable", "gray", "block"))}
SEVERITY_STYLE = {word: (colour, f":material/{icon}:") for word, colour, icon in (
    ("critical", "red", "error"), ("warning", "orange", "warning"), ("info", "blue", "info"))}

# Our own constant CSS (no user data in it): a coloured edge on finding cards, tighter metric cards.
_CSS = """
<style>
[class*="st-key-finding-critical"] { border-left: 4px solid #ef4444 !important; }
[class*="st-key-finding-warning"] { border-left: 4px solid #f59e0b !important; }
[class*="st-key-finding-info"] { border-left: 4px solid #60a5fa !important; }
[data-testid="stMetricValue"] { font-size: 1.55rem; }
.block-container { padding-top: 2.2rem; }
</style>
"""

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>:~$^=&\"'@%])")


def safe_md(text: Any) -> str:
    """User text made inert for st.markdown: every Markdown/HTML special character escaped, one line."""
    s = " ".join(str(text).split())
    return _MD_SPECIAL.sub(r"\\\1", s)


def fmt(x: Any, digits: int = 3) -> str:
    """Any value on the page: numbers as the rules' messages write them (rules.base.fmt), a missing one as a
    dash, anything else as its text."""
    if x is None or isinstance(x, bool):
        return "—" if x is None else str(x)
    if not isinstance(x, (int, float, np.floating, np.integer)):
        return str(x)
    return format_number(x, digits)  # the rules' own formatting: the page shows numbers as messages do


def fmt_age(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def root_dir() -> Path:
    """The runs root: $BABYSIT_ROOT (set by `babysit dashboard`), else the script's first argument, else runs/."""
    root = os.environ.get("BABYSIT_ROOT") or (sys.argv[1] if len(sys.argv) > 1 else "runs")
    return Path(root).expanduser()


def run_link(name: str) -> str:
    return "?" + urllib.parse.urlencode({"view": "Run", "run": name})


# ----------------------------------------------------------------- navigation helpers
def _jump(name: str) -> None:
    """Open run `name` in the Run view (from a callback: widgets are set before they are drawn)."""
    st.session_state["run"] = name
    st.session_state["view"] = "Run"
    st.session_state["_jump"] = True


def _jump_if_asked() -> None:
    if st.session_state.pop("_jump", False):
        st.rerun()  # the whole app: the sidebar and tabs show the run picked in a fragment


def _pick_from_table(key: str, names: list[str]) -> None:
    rows = st.session_state[key].selection.rows
    if rows and rows[0] < len(names):
        _jump(names[rows[0]])


def _pick_from_chart(key: str) -> None:
    picked = st.session_state[key].selection.get("pick") or []
    if picked and isinstance(picked[0], dict) and picked[0].get("run"):
        _jump(str(picked[0]["run"]))


def chart(plan: charts.ChartPlan, *, key: str | None = None, on_select: Any = "ignore", stretch: bool = True,
          **kwargs: Any) -> Any:
    """Draw a chart plan: the cached spec plus this refresh's frames (sent as Arrow)."""
    return st.vega_lite_chart(plan.spec(), width="stretch" if stretch else "content", key=key,
                              on_select=on_select, **kwargs)


# ----------------------------------------------------------------- the Run view
def focus_key(name: str) -> str:
    return f"focus:{name}"


def _set_focus(name: str, finding: dict) -> None:
    st.session_state[focus_key(name)] = {
        "step": finding.get("step"),
        "severity": finding.get("severity"),
        "label": str(finding.get("title") or finding.get("rule") or "finding"),
    }


def _clear_focus(name: str) -> None:
    st.session_state.pop(focus_key(name), None)


def focus_range(state: RunState, focus: dict | None) -> tuple[float, float] | None:
    if not focus or not isinstance(focus.get("step"), (int, float)):
        return None
    last = state.loss.last()
    total = last[0] if last else float(focus["step"])
    span = max(50.0, 0.05 * max(total, 1.0))
    return (max(0.0, float(focus["step"]) - span), float(focus["step"]) + span)


def badge_state(status: dict) -> str:
    """The state word for a badge: one of ours. st.badge renders its label as Markdown, and status.json is
    written by anyone: "**x** [link](...)" there must never become bold text or a link."""
    state = status.get("state") if isinstance(status, dict) else None
    return state if state in STATE_STYLE else "unknown"


def run_header(state: RunState, name: str) -> None:
    status, meta = state.status, state.meta
    run_state = badge_state(status)
    colour, icon = STATE_STYLE[run_state]
    title = name if name != "." else state.path.name
    head = st.container(horizontal=True, vertical_alignment="center", gap="small")
    head.markdown(f"## {safe_md(title)}")
    head.badge(run_state, color=colour, icon=icon)
    healed = status.get("healed")
    if isinstance(healed, int) and not isinstance(healed, bool) and healed > 0:  # on_critical="heal" rollbacks
        head.badge(f"healed ×{healed}", color="green", icon=":material/healing:")
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    bits = []
    for key in ("model", "dataset", "optimizer", "lr", "reg", "batch_size", "epochs"):
        if key in config and isinstance(config[key], (str, int, float)) and not isinstance(config[key], bool):
            bits.append(f"{key} {fmt(config[key]) if not isinstance(config[key], str) else config[key]}")
    if state.num_classes():
        bits.append(f"{state.num_classes()} classes")
    now = time.time()
    start = status.get("start_time") or meta.get("start_time")
    if isinstance(start, (int, float)):
        bits.append(f"started {fmt_age(now - start)} ago")
    beat = status.get("end_time") or status.get("heartbeat")
    if isinstance(beat, (int, float)):
        bits.append(("ended " if status.get("end_time") else "last write ") + f"{fmt_age(now - beat)} ago")
    st.caption(" · ".join(safe_md(b) for b in bits))
    if run_state in ("crashed", "stopped"):
        reason = status.get("reason") or ""
        err = status.get("error") if isinstance(status.get("error"), dict) else None
        if err:
            reason = f"{reason} {err.get('type', '')}: {err.get('message', '')}".strip()
        box = st.error if run_state == "crashed" else st.warning
        box(f"Run {run_state}" + (f": {safe_md(reason)}" if reason else ""), icon=icon)


class _Row:
    """Columns used one after the other, like a horizontal container but never wrapping."""

    def __init__(self, cols: list) -> None:
        self.cols, self.i = list(cols), 0

    def metric(self, *args: Any, **kwargs: Any) -> None:
        self.cols[min(self.i, len(self.cols) - 1)].metric(*args, **kwargs)
        self.i += 1


def metrics_row(state: RunState, smoothing: float) -> None:
    view = state.loss.view()
    smooth = ema(view.mean_y, smoothing)
    finite = smooth[np.isfinite(smooth)]
    last_raw = state.loss.last()
    initial = state.initial_loss()
    epochs = state.epochs
    findings = state.findings()
    row = _Row(st.columns(7, gap="small"))
    step = int(last_raw[0]) if last_raw else int(state.status.get("step") or 0)
    rate = state.steps_per_s if state.status.get("state") == "running" else None
    row.metric("Step", f"{step:,}", delta=f"{rate:,.1f} steps/s" if rate else None, delta_color="off",
               delta_arrow="off", border=True, height="stretch")
    row.metric("Epoch", f"{int(epochs['epoch'].max()):,}" if len(epochs) else "—", border=True, height="stretch")
    if last_raw is not None and not math.isfinite(last_raw[1]):
        row.metric("Loss", fmt(last_raw[1]), delta="not finite", delta_color="inverse", border=True, height="stretch")
    else:
        loss_now = float(finite[-1]) if len(finite) else None
        delta = None
        if loss_now is not None and initial:
            delta = f"{loss_now / initial - 1:+.0%}"
        spark = finite[:: max(1, len(finite) // 80)].tolist() if len(finite) > 2 else None
        row.metric("Loss (smoothed)", fmt(loss_now, 4), delta=delta, delta_color="inverse", border=True,
                   height="stretch", help="The change is relative to the first loss of the run.",
                   chart_data=spark, chart_type="area")
    val = epochs["val_acc"].to_numpy(dtype=float) if "val_acc" in epochs else np.empty(0)
    val = val[np.isfinite(val)]
    if len(val):
        delta = f"{(val[-1] - val[-2]) * 100:+.1f} pp" if len(val) > 1 else None
        row.metric("Val acc (best)", f"{val.max():.1%}", delta=delta, border=True, height="stretch",
                   chart_data=val.tolist() if len(val) > 2 else None, chart_type="line")
    else:
        row.metric("Val acc (best)", "—", border=True, height="stretch")
    gap = math.nan
    if "train_acc" in epochs and "val_acc" in epochs and len(epochs):
        gap = float(epochs["train_acc"].iloc[-1] - epochs["val_acc"].iloc[-1])
    row.metric("Train − val", f"{gap * 100:+.1f} pp" if math.isfinite(gap) else "—", border=True, height="stretch",
               help="Big gap: overfitting (more regularization, more data). No gap: underfitting (bigger model).")
    lr = state.lr.last()
    row.metric("Learning rate", fmt(lr[1]) if lr else "—", border=True, height="stretch")
    counts = {s: sum(1 for f in findings if f.get("severity") == s) for s in SEVERITIES}
    if counts["critical"]:
        row.metric("Findings", f"{counts['critical']} critical", delta=f"{counts['warning']} warning",
                   delta_color="off", delta_arrow="off", border=True, height="stretch")
    elif counts["warning"]:
        row.metric("Findings", f"{counts['warning']} warning", delta=f"{counts['info']} info",
                   delta_color="off", delta_arrow="off", border=True, height="stretch")
    else:
        row.metric("Findings", "none" if not counts["info"] else f"{counts['info']} info", border=True,
                   height="stretch")


def loss_section(state: RunState, name: str, focus: dict | None, domain: tuple[float, float] | None,
                 plan: charts.ChartPlan) -> None:
    head = st.container(horizontal=True, vertical_alignment="center")
    head.markdown("#### Loss")
    head.segmented_control("y scale", ["auto", "linear", "log"], default="auto", key=f"yscale:{name}",
                           label_visibility="collapsed", required=True)
    if focus and domain:
        bar = st.container(horizontal=True, vertical_alignment="center")
        bar.caption(f"Zoomed to step {int(focus['step']):,}: {safe_md(focus.get('label', ''))}")
        bar.button("Show all steps", key=f"unfocus:{name}", on_click=_clear_focus, args=(name,),
                   icon=":material/zoom_out_map:", type="tertiary")
    chart(plan)
    view = state.loss.view()
    notes = []
    nf = view.nonfinite
    finite = view.n - int(nf["count"].sum()) if len(nf) else view.n
    if len(view.x) < finite:
        notes.append(f"{finite:,} finite steps drawn as {len(view.x):,} points (min and max of every "
                     f"{view.width:,})")
    if len(nf):
        notes.append(f"loss not finite at {int(nf['count'].sum()):,} steps, first at step {int(nf['start'].iloc[0]):,}")
    if notes:
        st.caption(" · ".join(notes))


def finding_card(f: dict, name: str, key: str) -> None:
    sev = f.get("severity") if f.get("severity") in SEVERITY_STYLE else "info"
    colour, icon = SEVERITY_STYLE[sev]
    with st.container(border=True, key=f"finding-{sev}-{key}"):
        top = st.container(horizontal=True, vertical_alignment="center", gap="small")
        top.badge(sev, color=colour, icon=icon)
        top.markdown(f"**{safe_md(f.get('title') or f.get('rule') or 'finding')}**")
        where = []
        if isinstance(f.get("step"), (int, float)):
            where.append(f"step {int(f['step']):,}")
        if isinstance(f.get("epoch"), (int, float)):
            where.append(f"epoch {int(f['epoch'])}")
        if f.get("rule"):
            where.append(str(f["rule"]))
        if f.get("source"):
            where.append(f"from {f['source']}")
        st.caption(" · ".join(safe_md(w) for w in where))
        if f.get("message"):
            st.text(str(f["message"]))
        evidence = f.get("evidence")
        if isinstance(evidence, dict) and evidence:
            items = [f"{k} = {fmt(v) if not isinstance(v, (list, dict)) else str(v)[:80]}"
                     for k, v in list(evidence.items())[:8]]
            st.caption("Evidence: " + safe_md("; ".join(items)))
        fix = f.get("fix")
        fixes = fix if isinstance(fix, list) else ([fix] if fix else [])
        if fixes:
            st.markdown("**Try:**\n" + "\n".join(f"{i}. {safe_md(x)}" for i, x in enumerate(fixes[:5], 1)))
        if isinstance(f.get("step"), (int, float)):
            st.button("Show on charts", key=f"show-{key}", on_click=_set_focus, args=(name, f),
                      icon=":material/center_focus_strong:", type="tertiary")


def findings_section(state: RunState, name: str) -> None:
    findings = state.findings()
    st.markdown("#### Findings")
    if not findings:
        if state.diagnoser is None and state.diagnoser_error is None:
            st.caption("The rule engine is not installed here; showing the findings the run recorded.")
        st.success("Nothing wrong found so far.", icon=":material/check:")
        _not_evaluated_caption(state)
        return
    with st.container(height=420, border=False):
        seen: dict[str, int] = {}
        for f in findings:
            base = re.sub(r"[^A-Za-z0-9_]", "_", f"{f.get('rule')}_{f.get('severity')}_{f.get('step')}")[:80]
            seen[base] = seen.get(base, 0) + 1
            finding_card(f, name, f"{base}_{seen[base]}")
    if state.diagnoser_error:
        st.caption(f"The dashboard's own diagnosis stopped: {safe_md(state.diagnoser_error)}")


def _not_evaluated_caption(state: RunState) -> None:
    """Which rules could not judge the run yet, so "nothing wrong" says how much was looked at."""
    try:
        skipped = state.diagnoser.not_evaluated() if state.diagnoser is not None else []
    except Exception:  # noqa: BLE001 - a coverage note must never break the page
        skipped = []
    if skipped:
        st.caption("Not evaluated yet: " + "; ".join(safe_md(f"{x.get('rule')} ({x.get('why')})")
                                                     for x in skipped[:8]))


# A chart's heading, and what to say when its series is not recorded yet.
MISSING = {
    "accuracy": ("Accuracy", "No accuracy yet: it appears after the first `run.epoch(train_acc=..., val_acc=...)`."),
    "lr": ("Learning rate", "No learning rate recorded: pass the optimizer to `run.watch(model, optimizer)`."),
}


def plan_section(kind: str, plan: charts.ChartPlan | None) -> None:
    title, missing = MISSING[kind]
    st.markdown(f"#### {title}")
    if plan is None:
        st.caption(missing)
        return
    chart(plan)


def layers_section(state: RunState, plans: dict[str, charts.ChartPlan]) -> None:
    if not state.layers:
        st.info("No per-layer statistics in this run. Record them with `run.watch(model, optimizer)`.")
        return
    for key in ("grad", "ratio", "dead"):
        if key in plans:
            chart(plans[key], stretch=False)


def weights_section(state: RunState, name: str) -> None:
    layers = state.snapshot_layers()
    if not layers:
        st.info("No weight snapshots in this run. `run.watch(model, ...)` snapshots the first layer.")
        return
    layer = layers[0] if len(layers) == 1 else st.selectbox("Layer", layers, key=f"snaplayer:{name}")
    snaps = [s for s in state.snapshots if s["layer"] == layer]
    steps = [int(s["step"]) for s in snaps]
    key, latest_key = f"snap:{name}:{layer}", f"snaplatest:{name}:{layer}"
    # Follow "now" as snapshots arrive, unless the user moved the slider back in time.
    if st.session_state.get(key) not in steps or st.session_state.get(key) == st.session_state.get(latest_key):
        st.session_state[key] = steps[-1]
    st.session_state[latest_key] = steps[-1]
    if len(steps) > 1:
        chosen = st.select_slider("Snapshot at step", options=steps, key=key,
                                  format_func=lambda s: f"{s:,}" + (" (init)" if s == steps[0] else ""))
    else:
        chosen = steps[0]
    record = snaps[steps.index(chosen)]
    left, right = st.columns(2)
    for col, rec, label in ((left, snaps[0], "at initialization"), (right, record, f"at step {chosen:,}")):
        arr = state.load_snapshot(rec)
        with col:
            if arr is None:
                st.warning("This snapshot could not be read.")
                continue
            st.image(charts.weight_grid(arr), caption=f"{layer} {label} · shape {tuple(arr.shape)}", clamp=True)
    st.caption("Smooth, structured filters mean a healthy first layer; salt-and-pepper noise means too high a "
               "learning rate, too little regularization or too little training. Each tile is scaled on its own; "
               "magenta pixels are NaN/inf weights.")


def details_section(state: RunState) -> None:
    left, right = st.columns(2)
    with left:
        st.markdown("##### Config")
        st.json(state.meta.get("config") or {}, expanded=True)
        model = state.meta.get("model")
        if isinstance(model, dict):
            with st.expander("Model"):
                st.json(model, expanded=False)
    with right:
        st.markdown("##### Status")
        st.json({k: v for k, v in state.status.items() if k != "schema"}, expanded=False)
        if state.events:
            st.markdown("##### Events")
            st.dataframe(pd.DataFrame([{"step": e.get("step"), "name": str(e.get("name", e.get("type"))),
                                        "data": str(e.get("data", ""))[:200]} for e in state.events]),
                         hide_index=True)
        if state.corrupt_lines:
            st.caption(f"{state.corrupt_lines} corrupt line(s) skipped while reading this run.")


def _rerun_if_runs_changed(root: str, known_runs: tuple[str, ...]) -> None:
    if tuple(cached_runs_index(root).discover()) != known_runs:
        st.rerun()  # a run appeared or went away: redraw the whole page, the sidebar's list included


def run_view(root: str, name: str, known_runs: tuple[str, ...]) -> None:
    _jump_if_asked()
    _rerun_if_runs_changed(root, known_runs)
    try:
        state = cached_run_state(root, name)
        if state is None:
            st.warning("This run is no longer under the runs folder.")
            return
        _run_page(state, name)
    except Exception as exc:  # noqa: BLE001 - one bad run is one grey line, never an error page with our source
        if os.environ.get("BABYSIT_DEBUG"):
            raise
        why = " ".join(str(exc).split())[:300] if isinstance(exc, RunReadError) else (
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        st.caption(f":material/block: {safe_md(name)} cannot be shown: {safe_md(why)}")


def _run_page(state: RunState, name: str) -> None:
    # One lock per run, shared by every browser session: a refresh reads a consistent state.
    with state.lock:
        state.update()
        focus = st.session_state.get(focus_key(name))
        domain = focus_range(state, focus)
        plans = run_plans(state, domain=domain, marker=focus, scale=st.session_state.get(f"yscale:{name}") or "auto",
                          smoothing=float(st.session_state.get("smoothing", 0.8)))
        run_header(state, name)
        metrics_row(state, float(st.session_state.get("smoothing", 0.8)))
        if "lr_find" in plans:  # a `babysit lr-find` run: its curve first, live (lr_find_chart.py)
            st.markdown("#### Learning-rate range test: loss against learning rate")
            chart(plans["lr_find"])
            st.caption(safe_md(lr_find_caption(state.events)))
        left, right = st.columns([2.2, 1], gap="medium")
        with left:
            loss_section(state, name, focus, domain, plans["loss"])
        with right:
            findings_section(state, name)
        left, right = st.columns(2, gap="medium")
        with left:
            plan_section("accuracy", plans.get("accuracy"))
        with right:
            plan_section("lr", plans.get("lr"))
        layers_tab, weights_tab, details_tab = st.tabs(["Layers", "Weights", "Details"])
        with layers_tab:
            layers_section(state, plans)
        with weights_tab:
            weights_section(state, name)
        with details_tab:
            details_section(state)


# ----------------------------------------------------------------- the Runs view
def runs_table(frame: pd.DataFrame, now: float) -> pd.DataFrame:
    errors = frame["error"] if "error" in frame else pd.Series([None] * len(frame))
    out = pd.DataFrame({
        "run": frame["run"],
        "state": frame["state"],
        "step": pd.to_numeric(frame["step"], errors="coerce"),  # None -> NaN: shown as "—", not "None"
        "epoch": pd.to_numeric(frame["epoch"], errors="coerce"),
        "best val acc": frame["best_val_acc"],
        "worst finding": [
            str(e) if isinstance(e, str) and e else
            f"{s}: {t}" if s in SEVERITY_STYLE else (str(t) if isinstance(t, str) and t else "—")
            for s, t, e in zip(frame["worst_severity"], frame["worst_finding"], errors, strict=True)
        ],
        "updated": [fmt_age(now - u) + " ago" if isinstance(u, (int, float)) and math.isfinite(u) else "—"
                    for u in frame["updated"]],
        "age": [fmt_age(now - s) if isinstance(s, (int, float)) and math.isfinite(s) else "—"
                for s in frame["started"]],
        "open": [run_link(r) for r in frame["run"]],
    })
    return out


def runs_view(root: str, known_runs: tuple[str, ...] | None = None) -> None:
    _jump_if_asked()
    if known_runs is not None:
        _rerun_if_runs_changed(root, known_runs)
    index = cached_runs_index(root)
    index.refresh()
    frame = index.frame()
    if not len(frame):
        st.info("No runs here yet. Start one, and it appears by itself:")
        st.code(f"babysit train --run-dir {Path(root) / 'first'}", language="bash")
        return
    states = frame["state"].value_counts()
    row = st.container(horizontal=True)
    row.metric("Runs", len(frame), border=True, height="stretch")
    for s in ("running", "finished", "stopped", "crashed"):
        row.metric(s.capitalize(), int(states.get(s, 0)), border=True, height="stretch")
    row.metric("With critical findings", int((frame["worst_severity"] == "critical").sum()), border=True,
               height="stretch")
    names = frame["run"].tolist()
    table = runs_table(frame, time.time())
    grey = ["color: #8c959f; font-style: italic"] * len(table.columns)
    # A Styler greys the runs that cannot be read; it then formats the cells itself (column_config's formats
    # no longer apply): whole numbers as such, and "—" where there is nothing.
    styled = (table.style.apply(lambda r: grey if r["state"] == "unreadable" else [""] * len(r), axis=1)
              .format(lambda v: "—" if v is None or v != v else f"{int(v):,}", subset=["step", "epoch"]))
    st.dataframe(
        styled,
        key="runs_table", on_select=lambda: _pick_from_table("runs_table", names), selection_mode="single-row",
        hide_index=True, height=min(38 + 35 * len(frame), 720),
        column_config={
            "run": st.column_config.TextColumn("run", width="medium"),
            "step": st.column_config.NumberColumn("step", format="localized"),
            "epoch": st.column_config.NumberColumn("epoch"),
            "best val acc": st.column_config.ProgressColumn("best val acc", format="percent", min_value=0.0,
                                                            max_value=1.0, color="blue"),
            "worst finding": st.column_config.TextColumn("worst finding", width="medium"),
            "open": st.column_config.LinkColumn("open", display_text="open ›", width="small"),
        },
    )
    st.caption("Select a row to open its run. New runs appear by themselves.")


# ----------------------------------------------------------------- Compare and Search
def compare_view(root: str, names: list[str], current: str | None) -> None:
    _jump_if_asked()
    default = [n for n in ([current] if current else []) + names if n in names]
    default = list(dict.fromkeys(default))[:4]
    chosen = st.multiselect("Runs to compare", names, default=default, key="compare",
                            placeholder="Pick runs to overlay")
    if not chosen:
        st.info("Pick some runs to overlay.")
        return
    smoothing = float(st.session_state.get("smoothing", 0.8))
    scale = st.segmented_control("y scale", ["auto", "linear", "log"], default="auto", key="compare_scale",
                                 required=True)
    losses, accs, rows = [], [], []
    for name in chosen:
        try:
            state = cached_run_state(root, name)
            if state is None:
                continue
            with state.lock:
                state.update()
                v = state.loss.view()
        except Exception as exc:  # noqa: BLE001 - a run that cannot be read is left out, with one grey line
            st.caption(f":material/block: {safe_md(name)} left out: {safe_md(type(exc).__name__)}")
            continue
        losses.append(pd.DataFrame({"run": name, "step": v.mean_x, "loss": ema(v.mean_y, smoothing)}))
        ep = state.epochs
        for split in ("train", "val"):
            if f"{split}_acc" in ep:
                accs.append(pd.DataFrame({"run": name, "epoch": ep["epoch"], "split": split,
                                          "acc": ep[f"{split}_acc"]}))
        config = state.meta.get("config") if isinstance(state.meta.get("config"), dict) else {}
        val = ep["val_acc"].to_numpy(dtype=float) if "val_acc" in ep else np.empty(0)
        val = val[np.isfinite(val)]
        worst = max(state.findings(), key=lambda f: severity_rank(f.get("severity")), default=None)
        rows.append({"run": name, "state": str(state.status.get("state")),
                     "steps": int(v.n), "best val acc": float(val.max()) if len(val) else None,
                     "worst finding": str(worst.get("title") or worst.get("rule")) if worst else "—",
                     **{k: str(config[k]) for k in ("model", "lr", "reg", "batch_size", "momentum") if k in config}})
    left, right = st.columns(2, gap="medium")
    with left:
        st.markdown("#### Loss (smoothed)")
        frame = pd.concat(losses, ignore_index=True) if losses else pd.DataFrame(
            {"run": [], "step": [], "loss": []})
        log = scale == "log" or (scale == "auto" and spans_decades(frame["loss"].to_numpy(dtype=float), 3))
        chart(charts.plan_compare_loss(frame, log_scale=log))
    with right:
        st.markdown("#### Accuracy (val solid, train dashed)")
        frame = pd.concat(accs, ignore_index=True) if accs else pd.DataFrame(
            {"run": [], "epoch": [], "split": [], "acc": []})
        chart(charts.plan_compare_accuracy(frame))
    st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
        "best val acc": st.column_config.ProgressColumn("best val acc", format="percent", min_value=0.0,
                                                        max_value=1.0, color="blue")})


def search_view(root: str, current: str | None) -> None:
    _jump_if_asked()
    index = cached_runs_index(root)
    index.refresh()
    frame = index.frame()
    st.markdown("#### Random search: best val accuracy against learning rate and regularization")
    st.caption("The coarse-to-fine picture: sample in log space, look where the good runs cluster, "
               "narrow the range there and search again. Click a point to open its run.")
    has_acc = frame["best_val_acc"].notna() if len(frame) else pd.Series(dtype=bool)
    if not len(frame) or not has_acc.any():
        st.info("No run has a val accuracy yet.")
        return
    left, right = st.columns(2, gap="medium")
    panels = ((left, "lr", "learning rate", "search_lr"), (right, "reg", "regularization", "search_reg"))
    for col, x, title, key in panels:
        with col:
            usable = frame[frame[x].notna() & (frame[x] > 0) & has_acc]
            if not len(usable):
                st.caption(f"No run records a positive `{x}` in its config.")
                continue
            chart(charts.plan_search(frame.astype({x: float}), x, x_title=title, current=current), key=key,
                  on_select=lambda k=key: _pick_from_chart(k), selection_mode="pick")
    skipped = int((~has_acc).sum())
    if skipped:
        st.caption(f"{skipped} run(s) without a val accuracy are not plotted.")
    best = frame[has_acc].sort_values("best_val_acc", ascending=False)
    st.dataframe(pd.DataFrame({"run": best["run"], "best val acc": best["best_val_acc"], "lr": best["lr"],
                               "reg": best["reg"], "state": best["state"], "open": [run_link(r) for r in best["run"]]}),
                 hide_index=True, column_config={
                     "best val acc": st.column_config.ProgressColumn("best val acc", format="percent",
                                                                     min_value=0.0, max_value=1.0, color="blue"),
                     "lr": st.column_config.NumberColumn("lr", format="%.2e"),
                     "reg": st.column_config.NumberColumn("reg", format="%.2e"),
                     "open": st.column_config.LinkColumn("open", display_text="open ›")})


# ----------------------------------------------------------------- the page
def main() -> None:
    st.set_page_config(page_title="babysit", page_icon="🍼", layout="wide", initial_sidebar_state="expanded")
    st.html(_CSS)
    root = root_dir()
    root_s = str(root)
    index = cached_runs_index(root_s)
    summaries = index.refresh() if root.is_dir() else []
    names = [s.name for s in summaries]  # most recently active first
    by_name = {s.name: s for s in summaries}

    asked = st.query_params.get("run")
    refused = asked is not None and asked not in by_name
    with st.sidebar:
        st.markdown("## :material/child_care: babysit")
        st.caption("runs under " + safe_md(root_s))
        if names:
            # No format_func: a bound widget matches the URL against the *displayed* option text.
            st.selectbox("Run", names, key="run", bind="query-params")
            chosen = by_name.get(st.session_state.get("run")) or summaries[0]
            shown = "unreadable" if chosen.error else badge_state(chosen.status)
            colour, icon = STATE_STYLE.get(shown, STATE_STYLE["unknown"])
            st.badge(shown, color=colour, icon=icon)
        st.selectbox("Refresh every", list(REFRESH), index=2, key="refresh")
        st.slider("Loss smoothing", 0.0, 0.99, 0.8, key="smoothing")
        running = sum(1 for s in summaries if s.status.get("state") == "running")
        st.caption(f"{len(names)} run(s), {running} running")
    if refused:
        if inside(root, asked) is None:
            st.error("Refused a run path from the URL: it is not a plain name inside the runs folder.",
                     icon=":material/block:")
        else:
            st.warning("No run of that name under the runs folder.", icon=":material/search_off:")
    if not root.is_dir():
        st.error(f"The runs folder does not exist: {safe_md(root_s)}")
        return

    every = REFRESH.get(st.session_state.get("refresh", "2 s"))
    current = st.session_state.get("run") if st.session_state.get("run") in by_name else (names[0] if names else None)
    known = tuple(sorted(names))
    tabs = st.tabs(VIEWS, key="view", bind="query-params", on_change="rerun")
    for tab, view in zip(tabs, VIEWS, strict=True):
        if tab.open is False:
            continue
        with tab:
            if view == "Run":
                if current is None:
                    st.fragment(runs_view, run_every=every)(root_s, known)
                else:
                    st.fragment(run_view, run_every=every)(root_s, current, known)
            elif view == "Runs":
                st.fragment(runs_view, run_every=every)(root_s, known)
            elif view == "Compare":
                st.fragment(compare_view, run_every=every)(root_s, names, current)
            else:
                st.fragment(search_view, run_every=every)(root_s, current)


main()
