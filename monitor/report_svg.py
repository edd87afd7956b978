"""Static pictures for the HTML report: inline SVG line charts and PNG data URIs (of the weight grids that
monitor/weights_image.py draws).

No JavaScript, no CDN, no plotting library: a report must open on an air-gapped cluster and stay small.
Long series are downsampled keeping each bucket's minimum and maximum (a spike survives, unlike
TensorBoard's reservoir sample), and non-finite values are drawn as red markers on the chart's edge with a
dashed line at the first one: a NaN is the point of the chart, not a gap in it. Every label is escaped.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
import struct
import zlib
from dataclasses import dataclass
from html import escape

import numpy as np

from babysit.monitor.dashboard.downsample import SeriesBuffer, nonfinite_runs
from babysit.rules.base import fmt

__all__ = [
    "Line",
    "Ref",
    "line_chart",
    "minmax_downsample",
    "nice_ticks",
    "log_ticks",
    "fmt_tick",
    "png_bytes",
    "png_data_uri",
    "PALETTE",
]

# Colour-blind-safe (Okabe-Ito, then Tableau) in the order series get them.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7F7F7F", "#BCBD22",
           "#17BECF", "#9467BD", "#8C564B", "#1F77B4"]
BAD = "#D62728"  # non-finite markers
_CLIP_IDS = itertools.count(1)


@dataclass
class Line:
    """One series. `points=True` draws a dot per value (epoch metrics: few, and each one matters)."""

    label: str
    x: np.ndarray
    y: np.ndarray
    color: str = ""
    points: bool = False
    dashed: bool = False
    width: float = 1.6


@dataclass
class Ref:
    """A horizontal reference: a line at `y` (label on the right) or, with `y2`, a shaded band."""

    y: float
    label: str = ""
    y2: float | None = None
    color: str = "#888"


@dataclass
class _Scale:
    lo: float
    hi: float
    a: float  # pixel of lo
    b: float  # pixel of hi
    log: bool = False

    def __call__(self, v: np.ndarray | float) -> np.ndarray:
        v = np.asarray(v, dtype=float)
        if self.log:
            with np.errstate(all="ignore"):
                v = np.log10(np.where(v > 0, v, np.nan))
            lo, hi = math.log10(self.lo), math.log10(self.hi)
        else:
            lo, hi = self.lo, self.hi
        return self.a + (v - lo) / ((hi - lo) or 1.0) * (self.b - self.a)


def minmax_downsample(x: np.ndarray, y: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ~2 points per bucket: the dashboard's min/max envelope (monitor/dashboard/downsample.py), plus
    one NaN where each run of non-finite values starts, so the drawn line breaks there. Short series come back
    unchanged."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(y) <= 2 * buckets:
        return x, y
    rows = SeriesBuffer(2 * buckets).extend(x, y).rows()
    starts = np.asarray([run[0] for run in nonfinite_runs(y)], dtype=np.int64)
    keep = np.union1d(rows, starts)
    return x[keep], y[keep]


def _nice(x: float) -> float:
    """1, 2 or 5 times a power of ten, at least x."""
    if not x > 0 or not math.isfinite(x):
        return 1.0
    e = math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * 10**e >= x * (1 - 1e-9):
            return m * 10**e
    return 10 ** (e + 1)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    step = _nice((hi - lo) / n)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    if not (lo > 0 and hi > 0):
        return []
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    decades = [10.0**e for e in range(a, b + 1)]
    stride = max(1, math.ceil(len(decades) / 7))
    ticks = [d for d in decades[::stride] if lo * (1 - 1e-9) <= d <= hi * (1 + 1e-9)]
    if len(ticks) < 2:
        ticks = [m * 10.0**e for e in range(a, b + 1) for m in (1, 2, 5) if lo <= m * 10.0**e <= hi]
    return ticks


def fmt_tick(v: float) -> str:
    """An axis label, not a value: as short as the tick spacing allows (1e-05, 0.002, 12,000), so it differs
    from the values' `fmt` (significant digits, scientific when tiny or huge, as findings' messages say them)."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        m, e = f"{v:.0e}".split("e")
        return f"{m}e{int(e)}"
    if a >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def _path(xs: np.ndarray, ys: np.ndarray) -> str:
    """SVG path data; a NaN pixel starts a new segment (a gap)."""
    out, pen = [], False
    for x, y in zip(xs, ys, strict=True):
        if not (math.isfinite(x) and math.isfinite(y)):
            pen = False
            continue
        out.append(f"{'L' if pen else 'M'}{x:.1f},{y:.1f}")
        pen = True
    return "".join(out)


