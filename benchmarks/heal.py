"""Self-healing runs (hooks/heal.py): what keeping a good state costs, and how often a broken run heals.

    python -m benchmarks.heal                 # all three parts
    python -m benchmarks.heal --part cost     # wall-clock of heal vs plain hooks, interleaved rounds
    python -m benchmarks.heal --part memory   # bytes of the good-state copies vs model + optimizer state
    python -m benchmarks.heal --part zoo      # >= 10 broken runs (SGD/Adam, MLP/CNN, 3 datasets) vs healthy twins

`scenario()` is also what tests/hooks/test_heal.py trains: one real CPU run on sklearn digits or a toy 2-D set,
healthy or broken in one of three ways (an lr far too high, one corrupted batch, an lr schedule that spikes),
with or without on_critical="heal".
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

FAULTS = ("none", "lr_high", "bad_batch", "lr_spike")


@dataclass
class Setup:
    dataset: str = "digits"  # digits | spiral | gauss | xor | circle
    model: str = "mlp"  # mlp | cnn (digits only)
    optimizer: str = "sgd"  # sgd (momentum 0.9) | adam
    lr: float = 0.05
    steps: int = 600
    batch: int = 32
    seed: int = 0
    fault: str = "none"
    fault_step: int = 300  # bad_batch: the corrupted step; lr_spike: where the spike starts
    factor: float = 30.0  # lr_high / lr_spike: the lr multiplier; bad_batch: the input scale
    spike_len: int = 60


@dataclass
class Result:
    val_acc: float
    losses: list = field(default_factory=list)
    stopped: bool = False
    reason: str | None = None
    heals: list = field(default_factory=list)
    seconds: float = 0.0
    hook_seconds: float = 0.0  # inside run.step (recording, flushes, rules, and the healer's copies and verdicts)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    with gzip.open(csv, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return table[:, :-1], table[:, -1].astype(np.int64)


_CACHE: dict = {}


def data(name: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_val, y_val), standardized with the training split's statistics."""
    key = (name, seed)
    if key not in _CACHE:
        if name == "digits":
            x, y = _digits()
        else:
            from babysit.trainer.toy import make_toy

            x, y = make_toy(name, 1000, 0.1, seed)
            x = x.astype(np.float32)
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(x))
        n_train = int(0.7 * len(x))
        tr, va = idx[:n_train], idx[n_train:]
        mean, std = x[tr].mean(0), x[tr].std(0) + 1e-6
        x = (x - mean) / std
        _CACHE[key] = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (x[tr], y[tr], x[va], y[va]))
    return _CACHE[key]


def make_model(setup: Setup, n_in: int, n_out: int) -> nn.Module:
    torch.manual_seed(setup.seed)
    if setup.model == "cnn":
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(8 * 16, 32), nn.ReLU(), nn.Linear(32, n_out))
    hidden = 64 if setup.dataset == "digits" else 32
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_out))


def scenario(setup: Setup, run_dir: str | Path | None = None, heal: bool = False, **run_kwargs) -> Result:
    """Train one run; with `run_dir`, under babysit.Run (on_critical "heal" or "stop")."""
    import babysit

    xt, yt, xv, yv = data(setup.dataset, setup.seed)
    n_out = int(yt.max()) + 1
    model = make_model(setup, xt.shape[1], n_out)
    lr = setup.lr * (setup.factor if setup.fault == "lr_high" else 1.0)
    if setup.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = None
    if setup.fault == "lr_spike":
        lo, hi = setup.fault_step, setup.fault_step + setup.spike_len
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: setup.factor if lo <= t < hi else 1.0)
    gen = torch.Generator().manual_seed(setup.seed)
    run = None
    if run_dir is not None:
        kwargs = {"flush_steps": 25, **run_kwargs}
        run = babysit.Run(run_dir, num_classes=n_out, on_critical="heal" if heal else "stop", **kwargs)
        run.watch(model, opt, scheduler=sched, every=10)
    losses = []
    inside = 0.0
    start = time.perf_counter()
    step = 0
    while step < setup.steps:
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(perm) - setup.batch + 1, setup.batch):
            step += 1
            xb, yb = xt[perm[i:i + setup.batch]], yt[perm[i:i + setup.batch]]
            if setup.fault == "bad_batch" and step == setup.fault_step:
                # a corrupted batch: inputs scaled by `factor` (raw bytes where floats were expected) and the
                # labels shifted (a misaligned label file); with factor 0, one NaN value (a broken record)
                xb, yb = xb * setup.factor, (yb + 1) % (int(yt.max()) + 1)
                if setup.factor == 0:
                    xb[0, 0] = float("nan")
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(loss.detach())
            if run is not None:
                t0 = time.perf_counter()
                run.step(loss=loss)
                inside += time.perf_counter() - t0
                if run.should_stop:
                    break
            if step >= setup.steps:
                break
        if run is not None and run.should_stop:
            break
    seconds = time.perf_counter() - start
    result = Result(val_acc=accuracy(model, xv, yv), losses=[float(v) for v in losses], seconds=seconds,
                    hook_seconds=inside)
    if run is not None:
        run.epoch(val_acc=result.val_acc)
        run.close()
        result.stopped, result.reason = run.should_stop, run.stop_reason
        result.heals = list(run._healer.heals) if run._healer is not None else []
    return result


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        out = model(x)
    if not torch.isfinite(out).all():
        return 1.0 / (int(y.max()) + 1)  # a NaN net predicts nothing: count it as chance
    return float((out.argmax(1) == y).float().mean())


# ----------------------------------------------------------------------------- the benchmark parts
ZOO = [
    Setup("digits", "mlp", "sgd", 0.05, fault="lr_high", factor=30),
    Setup("digits", "mlp", "adam", 2e-3, fault="lr_high", factor=100),
    Setup("digits", "cnn", "sgd", 0.05, fault="lr_high", factor=30),
    Setup("digits", "mlp", "sgd", 0.05, fault="bad_batch", factor=1e4),
    Setup("digits", "cnn", "adam", 2e-3, fault="bad_batch", factor=0),
    Setup("digits", "mlp", "sgd", 0.05, fault="lr_spike", factor=30),
    Setup("digits", "cnn", "sgd", 0.05, fault="lr_spike", factor=30),
    Setup("digits", "mlp", "adam", 2e-3, fault="lr_spike", factor=100),
    Setup("spiral", "mlp", "sgd", 0.1, fault="lr_high", factor=20, steps=800),
    Setup("spiral", "mlp", "adam", 0.01, fault="bad_batch", factor=1e4, steps=800),
    Setup("gauss", "mlp", "sgd", 0.1, fault="bad_batch", factor=0, steps=600),
    Setup("xor", "mlp", "adam", 0.01, fault="lr_spike", factor=100, steps=800),
    Setup("circle", "mlp", "sgd", 0.1, fault="bad_batch", factor=1e3, steps=600),
]


def part_zoo(rows: list[Setup]) -> None:
    """Each broken run three ways: its healthy twin, broken with on_critical="stop", broken with "heal". A run
    counts as broken when, without healing, it was stopped or ended more than 2 points below its twin."""
    healed = broken = 0
    print(f"{'run':44s} {'healthy':>8s} {'no heal':>8s} {'heal':>8s} heals")
    with tempfile.TemporaryDirectory() as tmp:
        for i, s in enumerate(rows):
            twin = scenario(Setup(**{**s.__dict__, "fault": "none"}))
            plain = scenario(s, Path(tmp, f"p{i}"), heal=False)
            fixed = scenario(s, Path(tmp, f"h{i}"), heal=True)
            ok = fixed.val_acc >= twin.val_acc - 0.02
            was_broken = plain.stopped or plain.val_acc < twin.val_acc - 0.02
            broken += was_broken
            healed += ok and was_broken
            name = f"{s.dataset}/{s.model}/{s.optimizer}/{s.fault}x{s.factor:g}"
            print(f"{name:44s} {twin.val_acc:8.3f} {plain.val_acc:8.3f}{'(s)' if plain.stopped else '   '}"
                  f"{fixed.val_acc:6.3f}  {len(fixed.heals)} {'ok' if ok else 'NOT HEALED'}"
                  f" [{', '.join(h['action'] for h in fixed.heals)}]")
    print(f"broken without healing: {broken}/{len(rows)}; of those, healed to within 2 points of the healthy "
          f"twin: {healed}/{broken}")


