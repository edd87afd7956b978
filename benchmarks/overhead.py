"""What the hooks cost a training loop: the same loop plain and with `hooks.Run` + `watch()` at default settings.

    python -m benchmarks.overhead            # 20 rounds of 300 steps (about 3 minutes on 2 CPU cores)
    python -m benchmarks.overhead --quick    # 6 rounds of 100 steps
    python -m benchmarks.overhead --lengths 200,5000 --rounds 5   # short and long runs side by side
    python -m benchmarks.overhead --model mlp --lengths 20000     # a fast (~1 ms, GPU-like) step

A short run pays the sampling floor (every one of the first 10 steps, then geometric spacing to step 1000),
the first-batch observer (first 200 steps) and the online rules at every flush while the run is young
(first 10 s); a long run amortizes them. The "tail" clock times the second half of the steps alone (past
the young phase when the run is long enough): the steady state of run.step and the flushes. The probes'
and the rules' steady-state shares are bounded by their time budgets (0.2% each), which the breakdown
("inside the hooks, share of the loop") shows being kept: per-step path, flushes, online rules, probes.

The loop is the reference trainer's: the default convnet on digits, batch 64, SGD with momentum, a validation
pass and `run.epoch()` every 16 steps. Each round runs every variant once, in a shuffled order (drift and
other processes' load hit all alike), from the same initial weights on the same batches, after a
gc.collect(). Each timing covers the training steps only; what a run costs once (creating the run directory,
watch(), close()) is reported apart, in milliseconds. Reported: the median of the per-round ratios
variant/plain, with the 25th-75th percentiles, for wall-clock time, for the CPU time of the training thread
(steadier on a shared machine), and for the time measured inside `run.step` and the probes' hooks. Where
tensorboard is importable, a third variant logs the same kind of content with SummaryWriter the way its
users usually do (`.item()` per scalar).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from babysit import hooks
from babysit.trainer.config import TrainConfig
from babysit.trainer.data import load_splits
from babysit.trainer.models import build_model

__all__ = ["main", "measure"]


def _setup(model_name: str, seed: int, steps: int, batch_size: int):
    cfg = TrainConfig(dataset="digits", model=model_name, seed=seed)
    data = load_splits(cfg)
    gen = torch.Generator().manual_seed(seed)
    n = len(data.x_train)
    batches = []
    while len(batches) < steps:
        perm = torch.randperm(n, generator=gen)
        batches.extend(perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size))
    torch.manual_seed(seed)
    init = build_model(cfg, data.input_shape, data.num_classes).state_dict()
    return data, batches[:steps], init


def _fresh(model_name: str, data, init):
    model = build_model(TrainConfig(model=model_name), data.input_shape, data.num_classes)
    model.load_state_dict(init)
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)


def _loop(model, optimizer, data, batches, on_step=None, on_epoch=None, epoch_steps: int = 16,
          tail_from: int | None = None, timed=None) -> tuple[float, float, float, float]:
    """(wall seconds, CPU seconds of this thread, wall seconds from step `tail_from` on, seconds `timed()`
    gained from then on) for the training steps, with a validation pass every `epoch_steps` steps (an epoch of
    digits) as in the reference trainer. `timed`: the logging's own running total of seconds spent inside it."""
    start, cpu = time.perf_counter(), time.thread_time()
    tail_from = tail_from or len(batches) // 2 + 1
    tail = start
    timed_at_tail = 0.0
    for i, idx in enumerate(batches, 1):
        if i == tail_from:
            tail = time.perf_counter()
            timed_at_tail = timed() if timed is not None else 0.0
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(loss)
        if i % epoch_steps == 0:
            model.eval()
            with torch.no_grad():
                logits = model(data.x_val)
                val_loss, val_acc = F.cross_entropy(logits, data.y_val), (logits.argmax(1) == data.y_val).float().mean()
            model.train()
            if on_epoch is not None:
                on_epoch(val_loss, val_acc)
    end = time.perf_counter()
    tail_timed = timed() - timed_at_tail if timed is not None else 0.0
    return end - start, time.thread_time() - cpu, end - tail, tail_timed


def _plain(model_name, data, batches, init, tmp: Path) -> tuple[float, float, dict]:
    model, optimizer = _fresh(model_name, data, init)
    return _loop(model, optimizer, data, batches)[:3], 0.0, {}


