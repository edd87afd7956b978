"""hooks.Run in a real (small) training loop: no per-step sync, failures contained, states, ranks."""

from __future__ import annotations

import errno
import json
import math
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from babysit import hooks
from babysit.hooks import run as run_module
from babysit.monitor import runfile
from babysit.monitor.reader import load_run


def _model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return model, x, y


def _train(run: hooks.Run, model, x, y, steps: int, opt=None, every_epoch: int = 0) -> None:
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (32,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.step(loss=loss, grad_scale=torch.tensor(1.0))
        if every_epoch and step % every_epoch == 0:
            run.epoch(train_loss=loss.detach(), val_acc=0.5)
        if run.should_stop:
            break


def _babysit_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "babysit" in str(w.message)]


# ---------------------------------------------------------------------------------------------- no per-step sync
def test_step_does_not_move_values_to_the_host_every_step(run_dir, monkeypatch):
    """Every host transfer of a tensor goes through these; count them over 300 watched steps."""
    counts = {"calls": 0, "materialize": 0}
    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            counts["calls"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    materialize = run_module._materialize

    def counted_materialize(records):
        counts["materialize"] += 1
        return materialize(records)

    monkeypatch.setattr(run_module, "_materialize", counted_materialize)
    model, x, y = _model_and_data()
    steps = 500
    with hooks.Run(run_dir, num_classes=3, on_critical=None, flush_interval=3600, flush_steps=100) as run:
        run.watch(model, every=10)  # the early floor, then every 10 steps, plus snapshots every 100
        before = dict(counts)
        _train(run, model, x, y, steps)
        during = {k: counts[k] - before[k] for k in counts}
    # one host transfer per flush (every 100 steps, and once early at step 10), none per step; plus the
    # first-batch statistics, written to meta.json at most 4 times (steps 1, 10, 50, 200)
    assert steps // 100 + 1 <= during["materialize"] <= steps // 100 + 1 + 4
    # the only other transfers: the first-layer snapshots (.cpu(), .numpy() at 100, 200, ...) and the
    # first-batch statistics written to meta.json a few times in the first 200 steps (histograms: .tolist())
    assert during["calls"] <= during["materialize"] + 2 * (steps // 100) + 3 * 5 < steps / 10, during
    data = load_run(run_dir)
    assert data.steps["step"].tolist() == list(range(1, steps + 1))
    sampled = sorted(data.layers["step"].unique())
    assert sampled[:10] == list(range(1, 11))  # the floor: every one of the first 10 steps ...
    assert {s for s in sampled if s > 200} == set(range(210, steps + 1, 10))  # ... then every 10th


# ---------------------------------------------------------------------------------------------- what gets recorded
def test_a_watched_training_records_steps_layers_snapshots_and_meta(run_dir):
    model, x, y = _model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with hooks.Run(run_dir, num_classes=3, config={"lr": 0.1}, on_critical=None) as run:
        run.watch(model, opt, every=25, snapshot_every=50)
        _train(run, model, x, y, 100, opt, every_epoch=50)
    data = load_run(run_dir)
    assert data.status["state"] == "finished" and data.status["step"] == 100
    assert data.meta["config"] == {"lr": 0.1} and data.meta["num_classes"] == 3
    assert [layer["name"] for layer in data.meta["model"]["layers"]] == ["0", "1", "2"]
    assert data.steps["lr"].eq(0.1).all() and data.steps["grad_scale"].eq(1.0).all()
    assert data.epochs["epoch"].tolist() == [1, 2] and data.epochs["step"].tolist() == [50, 100]
    layers = data.layers
    sampled = set(layers["step"].unique())
    assert set(range(1, 11)) | {25, 50, 75, 100} <= sampled  # the early floor, and every 25th step
    weights = layers[layers["kind"] == "weight"]
    assert set(weights["layer"]) == {"0", "2"}
    for col in ("w_norm", "w_mean", "w_std", "g_norm", "update_ratio", "zero_grad_frac"):
        assert weights[col].notna().all(), col
    relu = layers[layers["kind"] == "relu"]
    assert set(relu["layer"]) == {"1"} and relu["num_units"].eq(16).all()
    assert data.snapshots["step"].tolist() == [0, 50, 100]
    assert all((run_dir / f).is_file() for f in data.snapshots["file"])


# ---------------------------------------------------------------------------------------------- failures contained
def test_an_unwritable_run_directory_warns_once_and_training_goes_on(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the run directory's parent should be")
    model, x, y = _model_and_data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with hooks.Run(blocker / "run", num_classes=3) as run:
            run.watch(model)
            _train(run, model, x, y, 30)
    messages = _babysit_warnings(caught)
    assert len(messages) == 1 and "writer disabled" in messages[0]
    assert run.global_step == 30 and not run.enabled


def test_writes_failing_mid_run_warn_once_and_training_goes_on(run_dir):
    class ReadOnly:
        def write(self, data):
            raise OSError(errno.EROFS, "Read-only file system")

        def fileno(self):
            raise OSError(errno.EROFS, "Read-only file system")

        def close(self):
            pass

    model, x, y = _model_and_data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with hooks.Run(run_dir, num_classes=3, on_critical=None, flush_interval=0.0) as run:
            run.watch(model, every=5)
            _train(run, model, x, y, 20)
            run._file = ReadOnly()  # the disk goes read-only under the run
            _train(run, model, x, y, 20)
    messages = _babysit_warnings(caught)
    assert len(messages) == 1 and "Read-only file system" in messages[0], messages
    assert run.global_step == 40
    data = load_run(run_dir)  # what was written before stays readable
    assert data.steps["step"].tolist() == list(range(1, 21))


# ---------------------------------------------------------------------------------------------- states
def test_context_manager_marks_finished(run_dir):
    with hooks.Run(run_dir, on_critical=None) as run:
        run.step(loss=1.0)
    status = runfile.read_json(run_dir / runfile.STATUS)
    assert status["state"] == "finished" and status["error"] is None and status["end_time"] is not None


def test_context_manager_marks_crashed_with_the_error_and_reraises(run_dir):
    model, x, y = _model_and_data()
    with pytest.raises(ValueError, match="bad batch"):
        with hooks.Run(run_dir, num_classes=3, on_critical=None) as run:
            run.watch(model)
            _train(run, model, x, y, 5)
            raise ValueError("bad batch")
    status = load_run(run_dir).status
    assert status["state"] == "crashed"
    assert status["error"] == {"type": "ValueError", "message": "bad batch"}
    assert status["step"] == 5


def test_a_stop_file_stops_the_run_at_the_next_flush(run_dir):
    model, x, y = _model_and_data()
    with hooks.Run(run_dir, num_classes=3, on_critical=None, flush_interval=0.0) as run:
        run.watch(model)
        _train(run, model, x, y, 10)
        assert not run.should_stop
        (run_dir / runfile.STOP).write_text(json.dumps({"reason": "lr too high", "by": "tester", "time": time.time()}))
        _train(run, model, x, y, 100)  # breaks out on should_stop
    assert run.should_stop and run.global_step == 11
    status = load_run(run_dir).status
    assert status["state"] == "stopped" and status["reason"] == "lr too high"


def test_close_without_the_context_manager(run_dir):
    run = hooks.Run(run_dir, on_critical=None)
    run.step(loss=2.0)
    run.close()
    run.close()  # twice is fine
    assert load_run(run_dir).status["state"] == "finished"


# ---------------------------------------------------------------------------------------------- ranks
def test_rank_other_than_zero_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    model, x, y = _model_and_data()
    with hooks.Run(tmp_path / "run", num_classes=3) as run:
        run.watch(model)
        _train(run, model, x, y, 20)
    assert run.global_step == 20 and not run.enabled
    assert list(tmp_path.iterdir()) == []
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_all_ranks_writes_each_rank_into_its_own_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "2")
    with hooks.Run(tmp_path / "run", on_critical=None, all_ranks=True) as run:
        run.step(loss=1.0)
    assert load_run(tmp_path / "run" / "rank2").steps["loss"].tolist() == [1.0]


# ---------------------------------------------------------------------------------------------- the per-step path
def test_deferred_losses_and_scalars_are_recorded_exactly_in_order(run_dir):
    """Tensors stay on the device until the flush: what is written is still each step's own value."""
    model, x, y = _model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    seen, accs = [], []
    with hooks.Run(run_dir, num_classes=3, on_critical=None, flush_interval=3600, flush_steps=37) as run:
        run.watch(model, opt)
        for step in range(1, 301):
            idx = torch.randint(0, len(x), (32,))
            logits = model(x[idx])
            loss = nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            acc = (logits.argmax(1) == y[idx]).float().mean()
            kind = step % 4  # a float32 tensor, a Python float, a float64 tensor, a bfloat16 tensor
            value = [loss, loss.item(), loss.double(), loss.bfloat16()][kind]
            seen.append(float(value.detach()) if isinstance(value, torch.Tensor) else value)
            # acc: a tensor on even steps, a float on every third, absent otherwise
            extra = {"acc": acc} if step % 2 == 0 else {"acc": acc.item()} if step % 3 == 0 else {}
            accs.append(float(acc) if extra else math.nan)
            run.step(loss=value, **extra)
    data = load_run(run_dir)
    assert data.steps["step"].tolist() == list(range(1, 301))
    assert data.steps["loss"].tolist() == pytest.approx(seen, rel=0, abs=0)
    assert data.steps["acc"].tolist() == pytest.approx(accs, rel=1e-7, nan_ok=True)
    assert data.steps["lr"].eq(0.1).all()


def test_lr_passed_to_step_is_the_lr_column_without_a_watched_optimizer(run_dir):
    with hooks.Run(run_dir, on_critical=None) as run:
        for step in range(1, 21):
            run.step(loss=1.0 / step, lr=0.01 * step if step != 7 else None)
    data = load_run(run_dir)
    lr = data.steps["lr"].tolist()
    assert lr[:6] == pytest.approx([0.01 * s for s in range(1, 7)])
    assert math.isnan(lr[6])  # lr=None: not passed, and no optimizer to read it from
    assert lr[7:] == pytest.approx([0.01 * s for s in range(8, 21)])
    lines = (run_dir / runfile.EVENTS).read_text().splitlines()
    assert not any("lr" in (json.loads(line).get("scalars") or {}) for line in lines)  # not a second lr


def test_lr_passed_to_step_wins_over_the_watched_optimizer(run_dir):
    model, x, y = _model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with hooks.Run(run_dir, on_critical=None) as run:
        run.watch(model, opt)
        _train(run, model, x, y, 5, opt=opt)  # no lr= : the optimizer's
        run.step(loss=0.5, lr=torch.tensor(0.025))
    assert load_run(run_dir).steps["lr"].tolist() == pytest.approx([0.1] * 5 + [0.025])


def test_a_tensor_lr_changed_in_place_is_recorded_per_step(run_dir):
    """Capturable optimizers hold lr as a tensor that schedulers update in place: each step keeps its own."""
    model, x, y = _model_and_data()
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01))
    with hooks.Run(run_dir, on_critical=None, flush_interval=3600) as run:
        run.watch(model, opt)
        for _ in range(30):
            _train(run, model, x, y, 1, opt=opt)
            opt.param_groups[0]["lr"].mul_(0.5)
    lr = load_run(run_dir).steps["lr"].to_numpy()
    assert lr == pytest.approx([0.01 * 0.5**k for k in range(30)], rel=1e-6)


