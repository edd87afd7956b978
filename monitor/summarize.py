"""Post-hoc diagnosis in bounded memory: stream a run through the online rules, keep only what is shown.

`babysit diagnose` and `babysit report` used to read the whole events.jsonl into DataFrames (14-17x the file
in RAM) and then run the rules once over everything. Here the reader hands each chunk (~4 MB of log) to an
`OnlineDiagnoser` - the same object the hooks and the watcher feed, O(new records) per update - and keeps
downsampled series (per-bucket min/max/first/last, see `reader.load_run(max_points=...)`) for the text, the
report and its charts. Memory is then the chunk, the rules' windows and the kept series, not the file.

Runs imported from TensorBoard or CSV are small and read whole, as before (`importers.load_any`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from babysit.monitor import runfile
from babysit.monitor.reader import CHUNK_BYTES, RunBatch, RunData, RunTailer, is_run_dir, load_run
from babysit.rules import Finding, OnlineDiagnoser, diagnose, findings_of_run
from babysit.rules.engine import RuleWarning

__all__ = ["summarize_run", "load_and_diagnose", "KEPT_POINTS"]

# Buckets kept per series: the dashboard draws 2,000 points, the report fewer; each bucket keeps a handful of
# rows (the min and max of every column), so a 10M-step run keeps tens of thousands of rows, not millions.
KEPT_POINTS = 4000


def summarize_run(
    path: str | os.PathLike,
    thresholds: dict | None = None,
    *,
    max_points: int | None = KEPT_POINTS,
    now: float | None = None,
    num_classes: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> tuple[RunData, list[Finding]]:
    """(the run with bounded series, the findings of the rules over every record). RunReadError if unreadable.

    Rule warnings (a rule that raised and was switched off) are warned as `RuleWarning`, as `diagnose` does.
    ValueError for bad threshold overrides, before anything is read.
    """
    diagnoser: OnlineDiagnoser | None = None
    failed: list[Exception] = []

    def feed(batch: RunBatch, tailer: RunTailer) -> None:
        nonlocal diagnoser
        if diagnoser is None:
            if num_classes is not None and tailer.meta.get("num_classes") is None:
                tailer.meta["num_classes"] = int(num_classes)  # --num-classes, when the run does not say
            diagnoser = OnlineDiagnoser(tailer.meta, thresholds, run_dir=tailer.path)
        batch.events = [e for e in batch.events if e.get("type") != "finding"]  # as load_run's RunData has them
        if failed:
            return
        try:
            # The status describes the run's end: with the last chunk, as `diagnose` sees it with all the records
            # (a stall found at the first chunk would otherwise carry that chunk's step).
            diagnoser.update(batch, status=None if tailer.behind else (tailer.status or {}), now=now)
        except Exception as exc:  # noqa: BLE001 - an engine bug costs the findings, not the reading
            failed.append(exc)
            warnings.warn(f"diagnosis failed ({type(exc).__name__}: {exc})", RuleWarning, stacklevel=2)

    OnlineDiagnoser({}, thresholds)  # bad overrides fail here, with nothing read yet
    run = load_run(path, max_points, chunk_bytes=chunk_bytes, on_batch=feed)
    if diagnoser is None:  # not reached: load_run polls at least once
        return run, diagnose(run, thresholds, now=now)
    return run, diagnoser.findings


def load_and_diagnose(
    path: str | os.PathLike,
    thresholds: dict | None = None,
    *,
    mapping: dict[str, str] | None = None,
    num_classes: int | None = None,
    now: float | None = None,
) -> tuple[RunData, list[Finding], list[str]]:
    """A babysit run streamed (bounded memory), anything `load_any` reads whole; then (run, findings, problems).

    findings: the findings of the run as every view shows them (rules.findings_of_run: this diagnosis, plus what
    was recorded during training that it does not reproduce, with a healed blow-up shown as history).
    problems: the messages of rules that raised and were switched off (also warned as RuleWarning).
    """
    path = Path(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuleWarning)
        if path.is_dir() and is_run_dir(path):
            run, findings = summarize_run(path, thresholds, now=now, num_classes=num_classes)
        else:
            from babysit.monitor.importers import load_any

            run = load_any(path, mapping=mapping, num_classes=num_classes)
            findings = diagnose(run, thresholds, now=now)
    findings = findings_of_run(findings, runfile.clean_findings(run.findings))
    problems = []
    for w in caught:
        if issubclass(w.category, RuleWarning):
            problems.append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return run, findings, problems
