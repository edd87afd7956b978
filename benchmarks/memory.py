"""Peak memory of reading a big run: `babysit diagnose`, `babysit report` and `babysit watch --once` on 200 MB logs.

    python -m benchmarks.memory                      # the five 200 MB cases and a 10M-step run
    python -m benchmarks.memory --mb 50 --steps 0    # smaller files, no 10M-step run
    python -m benchmarks.memory --only junk --only steps --commands diagnose

Each command runs as a child process (`python -m babysit ...` through runpy); its peak resident set is the
kernel's VmHWM for that process, read at exit (the interpreter and imports included). The files are generated:
  junk        lines of text that are not JSON (counted as corrupt)
  events      valid `{"type":"event",...}` lines
  bad_steps   step records whose loss array is one value short (each is parsed, refused and counted)
  steps       a healthy run in the real format (benchmarks.diagnose.write_run: 512 steps a line, layer records)
  huge_line   one 150 MB line of numbers between ordinary records (skipped, counted as one corrupt line)
  10M         a 10,000,000-step run (`--steps`), about 700 MB of events.jsonl
Before streaming (issue 13), 200 MB took 0.6 GB (junk) to 3.5 GB (bad_steps): 14-17x the file.
Targets: junk under 400 MB; the 10M-step run diagnosed under 1 GB.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from babysit.monitor import runfile

__all__ = ["main", "peak_rss", "run_measured", "make_case", "CASES"]

CASES = ("junk", "events", "bad_steps", "steps", "huge_line")
COMMANDS = {
    "diagnose": lambda run, out: ["diagnose", str(run), "--json"],
    "report": lambda run, out: ["report", str(run), "-o", str(out / "report.html")],
    "watch --once": lambda run, out: ["watch", str(run), "--once", "--no-log", "--color", "never"],
}
TARGETS_MB = {"junk": 400, "10M": 1000}


# The child reports its own high-water mark (VmHWM: this process image only); ru_maxrss from wait4 would also
# count the image of the parent it was forked from, before the exec.
_MEASURED = """
import atexit, runpy, sys
def _peak():
    with open("/proc/self/status") as f:
        kb = [line.split()[1] for line in f if line.startswith("VmHWM:")]
    sys.stderr.write(f"\\nPEAK_KB {kb[0]}\\n")
