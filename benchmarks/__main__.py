"""`python -m benchmarks`: every figure that says babysit is fast, measured side by side in one run, one table.

    python -m benchmarks                   # the full set (about 5 minutes on 2 idle cores, 15+ when busy)
    python -m benchmarks --quick           # fewer repetitions, same rows (1-2 minutes idle, 3-4 busy)
    python -m benchmarks --only diagnose --only alerts

Groups (each calls the functions of its own benchmark module; run those alone for more detail):
  overhead   benchmarks/overhead.py    the same training loop plain, with the hooks, with TensorBoard's
                                       SummaryWriter (when installed); CPU always, CUDA when present
                                       (benchmarks/gpu_check.py's loop: bf16, channels_last)
  reading    benchmarks/reading.py     load_run throughput; RunTailer cost per refresh of 100 new steps
  diagnose   benchmarks/diagnose.py    post-hoc rules at 10k, 100k and 1M steps; online per 100 new steps
  dashboard  benchmarks/dashboard.py   the dashboard's data path at 1M steps: first view, refresh
  alerts     benchmarks/alerts.py      NaN written -> alert line of a real `babysit watch`: inotify, polling

Each row gives the median over repetitions and the spread (p10-p90 with ten or more samples, else min-max;
the CUDA overhead rows give quartiles), the target and whether the median meets it. Progress goes to
stderr, the machine and the table (markdown) to stdout. A group that cannot run (a module missing, an
error) becomes one row that says why; the others still run.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import Row, Target, fmt_rate, fmt_ratio, fmt_seconds, machine, machine_line, markdown_table

__all__ = ["main", "GROUPS", "Settings"]


@dataclass(frozen=True)
class Settings:
    quick: bool
    overhead_rounds: int
    overhead_steps: int
    steady_rounds: int
    steady_steps: int
    cuda_pairs: int
    cuda_steps: int
    reading_steps: int
    reading_repeats: int
    refreshes: int
    posthoc_repeats: dict
    online_updates: int
    dashboard_steps: int
    first_views: int
    dashboard_refreshes: int
    alert_reps: int
    poll_interval: float = 1.0

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, overhead_rounds=8, overhead_steps=100, steady_rounds=2, steady_steps=5000,
                       cuda_pairs=3, cuda_steps=100,
                       reading_steps=100_000, reading_repeats=5, refreshes=30,
                       posthoc_repeats={10_000: 5, 100_000: 5, 1_000_000: 3}, online_updates=500,
                       dashboard_steps=1_000_000, first_views=3, dashboard_refreshes=30, alert_reps=8)
        return cls(False, overhead_rounds=20, overhead_steps=300, steady_rounds=3, steady_steps=6000,
                   cuda_pairs=5, cuda_steps=300,
                   reading_steps=1_000_000, reading_repeats=5, refreshes=50,
                   posthoc_repeats={10_000: 10, 100_000: 5, 1_000_000: 5}, online_updates=2000,
                   dashboard_steps=1_000_000, first_views=3, dashboard_refreshes=30, alert_reps=20)


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def _k(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"


# --------------------------------------------------------------------------- groups
def overhead(s: Settings, tmp: Path) -> list[Row]:
    import torch

    from benchmarks.overhead import measure

    _log(f"[overhead] CPU: {s.overhead_rounds} rounds of {s.overhead_steps} steps per variant (convnet, digits)")
    r = measure(s.overhead_rounds, s.overhead_steps, out=io.StringIO())
    what = f"convnet on digits, {s.overhead_steps} steps x {s.overhead_rounds} rounds, 1 thread, plain " \
           f"{r['plain_step_ms']:.1f} ms/step"
    target = Target(1.01, "<= 1.01x")
    hooks = r["hooks"]
    # A run this short is all floor (every one of its first steps sampled, the rules at every flush of its
    # first 10 s): its cost is the price of not being blind, so the 1% target is judged on the steady state.
    floor = "short run: the sampling floor's fixed cost, no target"
    rows = [Row("overhead", "hooks / plain, CPU wall clock", hooks["wall"]["ratios"], fmt_ratio, None,
                f"{what}; {floor}", cpu=hooks["cpu"]["ratios"])]
    if hooks.get("timed", {}).get("ratios"):
        rows.append(Row("overhead", "hooks / plain, CPU: time inside the hooks over the rest of the loop",
                        hooks["timed"]["ratios"], fmt_ratio, None, f"what the hooks' own code costs; {floor}"))
    _log(f"[overhead] CPU steady state: {s.steady_rounds} rounds of {s.steady_steps} steps (convnet, digits)")
    long = measure(s.steady_rounds, s.steady_steps, tensorboard=False, out=io.StringIO())["hooks"]
    steady = f"convnet, {s.steady_steps} steps x {s.steady_rounds} rounds, second half: past the young phase"
    rows.append(Row("overhead", "hooks / plain, CPU steady state: time inside the hooks over the rest of the loop",
                    long["tail_timed"]["ratios"], fmt_ratio, target, steady))
    rows.append(Row("overhead", "hooks / plain, CPU steady state, wall clock of the second half",
                    long["tail"]["ratios"], fmt_ratio, None, f"{steady}; a shared machine blurs it"))
    tb = r.get("tensorboard")
    if tb:
        rows.append(Row("overhead", "TensorBoard SummaryWriter / plain, CPU wall clock (same content, .item())",
                        tb["wall"]["ratios"], fmt_ratio, None, cpu=tb["cpu"]["ratios"]))
        if tb.get("timed", {}).get("ratios"):
            rows.append(Row("overhead", "SummaryWriter / plain, CPU: time inside its calls over the rest of the loop",
                            tb["timed"]["ratios"], fmt_ratio, None))
    else:
        rows.append(Row("overhead", "TensorBoard SummaryWriter / plain, CPU", note="tensorboard not installed"))
    if torch.cuda.is_available():
        from benchmarks.gpu_check import hook_overhead

        device = torch.device("cuda")
        for model, side, channels, batch, width in (("convnet", 8, 1, 64, 16), ("resnet", 32, 3, 256, 32)):
            _log(f"[overhead] CUDA {model}: {s.cuda_pairs} pairs of {s.cuda_steps} steps")
            c = hook_overhead(device, model, side, channels, batch, s.cuda_steps, s.cuda_pairs, width)
            rows.append(Row("overhead", f"hooks / plain, CUDA wall clock ({model}, bf16, batch {batch})",
                            [c["median"]] * s.cuda_pairs, fmt_ratio, target,
                            f"{torch.cuda.get_device_name(0)}, plain {c['plain_ms']:.2f} ms/step",
                            spread_kind="p25-p75", spread=(c["p25"], c["p75"])))
    else:
        rows.append(Row("overhead", "hooks / plain, CUDA", note="no CUDA device here"))
    return rows


def reading(s: Settings, tmp: Path) -> list[Row]:
    from benchmarks.diagnose import write_run
    from benchmarks.reading import load_rate, tailer_refresh

    n, short = s.reading_steps, 10_000
    _log(f"[reading] writing a {n:,}-step run and a {short:,}-step run")
    big, small = write_run(tmp / "read-big", n), write_run(tmp / "read-small", short)
    _log(f"[reading] load_run x{s.reading_repeats}")
    times, cpu, steps, lines = load_rate(big, s.reading_repeats)
    rows = [Row("reading", f"load_run, {_k(n)}-step run: steps read per second", [steps / t for t in times],
                fmt_rate("steps"), None, f"{lines:,} JSON lines incl. layer and epoch records",
                cpu=[steps / t for t in cpu])]
    _log(f"[reading] RunTailer.poll x{s.refreshes} on each run")
    long_t, long_cpu = tailer_refresh(big, s.refreshes)
    _, short_cpu = tailer_refresh(small, s.refreshes)
    rows.append(Row("reading", f"RunTailer refresh, +100 steps, {_k(n)}-step run", long_t, fmt_seconds,
                    Target(0.010, "< 10 ms"), "poll incl. status.json and findings", cpu=long_cpu))
    rows.append(Row("reading", f"RunTailer refresh on the {_k(n)}-step run / on a {_k(short)}-step run",
                    [a / b for a, b in zip(sorted(long_cpu), sorted(short_cpu), strict=True)], fmt_ratio,
                    Target(1.5, "<= 1.5x (cost follows new data)"), "CPU time, quantile by quantile"))
    return rows


def diagnose(s: Settings, tmp: Path) -> list[Row]:
    from benchmarks.diagnose import online, posthoc, write_run

    rows = []
    for n, reps in s.posthoc_repeats.items():
        _log(f"[diagnose] writing a {n:,}-step run; post-hoc x{reps}")
        path = write_run(tmp / f"diag-{n}", n)
        loads, rules, loud = [], [], 0
        for _ in range(reps):
            load_s, rules_s, loud = posthoc(path, repeats=1)
            loads.append(load_s)
            rules.append(rules_s)
        target = Target(1.0, "< 1 s") if n >= 1_000_000 else None
        rows.append(Row("diagnose", f"post-hoc rules, {_k(n)} steps", rules, fmt_seconds, target,
                        f"load {fmt_seconds(_median(loads))} apart; {loud} warnings on this healthy run"))
    _log(f"[diagnose] online: {s.online_updates} updates of 100 steps")
    times = online(s.online_updates)
    rows.append(Row("diagnose", "online update, 100 new steps", times, fmt_seconds, Target(0.010, "< 10 ms")))
    return rows


def dashboard(s: Settings, tmp: Path) -> list[Row]:
    from benchmarks.dashboard import FINDING, first_view, refreshes
    from benchmarks.synthetic import write_run

    n = s.dashboard_steps
    _log(f"[dashboard] writing a {n:,}-step run (benchmarks/synthetic.py)")
    big = write_run(tmp / "dash-big", steps=n, epochs=100, layer_every=max(n // 1000, 1), snapshots=20,
                    findings=[FINDING])
    first_view(write_run(tmp / "dash-warm", steps=100, epochs=2))  # imports and Altair's schema, as a live app
    _log(f"[dashboard] first view x{s.first_views}")
    views = [first_view(big) for _ in range(s.first_views)]
    state = views[-1][1]
    _log(f"[dashboard] refresh x{s.dashboard_refreshes}")
    clocks = refreshes(state, big, n, s.dashboard_refreshes)
    refresh, refresh_cpu = [c.wall for c in clocks], [c.cpu for c in clocks]
    return [Row("dashboard", f"first view, {_k(n)}-step run (read, downsample, chart specs)",
                [v[0].wall for v in views], fmt_seconds, Target(2.0, "< 2 s"), cpu=[v[0].cpu for v in views]),
            Row("dashboard", f"refresh, +100 steps on the {_k(n)}-step run", refresh, fmt_seconds,
                Target(0.100, "< 100 ms"), cpu=refresh_cpu)]


def alerts(s: Settings, tmp: Path) -> list[Row]:
    from benchmarks.alerts import latency

    _log(f"[alerts] inotify: {s.alert_reps} alerts")
    ino = latency(s.alert_reps, polling=False)
    _log(f"[alerts] polling every {s.poll_interval:g} s: {s.alert_reps} alerts")
    pol = latency(s.alert_reps, polling=True, poll_interval=s.poll_interval)
    missed = lambda xs: f"{sum(not math.isfinite(x) for x in xs)} missed" if any(map(math.isinf, xs)) else ""
    return [Row("alerts", "alert latency, inotify (NaN written -> line from babysit watch)", ino, fmt_seconds,
                Target(1.0, "< 1 s"), missed(ino)),
            Row("alerts", f"alert latency, polling every {s.poll_interval:g} s", pol, fmt_seconds,
                Target(s.poll_interval + 0.5, f"< {s.poll_interval + 0.5:g} s"), missed(pol))]


GROUPS: dict[str, Callable[[Settings, Path], list[Row]]] = {
    "overhead": overhead, "reading": reading, "diagnose": diagnose, "dashboard": dashboard, "alerts": alerts,
}


def run_groups(names: list[str], settings: Settings) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"babysit-bench-{name}-") as tmp:
            try:
                rows += GROUPS[name](settings, Path(tmp))
            except Exception as e:  # noqa: BLE001 - one broken group must not cost the others their rows
                _log(traceback.format_exc())
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                rows.append(Row(name, name, note=f"failed: {type(e).__name__}: {first}"[:200]))
        _log(f"[{name}] done in {time.perf_counter() - start:.0f} s")
    return rows


def _names(only: list[str], parser: argparse.ArgumentParser) -> list[str]:
    asked = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in asked if n not in GROUPS]
    if unknown:
        parser.error(f"unknown group {unknown[0]!r} (choose from {', '.join(GROUPS)})")
    return [n for n in GROUPS if n in asked] if asked else list(GROUPS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions, same rows (1-2 minutes on 2 idle cores)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help=f"run only these groups (repeatable or comma-separated): {', '.join(GROUPS)}")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    names = _names(args.only, parser)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    info = machine()
    command = "python -m benchmarks" + (" --quick" if args.quick else "") + "".join(f" --only {n}" for n in args.only)
    start = time.perf_counter()
    rows = run_groups(names, Settings.make(args.quick))
    minutes = (time.perf_counter() - start) / 60
    judged = [r for r in rows if r.verdict() != "-"]
    met = sum(r.verdict() == "pass" for r in judged)
    end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    print(f"Machine: {machine_line(info)}; load average {end_load:.1f} at the end.")
    print(f"Command: `{command}` ({minutes:.1f} min, {time.strftime('%Y-%m-%d')}); {met} of {len(judged)} "
          "targets met.\n")
    print(markdown_table(rows))
    return 1 if args.strict and met < len(judged) else 0


if __name__ == "__main__":
    sys.exit(main())
