"""The run format's shared pieces, each in one place: snapshots, the findings log, the class count, severity."""

from __future__ import annotations

import json
import os
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from babysit.monitor import runfile, sinks
from babysit.monitor.dashboard import state as dashboard_state
from babysit.monitor.reader import load_run, records_to_batch
from babysit.rules import OnlineDiagnoser
from babysit.rules.base import CLASS_KEYS, Context, num_classes_of, severity_rank
from babysit.rules.thresholds import resolve


# --------------------------------------------------------------------------- snapshots
def _run_with_snapshot(tmp_path, arr):
    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    np.save(run / "snapshots" / "a.npy", arr)
    return run


def test_load_snapshot_reads_numbers_from_inside_the_run_only(tmp_path):
    run = _run_with_snapshot(tmp_path, np.arange(12.0).reshape(3, 4))
    assert runfile.load_snapshot(run, "snapshots/a.npy").shape == (3, 4)
    np.save(tmp_path / "outside.npy", np.ones(4))
    (run / "snapshots" / "link.npy").symlink_to(tmp_path / "outside.npy")
    os.mkfifo(run / "snapshots" / "fifo.npy")
    np.save(run / "snapshots" / "empty.npy", np.zeros(0))
    np.save(run / "snapshots" / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (run / "snapshots" / "huge.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, "
                                                 b"'shape': (1000000000000,), }" + b" " * 60 + b"\n")
    for rel in ("../outside.npy", str(tmp_path / "outside.npy"), "snapshots/link.npy", "snapshots/fifo.npy",
                "snapshots/empty.npy", "snapshots/objects.npy", "snapshots/huge.npy", "snapshots/missing.npy",
                "snapshots", "", None, 3, "snapshots/a.npy\x00"):
        assert runfile.load_snapshot(run, rel) is None, rel  # never blocks on the FIFO, never allocates 8 TB


def test_the_rules_get_snapshots_only_through_the_loader_they_are_handed(tmp_path):
    """noisy_weights judges what the loader returns: the files named in the records need not exist."""
    rng = np.random.default_rng(0)
    init = rng.normal(size=(16, 1, 8, 8))
    arrays = {"snapshots/0.npy": init, "snapshots/1.npy": init + 3 * rng.normal(size=init.shape)}
    asked = []

    def loader(run_dir, rel):
        asked.append((run_dir, rel))
        return arrays.get(rel)

    records = [{"type": "steps", "step": list(range(1, 2001)), "time": [float(i) for i in range(2000)],
                "loss": [1.0] * 2000, "lr": [0.1] * 2000},
               {"type": "snapshot", "step": 0, "time": 0.0, "layer": "conv1", "file": "snapshots/0.npy"},
               {"type": "snapshot", "step": 2000, "time": 1.0, "layer": "conv1", "file": "snapshots/1.npy"}]
    d = OnlineDiagnoser({"num_classes": 10}, run_dir=tmp_path / "nowhere", snapshot_loader=loader)
    d.update(records_to_batch(records))
    assert {rel for _, rel in asked} == set(arrays)
    assert "noisy_weights" in {f.rule for f in d.findings}
    # without a loader (neither handed in nor brought by a reader's batch) the rule sees nothing
    bare = OnlineDiagnoser({"num_classes": 10}, run_dir=tmp_path / "nowhere")
    bare.update(SimpleNamespace(**vars(records_to_batch(records))))  # the records, not the reader's class
    assert "noisy_weights" not in {f.rule for f in bare.findings}


# --------------------------------------------------------------------------- the findings log
def test_append_findings_writes_whole_lines_to_a_regular_file_only(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    runfile.write_json_atomic(run / runfile.META, {"schema": 1, "run_id": "x"})
    runfile.append_findings(run, [{"rule": "a", "severity": "info", "x": float("nan")}], "hooks")
    runfile.append_findings(run, [{"rule": "b", "severity": "warning", "source": "x"}])
    lines = [json.loads(x) for x in (run / runfile.FINDINGS).read_text().splitlines()]
    assert [(x["rule"], x.get("source")) for x in lines] == [("a", "hooks"), ("b", "x")] and lines[0]["x"] == "NaN"
    assert [f["rule"] for f in load_run(run).findings] == ["a", "b"]

    target = tmp_path / "bashrc"
    target.write_text("keep\n")
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / runfile.FINDINGS).symlink_to(target)
    with pytest.raises(OSError, match="not a regular file"):
        runfile.append_findings(evil, [{"rule": "a"}])
    assert target.read_text() == "keep\n"
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / runfile.FINDINGS)
    done = []
    t = threading.Thread(target=lambda: done.append(pytest.raises(OSError, runfile.append_findings, fifo, [{}])))
    t.start()
    t.join(10)
    assert done, "a FIFO nobody reads is refused at once, never waited on"


def test_the_watchers_log_sink_writes_through_the_format(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    sinks.FindingsLog().write(sinks.Alert("run", run, {"rule": "flat_loss", "severity": "warning"}))
    (line,) = (run / runfile.FINDINGS).read_text().splitlines()
    assert json.loads(line)["source"] == "watch" and "run_dir" not in json.loads(line)


# --------------------------------------------------------------------------- the number of classes
@pytest.mark.parametrize("meta,expected", [
    ({"num_classes": 10}, 10),
    ({"num_classes": 10.0}, 10),
    ({"num_classes": None, "config": {"num_classes": 7}}, 7),
    ({"config": {"n_classes": 5}}, 5),
    ({"config": {"num_labels": "3"}}, 3),
    ({"num_labels": 4}, 4),
    ({"num_classes": True}, None),
    ({"num_classes": 1}, None),
    ({"num_classes": 2.5}, None),
    ({"num_classes": float("nan")}, None),
    ({"num_classes": 1e400}, None),
    ({"num_classes": "ten", "config": {"classes": ["cat", "dog"]}}, None),
    ({"config": "not a dict"}, None),
    ("not a dict", None),
])
def test_num_classes_has_one_lookup(meta, expected, tmp_path):
    assert num_classes_of(meta) == expected
    if isinstance(meta, dict):
        assert Context(meta=meta, thresholds=resolve(None)).num_classes == expected  # the rules use the same
    assert CLASS_KEYS[0] == "num_classes"


def test_the_dashboard_reads_the_class_count_from_the_config_too(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    runfile.write_json_atomic(run / runfile.META, {"schema": 1, "run_id": "x", "config": {"n_classes": 10}})
    assert dashboard_state.RunState(run, diagnose=False).num_classes() == 10


# --------------------------------------------------------------------------- severity
def test_one_severity_scale_with_unknowns_below_info():
    assert sinks.severity_rank is severity_rank and dashboard_state.severity_rank is severity_rank
    assert [severity_rank(s) for s in ("info", "warning", "critical", "bogus", None)] == [0, 1, 2, -1, -1]