atexit.register(_peak)
sys.argv = ["babysit", *sys.argv[1:]]
runpy.run_module("babysit", run_name="__main__", alter_sys=True)
"""


def run_measured(args: list[str], timeout: float = 1800) -> tuple[float, subprocess.CompletedProcess]:
    """`python -m babysit *args` as a child process: its peak RSS in MB (NaN when it did not say) and the
    finished process, output captured (the tests read it too)."""
    proc = subprocess.run([sys.executable, "-c", _MEASURED, *args], capture_output=True, timeout=timeout)
    peak = [line for line in proc.stderr.decode(errors="replace").splitlines() if line.startswith("PEAK_KB ")]
    return (int(peak[-1].split()[1]) / 1024 if peak else math.nan), proc


def peak_rss(args: list[str], timeout: float = 1800) -> tuple[float, float, int]:
    """(peak RSS in MB, wall seconds, exit status) of `python -m babysit *args` as a child process."""
    t0 = time.perf_counter()
    peak, proc = run_measured(args, timeout)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1) or math.isnan(peak):
        err = proc.stderr.decode(errors="replace")
        print(f"  {' '.join(args[:1])} exited {proc.returncode}: {err.strip()[-300:]}", file=sys.stderr)
    return peak, wall, proc.returncode


def _meta(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    runfile.write_json_atomic(path / runfile.META, {"schema": runfile.SCHEMA_VERSION, "run_id": path.name,
                                                    "name": path.name, "start_time": 1.7e9, "num_classes": 10})
    runfile.write_json_atomic(path / runfile.STATUS, {"schema": runfile.SCHEMA_VERSION, "state": "finished",
                                                      "step": 0, "heartbeat": 1.7e9})


def _fill(path: Path, size: int, line_at) -> None:
    """Write lines from line_at(i) until the file holds `size` bytes, in 1 MB writes."""
    with open(path / runfile.EVENTS, "wb") as f:
        written, i, block = 0, 0, []
        while written < size:
            line = line_at(i)
            block.append(line)
            written += len(line)
            i += 1
            if len(block) >= 4096:
                f.write(b"".join(block))
                block = []
        f.write(b"".join(block))


def make_case(case: str, path: Path, mb: float) -> Path:
    """Write the run directory of one case, about `mb` MB of events.jsonl. Returns path."""
    size = int(mb * (1 << 20))
    if case == "steps":
        from benchmarks.diagnose import write_run

        return write_run(path, max(int(size / 62), 1000))  # ~62 bytes a step with its layer and epoch records
    _meta(path)
    if case == "junk":
        _fill(path, size, lambda i: b"this is not json %d %s\n" % (i, b"x" * 80))
    elif case == "events":
        _fill(path, size, lambda i: runfile.dumps_line({"type": "event", "name": "note", "step": i, "time": 1.7e9 + i,
                                                         "message": f"checkpoint {i} saved", "epoch": i // 1000})
              .encode())
    elif case == "bad_steps":
        def bad(i: int) -> bytes:
            steps = list(range(i * 64, i * 64 + 64))
            return runfile.dumps_line({"type": "steps", "step": steps, "time": [1.7e9 + s for s in steps],
                                       "loss": [2.0 / (1 + s) for s in steps[:-1]], "lr": [0.01] * 64}).encode()

        _fill(path, size, bad)
    elif case == "huge_line":
        with open(path / runfile.EVENTS, "wb") as f:
            f.write(runfile.dumps_line({"type": "steps", "step": [1, 2], "time": [1.7e9, 1.7e9 + 1],
                                        "loss": [2.3, 2.2], "lr": [0.1, 0.1]}).encode())
            f.write(b'{"type":"steps","step":[')
            for _ in range(max(size // (2 << 20), 1)):  # in 2 MB pieces: the writer stays small too
                f.write(b"1," * (1 << 20))
            f.write(b"1]}\n")
            f.write(runfile.dumps_line({"type": "steps", "step": [3], "time": [1.7e9 + 2], "loss": [2.1],
                                        "lr": [0.1]}).encode())
    else:
        raise ValueError(f"unknown case {case!r}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=200, help="size of each case's events.jsonl (default 200)")
    parser.add_argument("--steps", type=int, default=10_000_000, help="steps of the long run; 0 skips it")
    parser.add_argument("--only", action="append", choices=CASES, help="cases to run (repeatable)")
    parser.add_argument("--commands", action="append", choices=list(COMMANDS), help="commands (repeatable)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    cases = args.only or list(CASES)
    commands = args.commands or list(COMMANDS)
    tmp = Path(tempfile.mkdtemp(prefix="babysit-memory-"))
    rows = []
    try:
        base, _, _ = peak_rss(["--help"])
        print(f"python -m babysit --help (interpreter and imports): {base:.0f} MB", file=sys.stderr)
        todo = [(c, args.mb) for c in cases] + ([("10M", 0.0)] if args.steps else [])
        for case, mb in todo:
            run = tmp / case
            t0 = time.perf_counter()
            if case == "10M":
                from benchmarks.diagnose import write_run

                write_run(run, args.steps)
            else:
                make_case(case, run, mb)
            size = (run / runfile.EVENTS).stat().st_size / (1 << 20)
            print(f"[{case}] {size:.0f} MB written in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            for name in commands if case != "10M" else ["diagnose"]:
                rss, wall, rc = peak_rss(COMMANDS[name](run, tmp))
                target = TARGETS_MB.get(case) if name == "diagnose" else None
                rows.append({"case": case, "file_mb": round(size), "command": name, "peak_mb": round(rss),
                             "ratio": round(rss / size, 2), "wall_s": round(wall, 1), "exit": rc,
                             "target_mb": target, "pass": None if target is None else rss < target})
                print(f"  {name}: peak {rss:.0f} MB ({rss / size:.2f}x the file), {wall:.1f} s, exit {rc}",
                      file=sys.stderr)
            shutil.rmtree(run, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("| case | events.jsonl | command | peak RSS | x file | wall | target |\n|---|---:|---|---:|---:|---:|---|")
    for r in rows:
        target = "-" if r["target_mb"] is None else f"< {r['target_mb']} MB: {'pass' if r['pass'] else 'FAIL'}"
        print(f"| {r['case']} | {r['file_mb']} MB | {r['command']} | {r['peak_mb']} MB | {r['ratio']}x | "
              f"{r['wall_s']} s | {target} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["pass"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
