"""`hooks.Run`: stream what a person babysitting a training run needs into a run directory.

Cheap by construction: `step()` appends device tensors to a list (no host sync) and every `flush_interval`
seconds or `flush_steps` steps moves them to the host in one transfer and writes one JSON line. Monitoring
never breaks training: any internal failure prints one warning and switches that part off.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch

from babysit.hooks import values as _values
from babysit.monitor import runfile
from babysit.monitor.reader import records_to_batch

__all__ = ["Run", "StopTraining"]


# Online rules cost milliseconds per call (frames, every rule): they run when the time they took so far plus
# their last cost fits in this fraction of the run's time, at once on the first non-finite loss, and at close.
# The steady state's 1% is shared: rules <= 0.2% (with epoch ends), layer probes <= 0.2% (hooks/probes.py),
# run.step and the flushes the rest (benchmarks/overhead.py measures each part).
RULES_BUDGET = 0.0015
# status.json (an atomic rename: about a millisecond on ext4) is rewritten at most this often, and at close.
STATUS_INTERVAL = 5.0
# The floor under the rules' budget: while the run is this young (seconds since Run()) they run at every
# flush (an epoch end's flush adds a call only flush_interval after the last), so on_critical acts within
# one flush of a critical condition however short the run. Later they also run at a run.epoch() when their
# total stays within EPOCH_RULES_BUDGET of the run's time (tiny epochs then share it).
RULES_YOUNG_SECONDS = 10.0
EPOCH_RULES_BUDGET = 0.002
# Extra flushes (and so rule evaluations) at these steps: the first losses are judged within the first steps.
EARLY_FLUSH_STEPS = (10, 100)
EPOCH_COALESCE_S = 0.25  # run.epoch() calls closer than this share a flush (see Run.epoch)
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class StopTraining(RuntimeError):
    """Raised by `run.step()` when `on_critical="raise"` and a critical finding appears."""


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def _materialize(records: list[dict]) -> None:
    """Replace every tensor leaf in records by a float, in one host transfer (the only sync of a flush).

    A flush holds hundreds of step values, so this is its main cost: the step columns (flat lists that
    run.step fills) are scanned without the general walk ("step" and "time", Python numbers, not at all),
    and every tensor is stacked in one call (dtypes promote: float64 stays float64). Tensors on several
    devices, or one that is not a scalar, take the slower path: one transfer per device and dtype.
    """
    tensor = torch.Tensor
    tensors: list[torch.Tensor] = []
    places: list[tuple[Any, Any]] = []  # (container, key) per tensor, or (column, None) for a whole column

    def collect(container: Any) -> None:
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, value in items:
            if isinstance(value, tensor):
                tensors.append(value)
                places.append((container, key))
            elif isinstance(value, (dict, list)):
                collect(value)

    for rec in records:
        if rec.get("type") != "steps":
            collect(rec)
            continue
        for column in (rec["loss"], rec["lr"], *rec.get("scalars", {}).values()):
            if column and all(type(v) is tensor for v in column):  # the usual loss column: all tensors
                tensors.extend(column)
                places.append((column, None))
            else:
                for i, v in enumerate(column):
                    if type(v) is tensor:
                        tensors.append(v)
                        places.append((column, i))
    if not tensors:
        return
    try:
        with torch.no_grad():
            stacked = torch.stack(tensors)
            if stacked.ndim != 1:
                raise ValueError("not all scalars")
            values = (stacked if stacked.is_floating_point() else stacked.float()).tolist()
    except Exception:  # noqa: BLE001 - several devices, or an odd tensor: grouped, and each odd one alone
        values = _grouped_floats(tensors)
    at = 0
    for container, key in places:
        if key is None:
            n = len(container)
            container[:] = values[at : at + n]
            at += n
        else:
            container[key] = values[at]
            at += 1


def _grouped_floats(tensors: list[torch.Tensor]) -> list[float]:
    """The values of `tensors`, one transfer per (device, dtype): float64 as float64, the rest as float32
    (float32 would turn 1e308 into inf). A tensor that is not a scalar costs only itself: NaN."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        dtype = torch.float64 if t.dtype is torch.float64 else torch.float32
        groups.setdefault((t.device, dtype), []).append(i)
    values: list[float] = [math.nan] * len(tensors)
    for (_, dtype), idx in groups.items():
        try:
            with torch.no_grad():
                got = torch.stack([tensors[i].reshape(()).to(dtype) for i in idx]).tolist()
        except Exception:  # noqa: BLE001
            got = [_one_float(tensors[i], dtype) for i in idx]
        for i, v in zip(idx, got, strict=True):
            values[i] = v
    return values


