"""How fast `babysit watch` alerts, and whether it keeps up with many runs at once.

    python -m benchmarks.alerts            # 20 alerts per mode, then 200 runs streaming for 30 s (~2 minutes)
    python -m benchmarks.alerts --quick    # 8 alerts per mode, 200 runs for 12 s

Latency is measured from the moment a bad event is written (just before `hooks.Run.flush()` appends a NaN
loss) to the moment the alert line arrives on the watcher's stdout, with the watcher a real `babysit watch`
subprocess. Targets (issue 5): under 1 s with inotify, under the poll interval + 0.5 s with polling, both as
medians. Between alerts the benchmark sleeps a random fraction of the poll interval, so polling is sampled at
every phase and not only at a lucky one.

"200 runs at once": 200 `hooks.Run` writers in this process, each stepping 10 times a second and flushing
every 0.5 s (the hooks' default: 400 appends and 400 status rewrites a second in all), while NaNs are injected
into runs one after another. Keeping up means the alert latency under that load stays bounded: the median
and maximum, and the first half of the alerts against the second (a watcher falling behind gets slower and
slower). The watcher's CPU use comes from /proc. On a shared machine the writers and other load compete with
the watcher for the CPU, so the benchmark also measures the watcher's own cost in-process: one pass over 200
runs that each have one new flush (reader + rules + bookkeeping), from which the share of a core needed to
follow 200 runs flushing every 0.5 s follows.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from babysit import hooks

__all__ = ["main", "latency", "many_runs", "pass_cost"]

CLI = "import sys; from babysit.monitor.cli import main; sys.exit(main())"
REPO = Path(__file__).resolve().parents[1]


class _Watcher:
    """A `babysit watch` subprocess; each stdout line is kept with the time it arrived."""

    def __init__(self, root: Path, *args: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLI, "watch", str(root), "--rate-limit", "100000", *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.err: list[str] = []
        self._new = threading.Condition()
        self._pumps = [threading.Thread(target=self._pump_out, daemon=True),
                       threading.Thread(target=self._pump_err, daemon=True)]
        for pump in self._pumps:
            pump.start()
        with self._new:
            ok = self._new.wait_for(lambda: any("Ctrl-C to stop" in e for e in self.err) or self.proc.poll(), 120)
        if not ok or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("watcher did not start: " + "".join(self.err))

    def _pump_out(self) -> None:
        for line in self.proc.stdout:
            t = time.time()
            with self._new:
                self.lines.append((t, line))
                self._new.notify_all()

    def _pump_err(self) -> None:
        for line in self.proc.stderr:
            with self._new:
                self.err.append(line)
                self._new.notify_all()

    def wait_line(self, *words: str, timeout: float = 60.0) -> float | None:
        """Arrival time of the first stdout line holding all words, or None after `timeout`."""
        def found():
            return next((t for t, line in self.lines if all(w in line for w in words)), None)

        with self._new:
            self._new.wait_for(lambda: found() is not None, timeout)
            return found()

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: exits cleanly
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pump in self._pumps:  # the process is gone: the pumps reach end of file, then the pipes can close
            pump.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _healthy(run: hooks.Run, n: int, rng: random.Random) -> None:
    for _ in range(n):
        run.step(loss=2.3 * math.exp(-run.global_step / 400) + rng.uniform(-0.05, 0.05))


def _open_run(path: Path, **kwargs) -> hooks.Run:
    return hooks.Run(path, num_classes=10, on_critical=None, **kwargs)


def latency(reps: int, polling: bool, poll_interval: float = 1.0, seed: int = 0) -> list[float]:
    """Seconds from writing a NaN to its alert line, `reps` times, each in a fresh run."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="babysit-bench-") as tmp:
        root = Path(tmp)
        runs = []
        for i in range(reps):  # written before the watcher starts: it reads them at startup
            run = _open_run(root / f"lat{i}", flush_interval=1e9, flush_steps=10**9)
            _healthy(run, 20, rng)
            run.flush()
            runs.append(run)
        args = ["--polling", "--poll-interval", str(poll_interval)] if polling else []
        watcher = _Watcher(root, *args)
        out = []
        try:
            for i, run in enumerate(runs):
                time.sleep(rng.uniform(0.2, 0.2 + poll_interval))
                run.step(loss=math.nan)
                t0 = time.time()
                run.flush()
                t1 = watcher.wait_line(f" lat{i} nonfinite_loss")
                out.append(math.inf if t1 is None else t1 - t0)
        finally:
            watcher.stop()
            for run in runs:
                run.close()
    return out


