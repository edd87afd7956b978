"""`babysit report RUN [-o report.html]`: one standalone HTML file that says what happened to a run.

RUN is a babysit run directory, a TensorBoard log or a CSV of metrics (monitor/importers). The file holds the
config and status, the findings with their evidence and fixes (by severity), the rules that could not run
for lack of data, loss / accuracy / learning-rate / per-layer charts as inline SVG, and the first-layer weight
snapshots as inline PNG. It loads nothing from anywhere (an air-gapped cluster opens it as well as a laptop),
runs no script (a Content-Security-Policy forbids any), and escapes every string that came from the run.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from babysit.errors import UsageError
from babysit.monitor import runfile
from babysit.monitor.report_data import SEVERITY_ORDER, diagnose_all, not_evaluated, rule_titles
from babysit.monitor.report_lr_find import lr_find_section
from babysit.monitor.report_style import CSS as _CSS
from babysit.monitor.report_svg import PALETTE, Line, Ref, line_chart, png_data_uri
from babysit.monitor.runfile import decode_float, load_snapshot
from babysit.monitor.sinks import printable
from babysit.monitor.weights_image import filter_grid
from babysit.rules.base import fmt, num_classes_of

# The data (report_data.py) and the stylesheet (report_style.py) live apart; re-exported here as before.
__all__ = ["configure", "run", "build_report", "write_report", "not_evaluated", "diagnose_all"]

MAX_LAYERS = 12  # lines per layer chart; more is a tangle
MAX_SNAPSHOTS = 4

_SOURCES = {"tensorboard": "TensorBoard log", "csv": "CSV of metrics"}


# --------------------------------------------------------------------------- command
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a babysit run directory, a TensorBoard log directory or "
                        "event file, or a CSV of metrics (Lightning's metrics.csv, an exported history)")
    parser.add_argument("-o", "--output", metavar="FILE", default=None,
                        help="where to write the HTML (default: RUN/report.html for a babysit run, else "
                        "./<name>-report.html)")
    from babysit.monitor.diagnose import add_reading_options

    add_reading_options(parser)  # --threshold, --config, --map, --num-classes: as for babysit diagnose


def run(args: argparse.Namespace) -> int:
    from babysit.monitor.diagnose import reading_options

    mapping, num_classes, thresholds = reading_options(args)
    out, data = write_report(args.run, args.output, mapping=mapping, num_classes=num_classes, thresholds=thresholds)
    counts = {s: sum(1 for f in data["findings"] if f.get("severity") == s) for s in SEVERITY_ORDER}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no findings"
    print(f"report written to {printable(out)} ({summary})")
    return 0


def default_output(run_path: Path, run_data: Any) -> Path:
    if (run_data.meta or {}).get("source") is None and run_path.is_dir():
        return run_path / "report.html"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(run_data.meta.get("name") or run_path.stem)).strip("_.")
    return Path(f"{name or 'run'}-report.html")


def write_report(
    path: str | Path,
    output: str | Path | None = None,
    *,
    mapping: dict[str, str] | None = None,
    num_classes: int | None = None,
    thresholds: dict | None = None,
) -> tuple[Path, dict]:
    """Read RUN, diagnose it, write the HTML. Returns (the file written, what went into it)."""
    from babysit.monitor.importers import load_any
    from babysit.monitor.reader import RunReadError

    path = Path(path)
    try:
        from babysit.monitor.summarize import load_and_diagnose  # streams a babysit run: bounded memory
    except Exception:  # noqa: BLE001 - no rule engine: diagnose_all says so and the report shows the data
        load_and_diagnose = None
    try:
        if load_and_diagnose is None:
            run_data, posthoc, early = load_any(path, mapping=mapping, num_classes=num_classes), None, []
        else:
            run_data, posthoc, early = load_and_diagnose(path, thresholds, mapping=mapping, num_classes=num_classes)
    except (RunReadError, ValueError) as e:
        raise UsageError(str(e)) from None
    findings, problems = diagnose_all(run_data, thresholds, posthoc=posthoc)
    problems = early + problems
    out = Path(output) if output else default_output(path, run_data)
    html = build_report(run_data, findings, problems=problems)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        runfile.write_text_atomic(out, html, mode=0o644)  # replaces a planted symlink, never writes through
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from None
    return out, {"findings": findings, "problems": problems}


# --------------------------------------------------------------------------- formatting
def esc(value: Any) -> str:
    """HTML-escaped text; bytes of a non-UTF-8 file name (surrogates) show as backslash escapes."""
    return escape(printable(str(value)), quote=True)


def _num(v: Any) -> str:
    try:
        x = decode_float(v) if isinstance(v, str) else float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isfinite(x) and x.is_integer() and abs(x) < 1e15:  # steps, epochs, counts: every digit
        return f"{int(x):,}" if abs(x) >= 1e4 else str(int(x))
    return fmt(x, 4)


def _value(v: Any, depth: int = 0) -> str:
    """Evidence or config values as short text (escaped by the caller)."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return _num(v)
    if isinstance(v, str) and v in ("NaN", "Infinity", "-Infinity"):
        return _num(v)
    if isinstance(v, (list, tuple)):
        if depth > 2:
            return "[…]"
        items = [_value(x, depth + 1) for x in v[:12]]
        return ("[" if depth else "") + ", ".join(items) + (", …" if len(v) > 12 else "") + ("]" if depth else "")
    if isinstance(v, dict):
        if depth > 1:
            return "{…}"
        items = [f"{k}: {_value(x, depth + 1)}" for k, x in list(v.items())[:12]]
        return "{" + ", ".join(items) + (", …" if len(v) > 12 else "") + "}"
    text = str(v)
    return text if len(text) <= 600 else text[:600] + "…"


