"""The reader against what the hooks really write: exact non-finite values, partial and corrupt lines, a
training process killed with SIGKILL."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from babysit.monitor import runfile
from babysit.monitor.reader import RunTailer, effective_state, load_run, read_status

torch = pytest.importorskip("torch")
from babysit import hooks  # noqa: E402  (needs torch)

NAN, INF = math.nan, math.inf
LOSSES = [1.5, NAN, INF, -INF, 0.0, -0.0, 1e-310, 1.7976931348623157e308]


def _write(path: Path, *records: dict) -> None:
    with open(path / runfile.EVENTS, "ab") as f:
        f.write("".join(runfile.dumps_line(r) for r in records).encode())


def _steps(first: int, n: int) -> dict:
    steps = list(range(first, first + n))
    return {"type": "steps", "step": steps, "time": [float(s) for s in steps], "loss": [s * 0.5 for s in steps],
            "lr": [0.1] * n}


def _empty_run(path: Path) -> Path:
    path.mkdir()
    runfile.write_json_atomic(path / runfile.META, {"schema": runfile.SCHEMA_VERSION, "run_id": "t"})
    runfile.write_json_atomic(path / runfile.STATUS, {"state": "finished", "step": 0})
    return path


# ---------------------------------------------------------------------------------------------- round trip
def test_nan_and_infinities_round_trip_exactly_through_the_hooks(run_dir):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = INF  # the probe's weight norm becomes inf, its std NaN
    with hooks.Run(run_dir, num_classes=2, on_critical=None) as run:
        run.watch(model, every=1)
        for i, loss in enumerate(LOSSES):
            value = torch.tensor(loss, dtype=torch.float64) if i % 2 else loss  # tensors and floats alike
            model(torch.ones(1, 2)).sum().backward()
            run.step(loss=value, scale=-loss)
        run.epoch(val_loss=NAN, val_acc=torch.tensor(INF), train_loss=-INF)
    data = load_run(run_dir)
    np.testing.assert_array_equal(data.steps["loss"].to_numpy(), np.array(LOSSES))
    np.testing.assert_array_equal(data.steps["scale"].to_numpy(), -np.array(LOSSES))
    assert np.signbit(data.steps["loss"].to_numpy()[5])  # even -0.0 keeps its sign
    epoch = data.epochs.iloc[0]
    assert math.isnan(epoch["val_loss"]) and epoch["val_acc"] == INF and epoch["train_loss"] == -INF
    weight = data.layers[data.layers["layer"] == "Linear"].iloc[0]
    assert weight["w_norm"] == INF and math.isnan(weight["w_std"])
    # The log is standard JSON: no bare NaN/Infinity tokens, which strict parsers reject.
    for line in (run_dir / runfile.EVENTS).read_text().splitlines():
        json.loads(line, parse_constant=lambda token: pytest.fail(f"bare {token} in the log"))


def test_the_tailer_returns_only_new_rows(tmp_path):
    path = _empty_run(tmp_path / "run")
    tailer = RunTailer(path)
    _write(path, _steps(1, 3))
    assert tailer.poll().steps["step"].tolist() == [1, 2, 3]
    assert len(tailer.poll()) == 0
    _write(path, _steps(4, 2), {"type": "epoch", "epoch": 1, "step": 5, "time": 5.0, "metrics": {"val_acc": 0.5}})
    batch = tailer.poll()
    assert batch.steps["step"].tolist() == [4, 5] and batch.epochs["val_acc"].tolist() == [0.5]


# ---------------------------------------------------------------------------------------------- partial and corrupt
def test_a_partial_last_line_is_left_for_the_next_poll(tmp_path):
    path = _empty_run(tmp_path / "run")
    tailer = RunTailer(path)
    line = runfile.dumps_line(_steps(1, 4)).encode()
    with open(path / runfile.EVENTS, "ab") as f:
        f.write(runfile.dumps_line(_steps(0, 1)).encode() + line[:17])  # a writer caught mid-write
    batch = tailer.poll()
    assert batch.steps["step"].tolist() == [0] and batch.corrupt_lines == 0
    assert len(tailer.poll()) == 0  # still incomplete: not data, not corrupt
    with open(path / runfile.EVENTS, "ab") as f:
        f.write(line[17:])
    batch = tailer.poll()
    assert batch.steps["step"].tolist() == [1, 2, 3, 4] and batch.corrupt_lines == 0
    assert load_run(path).steps["step"].tolist() == [0, 1, 2, 3, 4]


def test_corrupt_lines_are_skipped_and_counted_and_good_data_kept(tmp_path):
    path = _empty_run(tmp_path / "run")
    with open(path / runfile.EVENTS, "ab") as f:
        f.write(runfile.dumps_line(_steps(1, 2)).encode())
        f.write(b'{"type": "steps", "step": [3, 4], "ti\x00\xff garbage\n')  # torn by a crash, then appended to
        f.write(b'{"type": "steps", "step": [3], "time": [3.0], "loss": ["not a number"], "lr": [0.1]}\n')
        f.write(b"[1, 2]\n")
        f.write(runfile.dumps_line(_steps(3, 2)).encode())
        f.write(runfile.dumps_line({"type": "layers", "step": 4, "time": 4.0,
                                    "stats": {"fc": {"kind": "weight", "w_norm": "Infinity"}}}).encode())
    data = load_run(path)
    assert data.corrupt_lines == 3
    assert data.steps["step"].tolist() == [1, 2, 3, 4]
    assert data.layers["w_norm"].tolist() == [INF]


# ---------------------------------------------------------------------------------------------- crashed runs
TRAIN_FOREVER = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    from babysit import hooks
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    run = hooks.Run(sys.argv[1], num_classes=3, on_critical=None, flush_interval=0.05)
    run.watch(model, opt, every=5, snapshot_every=20)
    while True:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        run.step(loss=loss)
    """
)


