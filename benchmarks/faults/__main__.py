"""`python -m benchmarks.faults`: train the fault zoo, diagnose every run, score the diagnoses.

    python -m benchmarks.faults                    # 90 cases, 2 jobs: ~5.5 min on 2 cores shared at load 9
    python -m benchmarks.faults --quick            # 29 cases, a stratified quarter: ~1.7 min at load 8
    python -m benchmarks.faults --split holdout    # only the held-out cases
    python -m benchmarks.faults --only dead_relu_negative_bias_mlp --check   # one case, with its numbers
    python -m benchmarks.faults --markdown         # the summary table for the README
    python -m benchmarks.faults --list
    python -m benchmarks.faults --run-case NAME DIR                          # one case in this process

Prints a row per case and the summary (recall, correct diagnoses, misleading-only, false alarms, median
detection latency) for tune, holdout and all; writes artifacts/faults.json (every run, whatever the
selection). The runs stay under
artifacts/faults-runs/NAME/run for `babysit diagnose`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

from benchmarks.common import text_table
from benchmarks.faults.evaluate import run_case, run_case_task, score, summarize
from benchmarks.faults.registry import Case, all_cases, get

ROOT = Path(__file__).resolve().parents[2]


def _quick(cases: list[Case]) -> list[Case]:
    """A stratified quarter: from each (family, healthy, split) group, every fourth case in hash order."""
    groups: dict[tuple, list[Case]] = {}
    for c in cases:
        groups.setdefault((c.family, c.healthy, c.split), []).append(c)
    picked = []
    for members in groups.values():
        members.sort(key=lambda c: hashlib.sha1(c.name.encode()).hexdigest()[::-1])
        picked += members[::4]
    return [c for c in cases if c in picked]


def run_all(cases: list[Case], jobs: int, out_root: Path, timeout: float = 300,
            suite: str = "benchmarks.faults") -> list[dict]:
    """Run cases of `suite` in `jobs` spawned worker processes (each imports torch once); results in case order."""
    tasks = [(c.name, str(out_root / c.name), suite) for c in cases]
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    if jobs <= 1:
        for t in tasks:
            results[t[0]] = run_case_task(t)
            _progress(results[t[0]], len(results), len(tasks), t0)
    else:
        with mp.get_context("spawn").Pool(jobs) as pool:
            it = pool.imap_unordered(run_case_task, tasks)
            try:
                for _ in tasks:
                    r = it.next(timeout=timeout)  # a worker killed hard never answers: stop waiting
                    results[r["name"]] = r
                    _progress(r, len(results), len(tasks), t0)
            except mp.TimeoutError:
                pool.terminate()
    for name, *_ in tasks:
        results.setdefault(name, {"name": name, "error": "no result (worker died or timed out)"})
    return [results[n] for n, *_ in tasks]


def _progress(r: dict, done: int, total: int, t0: float) -> None:
    err = f"  ERROR {r['error']}" if r.get("error") else ""
    print(f"[{done:3d}/{total}] {r['name']:<40s} {r.get('seconds', 0):5.1f}s  "
          f"(elapsed {time.perf_counter() - t0:5.0f}s){err}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- printing
def _fmt(v, digits=3) -> str:
    return "-" if v is None else (f"{v:.{digits}g}" if isinstance(v, float) else str(v))


def case_table(scores: list[dict], results: list[dict], check: bool) -> str:
    lines = [f"{'case':<40} {'split':<7} {'family':<10} {'verdict':<11} {'lead':<22} {'latency':>7}  warnings"]
    for s, r in zip(scores, results, strict=True):
        lines.append(f"{s['name']:<40} {s['split']:<7} {s['family']:<10} {s['verdict']:<11} "
                     f"{_fmt(s['lead']):<22} {_fmt(s.get('latency')):>7}  {','.join(s['warnings']) or '-'}")
        if check:
            m = r.get("metrics") or {}
            nums = "  ".join(f"{k}={_fmt(v)}" for k, v in m.items())
            lines.append(f"    {nums}")
            if s["missed_expect"]:
                lines.append(f"    !! does not show its {'health' if s['healthy'] else 'fault'}: "
                             f"{'; '.join(s['missed_expect'])}")
            if s.get("error"):
                lines.append(f"    !! {s['error']}")
    return "\n".join(lines)


def summary_rows(scores: list[dict]) -> list[tuple[str, dict]]:
    rows = []
    for split in ("tune", "holdout", "all"):
        part = [s for s in scores if split == "all" or s["split"] == split]
        if part:
            rows.append((split, summarize(part)))
    return rows


def summary_table(rows: list[tuple[str, dict]], markdown: bool) -> str:
    head = ["split", "faulty runs", "detected (recall)", "correct diagnosis", "misleading only",
            "healthy runs", "false alarms", "median latency (steps)"]
    body = []
    for split, m in rows:
        pct = lambda k, m=m: f"{m[k]}/{m['faulty']} ({100 * m[k] / max(m['faulty'], 1):.0f}%)"
        body.append([split, str(m["faulty"]), pct("detected"), pct("correct"), str(m["misleading"]),
                     str(m["healthy"]), str(m["false_alarms"]), _fmt(m["median_latency"])])
    return text_table(head, body, markdown)


def select_cases(only: list[str], split: str, all_cases, get) -> list[Case]:
    """The cases named by --only (whatever their split), else those of --split ("all": every one)."""
    if only:
        return [get(n) for n in only]
    return [c for c in all_cases() if split == "all" or c.split == split]


def print_cases(cases: list[Case]) -> None:
    for c in cases:
        print(f"{c.name:<40} {c.kind:<8} {c.family:<10} {c.split:<8} {c.about[:100]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a stratified quarter of the cases")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this case (repeatable)")
    p.add_argument("--split", choices=("tune", "holdout", "all"), default="all")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--check", action="store_true", help="print each case's final numbers and whether it "
                                                        "shows its fault")
    p.add_argument("--markdown", action="store_true", help="print the summary as a markdown table")
    p.add_argument("--list", action="store_true")
    p.add_argument("--out", default=str(ROOT / "artifacts"), help="where faults.json and faults-runs/ go")
    p.add_argument("--run-case", nargs=2, metavar=("NAME", "DIR"), help="run one case here; print its result")
    a = p.parse_args(argv)

    if a.run_case:
        r = run_case(*a.run_case)
        print(json.dumps(r, indent=1, default=str))
        return 0
    cases = select_cases(a.only, a.split, all_cases, get)
    if a.quick:
        cases = _quick(cases)
    if a.list:
        print_cases(cases)
        return 0

    out = Path(a.out)
    t0 = time.perf_counter()
    results = run_all(cases, a.jobs, out / "faults-runs")
    wall = time.perf_counter() - t0
    scores = [score(c, r) for c, r in zip(cases, results, strict=True)]
    rows = summary_rows(scores)
    print(case_table(scores, results, a.check))
    print()
    print(summary_table(rows, a.markdown))
    print(f"\n{len(cases)} cases in {wall:.0f} s with {a.jobs} jobs")
    out.mkdir(parents=True, exist_ok=True)
    selection = {"quick": a.quick, "only": a.only, "split": a.split, "jobs": a.jobs}
    (out / "faults.json").write_text(json.dumps({"selection": selection, "summary": dict(rows), "wall_s": wall,
                                                 "cases": scores, "runs": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
