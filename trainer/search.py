"""`babysit search`: coarse-to-fine random search of learning rate and regularization in log space.

    babysit search --lr 1e-6:1e-3 --reg 1e-5:1e5 --trials 20 --epochs 5 --workers 2 [any babysit train option]

Without `--lr`, a learning-rate range test (`babysit lr-find`, same options) runs first, into <search folder>/
lr-find, and stage 1 spans 3 decades centred on its suggestion (the default 1e-3:1 if it finds none).

Stage 1 samples `--trials` points log-uniformly (the lecture: `lr = 10**uniform(-6, -3)`) and trains each for
`--epochs`; stage 2 samples `--fine-trials` points in the box spanned by stage 1's best few (widened a little,
kept inside the given ranges) and trains longer (`--fine-epochs`, default 2x). Each trial is an ordinary
`babysit train` command writing a run under the search folder, so a cluster scheduler could run the same
commands (`--dry-run` prints stage 1's); here `--workers` processes run them. A trial whose loss turns non-finite
or exceeds 3x its initial value stops early (the trainer's own check, and the hooks' rules with on_critical=stop).
The results table, sorted by best val accuracy, is printed and written to <search folder>/search.json; the
dashboard's search view reads the same runs (config lr/reg in meta.json, val_acc in the epoch records).

Torch-free: this process only launches trials and reads their run directories.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

from babysit.errors import UsageError
from babysit.monitor import runfile
from babysit.trainer.config import TrainConfig
from babysit.trainer.options import add_train_options, config_from_args, to_argv
from babysit.trainer.progress import Progress

__all__ = ["configure", "run", "parse_range", "sample_log_uniform", "narrow", "trial_result", "SEARCH_FILE"]

SEARCH_FILE = "search.json"
LR_DEFAULT = "1e-3:1"
CENTER_DECADES = 1.5  # without --lr: stage 1 spans the suggestion / 10**1.5 .. x 10**1.5, as wide as LR_DEFAULT
TOP_K = 3  # stage 2 narrows to the box around this many best stage-1 trials
MARGIN = 0.1  # ... widened by this fraction of the coarse range's width (in decades) on each side


def parse_range(text: str, name: str) -> tuple[float, float]:
    """'1e-6:1e-3' -> (1e-6, 1e-3); a single value is a range of one point."""
    parts = text.split(":")
    try:
        lo, hi = (float(parts[0]), float(parts[-1])) if len(parts) in (1, 2) else (math.nan, math.nan)
    except ValueError:
        lo = hi = math.nan
    if not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi)):
        raise UsageError(f"--{name} takes LOW:HIGH with positive numbers (log space), e.g. 1e-6:1e-3; got {text!r}")
    if lo > hi:
        raise UsageError(f"--{name} takes LOW:HIGH with LOW <= HIGH; got {text!r} "
                         f"(did you mean {parts[-1]}:{parts[0]}?)")
    return lo, hi


def sample_log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return 10 ** rng.uniform(math.log10(lo), math.log10(hi))


def narrow(values: list[float], coarse: tuple[float, float]) -> tuple[float, float]:
    """The log-space box around the best trials' values, widened by MARGIN of the coarse width, clipped."""
    lo, hi = math.log10(coarse[0]), math.log10(coarse[1])
    margin = MARGIN * (hi - lo)
    a = max(lo, math.log10(min(values)) - margin)
    b = min(hi, math.log10(max(values)) + margin)
    return 10**a, 10**b


def configure(parser: argparse.ArgumentParser) -> None:
    s = parser.add_argument_group("search")
    s.add_argument("--lr", dest="lr_range", default=None,
                   help="learning-rate range LOW:HIGH, sampled in log space (default: 3 decades centred on "
                        f"`babysit lr-find`'s suggestion, else {LR_DEFAULT})")
    s.add_argument("--reg", dest="reg_range", default="1e-6:1e-1",
                   help="regularization range LOW:HIGH, log space (default 1e-6:1e-1)")
    s.add_argument("--trials", type=int, default=10, help="stage 1 trials (default 10)")
    s.add_argument("--epochs", dest="coarse_epochs", type=int, default=3, help="stage 1 epochs per trial (default 3)")
    s.add_argument("--fine-trials", type=int, default=None, help="stage 2 trials (default --trials; 0 skips it)")
    s.add_argument("--fine-epochs", type=int, default=None, help="stage 2 epochs per trial (default 2x --epochs)")
    s.add_argument("--workers", type=int, default=1, help="trials run in parallel processes (default 1)")
    s.add_argument("--search-dir", default=None, help="folder for the trials' runs (default runs/search-<time>)")
    s.add_argument("--search-seed", type=int, default=0, help="seed of the sampling (default 0)")
    s.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per trial (default: cores / workers)")
    s.add_argument("--dry-run", action="store_true", help="print stage 1's commands and exit")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_train_options(parser, skip={"lr", "reg", "epochs", "run_dir"})


