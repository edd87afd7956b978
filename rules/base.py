"""What every rule shares: the `Finding` it reports, the `Context` it reads, and the `Rule` base class.

A rule is a small stateful object: `update(batch, ctx)` looks only at the records that are NEW in `batch`
(plus whatever O(window) state it keeps) and returns the findings it has just become sure of. The engine
(rules/engine.py) feeds every rule the same batches, whether the run is finished or still training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from babysit.rules.fixes import resolve_fixes
from babysit.vocabulary import CLASS_KEYS, SEVERITIES, num_classes_of, severity_rank

__all__ = ["Finding", "Context", "Rule", "Table", "SEVERITIES", "severity_rank", "fmt", "row_nanmedian", "meta_dict",
           "meta_layers", "dropout_rate", "num_classes_of", "CLASS_KEYS"]

# Categorical losses whose reduction="sum" makes the recorded loss N x the per-example one (rules use ln(C) x N)
_SUMMABLE = ("cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits")


@dataclass
class Finding:
    """One thing wrong with a run, with the numbers that show it and what to do, in the order to try it."""

    rule: str
    title: str
    severity: str
    step: int | None
    epoch: int | None
    message: str
    evidence: dict = field(default_factory=dict)
    fix: list[str] = field(default_factory=list)  # texts, in the order to try them
    fix_ids: list[str] = field(default_factory=list)  # parallel to fix: ids in rules/fixes.py
    caused_by: list[str] = field(default_factory=list)  # rule ids of findings that explain this one
    root_cause: str | None = None  # the most fundamental of them (its fix leads this finding's fixes)
    recorded: bool = False  # read from findings.jsonl (recorded during training), not found by this diagnosis
    source: str | None = None  # who recorded it ("hooks", "watch"), for a recorded finding

    @property
    def resolved(self) -> bool:
        """The condition went away later (a slow start): kept as an info note."""
        return bool(self.evidence.get("resolved"))

    def to_dict(self) -> dict:
        d = _plain(asdict(self))
        for key in ("recorded", "source"):  # only where they say something: the log's lines stay as they were
            if not d[key]:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Finding:
        """A finding from a findings.jsonl line (cleaned by the reader: runfile.clean_finding), marked recorded."""
        def texts(v: Any) -> list[str]:
            return [str(x) for x in v] if isinstance(v, list) else []

        def whole(v: Any) -> int | None:
            return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

        fix = d.get("fix")
        source = d.get("source")
        return cls(rule=str(d.get("rule", "?")), title=str(d.get("title") or d.get("rule", "?")),
                   severity=str(d.get("severity", "info")), step=whole(d.get("step")), epoch=whole(d.get("epoch")),
                   message=str(d.get("message", "")),
                   evidence=dict(d["evidence"]) if isinstance(d.get("evidence"), dict) else {},
                   fix=[fix] if isinstance(fix, str) else texts(fix), fix_ids=texts(d.get("fix_ids")),
                   caused_by=texts(d.get("caused_by")),
                   root_cause=d["root_cause"] if isinstance(d.get("root_cause"), str) else None,
                   recorded=True, source=source if isinstance(source, str) else None)


def meta_dict(meta: Any, key: str) -> dict:
    """`meta[key]` when it is a dict, else {} (meta.json is user data: a field may have any JSON type)."""
    value = meta.get(key) if isinstance(meta, dict) else None
    return value if isinstance(value, dict) else {}


def meta_layers(meta: Any) -> list[dict]:
    """The model summary's layer entries that are dicts (odd entries, or a non-list 'layers', are ignored)."""
    layers = meta_dict(meta, "model").get("layers")
    return [x for x in layers if isinstance(x, dict)] if isinstance(layers, list) else []


def dropout_rate(meta: Any) -> float | None:
    """The heaviest dropout a run declares: its config (dropout, dropout_p, drop_prob) or its model's Dropout
    layers (the hooks record each one's p), whichever is larger; None when neither says."""
    config = meta_dict(meta, "config")
    rates = [config.get(k) for k in ("dropout", "dropout_p", "drop_prob")]
    rates += [x.get("p") for x in meta_layers(meta) if "Dropout" in str(x.get("type", ""))]
    rates = [r for r in rates if isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r < 1]
    return max(rates) if rates else None


