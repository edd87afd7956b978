"""What every benchmark row shares: a summary of repeated measurements, the machine it ran on, the table.

A row is one figure measured several times in the same process run: its median, a spread (p10-p90 when there
are ten or more samples, else min-max), a target and whether the median meets it. Where the benchmark also
took CPU time, its median is shown beside: on a shared machine the wall clock includes waiting for a core,
CPU time does not (the verdict is on the wall clock, what a user waits).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Row", "Target", "summarize", "machine", "machine_line", "markdown_table", "text_table", "fmt_seconds",
           "fmt_ratio", "fmt_rate"]


@dataclass(frozen=True)
class Target:
    """`median <= value` (or `>=` when `higher_is_better`), shown as text like '< 1 s'."""

    value: float
    text: str
    higher_is_better: bool = False

    def met(self, median: float) -> bool:
        if not math.isfinite(median):
            return False
        return median >= self.value if self.higher_is_better else median <= self.value


@dataclass
class Row:
    """One line of the table. `samples` are in the unit `fmt` formats (seconds, a ratio, a rate)."""

    group: str
    name: str
    samples: list[float] = field(default_factory=list)
    fmt: Callable[[float], str] = lambda x: f"{x:.3g}"
    target: Target | None = None
    note: str = ""  # why there is no number (skipped, not installed, failed), or what the figure counts
    spread_kind: str | None = None  # override: e.g. "p25-p75" when only quartiles are available
    spread: tuple[float, float] | None = None
    cpu: list[float] = field(default_factory=list)  # the same measure on CPU time, where it was taken

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    def spread_range(self) -> tuple[float, float, str] | None:
        if self.spread is not None:
            return (*self.spread, self.spread_kind or "")
        return _spread(self.samples)

    def verdict(self) -> str:
        if not self.samples or self.target is None:
            return "-"
        return "pass" if self.target.met(self.median) else "FAIL"


def _spread(xs: Sequence[float]) -> tuple[float, float, str] | None:
    xs = sorted(x for x in xs if not math.isnan(x))
    if len(xs) < 2:
        return None
    if len(xs) >= 10:
        q = statistics.quantiles(xs, n=10, method="inclusive")
        return q[0], q[-1], "p10-p90"
    return xs[0], xs[-1], "min-max"


def summarize(xs: Sequence[float]) -> dict:
    """median, spread bounds and kind, n: for callers that want the numbers rather than a row."""
    s = _spread(xs)
    return {"median": statistics.median(xs) if xs else math.nan, "lo": s[0] if s else math.nan,
            "hi": s[1] if s else math.nan, "spread": s[2] if s else "", "n": len(xs)}


def fmt_seconds(x: float) -> str:
    if not math.isfinite(x):
        return "inf" if x > 0 else "nan"
    if x >= 1:
        return f"{x:.2f} s"
    if x >= 1e-3:
        return f"{x * 1e3:.3g} ms"
    return f"{x * 1e6:.3g} us"


def fmt_ratio(x: float) -> str:
    return f"{x:.3f}x"


def fmt_rate(unit: str) -> Callable[[float], str]:
    def f(x: float) -> str:
        if x >= 1e6:
            return f"{x / 1e6:.2f}M {unit}/s"
        if x >= 1e3:
            return f"{x / 1e3:.0f}k {unit}/s"
        return f"{x:.0f} {unit}/s"

    return f


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict:
    """CPU model, cores, load, Python, torch and CUDA device (when torch is importable)."""
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0,
        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan,
        "python": sys.version.split()[0],
        "torch": None,
        "cuda": None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["cuda"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def machine_line(info: dict) -> str:
    return (f"{info['cpu']}, {info['usable_cores']} cores (load average {info['load']:.1f} at start), "
            f"Python {info['python']}, torch {info['torch'] or 'not installed'}, "
            f"CUDA: {info['cuda'] or 'none'}")


def markdown_table(rows: list[Row]) -> str:
    out = ["| row | median | spread | CPU median | target | result |", "|---|---:|---|---:|---|---|"]
    for r in rows:
        target = r.target.text if r.target else "-"
        if not r.samples:
            out.append(f"| {r.name} | - | {r.note or 'no samples'} | - | {target} | - |")
            continue
        s = r.spread_range()
        spread = f"{r.fmt(s[0])} - {r.fmt(s[1])} ({s[2]}, n={len(r.samples)})" if s else f"n={len(r.samples)}"
        name = f"{r.name} ({r.note})" if r.note else r.name
        cpu = r.fmt(statistics.median(r.cpu)) if r.cpu else "-"
        out.append(f"| {name} | {r.fmt(r.median)} | {spread} | {cpu} | {target} | {r.verdict()} |")
    return "\n".join(out)


def text_table(head: list[str], body: list[list[str]], markdown: bool = False) -> str:
    """A table of strings: markdown, or columns padded for a terminal."""
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                         + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)) for r in [head, *body])
