"""The reader given hostile files: a clear one-line error or a counted skip, never a traceback, never lost data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from babysit.monitor import runfile
from babysit.monitor.reader import LineTailer, RunReadError, load_run, records_to_batch


def _good_run(path, n=10):
    path.mkdir(parents=True, exist_ok=True)
    runfile.write_json_atomic(path / "meta.json", {"schema": 1, "run_id": "x", "num_classes": 10})
    runfile.write_json_atomic(path / "status.json", {"state": "finished", "step": n})
    rec = {"type": "steps", "step": list(range(1, n + 1)), "time": [0.0] * n, "loss": [float(i) for i in range(n)],
           "lr": [0.1] * n}
    (path / "events.jsonl").write_text(runfile.dumps_line(rec))
    return path


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xfe\xfd not utf-8 \x80\n",
        b"{\"type\": \"steps\", \"step\": [1,2], \"time\": [0, 0], \"loss\": [1]}\n",  # wrong lengths
        b"{\"type\": \"steps\", \"step\": \"many\"}\n",  # wrong types
        b"{\"type\": \"epoch\", \"epoch\": {}, \"step\": 1, \"time\": 0}\n",
        b"{\"type\": \"layers\", \"step\": 1, \"time\": 0, \"stats\": [1, 2]}\n",
        b"[1, 2, 3]\n",
        b"null\n",
        b"{\"type\": \"steps\", \"step\": [1e999], \"time\": [0], \"loss\": [0]}\n",
        b"[" * 100000 + b"\n",  # deeply nested
        b"{\"type\": \"steps\", \"step\": [1], \"time\": [0], \"loss\": [\"garbage\"], \"lr\": [0]}\n",
    ],
)
def test_garbage_lines_are_counted_and_good_data_kept(tmp_path, garbage):
    path = _good_run(tmp_path / "run")
    with open(path / "events.jsonl", "ab") as f:
        f.write(garbage)
        f.write(runfile.dumps_line({"type": "epoch", "epoch": 1, "step": 10, "time": 1.0,
                                    "metrics": {"val_acc": 0.5}}).encode())
    run = load_run(path)
    assert len(run.steps) == 10
    assert run.epochs["val_acc"].tolist() == [0.5]
    assert run.corrupt_lines >= 1


def test_truncated_last_line_is_not_data_yet(tmp_path):
    path = _good_run(tmp_path / "run")
    line = runfile.dumps_line({"type": "steps", "step": [11], "time": [0.0], "loss": ["NaN"], "lr": [0.1]})
    with open(path / "events.jsonl", "ab") as f:
        f.write(line[:-9].encode())
    run = load_run(path)
    assert len(run.steps) == 10 and run.corrupt_lines == 0


def test_enormous_line_without_newline_is_skipped(tmp_path, monkeypatch):
    import babysit.monitor.reader as reader

    monkeypatch.setattr(reader, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"x" * 5000)
    tailer = LineTailer(path)
    assert tailer.read() == [] and tailer.corrupt_lines == 1
    with open(path, "ab") as f:
        f.write(b"\n" + runfile.dumps_line({"type": "event", "name": "ok"}).encode())
    assert [r["name"] for r in tailer.read()] == ["ok"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "no such run directory"),
        (lambda p: p.write_text("x"), "not a directory"),
        (lambda p: p.mkdir(), "not a run directory"),
        (lambda p: (p.mkdir(), (p / "meta.json").write_bytes(b"\x00garbage")), "corrupt meta.json"),
        (lambda p: (p.mkdir(), (p / "meta.json").write_text("[1]")), "corrupt meta.json"),
        (lambda p: (p.mkdir(), (p / "meta.json").write_text('{"schema": 99}')), "upgrade babysit"),
    ],
)
def test_unreadable_runs_raise_one_line_errors(tmp_path, setup, message):
    path = tmp_path / "run"
    setup(path)
    with pytest.raises(RunReadError) as err:
        load_run(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_meta_still_reads_the_events(tmp_path):
    path = _good_run(tmp_path / "run")
    (path / "meta.json").unlink()
    assert len(load_run(path).steps) == 10


def test_corrupt_status_reads_as_unknown(tmp_path):
    path = _good_run(tmp_path / "run")
    (path / "status.json").write_bytes(b"\xff{")
    run = load_run(path)
    assert run.status["state"] == "unknown" and len(run.steps) == 10


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000))
def test_fuzz_line_tailer_never_raises(tmp_path, data):
    path = tmp_path / "events.jsonl"
    path.write_bytes(data)
    records = LineTailer(path).read()
    batch = records_to_batch(records)
    assert len(batch.steps) >= 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
    | st.sampled_from(["NaN", "Infinity", "-Infinity"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)
record = st.fixed_dictionaries(
    {"type": st.sampled_from(["steps", "epoch", "layers", "snapshot", "event", "other"])},
    optional={k: json_values for k in ["step", "time", "loss", "lr", "scalars", "epoch", "metrics", "stats",
                                        "layer", "file", "shape"]},
)


@settings(max_examples=150, deadline=None)
@given(st.lists(record, max_size=5))
def test_fuzz_records_never_raise_and_never_lose_good_ones(records):
    good = {"type": "steps", "step": [1, 2], "time": [0.0, 1.0], "loss": ["NaN", 2.0], "lr": [0.1, 0.1]}
    batch = records_to_batch([*records, good, *json.loads(json.dumps(records))])
    assert batch.steps["step"].tolist()[-2:] == [1, 2] or 1 in batch.steps["step"].tolist()
    assert np.isnan(batch.steps.loc[batch.steps["step"] == 1, "loss"]).any()
