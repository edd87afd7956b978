"""Words every part of babysit shares: the severity scale and where a run names its number of classes.

A neutral module (no imports inside babysit), so the format layer, the rules and the apps rank severities and
find C the same way without importing each other.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SEVERITIES", "severity_rank", "CLASS_KEYS", "num_classes_of"]

# The one severity scale: every part of babysit (rules, report, dashboard, watcher, sinks) ranks with these.
SEVERITIES = ("info", "warning", "critical")


def severity_rank(severity: Any) -> int:
    """info 0 < warning 1 < critical 2; anything else (unknown strings, None) -1, below info."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


# Names a config or hyperparameter dict uses for the number of classes, in the order they are looked up.
CLASS_KEYS = ("num_classes", "n_classes", "num_labels", "nclasses", "classes", "n_labels")
MAX_CLASSES = 10**9


def _class_count(v: Any) -> int | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, str):
        v = v.strip()
        if not v.isdigit() or len(v) > 10:
            return None
    try:
        c = int(v) if isinstance(v, str) or float(v).is_integer() else None  # 10.0 counts, 10.5 does not
    except (TypeError, ValueError, OverflowError):  # a list, NaN, 1e400
        return None
    return c if c is not None and 2 <= c <= MAX_CLASSES else None


def num_classes_of(meta: Any) -> int | None:
    """The number of classes C a run's meta (or a plain config / hyperparameter dict) names, or None.

    meta["num_classes"] first (what `Run(num_classes=...)` records), then the same and the usual aliases
    (`CLASS_KEYS`: n_classes, num_labels, ...) in meta itself and in meta["config"]. Whole numbers 2..1e9 only:
    a bool, a fraction, NaN or 1e400 reads as unknown.
    """
    if not isinstance(meta, dict):
        return None
    for where in (meta, _config_of(meta)):
        for key in CLASS_KEYS:
            c = _class_count(where.get(key))
            if c is not None:
                return c
    return None


def _config_of(meta: dict) -> dict:
    config = meta.get("config")
    return config if isinstance(config, dict) else {}