def test_a_training_killed_with_sigkill_leaves_a_readable_run_marked_crashed(tmp_path):
    path = tmp_path / "run"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_FOREVER, str(path)], env=env, cwd=root,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        tailer = None
        steps = 0
        while steps < 60:  # let it train (and flush) for a while
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the training subprocess recorded nothing"
            time.sleep(0.05)
            if tailer is None and (path / runfile.META).exists():
                tailer = RunTailer(path)
            if tailer is not None:
                steps += len(tailer.poll().steps)
        assert read_status(path)["state"] == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    data = load_run(path)
    assert data.status["state"] == "crashed" and data.status["recorded_state"] == "running"
    assert "without closing" in data.status["reason"]
    assert data.corrupt_lines == 0
    recorded = data.steps["step"].tolist()
    assert recorded == list(range(1, len(recorded) + 1)) and len(recorded) >= 60
    assert np.isfinite(data.steps["loss"]).all()
    assert {1, 5, 10} <= set(data.layers["step"])
    assert data.snapshots["step"].iloc[0] == 0 and 20 in set(data.snapshots["step"])
    first = np.load(path / data.snapshots["file"].iloc[0], allow_pickle=False)
    assert first.shape == (4, 1, 3, 3)


def test_a_running_run_on_another_host_with_a_stale_heartbeat_is_crashed():
    status = {"state": "running", "pid": 1, "host": "elsewhere", "heartbeat": 1000.0}
    assert effective_state(status, now=1000.0 + 60) == "running"
    assert effective_state(status, now=1000.0 + 3600) == "crashed"
    assert effective_state({**status, "state": "finished"}, now=1e12) == "finished"


def test_findings_are_read_with_the_run(tmp_path):
    path = _empty_run(tmp_path / "run")
    finding = {"rule": "nonfinite_loss", "severity": "critical", "step": 7, "epoch": 0, "message": "loss is NaN",
               "evidence": {"first_bad": NAN}, "fix": ["lower the learning rate"]}
    (path / runfile.FINDINGS).write_text(runfile.dumps_line(finding) + "{torn")
    data = load_run(path)
    assert len(data.findings) == 1 and data.findings[0]["rule"] == "nonfinite_loss"
    assert data.findings[0]["evidence"]["first_bad"] == "NaN"  # tokens stay tokens in free-form dicts