def _trial(base: TrainConfig, folder: Path, stage: int, index: int, lr: float, reg: float, epochs: int) -> dict:
    name = f"s{stage}-{index:02d}"
    cfg = replace(base, lr=float(f"{lr:.4g}"), reg=float(f"{reg:.4g}"), epochs=epochs,
                  run_dir=str(folder / name), progress=False)
    return {"name": name, "stage": stage, "lr": cfg.lr, "reg": cfg.reg, "epochs": epochs, "run_dir": cfg.run_dir,
            "command": ["babysit", "train", *to_argv(cfg)]}


def trial_result(run_dir: str | os.PathLike) -> dict:
    """best/final val accuracy, train accuracy and state of a finished trial, read from its run directory."""
    from babysit.monitor.reader import RunReadError, load_run

    try:
        run = load_run(run_dir)
    except RunReadError as e:
        return {"state": "missing", "reason": str(e), "best_val_acc": math.nan}
    epochs = run.epochs
    val = epochs["val_acc"].dropna() if "val_acc" in epochs else []
    train = epochs["train_acc"].dropna() if "train_acc" in epochs else []
    return {
        "state": run.status.get("state", "unknown"), "reason": run.status.get("reason"),
        "best_val_acc": float(val.max()) if len(val) else math.nan,
        "final_val_acc": float(val.iloc[-1]) if len(val) else math.nan,
        "train_acc": float(train.iloc[-1]) if len(train) else math.nan,
        "epochs_done": len(epochs), "steps": int(run.status.get("step") or 0),
    }