def _plain(obj: Any) -> Any:
    """numpy scalars/arrays to Python numbers/lists so findings serialize with json (non-finite kept as floats)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def fmt(x: float, digits: int = 3) -> str:
    """A number for a message: 3 significant digits, scientific when tiny or huge, 'NaN'/'inf' kept."""
    if x is None:
        return "?"
    x = float(x)
    if not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 1, 1)}e}"


class Table:
    """One frame of new records as numpy columns, converted once per update (pandas access is slow)."""

    def __init__(self, frame: Any = None):
        self.cols: dict[str, np.ndarray] = {}
        self.n = 0
        if frame is not None and len(frame):
            self.n = len(frame)
            self.cols = {str(c): _column_array(frame, i, c) for i, c in enumerate(frame.columns)}

    def __len__(self) -> int:
        return self.n

    def __contains__(self, name: str) -> bool:
        return name in self.cols

    def raw(self, name: str) -> np.ndarray:
        return self.cols[name]

    def num(self, name: str) -> np.ndarray:
        """A numeric column as floats (NaN where missing); all-NaN when the column is absent."""
        col = self.cols.get(name)
        if col is None:
            return np.full(self.n, np.nan)
        if col.dtype.kind in "fiub":
            return col.astype(float, copy=False)
        out = np.full(self.n, np.nan)
        for i, v in enumerate(col):
            try:
                out[i] = float(v)
            except (TypeError, ValueError):
                pass
        return out

    def ints(self, name: str) -> np.ndarray:
        return np.asarray(self.cols[name], dtype=np.int64)


def _column_array(frame: Any, i: int, name: Any) -> np.ndarray:
    # DataFrame._get_column_array skips building a Series: 15x faster than frame[name] on small frames,
    # which is most of the cost of an online update. Public API as the fallback.
    get = getattr(frame, "_get_column_array", None)
    col = get(i) if get is not None else frame[name]
    return col if isinstance(col, np.ndarray) else np.asarray(col.to_numpy())


def row_nanmedian(m: np.ndarray) -> np.ndarray:
    """Median of each row ignoring NaN (NaN for an all-NaN row); numpy's nanmedian is slow on small arrays."""
    m = np.asarray(m, dtype=float)
    if m.ndim != 2 or not m.size:
        return np.full(m.shape[0] if m.ndim else 0, np.nan)
    s = np.sort(m, axis=1)  # NaN sorts last
    n = (~np.isnan(m)).sum(axis=1)
    rows = np.arange(len(m))
    lo, hi = np.maximum((n - 1) // 2, 0), np.maximum(n // 2, 0)
    med = 0.5 * (s[rows, lo] + s[rows, np.minimum(hi, m.shape[1] - 1)])
    return np.where(n > 0, med, np.nan)


_EMPTY = Table()


@dataclass
class Context:
    """What the engine knows about the run so far; rules read it, only the engine writes it.

    `initial_loss` is the first finite loss seen (the loss at init: step 1 is computed before any update).
    `epoch_ends` are the steps at which epochs 1, 2, ... ended.
    """

    meta: dict
    thresholds: dict
    status: dict = field(default_factory=dict)
    now: float | None = None
    last_step: int = 0
    first_step: int | None = None
    initial_loss: float | None = None
    initial_step: int | None = None
    epoch_ends: list[int] = field(default_factory=list)
    max_lr: float = math.nan
    last_lr: float = math.nan
    findings: dict = field(default_factory=dict)  # rule id -> current Finding
    initial_final: bool = False  # True once the initial loss no longer changes
    run_dir: Any = None  # pathlib.Path of the run directory when known (snapshots are relative to it)
    # rel path -> numpy array or None: the engine's snapshot loader (rules never open files themselves)
    load_snapshot: Callable[[str], Any] = field(default=lambda rel: None, repr=False)
    # the step records of the current update, as numpy arrays (set by the engine before rules run)
    new_step: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))
    new_loss: np.ndarray = field(default_factory=lambda: np.array([], dtype=float))
    new_lr: np.ndarray = field(default_factory=lambda: np.array([], dtype=float))
    new_time: np.ndarray = field(default_factory=lambda: np.array([], dtype=float))
    # the other frames of the current update, as numpy columns
    epochs: Table = _EMPTY
    layers: Table = _EMPTY
    snapshots: Table = _EMPTY
    events: list = field(default_factory=list)
    nonfinite_step: int | None = None  # first step with a NaN/inf loss: later layer records are not evidence
    prev_lr: float = math.nan  # the last lr of the previous update
    update_ratio_recent: float = math.nan  # median update/weight ratio of the latest layer record
    ur_steps: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))  # this update's records
    ur_values: np.ndarray = field(default_factory=lambda: np.array([], dtype=float))
    ur_before: float = math.nan  # the latest median ratio before this update

    def update_ratio_at(self, steps: np.ndarray) -> np.ndarray:
        """The median update/weight ratio of the latest layer record at or before each step (NaN: none)."""
        steps = np.asarray(steps, dtype=np.int64)
        i = np.searchsorted(self.ur_steps, steps, side="right") - 1
        if not len(self.ur_steps):
            return np.full(len(steps), self.ur_before)
        vals = self.ur_values[np.clip(i, 0, len(self.ur_values) - 1)]
        return np.where(i >= 0, vals, self.ur_before)

    def lr_at(self, steps: np.ndarray) -> np.ndarray:
        """The lr recorded at (or just before) each step; NaN where unknown."""
        steps = np.asarray(steps, dtype=np.int64)
        if not len(self.new_step):
            return np.full(len(steps), self.last_lr)
        i = np.searchsorted(self.new_step, steps, side="right") - 1
        lrs = self.new_lr[np.clip(i, 0, len(self.new_lr) - 1)]
        return np.where(i >= 0, lrs, self.prev_lr)

    def loss_near(self, step: int, span: int = 10) -> float:
        """Median finite loss of this update's steps in (step - span, step]; NaN when none."""
        lo, hi = np.searchsorted(self.new_step, [step - span, step], side="right")
        x = self.new_loss[lo:hi]
        x = x[np.isfinite(x)]
        return float(np.median(x)) if len(x) else math.nan

    @property
    def num_classes(self) -> int | None:
        return num_classes_of(self.meta)

    @property
    def loss_scale(self) -> float:
        """How many per-example losses the recorded loss adds up: N when the hooks saw the first categorical loss
        called with reduction="sum" on N targets, else 1 (a mean). Scales ln(C), the loss of a uniform guess."""
        fb = meta_dict(self.meta, "first_batch")
        if fb.get("reduction") != "sum" or fb.get("loss_fn") not in _SUMMABLE:
            return 1.0
        targets = meta_dict(fb, "targets")
        shape = targets.get("shape")
        if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            return 1.0
        # class indices: one loss per index (N, or N x L tokens); class probabilities (N, C): one per row
        per_row = fb.get("loss_fn") in ("cross_entropy", "nll_loss") and targets.get("integer") is False
        return float(math.prod(shape[:1] if per_row else shape))

    def chance_loss(self, c: int) -> float:
        """ln(C), the loss of a net that guesses uniformly over C classes, times the loss's `loss_scale`."""
        return math.log(c) * self.loss_scale

    @property
    def starts_trained(self) -> bool:
        """The first loss is well below ln(C): a pretrained net, where small steps and a flat loss are intended."""
        c = self.num_classes
        return c is not None and self.initial_loss is not None and self.initial_loss < 0.5 * self.chance_loss(c)

    def epoch_of(self, step: int | None) -> int | None:
        """The 1-based epoch a step belongs to (the epoch in progress when it ran)."""
        if step is None:
            return None
        return 1 + int(np.searchsorted(np.asarray(self.epoch_ends, dtype=np.int64), step, side="left"))

    def has(self, rule: str, at_least: str = "warning") -> bool:
        f = self.findings.get(rule)
        return f is not None and severity_rank(f.severity) >= severity_rank(at_least)