def _when(t: Any) -> str:
    if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "—"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _flatten(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(config, dict):
        return [(prefix or "value", config)]
    rows: list[tuple[str, Any]] = []
    for k, v in config.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v and len(rows) < 500:
            rows.extend(_flatten(v, key))
        else:
            rows.append((key, v))
    return rows


def _last_finite(frame: pd.DataFrame, col: str) -> float | None:
    if col not in frame.columns:
        return None
    v = frame[col].to_numpy(dtype=float, na_value=np.nan)
    v = v[np.isfinite(v)]
    return float(v[-1]) if len(v) else None


def _pct(v: float | None, percent: bool) -> str:
    if v is None:
        return "—"
    return f"{v:.1f}%" if percent else f"{100 * v:.1f}%"


# --------------------------------------------------------------------------- sections
def _header(run_data: Any, findings: list[dict]) -> str:
    meta, status = run_data.meta or {}, run_data.status or {}
    name = meta.get("name") or run_data.name
    state = str(status.get("state") or "unknown")
    source = meta.get("source")
    where = (f"{_SOURCES.get(source, source)} imported from {meta.get('imported_from')}" if source
             else f"babysit run at {run_data.path}")
    worst = next((s for s in SEVERITY_ORDER if any(f.get("severity") == s for f in findings)), None)
    verdict = {"critical": ("bad", "Critical problems found"), "warning": ("warn", "Warnings found"),
               "info": ("ok", "No problems found (notes only)"), None: ("ok", "No problems found")}[worst]
    reason = status.get("reason")
    error = status.get("error") if isinstance(status.get("error"), dict) else None
    extra = ""
    if error:
        extra += f'<p class="why">error: {esc(error.get("type", "error"))}: {esc(error.get("message", ""))}</p>'
    if reason:
        extra += f'<p class="why">reason: {esc(reason)}</p>'
    return (
        f'<header><div class="kicker">babysit report</div><h1>{esc(name)}</h1>'
        f'<p class="where">{esc(where)}</p>'
        f'<div class="badges"><span class="badge state-{esc(re.sub("[^a-z]", "", state.lower()))}">'
        f'{esc("imported log" if source and state == "unknown" else state)}</span>'
        f'<span class="badge verdict-{verdict[0]}">{esc(verdict[1])}</span></div>{extra}</header>'
    )


def _cards(run_data: Any) -> str:
    steps, epochs, meta, status = run_data.steps, run_data.epochs, run_data.meta or {}, run_data.status or {}
    last_step = int(steps["step"].max()) if len(steps) else status.get("step") or 0
    n_epochs = int(epochs["epoch"].max()) if len(epochs) else status.get("epoch") or 0
    start = status.get("start_time") or meta.get("start_time")
    end = status.get("end_time") or status.get("heartbeat")
    dur = (float(end) - float(start)) if isinstance(start, (int, float)) and isinstance(end, (int, float)) else math.nan
    accs = [epochs[c].to_numpy(dtype=float, na_value=np.nan) for c in ("train_acc", "val_acc") if c in epochs]
    percent = any(np.nanmax(a) > 1.0 + 1e-9 for a in accs if np.isfinite(a).any())
    val = epochs["val_acc"].to_numpy(dtype=float, na_value=np.nan) if "val_acc" in epochs else np.array([])
    best_val = float(np.nanmax(val)) if np.isfinite(val).any() else None
    loss = steps["loss"].to_numpy(dtype=float, na_value=np.nan) if "loss" in steps else np.array([])
    nonfinite = int((~np.isfinite(loss)).sum())
    last_finite = _last_finite(steps, "loss")
    if not len(loss):
        final_loss, loss_note = "—", ""
    elif math.isfinite(loss[-1]):
        final_loss, loss_note = _num(loss[-1]), f"{nonfinite:,} non-finite" if nonfinite else ""
    else:  # the last value is what the run ended with: a NaN, not the last number that looked fine
        final_loss = _num(loss[-1])
        loss_note = f"{nonfinite:,} non-finite" + (f"; last finite {_num(last_finite)}" if last_finite else "")
    lr = _last_finite(steps, "lr")
    items = [
        ("steps", f"{last_step:,}" if isinstance(last_step, int) else esc(last_step), ""),
        ("epochs", str(n_epochs), ""),
        ("duration", _duration(dur), _when(start)),
        ("final loss", final_loss, loss_note),
        ("train acc", _pct(_last_finite(epochs, "train_acc"), percent), "last epoch"),
        ("val acc", _pct(_last_finite(epochs, "val_acc"), percent),
         f"best {_pct(best_val, percent)}" if best_val is not None else ""),
        ("learning rate", _num(lr) if lr is not None else "—", "last"),
    ]
    cards = "".join(
        f'<div class="card{" card-bad" if k == "final loss" and nonfinite else ""}"><div class="k">{esc(k)}</div>'
        f'<div class="v">{v}</div><div class="s">{esc(s)}</div></div>'
        for k, v, s in items
    )
    return f'<section class="cards">{cards}</section>'


def _finding(f: dict) -> str:
    sev = str(f.get("severity") or "info")
    where = []
    if f.get("step") is not None:
        where.append(f"step {_num(f['step'])}")
    if f.get("epoch") is not None:
        where.append(f"epoch {_num(f['epoch'])}")
    fixes = f.get("fix") or []
    if isinstance(fixes, str):
        fixes = [fixes]
    evidence = f.get("evidence") if isinstance(f.get("evidence"), dict) else {}
    ev_rows = "".join(
        f"<tr><th>{esc(str(k).replace('_', ' '))}</th><td>{esc(_value(v))}</td></tr>"
        for k, v in evidence.items() if k not in ("own_fix", "own_message")
    )
    recorded = '<span class="tag">recorded during training</span>' if f.get("recorded") else ""
    body = [
        f'<article class="finding sev-{esc(re.sub("[^a-z]", "", sev))}">',
        f'<div class="fhead"><span class="sev">{esc(sev)}</span><h3>{esc(f.get("title") or f.get("rule"))}</h3>'
        f'<code class="rule">{esc(f.get("rule", ""))}</code>{recorded}'
        f'<span class="at">{esc(" · ".join(where))}</span></div>',
        f'<p class="msg">{esc(f.get("message", ""))}</p>',
    ]
    if fixes:
        body.append('<div class="fix"><div class="lbl">What to try, in order</div><ol>'
                    + "".join(f"<li>{esc(x)}</li>" for x in fixes) + "</ol></div>")
    if ev_rows:
        body.append(f'<details class="evidence" open><summary>Evidence</summary><table>{ev_rows}</table></details>')
    body.append("</article>")
    return "".join(body)


def _findings(findings: list[dict], skipped: list[dict], problems: list[str], n_rules: int) -> str:
    parts = ['<section id="findings"><h2>Findings</h2>']
    if not findings:
        ran = max(n_rules - len(skipped), 0)
        parts.append(f'<div class="allclear">No problems found by the {ran} rules that could run on this data.</div>')
    names = {"critical": "Critical", "warning": "Warnings", "info": "Notes"}
    for sev in SEVERITY_ORDER:
        group = [f for f in findings if f.get("severity") == sev]
        if group:
            parts.append(f'<h3 class="group sev-{sev}">{names[sev]} <span class="count">{len(group)}</span></h3>')
            parts.extend(_finding(f) for f in group)
    other = [f for f in findings if f.get("severity") not in SEVERITY_ORDER]
    parts.extend(_finding(f) for f in other)
    for p in problems:
        parts.append(f'<div class="problem">{esc(p)}</div>')
    if skipped:
        rows = "".join(
            f'<tr><td><code>{esc(s.get("rule"))}</code></td><td>{esc(s.get("title"))}</td>'
            f'<td>{esc(s.get("why"))}</td></tr>'
            for s in skipped
        )
        parts.append(f'<div class="skipped"><h3>Not evaluated for lack of data <span class="count">{len(skipped)}'
                     f'</span></h3><table class="plain"><tr><th>rule</th><th>checks</th><th>why not</th></tr>'
                     f"{rows}</table></div>")
    parts.append("</section>")
    return "".join(parts)


def _legend(lines: list[Line]) -> str:
    items = "".join(
        f'<li><span class="sw{" sw-pt" if ln.points else ""}{" sw-dash" if ln.dashed else ""}" '
        f'style="--c:{ln.color}"></span>{esc(ln.label)}</li>' for ln in lines
    )
    return f'<ul class="legend">{items}</ul>'


def _figure(title: str, lines: list[Line], note: str = "", **kwargs: Any) -> str:
    lines = [ln for ln in lines if len(ln.x)]
    if not lines:
        return ""
    for i, ln in enumerate(lines):
        ln.color = ln.color or PALETTE[i % len(PALETTE)]
    svg = line_chart(lines, aria=title, **kwargs)
    note_html = f'<p class="note">{esc(note)}</p>' if note else ""
    return f'<figure class="fig"><figcaption>{esc(title)}</figcaption>{svg}{_legend(lines)}{note_html}</figure>'


def _col(frame: pd.DataFrame, col: str) -> np.ndarray:
    return frame[col].to_numpy(dtype=float, na_value=np.nan)


def _charts(run_data: Any) -> str:
    steps, epochs, layers, meta = run_data.steps, run_data.epochs, run_data.layers, run_data.meta or {}
    per_epoch = (meta.get("import") or {}).get("loss_per") == "epoch"
    c = num_classes_of(meta)
    figs = []

    loss_lines = []
    if "loss" in steps and len(steps):
        loss_lines.append(Line("loss per epoch" if per_epoch else "training loss (per step)",
                               _col(steps, "step"), _col(steps, "loss"), width=1.3, points=per_epoch))
    for col, label in (("train_loss", "train loss (end of epoch)"), ("val_loss", "val loss (end of epoch)")):
        if col in epochs and epochs[col].notna().any() and not (per_epoch and col == "train_loss"):
            rows = epochs[epochs[col].notna() | ~np.isfinite(_col(epochs, col))]
            loss_lines.append(Line(label, _col(rows, "step"), _col(rows, col), points=True, width=2.0))
    refs = [Ref(math.log(c), f"ln({c}) = {math.log(c):.3g}: loss at init")] if c else []
    figs.append(_figure("Loss", loss_lines, x_label="epoch" if per_epoch else "step", y_label="loss", refs=refs))

    acc_lines = []
    for col, label in (("train_acc", "train accuracy"), ("val_acc", "val accuracy")):
        if col in epochs and epochs[col].notna().any():
            acc_lines.append(Line(label, _col(epochs, "epoch"), _col(epochs, col), points=True, width=2.0))
    if acc_lines:
        top = max(float(np.nanmax(np.where(np.isfinite(ln.y), ln.y, np.nan))) if np.isfinite(ln.y).any() else 1.0
                  for ln in acc_lines)
        scale = 100.0 if top > 1.0 + 1e-9 else 1.0
        refs = [Ref(scale / c, f"chance 1/{c}")] if c else []
        figs.append(_figure("Accuracy", acc_lines, x_label="epoch", y_label="accuracy", refs=refs,
                            y_range=(0.0, scale * 1.02), log_y=False))

    if "lr" in steps and np.isfinite(_col(steps, "lr")).any():
        lr = _col(steps, "lr")
        pos = lr[np.isfinite(lr) & (lr > 0)]
        log = bool(len(pos)) and pos.max() / pos.min() > 20 and (lr[np.isfinite(lr)] > 0).all()
        figs.append(_figure("Learning rate", [Line("learning rate", _col(steps, "step"), lr, width=1.8)],
                            x_label="epoch" if per_epoch else "step", y_label="lr", log_y=log))

    layer_figs = _layer_charts(layers, meta)
    out = ['<section id="charts"><h2>Training curves</h2><div class="grid">', *[f for f in figs if f], "</div>"]
    if layer_figs:
        out += ['<h2>Per-layer statistics</h2><div class="grid">', *layer_figs, "</div>"]
    elif not len(layers):
        out.append('<p class="muted">No per-layer statistics in this run.</p>')
    out.append("</section>")
    return "".join(out)


def _layer_charts(layers: pd.DataFrame, meta: dict) -> list[str]:
    if not len(layers) or "layer" not in layers.columns:
        return []
    try:
        from babysit.rules import THRESHOLDS
    except Exception:  # noqa: BLE001
        THRESHOLDS = {}  # noqa: N806
    specs = [
        ("g_norm", "Gradient norm per layer", "weight", True, None, "‖∇W‖"),
        ("update_ratio", "Update / weight ratio per layer", "weight", True,
         [Ref(1e-3, "~1e-3 healthy (CS231n)", color="#067647")], "‖ΔW‖ / ‖W‖"),
        ("w_norm", "Weight norm per layer", "weight", None, None, "‖W‖"),
        ("dead_frac", "Dead ReLU units (fraction never active)", "relu", False,
         [Ref(THRESHOLDS["dead_frac"], "dead_units threshold", color="#b42318")] if "dead_frac" in THRESHOLDS
         else None, "fraction"),
        ("saturated_frac", "Saturated tanh/sigmoid units", None, False,
         [Ref(THRESHOLDS["saturated_frac"], "saturation threshold", color="#b42318")]
         if "saturated_frac" in THRESHOLDS else None, "fraction"),
    ]
    figs = []
    for stat, title, kind, log, refs, ylab in specs:
        if stat not in layers.columns:
            continue
        frame = layers[layers[stat].notna()]
        if kind is not None and "kind" in frame.columns:
            frame = frame[frame["kind"].astype(str) == kind]
        if not len(frame):
            continue
        names = list(dict.fromkeys(frame["layer"].astype(str)))
        note = ""
        if len(names) > MAX_LAYERS:
            half = MAX_LAYERS // 2
            note = f"{len(names)} layers: the first {half} and the last {half} are drawn"
            names = names[:half] + names[-half:]
        lines = []
        for name in names:
            rows = frame[frame["layer"].astype(str) == name]
            lines.append(Line(name, _col(rows, "step"), _col(rows, stat), width=1.5,
                              points=len(rows) <= 30))
        y_range = (0.0, 1.0) if stat in ("dead_frac", "saturated_frac") else None
        figs.append(_figure(title, lines, note, x_label="step", y_label=ylab, log_y=log, refs=refs, y_range=y_range))
    return [f for f in figs if f]


def _snapshots(run_data: Any) -> str:
    snaps = run_data.snapshots
    if not len(snaps):
        return ""
    snaps = snaps.sort_values("step", kind="stable").reset_index(drop=True)
    n = len(snaps)
    pick = sorted({round(i * (n - 1) / (MAX_SNAPSHOTS - 1)) for i in range(MAX_SNAPSHOTS)}) if n > 1 else [0]
    tiles, captions = [], []
    for i in pick:
        row = snaps.iloc[i]
        arr = load_snapshot(run_data.path, row["file"])
        label = "initialization" if int(row["step"]) == 0 else f"step {int(row['step']):,}"
        if arr is None:
            tiles.append(f'<figure class="snap missing"><div class="nopic">snapshot unreadable</div>'
                         f"<figcaption>{esc(label)}</figcaption></figure>")
            continue
        grid = filter_grid(arr)
        captions.append(grid.caption)
        h, w = grid.pixels.shape[:2]
        scale = max(1, min(12, 240 // max(h, w, 1)))
        bad = (f'<div class="bad">{grid.nonfinite:,} non-finite weights (red)</div>' if grid.nonfinite else "")
        notes = "".join(f'<div class="s">{esc(x)}</div>' for x in grid.notes)
        tiles.append(
            f'<figure class="snap"><img alt="{esc(row["layer"])} weights at {esc(label)}" '
            f'src="{png_data_uri(grid.pixels)}" width="{w * scale}" height="{h * scale}">'
            f"<figcaption>{esc(label)}</figcaption>{bad}{notes}</figure>"
        )
    layer = snaps.iloc[-1]["layer"]
    caption = captions[-1] if captions else ""
    return (
        f'<section id="weights"><h2>First-layer weights</h2><p class="muted">{esc(layer)}: {esc(caption)}; '
        f"{n} snapshot{'s' if n != 1 else ''} recorded, {len(pick)} shown. Trained filters look smooth "
        "(edges, blobs, strokes); noise-like filters mean too little regularization or training.</p>"
        f'<div class="snaps">{"".join(tiles)}</div></section>'
    )


def _params(params: Any) -> str:
    """A layer's {param: shape} as text; anything else a writer put there, as short text."""
    if not isinstance(params, dict):
        return _value(params)
    return ", ".join(f"{k} {_value(tuple(v) if isinstance(v, list) else v, 1)}" for k, v in list(params.items())[:20])


def _table(rows: list[tuple[str, Any]], cls: str = "kv") -> str:
    if not rows:
        return '<p class="muted">—</p>'
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_value(v))}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def _details(run_data: Any) -> str:
    meta, status = run_data.meta or {}, run_data.status or {}
    parts = ['<section id="details"><h2>Configuration</h2>']
    config = _flatten(meta.get("config") or {})
    if config:
        cells = "".join(f'<div class="kvc"><span class="k">{esc(k)}</span><span class="v">{esc(_value(v))}</span></div>'
                        for k, v in config)
        parts.append(f'<div class="box"><h3>Hyperparameters</h3><div class="kvgrid">{cells}</div></div>')
    else:
        parts.append('<div class="box"><h3>Hyperparameters</h3><p class="muted">none recorded</p></div>')
    parts.append('<div class="two">')
    run_rows = [
        ("run id", meta.get("run_id")),
        ("state", status.get("state")),
        ("started", _when(status.get("start_time") or meta.get("start_time"))),
        ("ended", _when(status.get("end_time"))),
        ("last step", status.get("step")),
        ("classes", meta.get("num_classes")),
        ("torch", meta.get("torch_version")),
        ("device", meta.get("device")),
        ("host", meta.get("host")),
        ("command", " ".join(map(str, meta.get("command") or [])) or None),
    ]
    if run_data.corrupt_lines:
        run_rows.append(("corrupt log lines skipped", run_data.corrupt_lines))
    parts.append(f"<div><h3>Run</h3>{_table([(k, v) for k, v in run_rows if v not in (None, '', '—')])}</div>")
    imp = meta.get("import")
    if isinstance(imp, dict):
        cols = [(f"{ours}", f"← {theirs}") for ours, theirs in (imp.get("columns") or {}).items()]
        notes = list(imp.get("notes") or []) + list(imp.get("derived") or [])
        if imp.get("unmapped"):
            notes.append("not used: " + ", ".join(map(str, imp["unmapped"][:20])) + " (name them with --map)")
        parts.append(f'<div><h3>Imported as</h3>{_table(cols)}<ul class="notes">'
                     + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul></div>")
    parts.append("</div>")
    model = meta.get("model")
    if isinstance(model, dict) and isinstance(model.get("layers"), list) and model["layers"]:
        rows = "".join(
            f"<tr><td>{esc(x.get('name'))}</td><td>{esc(x.get('type'))}</td>"
            f"<td>{esc(_params(x.get('params')))}</td>"
            f"<td class='r'>{esc(_num(x.get('count', 0)))}</td></tr>"
            for x in model["layers"][:200] if isinstance(x, dict)
        )
        parts.append(
            f"<details><summary>Model: {esc(model.get('class'))}, {esc(_num(model.get('parameters', 0)))} "
            f"parameters</summary><table class='plain'><tr><th>layer</th><th>type</th><th>parameters</th>"
            f"<th class='r'>count</th></tr>{rows}</table></details>"
        )
    parts.append("</section>")
    return "".join(parts)


def _heals(run_data: Any) -> str:
    """Every rollback of a self-healing run (heal events, docs/FORMAT.md), in order; nothing for other runs."""
    heals = [e for e in (getattr(run_data, "events", None) or [])
             if isinstance(e, dict) and e.get("name") == "heal" and isinstance(e.get("data"), dict)]
    if not heals:
        return ""
    head = "<tr><th>step</th><th>finding</th><th>rolled back to</th><th>change</th><th>lr</th><th>attempt</th></tr>"
    rows = []
    for e in heals:
        d = e["data"]
        clip = f" at {_num(d.get('clip'))}" if d.get("clip") is not None else ""
        rows.append(f"<tr><td>{esc(e.get('step'))}</td><td>{esc(d.get('finding'))}</td>"
                    f"<td>{esc(d.get('rolled_back_to'))}</td><td>{esc(d.get('action'))}{esc(clip)}</td>"
                    f"<td>{esc(_num(d.get('lr_before')))} → {esc(_num(d.get('lr_after')))}</td>"
                    f"<td>{esc(d.get('attempt'))}</td></tr>")
    return (f'<section id="heals"><h2>Self-healing: {len(heals)} rollback{"s" if len(heals) > 1 else ""}</h2>'
            '<p class="muted">the run was rolled back to its last good state and changed; batches were not '
            f'replayed</p><div class="box"><table>{head}{"".join(rows)}</table></div></section>')


def build_report(run_data: Any, findings: list[dict] | None = None, *, problems: list[str] | None = None) -> str:
    """The whole report as one HTML string. `findings` None: diagnose the run here."""
    if findings is None:
        findings, more = diagnose_all(run_data)
        problems = list(problems or []) + more
    skipped = not_evaluated(run_data, findings)
    n_rules = len(rule_titles())
    name = (run_data.meta or {}).get("name") or run_data.name
    try:
        from importlib.metadata import version

        ver = version("babysit")
    except Exception:  # noqa: BLE001
        ver = "dev"
    body = [
        _header(run_data, findings),
        _cards(run_data),
        _findings(findings, skipped, list(problems or []), n_rules),
        _heals(run_data),  # on_critical="heal" rollbacks (hooks/heal.py)
        lr_find_section(run_data),  # babysit lr-find runs: loss against lr (monitor/report_lr_find.py)
        _charts(run_data),
        _snapshots(run_data),
        _details(run_data),
        f"<footer>babysit {esc(ver)} · report generated {esc(_when(time.time()))} · "
        "standalone file: no scripts, no network</footer>",
    ]
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>babysit report: {esc(name)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )

