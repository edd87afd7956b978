"""`python -m benchmarks.userloops`: train every user loop, diagnose it post hoc (and read what the hooks
reported online), and print per split: faults caught with a supported fix, caught only with a misleading
lead, missed, and false alarms on healthy loops. Writes artifacts/userloops.json; runs stay under
artifacts/userloops-runs/NAME/run for `babysit diagnose`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.common import text_table
from benchmarks.faults.__main__ import case_table, print_cases, run_all, select_cases
from benchmarks.faults.evaluate import score
from benchmarks.userloops.registry import all_cases, get

ROOT = Path(__file__).resolve().parents[2]
SUITE = "benchmarks.userloops"


def tally(scores: list[dict]) -> dict:
    """Counts for one split: caught (supported fix), misleading (wrong lead or misleading only), missed,
    false alarms, errors."""
    faulty = [s for s in scores if not s["healthy"] and s["verdict"] != "error"]
    healthy = [s for s in scores if s["healthy"] and s["verdict"] != "error"]
    return {"faulty": len(faulty), "caught": sum(s["verdict"] == "correct" for s in faulty),
            "misleading": sum(s["verdict"] in ("misleading", "wrong lead") for s in faulty),
            "missed": sum(s["verdict"] == "missed" for s in faulty), "healthy": len(healthy),
            "false_alarms": sum(bool(s.get("false_alarm")) for s in healthy),
            "errors": sum(s["verdict"] == "error" for s in scores)}


def summary(scores: list[dict], markdown: bool = False) -> str:
    head = ["split", "faulty", "caught, supported fix", "misleading lead", "missed", "healthy", "false alarms"]
    body = []
    for split in ("tune", "holdout", "fresh", "fresh2", "fresh3", "all"):
        part = [s for s in scores if split == "all" or s["split"] == split]
        if not part:
            continue
        t = tally(part)
        err = f" (+{t['errors']} errors)" if t["errors"] else ""
        body.append([split + err, str(t["faulty"]), str(t["caught"]), str(t["misleading"]), str(t["missed"]),
                     str(t["healthy"]), str(t["false_alarms"])])
    return text_table(head, body, markdown)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.userloops", description=__doc__.split("\n")[0])
    p.add_argument("--split", choices=("tune", "holdout", "fresh", "fresh2", "fresh3", "all"), default="tune")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this case (repeatable)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--check", action="store_true", help="print each case's final numbers")
    p.add_argument("--markdown", action="store_true", help="print the summary as a markdown table")
    p.add_argument("--list", action="store_true")
    p.add_argument("--out", default=str(ROOT / "artifacts"), help="where userloops.json and userloops-runs/ go")
    a = p.parse_args(argv)

    cases = select_cases(a.only, a.split, all_cases, get)
    if a.list:
        print_cases(cases)
        return 0
    out = Path(a.out)
    t0 = time.perf_counter()
    results = run_all(cases, a.jobs, out / "userloops-runs", suite=SUITE)
    wall = time.perf_counter() - t0
    scores = [score(c, r) for c, r in zip(cases, results, strict=True)]
    print(case_table(scores, results, a.check))
    print()
    print(summary(scores, a.markdown))
    print(f"\n{len(cases)} cases in {wall:.0f} s with {a.jobs} jobs")
    out.mkdir(parents=True, exist_ok=True)
    (out / "userloops.json").write_text(json.dumps({"split": a.split, "only": a.only, "wall_s": wall,
                                                    "cases": scores, "runs": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