class _Clock:
    """Seconds and calls of one of the run's methods, wrapped on the instance (a few hundred calls a run)."""

    def __init__(self, run: hooks.Run, name: str):
        self.seconds, self.calls = 0.0, 0
        inner = getattr(run, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t
                self.calls += 1

        setattr(run, name, timed)


def _hooks(model_name, data, batches, init, tmp: Path) -> tuple[tuple[float, float, float], float, dict]:
    model, optimizer = _fresh(model_name, data, init)
    t0 = time.perf_counter()
    run = hooks.Run(tmp / f"run{time.monotonic_ns()}", num_classes=data.num_classes, config={"lr": 0.05})
    run.watch(model, optimizer, input_shape=data.input_shape)
    fixed = time.perf_counter() - t0
    flushes, rules = _Clock(run, "_flush"), _Clock(run, "_diagnose_pending")
    probe = run._probe
    sampling = _Clock(probe, "after_step") if probe is not None else None
    probe_start = (probe.seconds, probe.hook_seconds) if probe is not None else (0.0, 0.0)
    inside = 0.0  # seconds inside run.step and run.epoch

    def on_step(loss):
        nonlocal inside
        t = time.perf_counter()
        run.step(loss=loss)
        inside += time.perf_counter() - t

    def on_epoch(val_loss, val_acc):
        nonlocal inside
        t = time.perf_counter()
        run.epoch(val_loss=val_loss, val_acc=val_acc)
        inside += time.perf_counter() - t

    # Timed directly: run.step and run.epoch, plus the probes' forward and optimizer hooks (outside run.step).
    *seconds, tail_timed = _loop(model, optimizer, data, batches, on_step, on_epoch,
                                 timed=lambda: inside + (probe.hook_seconds if probe is not None else 0.0))
    outside = probe.hook_seconds - probe_start[1] if probe is not None else 0.0
    in_probe = sampling.seconds if sampling is not None else 0.0
    parts = {  # where the time inside the hooks went (seconds; counts)
        "record": inside - flushes.seconds - in_probe,  # the per-step (and per-epoch) path itself
        "flush": flushes.seconds - rules.seconds, "flushes": flushes.calls,
        "rules": rules.seconds, "rule_calls": rules.calls,
        "probe": in_probe + outside, "samples": probe.samples if probe is not None else 0,
        "us_per_step": 1e6 * (inside - flushes.seconds - in_probe) / len(batches),
    }
    probe_seconds = probe.seconds - probe_start[0] if probe is not None else 0.0
    extra = {"samples": parts["samples"], "timed": inside + outside, "tail_timed": tail_timed,
             "probe": probe_seconds, "parts": parts}
    t0 = time.perf_counter()
    run.close()
    return seconds, fixed + time.perf_counter() - t0, extra


def _tensorboard(model_name, data, batches, init, tmp: Path, every: int = 60, snapshot_every: int = 100):
    """SummaryWriter with the same kind of content: loss and lr every step, validation metrics every epoch,
    per-layer weight and gradient statistics on step 1 and every `every` steps (about as many samples as the
    hooks take here; no update ratios or dead units, which TensorBoard users would have to code), the first
    layer's weights (a histogram) every `snapshot_every` steps."""
    from torch.utils.tensorboard import SummaryWriter

    model, optimizer = _fresh(model_name, data, init)
    t0 = time.perf_counter()
    writer = SummaryWriter(str(tmp / f"tb{time.monotonic_ns()}"))
    layers = [(n, m.weight) for n, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)]
    fixed = time.perf_counter() - t0
    step = 0
    inside = 0.0

    def on_step(loss):
        nonlocal step, inside
        t = time.perf_counter()
        step += 1
        writer.add_scalar("loss", loss.item(), step)
        writer.add_scalar("lr", optimizer.param_groups[0]["lr"], step)
        if step == 1 or step % every == 0:
            for name, w in layers:
                writer.add_scalar(f"{name}/w_norm", w.norm().item(), step)
                writer.add_scalar(f"{name}/w_mean", w.mean().item(), step)
                writer.add_scalar(f"{name}/w_std", w.std().item(), step)
                writer.add_scalar(f"{name}/g_norm", w.grad.norm().item(), step)
                writer.add_scalar(f"{name}/zero_grad_frac", (w.grad == 0).float().mean().item(), step)
        if step % snapshot_every == 0:
            writer.add_histogram(f"{layers[0][0]}/weights", layers[0][1].detach(), step)
        inside += time.perf_counter() - t

    def on_epoch(val_loss, val_acc):
        nonlocal inside
        t = time.perf_counter()
        writer.add_scalar("val_loss", val_loss.item(), step)
        writer.add_scalar("val_acc", val_acc.item(), step)
        inside += time.perf_counter() - t

    *seconds, tail_timed = _loop(model, optimizer, data, batches, on_step, on_epoch, timed=lambda: inside)
    t0 = time.perf_counter()
    writer.close()
    return seconds, fixed + time.perf_counter() - t0, {"timed": inside, "tail_timed": tail_timed}


def _summary(ratios: list[float]) -> dict:
    ratios = sorted(ratios)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "p25": q[0], "p75": q[2], "ratios": ratios}


