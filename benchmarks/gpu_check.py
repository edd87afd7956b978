"""The GPU check: what a teammate runs on a CUDA machine (under 5 minutes) and pastes into the issue.

    python -m benchmarks.gpu_check            # on a CUDA machine; skips cleanly without one
    python -m benchmarks.gpu_check --cpu      # a tiny smoke run of the same code on the CPU (the tests use it)

Three tables:
  1. hook overhead on the device: the same training loop (bf16 autocast, channels_last, data on the device)
     plain and with `hooks.Run` + `watch()`, interleaved pairs from the same initial weights; median ratio.
     Two models: the digits convnet (tiny, launch-bound: the worst case for per-step Python work) and a
     residual net on 32x32 synthetic images (enough work per step to look like real training).
  2. the reference trainer (`trainer.train`, hooks inside) on a synthetic folder:PATH dataset: throughput with
     fp32, bf16, bf16 + channels_last, and + torch.compile, measured from the run's own step timestamps after
     the first epoch (so compilation and warm-up are excluded).
  3. DDP: the same trainer under torchrun on every GPU present (skipped with one GPU).
  4. self-healing on the device: the trainer at an lr far too high, with and without --heal (the good state
     kept in pinned host memory, the CUDA RNG restored): heals, final accuracy, and whether the run finished.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["main", "hook_overhead", "trainer_throughput", "write_synthetic_folder"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images(n: int, classes: int, side: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable synthetic images: a fixed random template per class plus noise, uint8."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, (classes, side, side, channels))
    y = rng.integers(0, classes, n)
    x = 0.5 * templates[y] + rng.uniform(0, 127, (n, side, side, channels))
    return x.astype(np.uint8), y


def write_synthetic_folder(root: Path, n: int, classes: int = 10, side: int = 32, channels: int = 3) -> Path:
    """A folder:PATH dataset of .npy images, one sub-folder per class."""
    x, y = _images(n, classes, side, channels, seed=0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        np.save(root / f"class{label}" / f"{i:05d}.npy", img)
    return root


def _loop(model, optimizer, x, y, batch: int, steps: int, device, amp: bool, run=None) -> float:
    """Seconds for `steps` training steps (device synchronized at both ends only)."""
    n = len(x)
    gen = torch.Generator(device=device).manual_seed(0)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), device=device, generator=gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x[idx]).float(), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if run is not None:
            run.step(loss=loss.detach())
    _sync(device)
    return time.perf_counter() - start


def hook_overhead(device: torch.device, model_name: str, side: int, channels: int, batch: int, steps: int,
                  pairs: int, width: int = 16, watch: bool = True, profile: bool = False) -> dict:
    """Median ratio (hooks / plain) of the loop's wall time over interleaved pairs, plus ms/step plain.

    watch=False records the loss only (no layer probes, no structure checks): the per-step path alone.
    profile=True runs the last hooked loop under cProfile and adds the hooks' top functions to the result."""
    from babysit import hooks
    from babysit.trainer.config import TrainConfig
    from babysit.trainer.models import build_model

    amp = device.type == "cuda"
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    xs, ys = _images(4096, 10, side, channels, seed=1)
    x = torch.from_numpy(xs).permute(0, 3, 1, 2).float().div(255).to(device).contiguous(memory_format=fmt)
    y = torch.from_numpy(ys).to(device)
    cfg = TrainConfig(model=model_name, width=width)
    torch.manual_seed(0)
    init = build_model(cfg, (channels, side, side), 10).state_dict()

    def fresh():
        model = build_model(cfg, (channels, side, side), 10)
        model.load_state_dict(init)
        model.to(device).to(memory_format=fmt)
        return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    ratios, plain_times = [], []
    with tempfile.TemporaryDirectory(prefix="babysit-gpu-check-") as tmp:
        for i in range(pairs + 1):  # pair 0 warms up (cuDNN autotuning, allocator, first hooks)
            timings = {}
            for variant in (("plain", "hooks") if i % 2 == 0 else ("hooks", "plain")):
                model, optimizer = fresh()
                if variant == "plain":
                    timings[variant] = _loop(model, optimizer, x, y, batch, steps, device, amp)
                else:
                    with hooks.Run(Path(tmp, f"run{i}"), num_classes=10, on_critical="warn") as run:
                        if watch:
                            run.watch(model, optimizer, input_shape=(channels, side, side))
                        if profile and i == pairs:
                            top = _profiled(_loop, model, optimizer, x, y, batch, steps, device, amp, run)
                        else:
                            timings[variant] = _loop(model, optimizer, x, y, batch, steps, device, amp, run)
            if profile and i == pairs:
                break
            if i > 0:
                ratios.append(timings["hooks"] / timings["plain"])
                plain_times.append(timings["plain"])
    if profile:
        return {"top": top}
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "p25": q[0], "p75": q[2],
            "plain_ms": 1e3 * statistics.median(plain_times) / steps}


def _profiled(fn, *args) -> list[str]:
    """The 15 functions of babysit with the most time (their own, and with what they call) during fn(*args)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    total = fn(*args)
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "babysit" in file or "/hooks/" in file or "/rules/" in file or "/monitor/" in file:
            rows.append((cumtime, tottime, calls, f"{Path(file).parent.name}/{Path(file).name}:{line} {name}"))
    rows.sort(reverse=True)
    return [f"loop {total:.3f}s"] + [f"{c:8.3f}s cum {t:8.3f}s own {n:>8} calls  {where}"
                                      for c, t, n, where in rows[:15]]


def _steps_per_second(run_dir: Path) -> tuple[float, int]:
    """Steps per second after the first epoch, from the run's own step timestamps."""
    from babysit.monitor.reader import load_run

    run = load_run(run_dir)
    first_epoch_end = int(run.epochs["step"].iloc[0]) if len(run.epochs) else 0
    later = run.steps[run.steps["step"] > first_epoch_end]
    if len(later) < 2:
        later = run.steps
    span = float(later["time"].iloc[-1] - later["time"].iloc[0])
    return (len(later) - 1) / span if span > 0 else float("nan"), len(run.steps)


def trainer_throughput(device: torch.device, folder: Path, variants: list[dict], tmp: Path, **common) -> list[dict]:
    """Train once per variant; rows of {variant, images_per_s, val_acc, steps, seconds}."""
    from babysit.trainer.config import TrainConfig
    from babysit.trainer.train import train

    rows = []
    for i, v in enumerate(variants):
        cfg = TrainConfig(dataset=f"folder:{folder}", device=device.type, run_dir=str(tmp / f"trainer{i}"),
                          progress=False, on_critical="warn", **{**common, **v})
        start = time.perf_counter()
        result = train(cfg)
        seconds = time.perf_counter() - start
        rate, steps = _steps_per_second(Path(cfg.run_dir))
        rows.append({"variant": ", ".join(f"{k}={val}" for k, val in v.items()),
                     "images_per_s": rate * cfg.batch_size, "val_acc": result.get("val_acc", float("nan")),
                     "steps": steps, "seconds": seconds})
    return rows


def _count_heals(run_dir: Path) -> int:
    from babysit.monitor.reader import load_run

    return sum(1 for e in load_run(run_dir).events if e.get("type") == "event" and e.get("name") == "heal")


def heal_on_device(device: torch.device, folder: Path, tmp: Path, lr: float, **common) -> list[dict]:
    """The trainer at a far too high lr, plain (stops on critical) and with heal; rows for the table."""
    from babysit.trainer.config import TrainConfig
    from babysit.trainer.train import train

    rows = []
    for heal in (False, True):
        cfg = TrainConfig(dataset=f"folder:{folder}", device=device.type, run_dir=str(tmp / f"heal{int(heal)}"),
                          progress=False, on_critical="stop", heal=heal, lr=lr, **common)
        start = time.perf_counter()
        try:
            result = train(cfg)
            error = ""
        except Exception as e:  # the check reports, it does not stop the other tables
            result, error = {}, f"{type(e).__name__}: {e}"
        rows.append({"heal": heal, "heals": _count_heals(Path(cfg.run_dir)), "error": error[:120],
                     "val_acc": result.get("val_acc", float("nan")), "seconds": time.perf_counter() - start,
                     "stopped": f"{result.get('state', '')} {result.get('reason') or ''}".strip()})
    return rows


def _ddp(folder: Path, tmp: Path, gpus: int, common: dict) -> dict:
    run_dir = tmp / "ddp"
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", "-m", "babysit", "train",
            "--dataset", f"folder:{folder}", "--run-dir", str(run_dir), "--no-progress", "--device", "cuda",
            "--model", common["model"], "--width", str(common["width"]), "--epochs", str(common["epochs"]),
            "--batch-size", str(common["batch_size"] * gpus), "--on-critical", "warn"]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"ok": False, "error": tail[0]}
    rate, steps = _steps_per_second(run_dir)
    return {"ok": True, "images_per_s": rate * common["batch_size"] * gpus, "steps": steps,
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny smoke run on the CPU (checks the script itself)")
    parser.add_argument("--profile", action="store_true", help="also: run.step alone, and where the hooks' time goes")
    parser.add_argument("--profile-only", action="store_true", help="only that (a short device call)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.cpu:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        overhead_cases = [("convnet", 8, 1, 16, 5, 1, 8)]
        images, side, common = 300, 8, {"model": "convnet", "width": 8, "epochs": 2, "batch_size": 32}
        variants = [{"amp": "off", "channels_last": "off"}, {"amp": "bf16", "channels_last": "on"}]
    elif not torch.cuda.is_available():
        print("no CUDA device here: skipping the GPU checks (python -m benchmarks.gpu_check --cpu smoke-tests "
              "this script on the CPU)")
        return 0
    else:
        device = torch.device("cuda")
        overhead_cases = [("convnet", 8, 1, 64, 300, 5, 16), ("convnet", 8, 1, 64, 3000, 3, 16),
                          ("resnet", 32, 3, 256, 200, 5, 32), ("resnet", 32, 3, 256, 1500, 3, 32)]
        images, side, common = 12000, 32, {"model": "resnet", "width": 32, "epochs": 4, "batch_size": 256}
        variants = [{"amp": "off", "channels_last": "off"}, {"amp": "bf16", "channels_last": "off"},
                    {"amp": "bf16", "channels_last": "on"}, {"amp": "bf16", "channels_last": "on", "compile": True}]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke run)"
    print(f"device: {name}; torch {torch.__version__}")

    print("\n1. hook overhead (same loop, plain vs hooks.Run + watch, bf16 + channels_last on CUDA)")
    if args.profile or args.profile_only:
        model_name, s, c, batch, steps, pairs, width = overhead_cases[1 if len(overhead_cases) > 1 else 0]
        r = hook_overhead(device, model_name, s, c, batch, steps, 1, width, watch=False)
        print(f"{model_name} {steps} steps, run.step only (no watch): hooks/plain {r['median']:.4f}")
        print(f"where the time goes with watch() ({model_name}, {steps} steps, cProfile):")
        for line in hook_overhead(device, model_name, s, c, batch, steps, 1, width, profile=True)["top"]:
            print("  " + line)
        if args.profile_only:
            return 0
    print(f"{'model':<9} {'input':<9} {'batch':>5} {'steps':>5} {'plain ms/step':>13} {'hooks/plain':>11} "
          f"{'p25':>6} {'p75':>6}")
    for model_name, s, c, batch, steps, pairs, width in overhead_cases:
        r = hook_overhead(device, model_name, s, c, batch, steps, pairs, width)
        print(f"{model_name:<9} {f'{c}x{s}x{s}':<9} {batch:>5} {steps:>5} {r['plain_ms']:>13.3f} "
              f"{r['median']:>11.4f} {r['p25']:>6.3f} {r['p75']:>6.3f}")

    with tempfile.TemporaryDirectory(prefix="babysit-gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        folder = write_synthetic_folder(tmp / "data", images, side=side, channels=3)
        print(f"\n2. the trainer on {images} synthetic {side}x{side} images ({common}; "
              f"dataset written in {time.perf_counter() - start:.1f}s)")
        print(f"{'variant':<44} {'images/s':>10} {'val acc':>8} {'steps':>6} {'wall s':>7}")
        for row in trainer_throughput(device, folder, variants, tmp, **common):
            print(f"{row['variant']:<44} {row['images_per_s']:>10.0f} {row['val_acc']:>8.4f} {row['steps']:>6} "
                  f"{row['seconds']:>7.1f}")

        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        print("\n3. DDP (torchrun, one process per GPU)")
        if gpus < 2:
            print(f"skipped: {gpus} GPU(s) here; DDP is tested on the CPU with gloo (tests/trainer/test_ddp.py)")
        else:
            r = _ddp(folder, tmp, gpus, common)
            print(f"{gpus} GPUs: " + (f"{r['images_per_s']:.0f} images/s, {r['steps']} steps, {r['seconds']:.1f}s"
                                      if r["ok"] else f"FAILED: {r['error']}"))

        lr, healing = 20.0, {**common, "model": "convnet"}  # no BatchNorm: lr 20 blows it up on any device
        print(f"\n4. self-healing on the device (the trainer at lr {lr}, {healing})")
        print(f"{'heal':<6} {'heals':>5} {'val acc':>8} {'wall s':>7}  stopped / error")
        for row in heal_on_device(device, folder, tmp, lr, **healing):
            print(f"{str(row['heal']):<6} {row['heals']:>5} {row['val_acc']:>8.4f} {row['seconds']:>7.1f}  "
                  f"{row['stopped']} {row['error']}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