def line_chart(
    lines: list[Line],
    *,
    x_label: str = "step",
    y_label: str = "",
    log_y: bool | None = None,
    refs: list[Ref] | None = None,
    y_range: tuple[float, float] | None = None,
    width: int = 640,
    height: int = 240,
    buckets: int = 400,
    aria: str = "",
) -> str:
    """An SVG line chart (a string of markup). log_y None: log when all values are positive and span more
    than three decades (an exploding loss stays readable)."""
    refs = list(refs or [])
    left, right, top, bottom = 58, 16, 12, 38
    pw, ph = width - left - right, height - top - bottom
    lines = [ln for ln in lines if len(ln.x)]
    for i, ln in enumerate(lines):
        ln.color = ln.color or PALETTE[i % len(PALETTE)]
    data = [minmax_downsample(ln.x, ln.y, buckets) for ln in lines]
    all_x = np.concatenate([d[0] for d in data]) if data else np.array([])
    all_y = np.concatenate([d[1] for d in data]) if data else np.array([])
    fy = all_y[np.isfinite(all_y)]
    ref_vals = [v for r in refs for v in (r.y, r.y2) if v is not None and math.isfinite(v)]
    if log_y is None:
        log_y = bool(len(fy)) and fy.min() > 0 and fy.max() / fy.min() > 1e3
    if log_y:
        fy = fy[fy > 0]
        ref_vals = [v for v in ref_vals if v > 0]
    if y_range is not None:
        ylo, yhi = y_range
    elif len(fy):
        ylo, yhi = float(fy.min()), float(fy.max())
        for v in ref_vals:  # a reference just outside the data is still worth showing
            near = (ylo / 30 <= v <= yhi * 30) if log_y else (ylo - (yhi - ylo) <= v <= yhi + (yhi - ylo))
            if near:
                ylo, yhi = min(ylo, v), max(yhi, v)
    else:
        ylo, yhi = (0.1, 10.0) if log_y else (0.0, 1.0)
    if log_y:
        if yhi <= ylo:
            ylo, yhi = ylo / 2, yhi * 2
        pad = 0.05 * math.log10(yhi / ylo)
        ylo, yhi = 10 ** (math.log10(ylo) - pad), 10 ** (math.log10(yhi) + pad)
    else:
        if yhi <= ylo:
            pad = abs(ylo) * 0.1 or 0.5
            ylo, yhi = ylo - pad, yhi + pad
        elif y_range is None:
            pad = (yhi - ylo) * 0.06
            ylo, yhi = (0.0 if 0 <= ylo < pad else ylo - pad), yhi + pad  # a non-negative series keeps 0
    fx = all_x[np.isfinite(all_x)]
    xlo, xhi = (float(fx.min()), float(fx.max())) if len(fx) else (0.0, 1.0)
    if xhi <= xlo:
        xlo, xhi = xlo - 1, xhi + 1
    sx = _Scale(xlo, xhi, left, left + pw)
    sy = _Scale(ylo, yhi, top + ph, top, log=bool(log_y))

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="{escape(aria or y_label, quote=True)}" xmlns="http://www.w3.org/2000/svg">']
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#d0d7de"/>')
    yt = log_ticks(ylo, yhi) if log_y else nice_ticks(ylo, yhi)
    for t in yt:
        py = float(sy(t))
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py:.1f}" y2="{py:.1f}" stroke="#eef1f4"/>')
        out.append(f'<text x="{left - 6}" y="{py + 3.5:.1f}" text-anchor="end" class="tick">'
                   f"{escape(fmt_tick(t))}</text>")
    xt = [t for t in nice_ticks(xlo, xhi, 6) if x_label not in ("step", "epoch") or float(t).is_integer()]
    for t in xt:
        px = float(sx(t))
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top}" y2="{top + ph}" stroke="#f3f5f7"/>')
        out.append(f'<text x="{px:.1f}" y="{top + ph + 15}" text-anchor="middle" class="tick">'
                   f"{escape(fmt_tick(t))}</text>")
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle" class="axis">'
               f"{escape(x_label)}</text>")
    if y_label:
        out.append(f'<text transform="translate(13,{top + ph / 2:.1f}) rotate(-90)" text-anchor="middle" '
                   f'class="axis">{escape(y_label)}{" (log)" if log_y else ""}</text>')
    clip = f"clip{next(_CLIP_IDS)}"
    out.append(f'<clipPath id="{clip}"><rect x="{left}" y="{top}" width="{pw}" height="{ph}"/></clipPath>')
    out.append(f'<g clip-path="url(#{clip})">')
    for r in refs:
        if r.y2 is not None:
            y1, y2 = float(sy(r.y)), float(sy(r.y2))
            if math.isfinite(y1) and math.isfinite(y2):
                out.append(f'<rect x="{left}" y="{min(y1, y2):.1f}" width="{pw}" height="{abs(y2 - y1):.1f}" '
                           f'fill="{r.color}" opacity="0.10"><title>{escape(r.label)}</title></rect>')
        else:
            py = float(sy(r.y))
            if math.isfinite(py):
                out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py:.1f}" y2="{py:.1f}" stroke="{r.color}" '
                           f'stroke-dasharray="5 4"><title>{escape(r.label)}</title></line>')
    first_bad: float | None = None
    for ln, (x, y) in zip(lines, data, strict=True):
        px, py = sx(x), sy(y)
        dash = ' stroke-dasharray="6 3"' if ln.dashed else ""
        out.append(f'<path d="{_path(px, py)}" fill="none" stroke="{ln.color}" stroke-width="{ln.width}" '
                   f'stroke-linejoin="round"{dash}><title>{escape(ln.label)}</title></path>')
        if ln.points:
            for xv, yv, a, b in zip(x, y, px, py, strict=True):
                if math.isfinite(a) and math.isfinite(b):
                    out.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.6" fill="{ln.color}">'
                               f'<title>{escape(ln.label)}: {escape(fmt(yv, 4))} at {escape(x_label)} '
                               f'{escape(fmt_tick(xv))}</title></circle>')
        # Non-finite values (and values a log axis cannot show) as markers on the edge, one per pixel column.
        bad = ~np.isfinite(ln.y) | ((ln.y <= 0) if log_y else False)
        if bad.any():
            xs_bad, ys_bad = np.asarray(ln.x, dtype=float)[bad], np.asarray(ln.y, dtype=float)[bad]
            first_bad = float(xs_bad[0]) if first_bad is None else min(first_bad, float(xs_bad[0]))
            seen: set[int] = set()
            for xv, yv in zip(xs_bad, ys_bad, strict=True):
                col = int(float(sx(xv)))
                if col in seen:
                    continue
                seen.add(col)
                down = yv == -math.inf or (log_y and math.isfinite(yv))
                ey = top + ph - 2 if down else top + 2
                tri = (f"{col - 4},{ey - 6 if down else ey + 6} {col + 4},{ey - 6 if down else ey + 6} {col},{ey}")
                out.append(f'<polygon class="nonfinite" points="{tri}" fill="{BAD}"><title>{escape(ln.label)}: '
                           f'{escape(fmt(yv, 4))} at {escape(x_label)} {escape(fmt_tick(xv))}</title></polygon>')
    out.append("</g>")
    if first_bad is not None:
        px = float(sx(first_bad))
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top}" y2="{top + ph}" stroke="{BAD}" '
                   f'stroke-dasharray="3 3" opacity="0.8"/>')
        anchor = "end" if px > left + pw * 0.7 else "start"
        dx = -4 if anchor == "end" else 4
        out.append(f'<text x="{px + dx:.1f}" y="{top + 26}" text-anchor="{anchor}" class="bad">first non-finite '
                   f'at {escape(x_label)} {escape(fmt_tick(first_bad))}</text>')
    for r in refs:
        if r.label and r.y2 is None:
            py = float(sy(r.y))
            if math.isfinite(py) and top <= py <= top + ph:
                out.append(f'<text x="{left + 5}" y="{py - 4:.1f}" class="ref">{escape(r.label)}</text>')
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------- images
def _png_zlib(pixels: np.ndarray) -> bytes:
    """A minimal PNG encoder (8-bit grey or RGB), for when Pillow is not installed."""
    h, w = pixels.shape[:2]
    color = 2 if pixels.ndim == 3 else 0
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def png_bytes(pixels: np.ndarray, use_pillow: bool = True) -> bytes:
    """uint8 pixels (h, w) or (h, w, 3) as PNG."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if use_pillow:
        try:
            from PIL import Image
        except ImportError:
            pass
        else:
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG", optimize=True)
            return buf.getvalue()
    return _png_zlib(pixels)


def png_data_uri(pixels: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode("ascii")