def many_runs(n_runs: int = 200, seconds: float = 30.0, steps_per_s: float = 10.0, seed: int = 0,
              polling: bool = False) -> dict:
    """n_runs writers streaming at once while NaNs are injected one run at a time; latencies and CPU."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="babysit-bench-") as tmp:
        root = Path(tmp)
        runs = [_open_run(root / f"r{i:03d}") for i in range(n_runs)]  # default flush_interval 0.5 s
        for run in runs:
            _healthy(run, 5, rng)
            run.flush()
        watcher = _Watcher(root, *(["--polling"] if polling else []))
        victims = rng.sample(range(n_runs), n_runs)
        pending: dict[int, float] = {}
        latencies: list[float] = []
        flushes0 = time.time()
        cpu0 = watcher.cpu_seconds()
        start = time.monotonic()
        next_round = start
        next_inject = start + 1.0
        rounds = 0
        try:
            while time.monotonic() - start < seconds:
                now = time.monotonic()
                if now < next_round:
                    time.sleep(next_round - now)
                next_round += 1.0 / steps_per_s
                rounds += 1
                for i, run in enumerate(runs):
                    if i in pending or run.closed:
                        continue
                    if now >= next_inject and victims and i == victims[-1]:
                        victims.pop()
                        run.step(loss=math.nan)
                        pending[i] = time.time()
                        run.flush()  # the bad event is written now
                        next_inject = time.monotonic() + rng.uniform(0.5, 1.5)
                    else:
                        _healthy(run, 1, rng)  # flushes by itself every 0.5 s
                for i, t0 in list(pending.items()):
                    t1 = watcher.wait_line(f" r{i:03d} nonfinite_loss", timeout=0)
                    if t1 is not None:
                        latencies.append(t1 - t0)
                        del pending[i]
                        runs[i].close()
            deadline = time.monotonic() + 30
            for i, t0 in pending.items():
                t1 = watcher.wait_line(f" r{i:03d} nonfinite_loss", timeout=max(0.0, deadline - time.monotonic()))
                latencies.append(math.inf if t1 is None else t1 - t0)
            wall = time.time() - flushes0
            cpu = watcher.cpu_seconds() - cpu0
        finally:
            watcher.stop()
            for run in runs:
                run.close()
    achieved = rounds / max(time.monotonic() - start, 1e-9)
    return {"latencies": latencies, "cpu_fraction": cpu / wall, "wall": wall,
            "steps_per_s": achieved, "runs": n_runs}


def pass_cost(n_runs: int = 200, passes: int = 5, seed: int = 0) -> list[float]:
    """Seconds for the watcher to process `n_runs` runs that each have one new flush (in-process, no observer)."""
    import io

    from babysit.monitor.watcher import Watcher

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="babysit-bench-") as tmp:
        root = Path(tmp)
        runs = [_open_run(root / f"r{i:03d}", flush_interval=1e9, flush_steps=10**9) for i in range(n_runs)]
        for run in runs:
            _healthy(run, 5, rng)
            run.flush()
        w = Watcher([str(root)], errors=io.StringIO(), backstop=1e9)
        w.scan()
        out = []
        for _ in range(passes):
            for run in runs:
                _healthy(run, 5, rng)
                run.flush()
                w.notify(str(run.path / "events.jsonl"))
            t0 = time.process_time()
            w.tick()
            out.append(time.process_time() - t0)
        w.close()
        for run in runs:
            run.close()
    return out


def _summary(xs: list[float]) -> str:
    if not xs:
        return "no samples"
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return f"median {statistics.median(xs):.3f} s  [p25 {q[0]:.3f}, p75 {q[2]:.3f}]  max {max(xs):.3f} s  (n={len(xs)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.alerts", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, shorter streaming")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args(argv)
    reps = args.reps or (8 if args.quick else 20)
    seconds = args.seconds or (12.0 if args.quick else 30.0)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, python {sys.version.split()[0]}")

    ok = True
    ino = latency(reps, polling=False)
    print(f"alert latency, inotify:                 {_summary(ino)}   target median < 1 s")
    ok &= statistics.median(ino) < 1.0
    pol = latency(reps, polling=True, poll_interval=args.poll_interval)
    target = args.poll_interval + 0.5
    print(f"alert latency, polling every {args.poll_interval:g} s:     {_summary(pol)}   target median < {target:g} s")
    ok &= statistics.median(pol) < target

    cost = statistics.median(pass_cost(args.runs))
    print(f"watcher cost, one pass over {args.runs} runs with one new flush each: {cost:.3f} CPU s "
          f"({1000 * cost / args.runs:.2f} ms per run-flush); {args.runs} runs flushing every 0.5 s need "
          f"{100 * cost * 2:.0f}% of one core (more flushes per pass cost less each)")

    res = many_runs(args.runs, seconds)
    lat = res["latencies"]
    half = len(lat) // 2
    print(f"{res['runs']} runs streaming ({res['steps_per_s']:.1f} steps/s each, flush every 0.5 s), "
          f"{res['wall']:.0f} s:")
    print(f"  alert latency under load:            {_summary(lat)}")
    if half:
        print(f"  first half vs second half (median):  {statistics.median(lat[:half]):.3f} s -> "
              f"{statistics.median(lat[half:]):.3f} s")
    print(f"  watcher CPU:                         {100 * res['cpu_fraction']:.0f}% of one core")
    keeps_up = bool(lat) and all(math.isfinite(x) for x in lat) and statistics.median(lat) < 1.0
    print(f"  keeps up (every alert arrived, median < 1 s): {'yes' if keeps_up else 'NO'}")
    ok &= keeps_up
    print("all targets met" if ok else "SOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