def test_each_epoch_is_written_at_once_even_with_the_rules_off(run_dir):
    """A process that hangs right after an epoch end (a stuck data loader) in its young phase (the first 10 s)
    still shows that epoch."""
    model, x, y = _model_and_data()
    with hooks.Run(run_dir, num_classes=3, on_critical=None, flush_interval=3600, flush_steps=10**6) as run:
        _train(run, model, x, y, 400, every_epoch=4)
        data = load_run(run_dir)  # still open: what a watcher sees now
        assert data.epochs["epoch"].tolist() == list(range(1, 101))
        assert data.epochs["step"].tolist() == list(range(4, 401, 4))
        assert data.steps["step"].max() == 400


def test_tiny_epochs_share_a_flush_but_a_slow_or_nonfinite_epoch_is_written_at_once(run_dir, monkeypatch):
    """Past the young phase, epochs closer than EPOCH_COALESCE_S go with the next flush (a flush per 16-step
    epoch costs percents); one after a pause, or one with a non-finite value, is on disk before run.epoch
    returns; none is lost."""
    monkeypatch.setattr(run_module, "RULES_YOUNG_SECONDS", 0.0)
    run = hooks.Run(run_dir, num_classes=3, on_critical=None, flush_interval=3600, flush_steps=10**6)
    for _ in range(5):
        run.step(loss=1.0)
        run.epoch(train_loss=1.0, val_acc=0.5)  # back to back: all but the first wait
    assert load_run(run_dir).epochs["epoch"].tolist() == [1]
    time.sleep(run_module.EPOCH_COALESCE_S * 1.5)
    run.epoch(train_loss=1.0)  # after a pause: at once, with the ones that waited
    assert load_run(run_dir).epochs["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    run.epoch(train_loss=0.9)  # waits
    run.epoch(val_loss=np.float64("nan"))  # non-finite (a NumPy float too): never waits
    epochs = load_run(run_dir).epochs
    assert epochs["epoch"].tolist() == list(range(1, 9)) and math.isnan(epochs["val_loss"].iloc[-1])
    run.epoch(train_loss=torch.tensor(0.8))  # a tensor waits too (its NaN is caught at the flush), and close
    # writes it
    run.close()
    assert load_run(run_dir).epochs["epoch"].tolist() == list(range(1, 10))


def test_the_file_checks_run_once_per_flush_interval_not_at_every_epoch_flush(run_dir, monkeypatch):
    """The STOP-file and deleted-run checks cost a syscall each (tens of microseconds after a training step):
    100 epoch flushes within a second look at most a few times, and a STOP file still stops the run."""
    counts = {"stop": 0, "fstat": 0}
    exists, fstat = run_module.os.path.exists, run_module.os.fstat

    def counting_exists(path):
        counts["stop"] += str(path).endswith(runfile.STOP)
        return exists(path)

    def counting_fstat(fd):
        counts["fstat"] += 1
        return fstat(fd)

    monkeypatch.setattr(run_module.os.path, "exists", counting_exists)
    monkeypatch.setattr(run_module.os, "fstat", counting_fstat)
    with hooks.Run(run_dir, num_classes=3, on_critical=None, flush_interval=3600) as run:
        for _ in range(100):
            run.step(loss=1.0)
            run.epoch(train_loss=1.0)  # young: each one flushes at once
        assert counts["stop"] <= 2 and counts["fstat"] <= 2  # (os is patched for everyone: count first)
        assert len(load_run(run_dir).epochs) == 100
        (run_dir / runfile.STOP).write_text(json.dumps({"reason": "enough"}))
        run.flush()  # an explicit flush always looks
        assert run.should_stop and run.stop_reason == "enough"


def test_a_nan_tensor_loss_is_caught_within_one_flush_when_the_rules_budget_is_spent(run_dir, monkeypatch):
    """Past the young phase and out of budget, the rules still run at once on the first non-finite loss."""
    monkeypatch.setattr(run_module, "RULES_YOUNG_SECONDS", 0.0)
    monkeypatch.setattr(run_module, "RULES_BUDGET", 1e-9)
    monkeypatch.setattr(run_module, "EPOCH_RULES_BUDGET", 1e-9)
    model, x, y = _model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    flush_steps = 16
    with hooks.Run(run_dir, num_classes=3, on_critical="stop", flush_interval=3600, flush_steps=flush_steps) as run:
        run.watch(model, opt)
        for step in range(1, 301):
            loss = nn.functional.cross_entropy(model(x[:32]), y[:32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss=loss * math.nan if step >= 150 else loss)  # a NaN tensor, never looked at per step
            if run.should_stop:
                break
    assert run.should_stop and "nonfinite_loss" in (run.stop_reason or ""), run.stop_reason
    assert 150 <= step <= 150 + flush_steps
    assert load_run(run_dir).status["state"] == "stopped"


def test_materialize_keeps_each_value_whatever_the_mix_of_tensors():
    """The flush's one transfer: dtypes promote (1e308 stays finite), an odd tensor costs only itself."""
    big = torch.tensor(1e308, dtype=torch.float64)
    steps = {"type": "steps", "step": [1, 2, 3], "time": [0.0, 0.1, 0.2],
             "loss": [torch.tensor(0.5), 0.25, torch.tensor(0.125, dtype=torch.bfloat16)],
             "lr": [0.1, 0.1, 0.1], "scalars": {"big": [big, math.nan, big]}}
    layers = {"type": "layers", "step": 3, "stats": {"fc": {"g_norm": torch.tensor(2.0), "nonneg": torch.tensor(True),
                                                            "num_units": 16}}}
    run_module._materialize([steps, layers])
    assert steps["loss"] == [0.5, 0.25, 0.125] and steps["step"] == [1, 2, 3]
    assert steps["scalars"]["big"][0] == 1e308 and math.isnan(steps["scalars"]["big"][1])
    assert layers["stats"]["fc"] == {"g_norm": 2.0, "nonneg": 1.0, "num_units": 16}
    odd = {"type": "steps", "step": [1, 2], "time": [0.0, 0.1], "loss": [torch.tensor(1.5), torch.ones(3)],
           "lr": [0.1, 0.1]}
    run_module._materialize([odd])
    assert odd["loss"][0] == 1.5 and math.isnan(odd["loss"][1])