def part_cost(rounds: int, steps: int) -> None:
    """Wall-clock of plain training, the hooks, and the hooks with heal (the good state every 100 steps and its
    verdicts), interleaved in shuffled order each round so machine noise hits all alike; median ratios."""
    import random

    setup = Setup("digits", "cnn", "sgd", 0.05, steps=steps)
    times: dict[str, list[float]] = {"plain": [], "hooks": [], "heal": []}
    inside: dict[str, list[float]] = {"hooks": [], "heal": []}
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            order = list(times)
            rng.shuffle(order)
            for v in order:
                d = None if v == "plain" else Path(tmp, f"{r}{v}")
                res = scenario(setup, d, heal=v == "heal", flush_steps=512)
                times[v].append(res.seconds)
                if v in inside:
                    inside[v].append(res.hook_seconds)
    per_step = statistics.median(times["plain"]) / steps * 1e3
    print(f"cnn on digits, {rounds} rounds of {steps} steps, {per_step:.2f} ms per plain step:")
    for a, b in (("hooks", "plain"), ("heal", "plain"), ("heal", "hooks")):
        ratios = [x / y for x, y in zip(times[a], times[b], strict=True)]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        print(f"  {a} / {b}: median {statistics.median(ratios):.4f} (p25 {q[0]:.4f}, p75 {q[2]:.4f})")
    plain = statistics.median(times["plain"])
    for v in inside:
        print(f"  time inside run.step, {v}: {100 * statistics.median(inside[v]) / plain:.2f}% of plain training")
    extra = [h - k for h, k in zip(inside["heal"], inside["hooks"], strict=True)]
    share = 100 * statistics.median(extra) / plain
    print(f"  the good state's own cost (heal minus hooks, inside run.step): {share:.2f}% of plain training")


def part_memory() -> None:
    import babysit
    from babysit.hooks.heal import Healer

    setup = Setup("digits", "cnn", "adam", 2e-3, steps=300)
    xt, yt, _, _ = data("digits")
    model = make_model(setup, 64, 10)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    with tempfile.TemporaryDirectory() as tmp:
        run = babysit.Run(Path(tmp, "m"), num_classes=10, on_critical="heal", heal_every=50)
        run.watch(model, opt)
        for _ in range(300):
            loss = nn.functional.cross_entropy(model(xt[:32]), yt[:32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss=loss)
        healer: Healer = run._healer
        run.close()

    def nbytes(c) -> int:
        n = sum(t.numel() * t.element_size() for t in c.model)
        return n + sum(v.numel() * v.element_size() for s in c.opt.values() for v in s.values()
                       if isinstance(v, torch.Tensor))

    live = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    live += sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                if isinstance(v, torch.Tensor))
    kept = nbytes(healer._good) + nbytes(healer._spare)
    print(f"model + Adam state {live / 1e3:.1f} kB; good state + candidate {kept / 1e3:.1f} kB "
          f"({kept / live:.2f}x: two copies at most)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.heal", description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["cost", "memory", "zoo", "all"], default="all")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--only", type=int, nargs="*", help="zoo rows by index")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.part in ("memory", "all"):
        part_memory()
    if args.part in ("zoo", "all"):
        part_zoo([ZOO[i] for i in args.only] if args.only else ZOO)
    if args.part in ("cost", "all"):
        part_cost(args.rounds, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