def lr_find_range(base: TrainConfig, folder: Path, threads: int) -> tuple[tuple[float, float], dict]:
    """Run `babysit lr-find` with the search's options; the coarse lr range centred on its suggestion, and
    what it said (for search.json). Falls back to LR_DEFAULT, saying why, when it suggests nothing."""
    from babysit.trainer.lr_find_cli import NOT_OPTIONS

    run_dir = folder / "lr-find"
    argv = [sys.executable, "-m", "babysit", "lr-find", *to_argv(base, always=("seed",), skip=NOT_OPTIONS),
            "--run-dir", str(run_dir), "--json", "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    info: dict = {"run_dir": str(run_dir), "command": ["babysit", *argv[3:]]}
    try:
        found = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        found = {"reason": lines[-1] if lines else f"exit status {proc.returncode}"}
    info.update(suggestion=found.get("suggestion"), chosen=found.get("chosen"), reason=found.get("reason"))
    lr = found.get("suggestion")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        return parse_range(LR_DEFAULT, "lr"), info
    width = 10**CENTER_DECADES
    return (float(f"{lr / width:.3g}"), float(f"{lr * width:.3g}")), info


def _execute(trial: dict, logs: Path, threads: int) -> dict:
    argv = [sys.executable, "-m", "babysit", *trial["command"][1:], "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log = logs / f"{trial['name']}.log"
    start = time.time()
    with open(log, "wb") as out:
        code = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    result = {**trial, "returncode": code, "seconds": round(time.time() - start, 2), "log": str(log)}
    result.update(trial_result(trial["run_dir"]))
    if code != 0:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        result.update(state="failed", reason=lines[-1] if lines else f"exit status {code}")
    return result


def _sort_key(t: dict) -> float:
    v = t.get("best_val_acc", math.nan)
    return -v if isinstance(v, float) and math.isfinite(v) else math.inf


def _write(folder: Path, header: dict, trials: list[dict]) -> None:
    ranked = sorted(trials, key=_sort_key)
    runfile.write_json_atomic(folder / SEARCH_FILE, {**header, "trials": ranked, "best": ranked[0] if ranked else None})


def _table(trials: list[dict]) -> str:
    rows = [("#", "trial", "lr", "reg", "epochs", "best val", "final val", "train", "state")]
    for i, t in enumerate(sorted(trials, key=_sort_key), 1):
        state = t.get("state", "?") + (f" ({t['reason']})" if t.get("state") != "finished" and t.get("reason") else "")
        rows.append((str(i), t["name"], f"{t['lr']:.3g}", f"{t['reg']:.3g}", str(t["epochs"]),
                     *(f"{t.get(k, math.nan):.4f}" for k in ("best_val_acc", "final_val_acc", "train_acc")),
                     state[:70]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _stage(trials: list[dict], workers: int, threads: int, logs: Path, progress: Progress, done: list[dict],
           write) -> list[dict]:
    results = []
    with ThreadPoolExecutor(max_workers=workers) as pool:  # threads only wait on the trial processes
        for future in as_completed([pool.submit(_execute, t, logs, threads) for t in trials]):
            r = future.result()  # collected here, in this thread: no lock needed
            results.append(r)
            done.append(r)
            write()
            best = max((t.get("best_val_acc", math.nan) for t in done if _sort_key(t) < math.inf), default=math.nan)
            progress.update(len(done), f"best val acc {best:.4f}")
    return results


def run(args: argparse.Namespace) -> int:
    lr_range = parse_range(args.lr_range, "lr") if args.lr_range is not None else None
    reg_range = parse_range(args.reg_range, "reg")
    fine_trials = args.trials if args.fine_trials is None else args.fine_trials
    fine_epochs = args.fine_epochs or 2 * args.coarse_epochs
    if args.trials < 1 or fine_trials < 0 or args.coarse_epochs < 1 or fine_epochs < 1 or args.workers < 1:
        raise UsageError("--trials, --epochs and --workers must be at least 1 (--fine-trials 0 skips stage 2)")
    folder = Path(args.search_dir or Path("runs") / time.strftime("search-%Y%m%d-%H%M%S"))
    try:
        base = config_from_args(args, run_dir=str(folder)).validate()
    except ValueError as e:
        raise UsageError(str(e)) from None
    if (folder / SEARCH_FILE).exists():
        raise UsageError(f"{folder} already holds a search; pick a new --search-dir")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    lr_found = None
    if lr_range is None and args.dry_run:
        lr_range = parse_range(LR_DEFAULT, "lr")
        print(f"# without --lr, `babysit lr-find` runs first and stage 1 is centred on its suggestion; "
              f"shown here with {LR_DEFAULT}", file=sys.stderr)
    elif lr_range is None:
        folder.mkdir(parents=True, exist_ok=True)
        print("learning-rate range test first (babysit lr-find; pass --lr to skip it) ...", file=sys.stderr)
        lr_range, lr_found = lr_find_range(base, folder, threads)
        if lr_found.get("suggestion"):
            print(f"lr-find suggests {lr_found['suggestion']:.3g} ({lr_found.get('chosen')}): stage 1 spans "
                  f"{lr_range[0]:.3g}..{lr_range[1]:.3g}", file=sys.stderr)
        else:
            print(f"lr-find suggested nothing ({lr_found.get('reason')}): stage 1 spans the default {LR_DEFAULT}",
                  file=sys.stderr)
    rng = random.Random(args.search_seed)
    stage1 = [_trial(base, folder, 1, i, sample_log_uniform(rng, *lr_range), sample_log_uniform(rng, *reg_range),
                     args.coarse_epochs) for i in range(args.trials)]
    if args.dry_run:
        print("\n".join(shlex.join(t["command"]) for t in stage1))
        return 0
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    header = {"schema": 1, "kind": "babysit-search", "created": time.time(), "lr_range": list(lr_range),
              "reg_range": list(reg_range), "search_seed": args.search_seed, "workers": args.workers,
              "stages": [{"stage": 1, "trials": args.trials, "epochs": args.coarse_epochs,
                          "lr_range": list(lr_range), "reg_range": list(reg_range)}]}
    if lr_found is not None:
        header["lr_find"] = lr_found
    done: list[dict] = []
    progress = Progress(args.trials + fine_trials, "trials", not args.no_progress)

    def write() -> None:
        _write(folder, header, done)

    print(f"stage 1: {args.trials} trials, {args.coarse_epochs} epochs, lr {lr_range[0]:.3g}..{lr_range[1]:.3g}, "
          f"reg {reg_range[0]:.3g}..{reg_range[1]:.3g}", file=sys.stderr)
    first = _stage(stage1, args.workers, threads, logs, progress, done, write)
    good = sorted((t for t in first if t.get("state") == "finished" and _sort_key(t) < math.inf), key=_sort_key)
    if fine_trials and not good:
        progress.close()
        print("stage 2 skipped: no stage-1 trial finished (all diverged or failed): lower the --lr range",
              file=sys.stderr)
    elif fine_trials:
        top = good[:TOP_K]
        fine_lr = narrow([t["lr"] for t in top], lr_range)
        fine_reg = narrow([t["reg"] for t in top], reg_range)
        header["stages"].append({"stage": 2, "trials": fine_trials, "epochs": fine_epochs,
                                 "lr_range": list(fine_lr), "reg_range": list(fine_reg)})
        progress.update(len(done), f"stage 2: lr {fine_lr[0]:.3g}..{fine_lr[1]:.3g}, "
                                   f"reg {fine_reg[0]:.3g}..{fine_reg[1]:.3g}")
        stage2 = [_trial(base, folder, 2, i, sample_log_uniform(rng, *fine_lr), sample_log_uniform(rng, *fine_reg),
                         fine_epochs) for i in range(fine_trials)]
        _stage(stage2, args.workers, threads, logs, progress, done, write)
    progress.close()
    write()
    print(_table(done))
    ranked = sorted(done, key=_sort_key)
    best = ranked[0] if ranked and _sort_key(ranked[0]) < math.inf else None
    if best is None:
        print("no trial produced a validation accuracy", file=sys.stderr)
        return 1
    for name, value, (lo, hi) in (("lr", best["lr"], lr_range), ("reg", best["reg"], reg_range)):
        pos = (math.log10(value) - math.log10(lo)) / max(math.log10(hi) - math.log10(lo), 1e-12)
        if hi > lo and not 0.1 <= pos <= 0.9:
            print(f"note: the best {name} ({value:.3g}) is at the edge of its range: widen --{name} that way",
                  file=sys.stderr)
    print(f"best: {best['name']} lr {best['lr']:.4g} reg {best['reg']:.4g} val acc {best['best_val_acc']:.4f}"
          f"  ({shlex.join(best['command'])})")
    print(f"search written to {folder / SEARCH_FILE}")
    return 0