def measure(rounds: int, steps: int, model_name: str = "convnet", batch_size: int = 64, seed: int = 0,
            tensorboard: bool = True, out=sys.stdout) -> dict:
    """Run the interleaved comparison.

    Returns {"hooks": {"wall": summary, "cpu": summary, "tail": summary, "timed": summary, "fixed_ms": ...},
    "tensorboard": ..., "plain_step_ms", "layer_samples", "probe_share", "parts"} where a summary holds the
    median and quartiles of the per-round ratios variant/plain ("tail": the second half of the steps, past
    the young phase on long runs), and "parts" the median share of the hooks' wall time spent per part.
    """
    torch.set_num_threads(1)  # steadier timings on a shared 2-core machine; the ratio is what matters
    warnings.simplefilter("once")
    data, batches, init = _setup(model_name, seed, steps, batch_size)
    variants = {"hooks": _hooks}
    if tensorboard:
        try:
            from torch.utils import tensorboard as _tb  # noqa: F401

            variants["tensorboard"] = _tensorboard
        except ImportError:
            print("tensorboard is not installed: skipping the SummaryWriter comparison", file=out)
    names = ["plain", *variants]
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    tail: dict[str, list[float]] = {k: [] for k in names}
    fixed: dict[str, list[float]] = {k: [] for k in variants}
    samples: list[int] = []
    timed: dict[str, list[float]] = {k: [] for k in variants}  # wall / (wall - time measured inside the logging)
    tail_timed: dict[str, list[float]] = {k: [] for k in variants}  # the same over the second half of the steps
    probe_share: list[float] = []  # per hooks timing: the layer probes' part of the wall time
    parts: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="babysit-overhead-") as tmp:
        tmp = Path(tmp)
        for _name, fn in [("plain", _plain), *variants.items()]:  # warm up: first calls, allocator, caches
            fn(model_name, data, batches[: max(10, steps // 10)], init, tmp)
        rng = random.Random(seed)
        for i in range(rounds):
            order = [("plain", _plain), *variants.items()]
            rng.shuffle(order)  # every variant in every position alike: no variant always runs second
            for name, fn in order:
                gc.collect()  # the previous variant's garbage is not this one's to collect
                (seconds, cpu_seconds, tail_seconds), once, extra = fn(model_name, data, batches, init, tmp)
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
                tail[name].append(tail_seconds)
                if name != "plain":
                    fixed[name].append(once)
                if "timed" in extra:
                    timed[name].append(seconds / (seconds - extra["timed"]))
                    tail_timed[name].append(tail_seconds / (tail_seconds - extra["tail_timed"]))
                if "samples" in extra:
                    samples.append(extra["samples"])
                    probe_share.append(extra["probe"] / seconds)
                    parts.append({k: v / seconds if k in _SHARES else v for k, v in extra["parts"].items()})
            print(f"round {i + 1:2d}/{rounds}: plain {wall['plain'][-1]:.3f}s  "
                  + "  ".join(f"{k} {wall[k][-1]:.3f}s ({wall[k][-1] / wall['plain'][-1]:.3f})" for k in variants),
                  file=out)
    result: dict = {}
    for name in variants:
        result[name] = {
            clock: _summary([v / p for v, p in zip(series[name], series["plain"], strict=True)])
            for clock, series in (("wall", wall), ("cpu", cpu), ("tail", tail))
        }
        result[name]["timed"] = _summary(timed[name])
        result[name]["tail_timed"] = _summary(tail_timed[name])
        result[name]["fixed_ms"] = 1e3 * statistics.median(fixed[name])
    result["plain_step_ms"] = 1e3 * statistics.median(wall["plain"]) / steps
    result["layer_samples"] = statistics.median(samples) if samples else 0
    result["probe_share"] = statistics.median(probe_share) if probe_share else 0.0
    result["parts"] = {k: statistics.median(p[k] for p in parts) for k in parts[0]} if parts else {}
    return result


_SHARES = ("record", "flush", "rules", "probe")  # parts measured in seconds, reported as shares of the loop
CLOCKS = {
    "wall": "wall-clock ratio to the plain loop of the same round",
    "cpu": "this thread's CPU time, the same ratio",
    "tail": "wall clock of the second half of the steps only (past the young phase on a long run)",
    "timed": "time measured inside the logging calls (run.step/epoch and the probes' hooks; the SummaryWriter "
             "calls) over the rest of the loop",
    "tail_timed": "the same over the second half of the steps only: the steady state of a long run",
}


def _parts_line(r: dict, steps: int) -> str:
    """Where the hooks' time went, as shares of the loop's wall time (medians over rounds)."""
    p = r.get("parts") or {}
    if not p:
        return ""
    return (f"inside the hooks, share of the loop: per-step path {100 * p['record']:.2f}% "
            f"({p['us_per_step']:.1f} us/step), "
            f"flushes {100 * p['flush']:.2f}% ({p['flushes']:.0f}), online rules {100 * p['rules']:.2f}% "
            f"({p['rule_calls']:.0f} calls), layer probes and snapshots {100 * p['probe']:.2f}% "
            f"({p['samples']:.0f} samples)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 rounds of 100 steps")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 20)")
    parser.add_argument("--steps", type=int, help="training steps per timing (default 300)")
    parser.add_argument("--model", default="convnet", choices=["convnet", "mlp"],
                        help="convnet (about 4 ms a step on one CPU thread) or mlp (about 1 ms: a fast, GPU-like "
                        "step, where the hooks' fixed cost per step matters most)")
    parser.add_argument("--no-tensorboard", action="store_true", help="skip the SummaryWriter comparison")
    parser.add_argument("--lengths", help="comma-separated run lengths in steps, measured one after the other and "
                        "shown side by side (e.g. 200,5000)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (6 if args.quick else 20)
    if args.lengths:
        try:
            lengths = [int(s) for s in args.lengths.split(",") if s.strip()]
        except ValueError:
            parser.error(f"--lengths takes step counts separated by commas, not {args.lengths!r}")
        if not lengths or min(lengths) < 20:
            parser.error("--lengths: each run length must be at least 20 steps")
        return _by_length(lengths, rounds, args.model, not args.no_tensorboard)
    steps = args.steps or (100 if args.quick else 300)
    print(f"{args.model} on digits, batch 64, {steps} steps per timing, {rounds} interleaved rounds, "
          f"torch {torch.__version__}, 1 thread")
    result = measure(rounds, steps, args.model, tensorboard=not args.no_tensorboard)
    print(f"\nplain: {result['plain_step_ms']:.2f} ms/step; the hooks took {result['layer_samples']:.0f} layer "
          f"samples per {steps} steps")
    print(_parts_line(result, steps))
    print("clock: " + "\n       ".join(f"{k} = {v}" for k, v in CLOCKS.items()))
    print(f"{'variant':<12} {'clock':<5} {'median ratio':>12} {'p25':>7} {'p75':>7} {'once (ms)':>10}")
    for name in ("hooks", "tensorboard"):
        if name in result:
            r = result[name]
            for clock in CLOCKS:
                c = r[clock]
                once = f"{r['fixed_ms']:>10.1f}" if clock == "wall" else ""
                print(f"{name:<12} {clock:<5} {c['median']:>12.4f} {c['p25']:>7.4f} {c['p75']:>7.4f} {once}")
    median, timed = result["hooks"]["wall"]["median"], result["hooks"]["timed"]["median"]
    verdict = "met" if median <= 1.01 else "NOT met"
    print(f"\nhooks overhead: wall clock {100 * (median - 1):+.2f}% (target <= +1%: {verdict}), "
          f"timed inside the hooks {100 * (timed - 1):+.2f}%")
    return 0


def _by_length(lengths: list[int], rounds: int, model: str, tensorboard: bool) -> int:
    print(f"{model} on digits, batch 64, {rounds} interleaved rounds per length, torch {torch.__version__}, 1 thread")
    rows = []
    for steps in lengths:
        print(f"\n--- {steps} steps")
        rows.append((steps, measure(rounds, steps, model, tensorboard=tensorboard)))
    variants = [v for v in ("hooks", "tensorboard") if v in rows[0][1]]
    print(f"\n{model}: median ratio to the plain loop (p25-p75) over {rounds} rounds; inside = time inside the "
          "logging calls as a share of the loop; tail = the second half of the steps\n")
    head = "| steps | plain ms/step | layer samples |"
    rule = "|---:|---:|---:|"
    for v in variants:
        head += f" {v} wall | {v} cpu | {v} tail | {v} inside | {v} inside, 2nd half |"
        rule += "---:|---:|---:|---:|---:|"
    print(head)
    print(rule)
    for steps, r in rows:
        line = f"| {steps} | {r['plain_step_ms']:.2f} | {r['layer_samples']:.0f} |"
        for v in variants:
            w, c, t, i, it = (r[v][k] for k in ("wall", "cpu", "tail", "timed", "tail_timed"))
            line += (f" {w['median']:.3f} ({w['p25']:.3f}-{w['p75']:.3f}) | {c['median']:.3f} |"
                     f" {t['median']:.3f} ({t['p25']:.3f}-{t['p75']:.3f}) | {100 * (1 - 1 / i['median']):.2f}% |"
                     f" {100 * (1 - 1 / it['median']):.2f}% |")
        print(line)
    print()
    for steps, r in rows:
        print(f"{steps} steps: {_parts_line(r, steps)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