class Rule:
    """Base class: subclasses set `id`, `title`, `fix`, `needs`, and implement `update`.

    `fix` is the default list of fix ids (rules/fixes.py), in the order to try them. `needs` says what the rule
    must see to judge a run (rules/coverage.py): "loss", "steps>=flat_window" (a threshold name or a number),
    "epochs>=2", "layers>=3", "num_classes", "accuracy", "val_metrics", "meta.model". A rule reports each
    condition once; the engine keeps one finding per rule and re-reports it only when its severity rises, a
    cause is found for it, or it is resolved.
    """

    id: str = ""
    title: str = ""
    fix: tuple = ()
    needs: tuple[str, ...] = ()

    def __init__(self, thresholds: dict):
        self.th = thresholds

    def update(self, batch: Any, ctx: Context) -> list[Finding]:  # pragma: no cover - interface
        raise NotImplementedError

    def finding(
        self,
        ctx: Context,
        severity: str,
        step: int | None,
        message: str,
        evidence: dict | None = None,
        fix: list | None = None,
        epoch: int | None = None,
    ) -> Finding:
        step = None if step is None else int(step)
        fix_ids, texts = resolve_fixes(self.fix if fix is None else fix)
        return Finding(
            rule=self.id,
            title=self.title,
            severity=severity,
            step=step,
            epoch=ctx.epoch_of(step) if epoch is None else int(epoch),
            message=message,
            evidence=dict(evidence or {}),
            fix=texts,
            fix_ids=fix_ids,
        )
