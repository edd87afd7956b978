"""`babysit diagnose RUN`: say what is wrong with a run, with the evidence and what to do, in the order to try.

    babysit diagnose runs/exp1                       # readable report, grouped by severity
    babysit diagnose runs/exp1 --json                # {"run": ..., "findings": [...]} (docs/FORMAT.md)
    babysit diagnose runs/exp1 --fail-on warning     # exit 1 if anything is at warning or worse (CI)
    babysit diagnose runs/exp1 --threshold explosion_factor=5 --config thresholds.toml

Exit status: 0 nothing at or above --fail-on (default critical), 1 something is, 2 bad input.
Torch-free: this never imports torch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from babysit.errors import UsageError
from babysit.monitor import runfile
from babysit.monitor.reader import RunData, RunReadError
from babysit.monitor.sinks import printable
from babysit.monitor.threshold_options import add_threshold_options, thresholds_from_args
from babysit.rules import Finding
from babysit.rules.base import SEVERITIES, fmt, severity_rank

__all__ = ["configure", "run", "load", "add_reading_options", "reading_options", "report_dict",
           "render_text", "JSON_KEYS"]

JSON_KEYS = ("rule", "severity", "step", "epoch", "message", "evidence", "fix", "fix_ids", "caused_by", "root_cause")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a babysit run directory, a TensorBoard log directory or "
                        "event file, or a CSV of metrics (Lightning's metrics.csv, an exported history)")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON (see docs/FORMAT.md)")
    parser.add_argument("--fail-on", choices=["warning", "critical"], default="critical",
                        help="exit 1 when a finding is at this severity or worse (default: critical)")
    add_reading_options(parser)


def add_reading_options(parser: argparse.ArgumentParser) -> None:
    """How to read a run and judge it, for every command that diagnoses one (diagnose, report)."""
    add_threshold_options(parser)
    parser.add_argument("--map", action="append", default=[], metavar="OURS=THEIRS",
                        help="for imported logs: which tag or column is our loss, lr, train_loss, train_acc, "
                        "val_loss, val_acc, step, epoch or time (repeatable), e.g. --map val_acc=acc/valid")
    parser.add_argument("--num-classes", type=int, default=None, metavar="C",
                        help="number of classes, when the log does not say (enables the ln(C) and chance rules)")


def reading_options(args: argparse.Namespace) -> tuple[dict[str, str], int | None, dict[str, float]]:
    """(mapping, num_classes, thresholds) from `add_reading_options`; any mistake is a one-line UsageError."""
    from babysit.monitor.importers import parse_map

    try:
        mapping = parse_map(args.map)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.num_classes is not None and args.num_classes < 2:
        raise UsageError("--num-classes must be at least 2")
    return mapping, args.num_classes, thresholds_from_args(args)


def load(path: str | Path, mapping: dict[str, str] | None = None, num_classes: int | None = None) -> RunData:
    """The one place a path becomes run data: a babysit run, a TensorBoard log or a CSV of metrics."""
    from babysit.monitor.importers import load_any

    return load_any(path, mapping=mapping, num_classes=num_classes)


def run(args: argparse.Namespace) -> int:
    mapping, num_classes, thresholds = reading_options(args)
    from babysit.monitor.summarize import load_and_diagnose  # streams a babysit run: bounded memory

    with warnings.catch_warnings(record=True) as caught:  # a rule that broke: one line, not a source excerpt
        warnings.simplefilter("always")
        try:
            data, findings, _ = load_and_diagnose(args.run, thresholds, mapping=mapping, num_classes=num_classes)
        except (ValueError, RunReadError) as e:
            raise UsageError(str(e)) from None
    for w in caught:
        print(f"babysit diagnose: warning: {' '.join(str(w.message).split())}", file=sys.stderr)
    text = (json.dumps(runfile.encode(report_dict(data, findings)), allow_nan=False, indent=1) if args.json
            else render_text(data, findings))
    try:
        print("\n".join(map(printable, text.split("\n"))))  # no raw controls or undecodable bytes
    except BrokenPipeError:  # `babysit diagnose RUN | head`: the reader left, the exit status still counts
        pass
    worst = max((severity_rank(f.severity) for f in findings), default=-1)
    return 1 if worst >= severity_rank(args.fail_on) else 0


def report_dict(data: RunData, findings: list[Finding]) -> dict:
    """The --json document: {"run": path, "findings": [{rule, severity, ..., fix, fix_ids, caused_by, root_cause}],
    "not_evaluated": [{rule, why}]} (docs/FORMAT.md)."""
    return {"run": str(data.path), "findings": [{k: f.to_dict().get(k) for k in JSON_KEYS} for f in findings],
            "not_evaluated": list(getattr(findings, "not_evaluated", None) or [])}


def _value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int,)):
        return str(v)
    if isinstance(v, float):
        return fmt(v)
    if isinstance(v, dict):
        items = list(v.items())
        shown = ", ".join(f"{k}: {_value(x)}" for k, x in items[:4])
        return "{" + shown + (f", ... {len(items) - 4} more" if len(items) > 4 else "") + "}"
    if isinstance(v, (list, tuple)):
        shown = ", ".join(_value(x) for x in list(v)[:6])
        return "[" + shown + (f", ... {len(v) - 6} more" if len(v) > 6 else "") + "]"
    return str(v)


_HIDDEN_EVIDENCE = {"own_fix", "own_message"}


def render_text(data: RunData, findings: list[Finding]) -> str:
    """The readable report: a header, then findings grouped by severity (worst first), each with its fix."""
    status = data.status or {}
    steps = int(data.steps["step"].iloc[-1]) if len(data.steps) else status.get("step", 0)
    state = status.get("state", "unknown")
    head = f"babysit diagnose {data.path}: {state}, {steps} steps, {len(data.epochs)} epochs"
    if data.corrupt_lines:
        head += f" ({data.corrupt_lines} corrupt log lines skipped)"
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    lines = [head]
    skipped = list(getattr(findings, "not_evaluated", None) or [])
    if not findings:
        lines.append("no problems found" + (f" by the rules that could judge it ({len(skipped)} could not)"
                                            if skipped else ""))
        return "\n".join(lines + _not_evaluated_lines(skipped))
    lines.append(", ".join(f"{counts[s]} {s}" for s in reversed(SEVERITIES) if counts[s]))
    for severity in reversed(SEVERITIES):
        group = [f for f in findings if f.severity == severity]
        if not group:
            continue
        lines += ["", severity.upper()]
        for f in group:
            where = []
            if f.step is not None:
                where.append(f"step {f.step}")
            if f.epoch is not None:
                where.append(f"epoch {f.epoch}")
            if getattr(f, "recorded", False):  # from findings.jsonl: this diagnosis did not find it again
                where.append("recorded during training")
            lines.append(f"  [{f.rule}] {f.title}" + (f" ({', '.join(where)})" if where else ""))
            lines.append(f"    {f.message}")
            shown = {k: v for k, v in f.evidence.items() if k not in _HIDDEN_EVIDENCE and not _empty(v)}
            if shown:
                lines.append("    evidence: " + "; ".join(f"{k}={_value(v)}" for k, v in shown.items()))
            for i, fix in enumerate(f.fix, 1):
                lines.append(f"    {'fix:' if i == 1 else '    '} {i}. {fix}")
    return "\n".join(lines + _not_evaluated_lines(skipped))


def _not_evaluated_lines(skipped: list[dict]) -> list[str]:
    """Which rules could not judge the run and why, so "no problems found" says how much was looked at."""
    if not skipped:
        return []
    return ["", "NOT EVALUATED"] + [f"  [{x.get('rule')}] {x.get('why')}" for x in skipped]


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
