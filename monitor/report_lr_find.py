"""The report's section for a `babysit lr-find` run: loss against learning rate (log x) as inline SVG, the
suggestion and both candidates marked, and the reasoning. Empty for any other run.

Everything from the run is escaped: the reason text is the trainer's, but a run directory is anyone's file.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

import numpy as np

from babysit.monitor.report_svg import fmt_tick, log_ticks, nice_ticks
from babysit.rules.lr_range import beta_for, smooth

__all__ = ["lr_find_section", "lr_find_svg"]

MARKS = (("suggestion", "suggested", "#16a34a"), ("steepest", "steepest descent", "#2563eb"),
         ("max_stable_div10", "largest stable / 10", "#f59e0b"))


def _event(run_data: Any) -> dict | None:
    for e in reversed(getattr(run_data, "events", None) or []):
        if isinstance(e, dict) and e.get("name") == "lr_find" and isinstance(e.get("data"), dict):
            return e["data"]
    return None


def _positive(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 else None


def lr_find_svg(lrs: np.ndarray, losses: np.ndarray, smoothed: np.ndarray, marks: list[tuple[str, float, str]],
                width: int = 640, height: int = 260) -> str:
    """The chart: raw loss (faint) and smoothed loss against lr on a log axis; a dashed rule per mark."""
    left, right, top, bottom = 58, 16, 12, 38
    pw, ph = width - left - right, height - top - bottom
    keep = np.isfinite(lrs) & (lrs > 0)
    lrs, losses, smoothed = lrs[keep], losses[keep], smoothed[keep]
    fin = losses[np.isfinite(losses)]
    if not len(lrs) or not len(fin):
        return ""
    xlo, xhi = math.log10(float(lrs.min())), math.log10(float(lrs.max()))
    xhi = xhi if xhi > xlo else xlo + 1
    # The divergence at the end would flatten the curve: clip the y axis a little above where it started.
    ylo = float(fin.min())
    start = smoothed[np.isfinite(smoothed)]
    yhi = max(float(np.percentile(fin, 95)), 1.5 * float(start[0]) if len(start) else ylo + 1)
    yhi = yhi if yhi > ylo else ylo + 1
    ylo, yhi = ylo - 0.05 * (yhi - ylo), yhi + 0.05 * (yhi - ylo)

    def sx(v: np.ndarray | float) -> np.ndarray:
        return left + (np.log10(np.asarray(v, dtype=float)) - xlo) / (xhi - xlo) * pw

    def sy(v: np.ndarray | float) -> np.ndarray:
        return top + ph - (np.clip(np.asarray(v, dtype=float), ylo, yhi) - ylo) / (yhi - ylo) * ph

    def path(xs: np.ndarray, ys: np.ndarray) -> str:
        parts, pen = [], "M"
        for a, b in zip(sx(xs), sy(ys), strict=True):
            if math.isfinite(a) and math.isfinite(b):
                parts.append(f"{pen}{a:.1f},{b:.1f}")
                pen = "L"
            else:
                pen = "M"  # a NaN breaks the line
        return " ".join(parts)

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           'aria-label="loss against learning rate" xmlns="http://www.w3.org/2000/svg">',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#d0d7de"/>']
    for t in nice_ticks(ylo, yhi):
        py = float(sy(t))
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py:.1f}" y2="{py:.1f}" stroke="#eef1f4"/>'
                   f'<text x="{left - 6}" y="{py + 3.5:.1f}" text-anchor="end" class="tick">'
                   f"{escape(fmt_tick(t))}</text>")
    for t in log_ticks(10**xlo, 10**xhi):
        px = float(sx(t))
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top}" y2="{top + ph}" stroke="#f3f5f7"/>'
                   f'<text x="{px:.1f}" y="{top + ph + 15}" text-anchor="middle" class="tick">{escape(fmt_tick(t))}'
                   "</text>")
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle" class="axis">learning rate (log)'
               f'</text><text transform="translate(13,{top + ph / 2:.1f}) rotate(-90)" text-anchor="middle" '
               'class="axis">loss</text>')
    out.append(f'<path d="{path(lrs, losses)}" fill="none" stroke="#93c5fd" stroke-width="1">'
               "<title>loss</title></path>")
    out.append(f'<path d="{path(lrs, smoothed)}" fill="none" stroke="#2563eb" stroke-width="2.5">'
               "<title>smoothed loss</title></path>")
    for i, (label, lr, color) in enumerate(marks):
        px = float(sx(lr))
        if left <= px <= left + pw:
            out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top}" y2="{top + ph}" stroke="{color}" '
                       f'stroke-width="2" stroke-dasharray="6 3"><title>{escape(label)} {lr:.3g}</title></line>')
            anchor, dx = ("end", -4) if px > left + pw * 0.7 else ("start", 4)
            out.append(f'<text x="{px + dx:.1f}" y="{top + 14 + 13 * i}" text-anchor="{anchor}" class="ref" '
                       f'fill="{color}">{escape(label)} {lr:.3g}</text>')
    out.append("</svg>")
    return "".join(out)


def lr_find_section(run_data: Any) -> str:
    """The section, or "" when the run is no lr-find run (no `lr_find` config or event) or has no curve."""
    config = (getattr(run_data, "meta", None) or {}).get("config")
    sweep = config.get("lr_find") if isinstance(config, dict) else None
    event = _event(run_data)
    steps = getattr(run_data, "steps", None)
    if (not isinstance(sweep, dict) and event is None) or steps is None or not {"lr", "loss"} <= set(steps.columns):
        return ""
    lrs = steps["lr"].to_numpy(dtype=float)
    losses = steps["loss"].to_numpy(dtype=float)
    beta = sweep.get("beta") if isinstance(sweep, dict) else None
    beta = beta if isinstance(beta, float) and 0 < beta < 1 else beta_for(lrs[np.isfinite(lrs) & (lrs > 0)].tolist())
    marks = []
    for key, label, color in MARKS:
        lr = _positive((event or {}).get(key))
        if lr is not None and (key == "suggestion" or lr != _positive((event or {}).get("suggestion"))):
            marks.append((label, lr, color))
    svg = lr_find_svg(lrs, losses, np.asarray(smooth(losses.tolist(), beta)), marks)
    if not svg:
        return ""
    if event is None:
        text = "the sweep has not ended: no suggestion yet"
    elif _positive(event.get("suggestion")) is None:
        text = f"no suggestion: {event.get('reason')}"
    else:
        text = f"suggested learning rate {event['suggestion']:.3g} ({event.get('chosen')}): {event.get('reason')}"
    return ('<section id="lr-find"><h2>Learning-rate range test</h2>'
            f'<figure class="box">{svg}<figcaption>{escape(text)}</figcaption></figure></section>')