def _one_float(t: torch.Tensor, dtype: torch.dtype) -> float:
    try:
        with torch.no_grad():
            return float(t.detach().reshape(()).to(dtype))
    except Exception:  # noqa: BLE001
        return math.nan


class Run:
    """A monitored training run. See the README for the three-line integration.

    Args:
        path: the run directory (created; a new run must not reuse a directory that holds one).
        num_classes: C, so rules can compare the first loss with ln(C) and accuracy with 1/C.
        config: hyperparameters, stored in meta.json (JSON-able values; others are stored as strings).
        on_critical: "warn" (default), "stop" (sets `should_stop`), "raise" (raises StopTraining), "heal"
            (roll back to the last good state and fix, see hooks/heal.py; stop after `heal_max` attempts), or
            None to skip online diagnosis.
        flush_interval: seconds between writes while steps arrive (data is visible to readers after this).
        flush_steps: write at least every this many steps.
        all_ranks: under torch.distributed, write from every rank (into path/rank<r>) instead of rank 0 only.
        thresholds: overrides for rule thresholds (see rules/thresholds.py).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        num_classes: int | None = None,
        config: dict | None = None,
        *,
        on_critical: str | None = "warn",
        flush_interval: float = 0.5,
        flush_steps: int = 512,
        all_ranks: bool = False,
        thresholds: dict | None = None,
        resume: bool = False,
        heal_max: int = 3,
        heal_every: int = 100,
        heal_on_device: bool = False,
    ):
        if on_critical not in ("warn", "stop", "raise", "heal", None):
            raise ValueError(f"on_critical must be 'warn', 'stop', 'raise', 'heal' or None, not {on_critical!r}")
        if on_critical == "heal" and (int(heal_max) < 1 or int(heal_every) < 1):  # heal: hooks/heal.py
            raise ValueError("heal_max and heal_every must be >= 1")
        self._heal_opts = {"max_heals": int(heal_max), "every": int(heal_every), "on_device": bool(heal_on_device)}
        self._healer = None  # heal: built in watch()
        self.path = Path(path)
        self.num_classes = num_classes
        self.config, config_problems = _values.config_dict(config)
        self.on_critical = on_critical
        self.flush_interval = float(flush_interval)
        self.flush_steps = int(flush_steps)
        self.thresholds = thresholds
        self.global_step = 0
        self.epoch_count = 0
        self.should_stop = False
        self.stop_reason: str | None = None
        self.findings: list[dict] = []
        self.closed = False

        rank = _rank()
        self.enabled = rank == 0 or all_ranks
        if all_ranks and rank != 0:
            self.path = self.path / f"rank{rank}"

        self._steps: list[int] = []
        self._times: list[float] = []
        self._losses: list[Any] = []
        self._lrs: list[Any] = []
        self._scalars: dict[str, list[Any]] = {}
        self._pending: list[dict] = []  # non-step records waiting for the next flush
        self._last_flush = time.monotonic()
        self._next_flush = self._last_flush + self.flush_interval
        self._next_checks = 0.0  # the next flush that looks for a deleted run or a STOP file
        self._last_epoch_write = -math.inf
        self._epoch_waiting = False  # an epoch end is buffered for the next flush
        self._flush_step = min(self.flush_steps, EARLY_FLUSH_STEPS[0])  # the step that flushes by count
        self._last_status = -math.inf
        self._undiagnosed: list[dict] = []  # written records the online rules have not seen yet
        self._rules_start = time.monotonic()
        self._rules_spent = 0.0  # seconds the online rules took so far
        self._rules_cost = 0.01  # seconds their last call took (until measured, say 10 ms)
        self._rules_last = -math.inf  # when they last ran
        self._fsynced_nonfinite = False
        self._optimizer = None
        self._probe = None
        self._diagnoser = None
        self._file = None
        self._status: dict = {}
        self._warned: set[str] = set()
        self._clean_names: set[str] = set()  # names already known to be valid UTF-8
        self._optimizer_steps = 0  # optimizer.step() calls of the watched optimizer (a post hook counts them)
        self._optimizer_hook = None
        self._structure = None  # first-batch and structure checks (hooks/structure.py), until done
        for problem in config_problems:
            self._say(f"Run(config=...): {problem}")

        if self.enabled and not resume and _holds_a_run(self.path):
            # A user mistake, not a monitoring failure: say so now rather than record nothing for hours.
            raise FileExistsError(f"{self.path} already holds a run; use a new directory or resume=True")
        if self.enabled:
            self._guard("writer", self._open, resume)
        if self.enabled and on_critical is not None:
            self._guard("online rules", self._start_diagnoser)

    # ----------------------------------------------------------------- failure containment
    def _warn_once(self, part: str, exc: BaseException, disabled: bool = True) -> None:
        if part not in self._warned:
            self._warned.add(part)
            what = "disabled" if disabled else "skipped a value (recording goes on)"
            warnings.warn(
                f"babysit: {part} {what} after an internal error ({type(exc).__name__}: {exc}); "
                "training continues",
                RuntimeWarning,
                stacklevel=3,
            )

    def _say(self, message: str, key: Any = None) -> None:
        """One warning per `key` (default: the message): what was converted or dropped, and nothing else."""
        key = message if key is None else key
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"babysit: {message}; training continues", RuntimeWarning, stacklevel=_user_frame())

    def _value(self, where: str, name: str, value: Any) -> Any:
        """A recordable scalar or None (not passed, or dropped with one warning naming it)."""
        recorded, problem = _values.scalar(value)
        if problem:
            self._say(f"{where}: {name} is {problem}", key=(where, name, type(value).__name__))
        return recorded

    def _name(self, where: str, name: Any) -> str:
        if isinstance(name, str) and name in self._clean_names:  # a per-step cost: names repeat
            return name
        clean, problem = _values.clean_name(name)
        if problem is None and len(self._clean_names) < 10_000:
            self._clean_names.add(clean)
        if problem:
            self._say(f"{where}: {problem}", key=(where, "name", clean))
        return clean

    def _guard(self, part: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (StopTraining, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - monitoring must never break training
            self._warn_once(part, exc)
            if part == "writer":
                self._close_file()
                self.enabled = False
            elif part == "online rules":
                self._diagnoser = None
            elif part == "layer probes" and self._probe is not None:
                self._guard("layer probe cleanup", self._probe.close)
                self._probe = None
            elif part == "first-batch checks" and self._structure is not None:
                structure, self._structure = self._structure, None
                self._guard("first-batch cleanup", structure.close)
            return None

    # ----------------------------------------------------------------- writing
    def _open(self, resume: bool) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if not resume and (self.path / runfile.EVENTS).exists() and (self.path / runfile.EVENTS).stat().st_size:
            raise FileExistsError(f"{self.path} already holds a run; use a new directory or resume=True")
        stale_stop = self.path / runfile.STOP
        if stale_stop.exists() and not resume:
            stale_stop.unlink()
        now = time.time()
        meta = {
            "schema": runfile.SCHEMA_VERSION,
            "run_id": uuid.uuid4().hex[:12],
            "name": _values.clean_name(self.path.name)[0],
            "start_time": now,
            "config": self.config,
            "num_classes": self.num_classes,
            "torch_version": torch.__version__,
            "device": None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": _values.jsonable([sys.executable, *sys.argv]),  # argv may hold undecodable bytes
            "model": None,
        }
        runfile.write_json_atomic(self.path / runfile.META, meta)
        self.meta = meta
        self._file = open(self.path / runfile.EVENTS, "ab", buffering=0)  # noqa: SIM115 - lives with the run
        self._status = {
            "schema": runfile.SCHEMA_VERSION,
            "state": "running",
            "step": 0,
            "epoch": 0,
            "start_time": now,
            "heartbeat": now,
            "end_time": None,
            "reason": None,
            "error": None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        runfile.write_json_atomic(self.path / runfile.STATUS, self._status)

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def _write_lines(self, records: list[dict], fsync: bool = False) -> None:
        if not records or self._file is None:
            return
        lines = []
        for rec in records:
            try:
                lines.append(runfile.dumps_line(rec))
            except (TypeError, ValueError, OverflowError, RecursionError) as exc:  # one record, not the flush
                kind = rec.get("type") if isinstance(rec, dict) else type(rec).__name__
                self._say(f"a {kind} record could not be encoded ({type(exc).__name__}: {exc}): dropped",
                          key=("encode", kind))
        data = "".join(lines).encode("utf-8", "backslashreplace")
        if not data:
            return
        # One write of complete lines: a reader never sees half a record as data. A short write (a full
        # disk) is continued; if the disk refuses the rest, the file is cut back to its last whole line.
        try:
            start = self._file.tell()
        except (OSError, AttributeError, ValueError):
            start = None
        done = 0
        try:
            while done < len(data):
                n = self._file.write(data[done:])
                if not n:
                    raise OSError(errno.ENOSPC, "No space left on device (short write)")
                done += n
        except OSError:
            keep = data.rfind(b"\n", 0, done) + 1
            if keep < done and start is not None:
                try:
                    os.ftruncate(self._file.fileno(), start + keep)
                except (OSError, AttributeError, ValueError):
                    pass
            raise
        if fsync:
            os.fsync(self._file.fileno())

    def _fsync(self) -> None:
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:  # the same failing disk the writes reported: one warning for both
            if any(isinstance(k, tuple) and k[:1] == ("disk",) for k in self._warned):
                return
            self._say(f"could not fsync {runfile.EVENTS} ({type(exc).__name__}: {exc})",
                      key=("disk", getattr(exc, "errno", None)))

    def _gone(self) -> bool:
        """events.jsonl (or the whole run directory) was deleted under the running process."""
        try:
            return os.fstat(self._file.fileno()).st_nlink == 0
        except (OSError, AttributeError, ValueError):
            return False

    def _stop_recording(self, why: str) -> None:
        self._say(f"{why}: recording disabled (nothing more is written and the directory is not recreated)",
                  key="recording stopped")
        self._close_file()
        self.enabled = False
        if self._probe is not None:
            self._guard("layer probe cleanup", self._probe.close)
            self._probe = None

    def _update_meta(self, **fields: Any) -> None:
        self.meta.update(fields)
        runfile.write_json_atomic(self.path / runfile.META, self.meta)

    def _write_status(self, **fields: Any) -> None:
        self._last_status = time.monotonic()
        self._status.update(fields, step=self.global_step, epoch=self.epoch_count, heartbeat=time.time())
        if self._optimizer_hook is not None:
            self._status["optimizer_steps"] = self._optimizer_steps
        try:
            runfile.write_json_atomic(self.path / runfile.STATUS, self._status)
        except OSError as exc:  # a full disk: the next write may succeed; the events go on regardless
            self._say(f"could not update status.json ({type(exc).__name__}: {exc}); retried at the next write",
                      key=("disk", getattr(exc, "errno", None)))

    # ----------------------------------------------------------------- public API
    def watch(
        self,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        every: int | None = None,
        input_shape: tuple[int, ...] | None = None,
        snapshot_every: int | None = None,
        scheduler: Any = None,
        scaler: Any = None,
    ) -> Run:
        """Record learning rates from `optimizer` and, every `every` steps, per-layer statistics of `model`.

        Probes are armed only for the sampled step; other steps pay nothing. The first layer's weights are
        snapshotted (as .npy) at watch time and every `snapshot_every` steps. With on_critical="heal", the
        `scheduler` and AMP `scaler` are part of the good state the run rolls back to.
        """
        self._optimizer = optimizer
        if self.enabled and optimizer is not None and self._optimizer_hook is None:
            self._guard("optimizer step count", self._count_optimizer_steps, optimizer)
        if self.on_critical == "heal" and self.enabled:  # heal: keep the last good state (hooks/heal.py)
            self._guard("heal", self._start_healer, model, optimizer, scheduler, scaler)
        if not self.enabled or model is None:
            return self
        self._guard("model summary", self._record_model, model, optimizer)
        self._guard("layer probes", self._start_probe, model, optimizer, every, input_shape, snapshot_every)
        self._guard("first-batch checks", self._start_structure, model)
        return self

    def _count_optimizer_steps(self, optimizer: torch.optim.Optimizer) -> None:
        if not hasattr(optimizer, "register_step_post_hook"):
            return

        def count(*_: Any) -> None:  # a Python increment per optimizer step: no tensor, no sync
            self._optimizer_steps += 1

        self._optimizer_hook = optimizer.register_step_post_hook(count)

    def _start_structure(self, model: torch.nn.Module) -> None:
        from babysit.hooks.structure import FirstBatch

        self._structure = FirstBatch(model, num_classes=self.num_classes)

    def _start_healer(self, model, optimizer, scheduler, scaler) -> None:
        from babysit.hooks.heal import start_healer

        self._healer = start_healer(self, model, optimizer, scheduler, scaler, **self._heal_opts)

    def _record_model(self, model: torch.nn.Module, optimizer: Any = None) -> None:
        from babysit.hooks.summary import model_summary, optimizer_summary

        device = next((str(p.device) for p in model.parameters()), "cpu")
        fields: dict[str, Any] = {"model": model_summary(model), "device": device}
        if optimizer is not None:
            fields["optimizer"] = optimizer_summary(model, optimizer)
        self._update_meta(**fields)

    def _start_probe(self, model, optimizer, every, input_shape, snapshot_every) -> None:
        from babysit.hooks.probes import LayerProbe

        kwargs = {k: v for k, v in {"every": every, "snapshot_every": snapshot_every}.items() if v is not None}
        self._probe = LayerProbe(model, optimizer, run_dir=self.path, input_shape=input_shape, **kwargs)
        self._pending.extend(self._probe.initial_records())

    def step(self, loss: Any = None, **scalars: Any) -> None:
        """Count one optimizer step and record its loss (tensor or float) and learning rate(s).

        A value that is not a number is dropped with one warning naming it (a vector: its mean is recorded);
        None means "not passed". A step whose loss is None (or dropped) records no row. `lr=` is the step's
        learning rate (the lr column; without it, the watched optimizer's first group's).

        The per-step cost is the whole point (microseconds, against a training step of a millisecond or
        less): a tensor stays on its device, detached (no host sync: the flush moves every value in one
        transfer), and the common values (0-dim float tensors, floats) skip the checks of hooks/values.py.
        """
        self.global_step += 1
        if not self.enabled:
            return
        if loss is not None:
            try:
                self._record_step(loss, scalars)
            except Exception as exc:  # noqa: BLE001
                self._warn_once("step recording", exc, disabled=False)
        if self._structure is not None:
            self._guard("first-batch checks", self._structure_step)
        if self._probe is not None and self.global_step >= self._probe.wake:  # idle steps skip the call
            records = self._guard("layer probes", self._probe.after_step, self.global_step)
            if records:
                self._pending.extend(records)
        if self._healer is not None:  # heal: a candidate good state every heal_every steps
            self._guard("heal", self._healer.after_step, self.global_step)
        if self.global_step >= self._flush_step or time.monotonic() >= self._next_flush:
            self._flush(force=False)

    def _fast(self, where: str, name: str, value: Any) -> Any:
        """`_value` for the values a loop passes every step: a 0-dim float tensor (kept on its device,
        detached so the autograd graph is freed) or a float; anything else takes the checked path."""
        kind = type(value)
        if kind is torch.Tensor and value.ndim == 0 and value.dtype in _FLOAT_DTYPES:
            return value.detach()
        if kind is float:
            return value
        return self._value(where, name, value)

    def _record_step(self, loss: Any, scalars: dict[str, Any]) -> None:
        # Every Python call and object touched here costs microseconds after a training step has evicted
        # the interpreter from the CPU caches: the usual call (a loss, no scalars) takes the shortest path.
        kind = type(loss)
        if kind is torch.Tensor and loss.ndim == 0 and loss.dtype in _FLOAT_DTYPES:
            value = loss.detach()
        elif kind is float:
            value = loss
        else:
            value = self._value("run.step", "loss", loss)
            if value is None:
                return
        if scalars:
            self._record_row(value, scalars)
            return
        self._steps.append(self.global_step)
        self._times.append(time.time())
        self._losses.append(value)
        self._lrs.append(self._lr())
        for column in self._scalars.values():  # columns of earlier steps' scalars: not passed this time
            column.append(math.nan)

    def _record_row(self, value: Any, scalars: dict[str, Any]) -> None:
        lr = scalars.pop("lr", None)  # the lr column, not a scalar named lr (which readers would shadow)
        lr = self._lr() if lr is None else self._step_lr(lr)
        n = len(self._steps)
        row = {}
        clean = self._clean_names
        for name, v in scalars.items():
            if name not in clean:
                name = self._name("run.step", name)
            x = self._fast("run.step", name, v)
            if x is not None:
                row[name] = x
        # Every value converted first, then the whole row appended: a bad value never shifts a column.
        columns = self._scalars
        for name, x in row.items():
            column = columns.get(name)
            if column is None:
                column = columns[name] = [math.nan] * n
            column.append(x)
        self._steps.append(self.global_step)
        self._times.append(time.time())
        self._losses.append(value)
        self._lrs.append(lr)
        for column in columns.values():
            if len(column) <= n:
                column.append(math.nan)

    def _structure_step(self) -> None:
        self._structure.after_step()

    def _lr(self) -> Any:
        if self._optimizer is None:
            return math.nan
        try:
            lr = self._optimizer.param_groups[0].get("lr", math.nan)
        except (IndexError, AttributeError, TypeError):
            return math.nan
        return lr if type(lr) is float else self._step_lr(lr, "the optimizer's lr")

    def _step_lr(self, lr: Any, name: str = "lr") -> Any:
        x = self._fast("run.step", name, lr)
        if isinstance(x, torch.Tensor):
            # A tensor lr (capturable optimizers, schedulers) changes in place: keep this step's value. A
            # device copy, no sync.
            x = x.clone()
        return math.nan if x is None else x

    def epoch(self, **metrics: Any) -> None:
        """Record end-of-epoch metrics; `train_loss`, `train_acc`, `val_loss`, `val_acc` are known to rules."""
        self.epoch_count += 1
        if not self.enabled:
            return
        values = {}
        for name, value in metrics.items():  # None is "not measured": no key, no warning
            name = self._name("run.epoch", name)
            x = self._value("run.epoch", name, value)
            if x is not None:
                values[name] = x
        record = {
            "type": "epoch",
            "epoch": self.epoch_count,
            "step": self.global_step,
            "time": time.time(),
            "metrics": values,
        }
        self._pending.append(record)
        # Written at once: an epoch end is what a reader waits for, and a process that hangs right after it
        # (a stuck data loader) must still show it. The rules look only when their schedule says so. Past the
        # young phase, epochs less than EPOCH_COALESCE_S apart (short epochs, where a flush per epoch would cost
        # percents) go with the next flush instead, within flush_interval, as a step's values do; a float that
        # is already known to be non-finite never waits.
        now = time.monotonic()
        finite = all(not isinstance(v, float) or math.isfinite(v) for v in values.values())
        young = now - self._rules_start < RULES_YOUNG_SECONDS
        if finite and not young and now - self._last_epoch_write < EPOCH_COALESCE_S:
            self._epoch_waiting = True
            return
        self._last_epoch_write = now
        self._flush(force=False, epoch_end=True)

    def log_event(self, name: str, **data: Any) -> None:
        """A free-form event (e.g. a test-set evaluation) in the log; shown by the dashboard."""
        if not self.enabled:
            return
        try:
            name = self._name("run.log_event", name)
            problems: list[str] = []
            clean = _values.jsonable(data, problems)
            for problem in problems[:3]:
                self._say(f"run.log_event({name!r}): {problem}", key=("event", name, problem.split(" (")[0]))
        except Exception as exc:  # noqa: BLE001
            self._warn_once("event recording", exc, disabled=False)
            return
        self._pending.append(
            {"type": "event", "name": name, "step": self.global_step, "time": time.time(), "data": clean}
        )

    def flush(self) -> None:
        """Move buffered values to the host in one transfer, append them, update status, run online rules."""
        self._flush(force=True)

    def _flush(self, force: bool, epoch_end: bool = False) -> None:
        """The records always; status.json and the online rules when `force`, a first non-finite loss or
        their schedule (STATUS_INTERVAL, `_rules_due`) say so: both cost milliseconds, a step microseconds."""
        now = self._last_flush = time.monotonic()
        self._next_flush = now + self.flush_interval
        step = self.global_step
        self._flush_step = min([step + max(self.flush_steps, 1), *(s for s in EARLY_FLUSH_STEPS if s > step)])
        if self._epoch_waiting:
            epoch_end, self._epoch_waiting = True, False
        if not self.enabled:
            return
        # The file checks (deleted run, STOP file) cost a syscall each, and tens of microseconds right after
        # a training step: once per flush_interval, not at every tiny epoch's flush.
        checks = force or now >= self._next_checks
        if checks:
            self._next_checks = now + self.flush_interval
        if checks and self._file is not None and self._gone():
            self._stop_recording(f"the run directory {self.path} (or its events.jsonl) was deleted during the run")
            return
        records = self._take_records()
        if records is None:
            return
        nonfinite = self._guard("writer", self._write_flush, records, force)
        if not self.enabled:
            return
        if self._diagnoser is not None:
            self._undiagnosed.extend(records)
            due = self._rules_due(epoch_end)
            if self._healer is not None:  # heal: judge candidates; a blow-up runs the rules at once
                due = bool(self._guard("heal", self._healer.observe, records)) or due
            if self._undiagnosed and (force or nonfinite or due):
                self._guard("online rules", self._diagnose_pending)
        if checks or nonfinite:
            self._guard("stop check", self._check_stop_file)
        if nonfinite:
            self._fsynced_nonfinite = True

    def _rules_due(self, epoch_end: bool) -> bool:
        """The online rules' schedule: within RULES_BUDGET of the run's time; at every flush while the run is
        young (RULES_YOUNG_SECONDS; an epoch end's flush adds a call only flush_interval after the last), so
        on_critical acts within one flush of a critical condition however short the run; later at an epoch
        end while their total stays within EPOCH_RULES_BUDGET (tiny epochs then share it)."""
        now = time.monotonic()
        elapsed = now - self._rules_start
        spent = self._rules_spent + self._rules_cost
        if elapsed * RULES_BUDGET >= spent:
            return True
        if elapsed < RULES_YOUNG_SECONDS and (not epoch_end or now - self._rules_last >= self.flush_interval):
            return True
        return epoch_end and spent <= EPOCH_RULES_BUDGET * elapsed

    def _take_records(self) -> list[dict] | None:
        try:
            records: list[dict] = []
            if self._steps:
                rec = {
                    "type": "steps",
                    "step": self._steps,
                    "time": self._times,
                    "loss": self._losses,
                    "lr": self._lrs,
                }
                if self._scalars:
                    rec["scalars"] = self._scalars
                if self._optimizer_hook is not None:
                    rec["optimizer_steps"] = self._optimizer_steps
                records.append(rec)
            records.extend(self._pending)
            self._steps, self._times, self._losses, self._lrs = [], [], [], []
            self._scalars = {k: [] for k in self._scalars}
            self._pending = []
            _materialize(records)  # the one host sync per flush
        except Exception as exc:  # noqa: BLE001
            self._warn_once("step recording", exc, disabled=False)
            return None
        if self._structure is not None and self._structure.ready:  # a few times in the first 200 steps
            self._guard("first-batch checks", self._write_structure)
        return records

    def _write_structure(self) -> None:
        """The first batch, the head and the targets seen, into meta.json (moved to the host here, once)."""
        structure = self._structure
        fields = structure.collect(_materialize)
        head = fields.pop("head", None)
        if head is not None and isinstance(self.meta.get("model"), dict):
            self.meta["model"]["head"] = head
        if fields or head is not None:
            self._update_meta(**fields)
        if structure.done:
            structure.close()
            self._structure = None

    def _write_flush(self, records: list[dict], force: bool = True) -> bool:
        nonfinite = not self._fsynced_nonfinite and any(
            r["type"] == "steps" and any(not math.isfinite(v) for v in r["loss"]) for r in records
        )
        try:
            self._write_lines(records, fsync=nonfinite)
        except OSError as exc:  # a full or failing disk: these records are lost, the file stays whole lines
            self._say(f"could not write {len(records)} records to {runfile.EVENTS} ({type(exc).__name__}: {exc}); "
                      "they are lost, the file keeps whole lines, writing is retried at the next flush",
                      key=("disk", getattr(exc, "errno", None)))
        if force or nonfinite or time.monotonic() - self._last_status >= STATUS_INTERVAL:
            self._write_status()
        return nonfinite

    def _start_diagnoser(self) -> None:
        from babysit.rules import OnlineDiagnoser

        # meta by reference: the diagnoser sees the model summary watch() adds, and finds snapshots via run_dir
        self._diagnoser = OnlineDiagnoser(meta=self.meta, thresholds=self.thresholds, run_dir=self.path)

    def _diagnose_pending(self) -> None:
        records, self._undiagnosed = self._undiagnosed, []
        start = self._rules_last = time.monotonic()
        try:
            self._diagnose(records)
        finally:
            self._rules_cost = time.monotonic() - start
            self._rules_spent += self._rules_cost

    def _diagnose(self, records: list[dict]) -> None:
        new = self._diagnoser.update(records_to_batch(records), status=self._status)
        for finding in new:
            f = finding.to_dict() if hasattr(finding, "to_dict") else dict(finding)
            f.setdefault("source", "hooks")
            self.findings.append(f)
            self._write_finding(f)
            if f.get("severity") == "critical":
                self._on_critical(f)

    def _write_finding(self, finding: dict) -> None:
        runfile.append_findings(self.path, [finding])  # a regular file inside the run, one write per line

    def _on_critical(self, finding: dict) -> None:
        message = f"babysit: {finding.get('rule')}: {finding.get('message')}"
        fix = finding.get("fix")
        if fix:
            message += f" -- fix: {fix[0] if isinstance(fix, list) else fix}"
        if self.on_critical == "warn":
            print(message, file=sys.stderr)
        elif self.on_critical == "stop":
            print(message + " (stopping)", file=sys.stderr)
            self.request_stop(f"{finding.get('rule')}: {finding.get('message')}")
        elif self.on_critical == "raise":
            self.request_stop(f"{finding.get('rule')}: {finding.get('message')}")
            raise StopTraining(message)
        elif self.on_critical == "heal":  # roll back and fix (hooks/heal.py); stop when it cannot
            if self._healer is not None and self._guard("heal", self._healer.heal, finding):
                return
            print(message + " (stopping)", file=sys.stderr)
            give_up = self._guard("heal", self._healer.give_up, finding) if self._healer is not None else None
            self.request_stop(give_up or f"{finding.get('rule')}: {finding.get('message')}")

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop: sets `should_stop`; the run is marked stopped with this reason on close."""
        self.should_stop = True
        self.stop_reason = self.stop_reason or reason

    def _check_stop_file(self) -> None:
        stop = self.path / runfile.STOP
        if not self.should_stop and os.path.exists(stop):
            try:
                reason = runfile.read_json(stop).get("reason", "stop requested")
            except (ValueError, OSError, AttributeError):
                reason = "stop requested (STOP file)"
            self.request_stop(str(reason))

    def close(self, state: str | None = None, error: BaseException | None = None) -> None:
        """Flush, fsync and mark the run finished (or stopped/crashed). Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if self._probe is not None:
            if self.enabled:  # the run's last state: weights (and the last gradients still held) at close
                records = self._guard("layer probes", self._probe.final_records, self.global_step)
                self._pending.extend(records or [])
            self._guard("layer probes", self._probe.close)
        if self._structure is not None:
            if self.enabled:
                self._structure.done = True  # write what was gathered, then remove its hooks
                self._guard("first-batch checks", self._write_structure)
            if self._structure is not None:
                self._guard("first-batch cleanup", self._structure.close)
                self._structure = None
        if self._optimizer_hook is not None:
            self._guard("optimizer step count", self._optimizer_hook.remove)
        if not self.enabled:
            return
        self.flush()
        if state is None:
            state = "stopped" if self.should_stop else "finished"
        fields: dict[str, Any] = {"state": state, "end_time": time.time()}
        if state == "stopped":
            fields["reason"] = self.stop_reason
        if error is not None:
            fields["error"] = {"type": type(error).__name__, "message": str(error)[:2000]}
        if self._file is not None:
            self._guard("writer", self._fsync)
        self._guard("writer", self._write_status, **fields)
        self._close_file()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.close()
        elif isinstance(exc, StopTraining):
            self.close(state="stopped")
        elif isinstance(exc, KeyboardInterrupt):
            self.stop_reason = self.stop_reason or "interrupted (Ctrl-C)"
            self.close(state="stopped")
        else:
            self.close(state="crashed", error=exc)
        return False  # re-raise

    def __del__(self) -> None:
        # A run dropped without close() keeps its data readable; the reader marks it crashed by pid.
        try:
            if not self.closed and self._file is not None:
                self._file.close()
        except Exception:  # noqa: BLE001
            pass


def _user_frame() -> int:
    """The stacklevel of the first caller outside babysit's hooks: the warning points at the user's line."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level


def _holds_a_run(path: Path) -> bool:
    try:
        return (path / runfile.EVENTS).stat().st_size > 0
    except OSError:
        return False

