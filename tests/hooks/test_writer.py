"""The writer never fails the loop and never goes quiet (issue 11 item 7): a full disk, a deleted run directory,
accurate warnings. Each test reproduces the defect on a real (tiny) run first."""

from __future__ import annotations

import errno
import shutil
import warnings

import torch
from torch import nn

from babysit import hooks
from babysit.monitor import runfile
from babysit.monitor.reader import load_run


def _babysit_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "babysit" in str(w.message)]


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return model, torch.optim.SGD(model.parameters(), lr=0.1), x, y


def _train(run, model, opt, x, y, steps: int) -> None:
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.step(loss=loss)


class _FullDisk:
    """The events file on a disk with `room` bytes left: a short write, then ENOSPC."""

    def __init__(self, real, room: int):
        self.real, self.room = real, room

    def write(self, data) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = self.real.write(bytes(data[: self.room]))
        self.room -= n
        return n

    def tell(self) -> int:
        return self.real.tell()

    def fileno(self) -> int:
        return self.real.fileno()

    def close(self) -> None:
        self.real.close()


def test_a_full_disk_leaves_whole_lines_and_the_run_reads_as_finished(run_dir):
    model, opt, x, y = _setup()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with hooks.Run(run_dir, num_classes=3, on_critical=None, flush_interval=0.0) as run:
            run.watch(model, opt, every=5)
            _train(run, model, opt, x, y, 20)
            disk = run._file = _FullDisk(run._file, room=150)  # the next flush fits only partly
            _train(run, model, opt, x, y, 20)
            disk.room = 10**9  # space is freed: writing resumes
            _train(run, model, opt, x, y, 20)
    assert run.global_step == 60 and run.enabled
    messages = _babysit_warnings(caught)
    assert len(messages) == 1 and "No space left on device" in messages[0], messages
    assert "disabled" not in messages[0] and "retried" in messages[0]
    raw = (run_dir / runfile.EVENTS).read_bytes()
    assert raw.endswith(b"\n")  # no torn last line
    data = load_run(run_dir)
    assert data.corrupt_lines == 0 and data.status["state"] == "finished"
    steps = data.steps["step"].tolist()
    assert steps[:20] == list(range(1, 21)) and steps[-1] == 60  # before the full disk, and after space came back


def test_a_deleted_run_directory_warns_once_and_is_not_recreated(tmp_path):
    model, opt, x, y = _setup()
    run_dir = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with hooks.Run(run_dir, num_classes=3, on_critical="warn", flush_interval=0.0) as run:
            run.watch(model, opt, snapshot_every=50)
            _train(run, model, opt, x, y, 20)
            shutil.rmtree(run_dir)
            _train(run, model, opt, x, y, 150)  # snapshots due at 50, 100, 150; status and rules at flushes
    assert run.global_step == 170
    assert not run_dir.exists()  # no half directory with only snapshots/ and status.json
    messages = _babysit_warnings(caught)
    assert len(messages) == 1 and "deleted" in messages[0] and "recording disabled" in messages[0], messages


def test_an_unreadable_value_in_a_flush_never_disables_recording(run_dir):
    """The warning says "disabled" only when something is: a dropped value is not a disabled writer."""
    model, opt, x, y = _setup()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with hooks.Run(run_dir, num_classes=3, on_critical=None, flush_interval=0.0) as run:
            run.watch(model, opt)
            _train(run, model, opt, x, y, 10)
            run.step(loss=torch.tensor([1.0, 2.0]), note="text")
            run.epoch(val_acc=torch.tensor(1 + 2j))
            _train(run, model, opt, x, y, 10)
    messages = _babysit_warnings(caught)
    assert len(messages) == 3 and not any("disabled" in m for m in messages), messages
    data = load_run(run_dir)
    assert data.steps["step"].tolist() == list(range(1, 22)) and data.status["state"] == "finished"


def test_a_full_disk_for_status_and_events_gives_one_warning_and_recovers(run_dir, monkeypatch):
    model, opt, x, y = _setup()
    real_write = runfile.write_json_atomic
    full = {"on": False}

    def write_json_atomic(path, obj):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, obj)

    monkeypatch.setattr(runfile, "write_json_atomic", write_json_atomic)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with hooks.Run(run_dir, num_classes=3, on_critical=None, flush_interval=0.0) as run:
            run.watch(model, opt)
            _train(run, model, opt, x, y, 10)
            full["on"] = True
            disk = run._file = _FullDisk(run._file, room=0)
            _train(run, model, opt, x, y, 10)
            run.flush()  # status.json is due at a forced flush: refused too
            full["on"], disk.room = False, 10**9
            _train(run, model, opt, x, y, 10)
    messages = _babysit_warnings(caught)
    assert len(messages) == 1 and "No space left" in messages[0], messages
    data = load_run(run_dir)
    assert data.status["state"] == "finished" and data.status["step"] == 30 and data.corrupt_lines == 0
