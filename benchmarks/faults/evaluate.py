"""Run one case and diagnose it; score its findings; summarize many.

`run_case` trains the case (one thread, seeded), then reads the run back and diagnoses it post-hoc, and also
collects the findings the hooks reported online (findings.jsonl). A case that raises is recorded as an error.
`score` is pure: a case and its findings in, a verdict out.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import statistics
import time
import traceback
from pathlib import Path

__all__ = ["run_case", "run_case_task", "score", "summarize", "matches", "lead_finding", "check_expect"]

SEVERITY = {"info": 0, "warning": 1, "critical": 2}


# --------------------------------------------------------------------------- running
def run_case(name: str, out_dir: str, suite: str = "benchmarks.faults") -> dict:
    """Train case `name` of `suite` (a package with a registry module) into out_dir/run, diagnose it, and
    return everything the scorer needs."""
    import importlib

    import torch

    torch.set_num_threads(1)
    case = importlib.import_module(f"{suite}.registry").get(name)
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    run_dir = out / "run"
    res: dict = {"name": name, "family": case.family, "healthy": case.healthy, "split": case.split,
                 "metrics": {}, "posthoc": [], "online": [], "error": None}
    log = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            metrics = case.fn(str(run_dir))
        res["metrics"] = {k: _plain(v) for k, v in (metrics or {}).items()}
    except Exception as exc:  # noqa: BLE001 - one broken case is an error row, not an abort
        res["error"] = f"training: {type(exc).__name__}: {exc}"
        log.write(traceback.format_exc())
    res["train_s"] = time.perf_counter() - t0
    if run_dir.exists():
        try:
            from benchmarks.faults.api import diagnose, load_run

            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                res["posthoc"] = [_finding(f) for f in diagnose(load_run(run_dir))]
        except Exception as exc:  # noqa: BLE001
            res["error"] = res["error"] or f"diagnosis: {type(exc).__name__}: {exc}"
            log.write(traceback.format_exc())
        res["online"] = _read_findings(run_dir / "findings.jsonl")
    (out / "log.txt").write_text(log.getvalue())
    res["seconds"] = time.perf_counter() - t0
    return res


def run_case_task(task: tuple[str, ...]) -> dict:
    """run_case for a pool worker (a module-level function, so spawned processes can import it)."""
    return run_case(*task)


def _finding(f) -> dict:
    d = f.to_dict() if hasattr(f, "to_dict") else dict(f)
    return {k: d.get(k) for k in ("rule", "severity", "step", "epoch", "message", "fix", "evidence",
                                  "caused_by", "root_cause") if k in d}


def _read_findings(path: Path) -> list[dict]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            found.append(_finding(json.loads(line)))
    return found


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    return float(v) if isinstance(v, float) else v


# --------------------------------------------------------------------------- scoring
def _warns(findings: list[dict]) -> list[dict]:
    return [f for f in findings if SEVERITY.get(f.get("severity"), -1) >= 1]


def matches(f: dict | None, ids) -> bool:
    """Whether finding f is one of `ids`; 'rule:direction' also needs evidence.direction == direction."""
    if not f:
        return False
    rule = f.get("rule")
    direction = (f.get("evidence") or {}).get("direction")
    for i in ids:
        r, _, d = i.partition(":")
        if r == rule and (not d or d == direction):
            return True
    return False


def _root_id(f: dict) -> str | None:
    return f.get("root_cause") or (f.get("evidence") or {}).get("root_cause")


def lead_finding(findings: list[dict]) -> dict | None:
    """The first finding at warning or above (findings come sorted, causes first), followed to its root cause."""
    warns = _warns(findings)
    if not warns:
        return None
    lead = warns[0]
    by_rule = {f.get("rule"): f for f in findings}
    seen = {lead.get("rule")}
    while (root := _root_id(lead)) and root not in seen and root in by_rule:
        seen.add(root)
        lead = by_rule[root]
    return lead


def check_expect(expect: dict, metrics: dict) -> list[str]:
    """The expectations the case's final numbers miss (empty: the case shows what it should)."""
    missed = []
    for key, (lo, hi) in expect.items():
        v = metrics.get(key)
        if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)) or not lo <= v <= hi:
            missed.append(f"{key}={v} not in [{lo}, {hi}]")
    return missed


def score(case, res: dict) -> dict:
    """The verdict for one case from its post-hoc and online findings.

    Faulty: detected (any warning+), correct (an accepted warning+, and the lead -- post-hoc, else online,
    after following root_cause -- is accepted or at least not one of `wrong`), misleading (warnings, none
    accepted), latency (first step of an accepted finding). Healthy: a false alarm is any warning+.
    """
    post, online = res.get("posthoc") or [], res.get("online") or []
    warns = _warns(post) + _warns(online)
    lead = lead_finding(post) or lead_finding(online)
    s = {"name": case.name, "split": case.split, "family": case.family, "healthy": case.healthy,
         "warnings": sorted({f["rule"] for f in warns}), "lead": lead.get("rule") if lead else None,
         "lead_fix": (lead.get("fix") or [None])[0] if lead else None,
         "missed_expect": check_expect(case.expect, res.get("metrics") or {}), "error": res.get("error")}
    if res.get("error"):
        s["verdict"] = "error"
        return s
    if case.healthy:
        s["false_alarm"] = bool(warns)
        s["verdict"] = "FALSE ALARM" if warns else "quiet"
        return s
    accepted = [f for f in warns if matches(f, case.accept)]
    s["detected"] = bool(warns)
    s["correct"] = bool(accepted) and (matches(lead, case.accept) or not matches(lead, case.wrong))
    s["misleading"] = bool(warns) and not accepted
    steps = [f["step"] for f in accepted if isinstance(f.get("step"), int)]
    s["latency"] = min(steps) if steps else None
    if s["correct"]:
        s["verdict"] = "correct"
    elif s["misleading"]:
        s["verdict"] = "misleading"
    elif accepted:
        s["verdict"] = "wrong lead"
    else:
        s["verdict"] = "missed"
    return s


def summarize(scores: list[dict]) -> dict:
    """Recall, correct-diagnosis rate, misleading-only count, false alarms, median latency."""
    faulty = [s for s in scores if not s["healthy"]]
    healthy = [s for s in scores if s["healthy"]]
    lat = [s["latency"] for s in faulty if s.get("correct") and s.get("latency") is not None]
    return {
        "faulty": len(faulty),
        "detected": sum(bool(s.get("detected")) for s in faulty),
        "correct": sum(bool(s.get("correct")) for s in faulty),
        "misleading": sum(bool(s.get("misleading")) for s in faulty),
        "healthy": len(healthy),
        "false_alarms": sum(bool(s.get("false_alarm")) for s in healthy),
        "errors": sum(s["verdict"] == "error" for s in scores),
        "median_latency": statistics.median(lat) if lat else None,
    }
