"""The learning-rate range test's reading of a curve: loss against an exponentially growing lr.

Torch-free and pure: the trainer's `lr_find` calls it when the sweep ends, and the dashboard and report
call `smooth` to draw the same curve live. Two candidates, as fastai's `lr_find` and Lightning's
`Tuner.lr_find` offer them:

- steepest: where the smoothed loss falls fastest per decade of lr (Lightning's suggestion);
- max_stable_div10: the largest lr swept before the loss diverged, divided by 10 (when the sweep never
  diverged: the lr of the lowest smoothed loss, divided by 10, as fastai's `lr_min`).

The loss is smoothed with a debiased exponential moving average; the sweep counts as diverged once the
smoothed loss exceeds 4x its best so far (after SETTLE steps), or a loss is NaN or inf. fastai and Lightning
smooth with beta 0.98 whatever the sweep's density: ~50 steps of memory, which over a 100-step sweep of 8
decades lags the curve by several decades and finds divergence late. `beta_for` keeps the memory at a
fixed fraction of a decade instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["smooth", "diverged_at", "analyze", "beta_for", "BETA", "DIVERGE", "SETTLE", "SKIP_BEGIN",
           "MEMORY_DECADES"]

BETA = 0.98  # fastai's and Lightning's EMA weight of the past (~50 steps of memory)
MEMORY_DECADES = 0.25  # beta_for: the EMA remembers about a quarter of a decade of the sweep
DIVERGE = 4.0  # stop when the smoothed loss exceeds this multiple of the best smoothed loss (fastai, Lightning)
SETTLE = 20  # the divergence test waits this many steps: the first smoothed points rest on a few losses
SKIP_BEGIN = 10  # the first smoothed points rest on few losses: the steepest slope is not looked for there


def beta_for(lrs: Sequence[float], memory_decades: float = MEMORY_DECADES) -> float:
    """The EMA beta whose memory, 1/(1 - beta) steps, spans `memory_decades` of this sweep (0.5 .. 0.98)."""
    if len(lrs) < 2 or not (lrs[0] > 0 and lrs[-1] > lrs[0]):
        return BETA
    per_decade = (len(lrs) - 1) / math.log10(lrs[-1] / lrs[0])
    return min(BETA, max(0.5, 1 - 1 / max(per_decade * memory_decades, 1.0)))


def smooth(losses: Sequence[float], beta: float = BETA) -> list[float]:
    """Debiased EMA of the losses; a non-finite loss makes that point (and the rest) NaN."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        x = float(loss)
        if not math.isfinite(x) or not math.isfinite(avg):
            avg = math.nan
        else:
            avg = beta * avg + (1 - beta) * x
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def diverged_at(smoothed: Sequence[float], diverge: float = DIVERGE, settle: int = SETTLE) -> int | None:
    """Index of the first point past divergence (NaN, or past `settle` steps above `diverge` x the best so
    far), else None."""
    best = math.inf
    for i, s in enumerate(smoothed):
        if not math.isfinite(s) or (i >= settle and s > diverge * best):
            return i
        best = min(best, s)
    return None


def _slopes(lrs: Sequence[float], values: Sequence[float]) -> list[float]:
    """d value / d log10(lr), central differences inside, one-sided at the ends (numpy.gradient's scheme)."""
    x = [math.log10(v) for v in lrs]
    n = len(values)
    out = []
    for i in range(n):
        a, b = max(i - 1, 0), min(i + 1, n - 1)
        dx = x[b] - x[a]
        out.append((values[b] - values[a]) / dx if dx > 0 else 0.0)
    return out


def analyze(lrs: Sequence[float], losses: Sequence[float], beta: float | None = None, diverge: float = DIVERGE,
            skip_begin: int = SKIP_BEGIN) -> dict:
    """Read a sweep: the smoothed curve, where it diverged, both candidates, the suggestion and why.

    beta: the EMA's weight (default: `beta_for(lrs)`). Returns a JSON-able dict: suggestion, steepest,
    max_stable, max_stable_div10, min_lr (the lr of the lowest smoothed loss), min_loss, diverged_lr (None if
    the sweep never diverged), points (how many were usable), reason (one sentence), chosen ("steepest" or
    "max_stable_div10"), beta, smoothed (the curve).
    """
    if len(lrs) != len(losses):
        raise ValueError(f"{len(lrs)} learning rates but {len(losses)} losses")
    beta = beta_for(lrs) if beta is None else beta
    smoothed = smooth(losses, beta)
    stop = diverged_at(smoothed, diverge)
    end = len(smoothed) if stop is None else stop
    result: dict = {"suggestion": None, "steepest": None, "max_stable": None, "max_stable_div10": None,
                    "min_lr": None, "min_loss": None, "beta": beta, "points": end, "chosen": None, "reason": "",
                    "diverged_lr": None if stop is None else float(lrs[stop]), "smoothed": smoothed}
    if end < 3:
        result["reason"] = (f"the loss diverged after {end} step(s), at lr {lrs[stop]:.3g}: start the sweep lower"
                            if stop is not None else "too few steps to read a curve")
        return result
    i_min = min(range(end), key=lambda i: smoothed[i])
    min_lr = float(lrs[i_min])
    max_stable = float(lrs[end - 1]) if stop is not None else min_lr
    result.update(max_stable=max_stable, max_stable_div10=max_stable / 10, min_lr=min_lr, min_loss=smoothed[i_min])
    lo = min(skip_begin, max(i_min - 2, 0))
    if i_min - lo >= 2:
        slopes = _slopes(lrs[lo:i_min + 1], smoothed[lo:i_min + 1])
        j = min(range(len(slopes)), key=lambda k: slopes[k])
        if slopes[j] < 0:
            result["steepest"] = float(lrs[lo + j])
    steepest = result["steepest"]
    if stop is not None:
        # Measured on digits (benchmarks/lr_find.py): 10x below the divergence point lands within 2x of the
        # best lr of full trainings, where the steepest descent sat 3-4x low for the MLP.
        if steepest is None:
            also = ""
        elif steepest < max_stable / 10:
            also = f"; the steepest descent, lr {steepest:.3g}, is the more cautious choice"
        else:
            also = f"; the steepest descent, lr {steepest:.3g}, is close to it or above"
        result.update(suggestion=max_stable / 10, chosen="max_stable_div10", reason=(
            f"the loss diverged at lr {result['diverged_lr']:.3g}: 10x below the largest stable lr "
            f"({max_stable:.3g}) keeps a safe margin from divergence and still trains fast{also}"))
    elif steepest is not None:
        result.update(suggestion=steepest, chosen="steepest", reason=(
            f"the sweep never diverged (raise --end-lr to see where it does), so the divergence point is unknown: "
            f"using the steepest descent of the smoothed loss, lr {steepest:.3g}"))
    else:
        result.update(suggestion=max_stable / 10, chosen="max_stable_div10", reason=(
            f"the loss neither fell clearly nor diverged: the lr of the lowest smoothed loss ({max_stable:.3g}) "
            "divided by 10; check the data and the model before trusting it"))
    return result
