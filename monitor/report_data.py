"""What goes into `babysit report`, before any HTML: the findings (post-hoc, plus those recorded during training
that the post-hoc pass did not reproduce), which kinds of data the run holds, and which rules could not run
for lack of data. Torch-free; monitor/report.py turns this into the page.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from babysit.monitor.runfile import clean_finding

__all__ = ["SEVERITY_ORDER", "REQUIRES", "DATA", "diagnose_all", "data_available", "not_evaluated",
           "rule_catalogue"]

SEVERITY_ORDER = ("critical", "warning", "info")

# What each rule needs to say anything: alternatives, each a set of data keys (see DATA). Rules that
# declare `requires` themselves (a tuple of these keys) take precedence.
REQUIRES: dict[str, tuple[tuple[str, ...], ...]] = {
    "nonfinite_loss": (("loss",), ("layers",), ("epoch_metrics",)),
    "loss_explosion": (("loss",),),
    "flat_loss": (("step_loss",),),
    "init_loss_mismatch": (("loss_from_start", "num_classes"),),
    "noisy_loss": (("step_loss",),),
    "overfitting": (("train_acc", "val_acc"), ("train_loss", "val_loss")),
    "underfitting": (("train_acc",),),
    "chance_accuracy": (("val_acc", "num_classes"), ("train_acc", "num_classes")),
    "noisy_weights": (("snapshots",),),
    "update_ratio": (("update_ratio",),),
    "dead_units": (("relu",),),
    "saturated_activations": (("tanh_sigmoid",),),
    "vanishing_gradients": (("g_norm",),),
    "exploding_gradients": (("g_norm",),),
    "stalled_weights": (("w_norm", "g_norm"),),
    "stalled_run": (("process",),),
    "test_set_reuse": (("test_ledger",),),
}
DATA = {
    "loss": "a training loss",
    "step_loss": "a loss logged per step (not one per epoch)",
    "loss_from_start": "the loss from the first step on (the loss at initialization)",
    "num_classes": "the number of classes (pass --num-classes)",
    "layers": "per-layer statistics",
    "epoch_metrics": "per-epoch metrics",
    "train_loss": "a training loss per epoch",
    "val_loss": "a validation loss per epoch",
    "train_acc": "a training accuracy per epoch",
    "val_acc": "a validation accuracy per epoch",
    "snapshots": "first-layer weight snapshots (two or more)",
    "update_ratio": "per-layer update/weight ratios",
    "g_norm": "per-layer gradient norms",
    "w_norm": "per-layer weight norms",
    "relu": "ReLU activation statistics (dead fraction)",
    "tanh_sigmoid": "tanh/sigmoid activation statistics (saturation)",
    "process": "the status of the training process (only a babysit run has one)",
    "test_ledger": "the test-evaluation ledger (only a babysit run has one)",
}


def diagnose_all(run_data: Any, thresholds: dict | None = None,
                 posthoc: list | None = None) -> tuple[list[dict], list[str]]:
    """Post-hoc findings, plus those recorded during training that the post-hoc pass did not reproduce.

    `posthoc`: findings already computed (streamed while reading, monitor/summarize.py); None: diagnose here.
    Returns (findings as dicts, problems: rules that broke, or an engine that would not load).
    """
    problems: list[str] = []
    findings: list[dict] = []
    try:
        from babysit import rules
    except Exception as e:  # noqa: BLE001 - the report still shows the data
        problems.append(f"the rule engine could not be loaded ({type(e).__name__}: {e}); findings recorded "
                        "during training are shown")
        rules = None
    if rules is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                found = rules.diagnose(run_data, thresholds) if posthoc is None else posthoc
                findings = [f.to_dict() for f in found]
            except Exception as e:  # noqa: BLE001
                problems.append(f"diagnosis failed ({type(e).__name__}: {e})")
        problems += [str(w.message) for w in caught if issubclass(w.category, getattr(rules, "RuleWarning", ()))]
    rank = {s: i for i, s in enumerate(SEVERITY_ORDER)}
    seen = {f.get("rule") for f in findings}
    recorded: dict[Any, dict] = {}  # rule -> its most severe (then latest) record: the log keeps escalations
    for f in run_data.findings or []:
        if not isinstance(f, dict):
            continue
        f = clean_finding(f)
        if f.get("rule") not in seen:
            old = recorded.get(f.get("rule"))
            if old is None or rank.get(f.get("severity"), 9) <= rank.get(old.get("severity"), 9):
                recorded[f.get("rule")] = {**f, "recorded": True}
    findings.extend(recorded.values())
    findings.sort(key=lambda f: rank.get(f.get("severity"), 9))  # stable: the engine's order within a severity
    return findings, problems


# --------------------------------------------------------------------------- what data there is
def _has(frame: pd.DataFrame, col: str) -> bool:
    return col in frame.columns and bool(frame[col].notna().any())


def _finite(frame: pd.DataFrame, col: str) -> bool:
    return col in frame.columns and bool(np.isfinite(frame[col].to_numpy(dtype=float, na_value=np.nan)).any())


def data_available(run_data: Any) -> dict[str, bool]:
    """Which kinds of data (keys of DATA) the run holds."""
    meta = run_data.meta or {}
    steps, epochs, layers = run_data.steps, run_data.epochs, run_data.layers
    imported = meta.get("source") is not None
    loss = _has(steps, "loss") and len(steps) > 0
    step_loss = loss and (meta.get("import") or {}).get("loss_per", "step") == "step"
    first = int(steps["step"].min()) if len(steps) else None
    kinds = set(layers["kind"].astype(str)) if "kind" in layers.columns else set()
    config = meta.get("config") or {}
    return {
        "loss": loss,
        "step_loss": step_loss,
        "loss_from_start": step_loss and first is not None and first <= 1,
        "num_classes": bool(meta.get("num_classes") or config.get("num_classes")
                            or ((meta.get("model") or {}).get("layers"))),
        "layers": len(layers) > 0,
        "epoch_metrics": any(_has(epochs, c) for c in ("train_loss", "val_loss", "train_acc", "val_acc")),
        **{c: _has(epochs, c) for c in ("train_loss", "val_loss", "train_acc", "val_acc")},
        "snapshots": len(run_data.snapshots) >= 2,
        "update_ratio": _finite(layers, "update_ratio"),
        "g_norm": _has(layers, "g_norm"),
        "w_norm": _has(layers, "w_norm"),
        "relu": "relu" in kinds,
        "tanh_sigmoid": bool(kinds & {"tanh", "sigmoid"}),
        "process": not imported,
        "test_ledger": not imported,
    }


def rule_catalogue() -> list[tuple[str, str, Any]]:
    """(id, title, requires or None) for every rule the engine runs; our table's ids if it will not load."""
    try:
        from babysit.rules import RULES
    except Exception:  # noqa: BLE001
        return [(rid, rid.replace("_", " "), None) for rid in REQUIRES]
    return [(r.id, r.title, getattr(r, "requires", None)) for r in RULES]


def not_evaluated(run_data: Any) -> list[dict]:
    """Rules that could not run on this data: [{"rule", "title", "missing": [descriptions]}]."""
    have = data_available(run_data)
    out = []
    for rid, title, own in rule_catalogue():
        options = (tuple(own),) if own and all(isinstance(k, str) for k in own) else REQUIRES.get(rid)
        if not options:
            continue
        if any(all(have.get(k, True) for k in option) for option in options):
            continue
        missing_sets = [[DATA.get(k, k) for k in option if not have.get(k, True)] for option in options]
        best = min(missing_sets, key=len)
        out.append({"rule": rid, "title": title, "missing": best,
                    "alternatives": [" and ".join(m) for m in missing_sets]})
    return out
