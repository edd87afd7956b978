"""Benchmark of the dashboard's data path: reading, downsampling and building the chart specs.

    python -m benchmarks.dashboard [--steps 1000000] [--runs 200] [--refreshes 20] [--dir DIR]

Targets (issue 4): a 1,000,000-step run's first view in under 2 s; a refresh with 100 new steps in under
100 ms; a root with 200 runs listed in under 1 s. Synthetic runs are written in the real record format
(benchmarks/synthetic.py, through runfile.dumps_line, 512 steps a line like hooks.Run), with layer
statistics, epochs and weight snapshots.

"Chart specs" means what the app sends: the Vega-Lite spec of every chart in the Run view (built and
schema-validated by Altair's to_dict the first time a chart's structure is seen, reused after) plus its
frames serialized to Arrow, as st.vega_lite_chart does. For comparison the benchmark also times the naive
path that rebuilds every Altair chart and calls to_dict() with the data inlined on each refresh.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from streamlit.dataframe_util import convert_pandas_df_to_arrow_bytes

from babysit.monitor.dashboard import charts
from babysit.monitor.dashboard.state import RunsIndex, RunState
from babysit.monitor.dashboard.views import run_plans
from benchmarks.synthetic import append_steps, write_run

TARGETS = {"first view": 2.0, "refresh (+100 steps)": 0.100, "runs listed": 1.0}
FINDING = {"rule": "overfitting", "title": "Overfitting", "severity": "warning", "step": 1500, "epoch": 15,
           "message": "train/val gap 0.12", "evidence": {"gap": 0.12}, "fix": ["more regularization"]}


def render(state: RunState) -> int:
    """Everything a refresh of the Run view computes; returns the bytes it would send."""
    sent = 0
    for plan in run_plans(state).values():
        spec = plan.spec()
        for frame in spec["datasets"].values():
            sent += len(convert_pandas_df_to_arrow_bytes(frame))
    return sent


class Clock:
    """Wall time (what the user waits) and this process's CPU time (what a busy shared machine cannot inflate)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def first_view(path: Path) -> tuple[Clock, RunState, int]:
    charts._spec.cache_clear()  # cold: every chart structure is built and validated again
    charts._structure.cache_clear()
    with Clock() as clock:
        state = RunState(path)
        state.update()
        sent = render(state)
    return clock, state, sent


def refreshes(state: RunState, path: Path, last: int, count: int) -> list[Clock]:
    """`count` refreshes of the Run view, each after 100 more steps appended to the run at `path` (which
    holds `last` steps)."""
    clocks = []
    for _ in range(count):
        append_steps(path, last, 100)
        last += 100
        with Clock() as clock:
            state.update()
            render(state)
        clocks.append(clock)
    return clocks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dashboard", description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--refreshes", type=int, default=20)
    ap.add_argument("--dir", default=None, help="where to write the synthetic runs (default: a temporary folder)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="babysit-bench-", dir=args.dir) as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        big = write_run(tmp / "big", steps=args.steps, epochs=100, layer_every=max(args.steps // 1000, 1),
                        snapshots=20, findings=[FINDING])
        size = (big / "events.jsonl").stat().st_size
        print(f"wrote a {args.steps:,}-step run ({size / 1e6:.0f} MB of events) in {time.perf_counter() - t:.1f} s")

        # Warm the imports and Altair's schema once, as a running dashboard process has.
        warm = write_run(tmp / "warm", steps=100, epochs=2)
        first_view(warm)

        views = [first_view(big) for _ in range(3)]
        first = _median(v[0] for v in views)
        state, sent = views[-1][1], views[-1][2]
        print(f"first view: {first[0] * 1000:.0f} ms wall, {first[1] * 1000:.0f} ms CPU (median of 3; sends "
              f"{sent / 1e3:.0f} kB of Arrow; loss drawn as {len(state.loss.view().x):,} points)")

        clocks = refreshes(state, big, args.steps, args.refreshes)
        refresh = _median(clocks)
        print(f"refresh (+100 steps): {refresh[0] * 1000:.1f} ms wall, {refresh[1] * 1000:.1f} ms CPU (median of "
              f"{args.refreshes}; slowest {max(c.wall for c in clocks) * 1000:.0f} ms wall)")

        t = time.perf_counter()
        for plan in run_plans(state).values():
            plan.chart().to_dict()
        naive = time.perf_counter() - t
        print(f"  (for comparison, rebuilding every Altair chart with inline data: {naive * 1000:.0f} ms)")

        root = tmp / "root"
        t = time.perf_counter()
        for i in range(args.runs):
            write_run(root / f"run{i:03d}", steps=2000, epochs=20, layer_every=100, snapshots=3, seed=i,
                      findings=[FINDING] if i % 5 == 0 else None,
                      config={"lr": 10 ** (-3 + 2.5 * (i % 17) / 17), "reg": 10 ** (-5 + 3 * (i % 11) / 11)})
        print(f"wrote {args.runs} runs of 2,000 steps in {time.perf_counter() - t:.1f} s")
        with Clock() as listing:
            index = RunsIndex(root)
            index.refresh()
            frame = index.frame()
        with Clock() as relisting:
            index.refresh()
            index.frame()
        assert len(frame) == args.runs and frame["best_val_acc"].notna().all()
        print(f"runs listed: {listing.wall * 1000:.0f} ms wall, {listing.cpu * 1000:.0f} ms CPU for {len(frame)} "
              f"runs (a refresh of the list: {relisting.wall * 1000:.0f} ms wall)")

    results = {"first view": first, "refresh (+100 steps)": refresh, "runs listed": (listing.wall, listing.cpu)}
    print()
    print(f"{'measure':<24}{'wall':>12}{'CPU':>12}{'target':>12}  result (on wall time)")
    ok = True
    for name, (wall, cpu) in results.items():
        passed = wall < TARGETS[name]
        ok &= passed
        print(f"{name:<24}{wall * 1000:>9.1f} ms{cpu * 1000:>9.1f} ms{TARGETS[name] * 1000:>9.0f} ms  "
              f"{'PASS' if passed else 'FAIL'}")
    return 0 if ok else 1


def _median(clocks) -> tuple[float, float]:
    clocks = list(clocks)
    return statistics.median(c.wall for c in clocks), statistics.median(c.cpu for c in clocks)


if __name__ == "__main__":
    sys.exit(main())
