"""Faults: the training killed at random points, a full disk, and a reader racing a writer."""

from __future__ import annotations

import mmap
import os
import random
import signal
import struct
import threading
import time
import warnings

import numpy as np
import pytest
import torch

from babysit import hooks
from babysit.monitor.reader import RunTailer, load_run

FLUSH_INTERVAL = 0.05


def _train_forever(path, progress: mmap.mmap) -> None:
    """Child process: record loss = step forever; publish (last step, its time) in shared memory."""
    run = hooks.Run(path, num_classes=10, on_critical=None, flush_interval=FLUSH_INTERVAL)
    step = 0
    while True:
        step += 1
        t = time.time()
        run.step(loss=torch.tensor(float(step)))
        progress.seek(0)
        progress.write(struct.pack("qd", step, t))
        time.sleep(0.0005)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_at_50_random_points_leaves_readable_crashed_runs(tmp_path):
    rng = random.Random(1234)
    for i in range(50):
        path = tmp_path / f"run{i}"
        progress = mmap.mmap(-1, 16)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                _train_forever(path, progress)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.02, 0.4))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        progress.seek(0)
        last_step, last_time = struct.unpack("qd", progress.read(16))

        if not (path / "meta.json").exists():  # killed before the run existed: nothing to lose
            assert last_step == 0
            continue
        run = load_run(path)
        assert run.status["state"] == "crashed", (i, run.status)
        assert run.corrupt_lines == 0
        steps = run.steps["step"].to_numpy()
        if last_step == 0:
            continue
        # What survives is an exact prefix of what was trained: nothing reordered, nothing invented.
        assert np.array_equal(steps, np.arange(1, len(steps) + 1))
        assert np.array_equal(run.steps["loss"].to_numpy(), steps.astype(float))
        # At most the last flush interval (plus the step that triggers the flush) is lost.
        recorded_until = run.steps["time"].iloc[-1] if len(steps) else run.status["start_time"]
        assert last_time - recorded_until <= FLUSH_INTERVAL + 0.25, (i, last_step, len(steps))


def test_full_disk_training_goes_on_with_one_warning(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    path = tmp_path / "run"
    path.mkdir()
    os.symlink("/dev/full", path / "events.jsonl")  # every write fails with ENOSPC
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with hooks.Run(path, num_classes=2, on_critical=None, flush_interval=0.0, resume=True) as run:
            run.watch(model, opt)
            for _ in range(20):
                loss = model(torch.randn(8, 4)).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss=loss)
    ours = [w for w in caught if "babysit" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert "No space left" in str(ours[0].message) or "ENOSPC" in str(ours[0].message) or "28" in str(
        ours[0].message
    )
    assert run.global_step == 20  # training went on


def test_reader_and_writer_running_concurrently_agree_on_every_record(tmp_path):
    path = tmp_path / "run"
    n_steps = 20000
    seen = []
    done = threading.Event()

    def write() -> None:
        with hooks.Run(path, num_classes=10, on_critical=None, flush_interval=0.001, flush_steps=37) as run:
            for step in range(1, n_steps + 1):
                value = float("nan") if step % 997 == 0 else (float("inf") if step % 991 == 0 else step * 0.5)
                run.step(loss=value, other=-step)
                if step % 500 == 0:
                    run.epoch(val_acc=step / n_steps)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    while not path.joinpath("meta.json").exists():
        time.sleep(0.001)
    tailer = RunTailer(path)
    epochs = 0
    while True:
        finished = done.is_set()
        batch = tailer.poll()
        seen.append(batch.steps)
        epochs += len(batch.epochs)
        if finished:
            break
    writer.join()
    import pandas as pd

    steps = pd.concat(seen, ignore_index=True)
    assert steps["step"].tolist() == list(range(1, n_steps + 1))
    expected = [
        float("nan") if s % 997 == 0 else (float("inf") if s % 991 == 0 else s * 0.5) for s in range(1, n_steps + 1)
    ]
    np.testing.assert_array_equal(steps["loss"].to_numpy(), np.array(expected))
    np.testing.assert_array_equal(steps["other"].to_numpy(), -np.arange(1, n_steps + 1, dtype=float))
    assert epochs == n_steps // 500
    assert tailer.corrupt_lines == 0
