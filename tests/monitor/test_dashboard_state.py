"""The dashboard's state: incremental reading, findings, the runs index, and never reading outside the root."""

from __future__ import annotations

import os

import numpy as np
import pytest

from babysit.monitor import runfile
from babysit.monitor.dashboard import state as state_mod
from babysit.monitor.dashboard.state import RunsIndex, RunState, inside, resolve_run
from babysit.rules import Finding
from benchmarks.synthetic import append_steps, write_run

NAN_FINDING = {"rule": "nonfinite_loss", "title": "Loss is NaN", "severity": "critical", "step": 150,
               "epoch": None, "message": "loss became NaN", "evidence": {"lr": 0.5}, "fix": ["lower the lr"]}
OLD_FINDING = {"rule": "init_loss_mismatch", "title": "Odd initial loss", "severity": "info", "step": 1,
               "epoch": None, "message": "m", "evidence": {}, "fix": []}


def test_a_refresh_reads_only_what_was_appended(tmp_path):
    path = write_run(tmp_path / "r", steps=1000, epochs=4, layer_every=100, snapshots=3)
    st = RunState(path, diagnose=False)
    assert st.update() > 0
    assert st.loss.n == 1000 and len(st.epochs) == 4 and len(st.snapshots) == 3
    assert set(st.layer_order) == {"conv1", "relu1", "conv2", "relu2", "fc"}
    version = st.version
    assert st.update() == 0 and st.version == version  # nothing new, nothing done
    append_steps(path, 1000, 100)
    assert st.update() == 100  # the 100 new steps, nothing read twice
    assert st.loss.n == 1100 and st.loss.last()[0] == 1100 and st.version == version + 1
    assert st.initial_loss() == pytest.approx(st.loss.y[0])


def test_layer_frames_are_per_layer_and_skip_missing_statistics(tmp_path):
    st = RunState(write_run(tmp_path / "r", steps=1000, layer_every=100), diagnose=False)
    st.update()
    grad = st.layer_frame("g_norm")
    assert set(grad["layer"]) == {"conv1", "conv2", "fc"}  # activations have no gradient norm
    assert len(grad) == 3 * 10
    dead = st.layer_frame("dead_frac")
    assert set(dead["layer"]) == {"relu1", "relu2"}
    zoom = st.layer_frame("g_norm", 250, 450)
    assert zoom["step"].between(250, 450).all() and len(zoom) == 3 * 2


def test_findings_are_the_dashboards_diagnosis_plus_what_it_did_not_reproduce_newest_first(tmp_path, monkeypatch):
    class FakeDiagnoser:
        def __init__(self, meta, thresholds=None, run_dir=None):
            self.meta, self.findings = meta, []

        def update(self, batch, status=None):
            if len(batch.steps):
                self.findings = [Finding("nonfinite_loss", "Loss is NaN", "critical", 150, None, "fresh"),
                                 Finding("flat_loss", "Flat", "warning", 10, None, "flat")]
            return self.findings

    monkeypatch.setattr(state_mod, "_OnlineDiagnoser", FakeDiagnoser)
    path = write_run(tmp_path / "r", steps=200, findings=[OLD_FINDING, NAN_FINDING])
    st = RunState(path)
    st.update()
    assert st.diagnoser.meta["num_classes"] == 10
    found = st.findings()
    assert [(f["rule"], f["step"]) for f in found] == [("nonfinite_loss", 150), ("flat_loss", 10),
                                                      ("init_loss_mismatch", 1)]
    # a rule the dashboard found speaks for itself; the log fills the gaps, marked as recorded
    assert found[0]["message"] == "fresh" and found[0]["source"] == "dashboard" and "recorded" not in found[0]
    assert found[2]["recorded"] is True


def test_a_broken_rule_engine_does_not_take_the_dashboard_down(tmp_path, monkeypatch):
    class Broken:
        def __init__(self, meta, thresholds=None, run_dir=None):
            pass

        def update(self, batch, status=None):
            raise ZeroDivisionError("rule bug")

    monkeypatch.setattr(state_mod, "_OnlineDiagnoser", Broken)
    st = RunState(write_run(tmp_path / "r", steps=100, findings=[NAN_FINDING]))
    st.update()
    assert st.diagnoser is None and "rule bug" in st.diagnoser_error
    assert [f["rule"] for f in st.findings()] == ["nonfinite_loss"]  # the recorded ones still show


def test_without_a_rule_engine_recorded_findings_still_show(tmp_path, monkeypatch):
    monkeypatch.setattr(state_mod, "_OnlineDiagnoser", None)
    st = RunState(write_run(tmp_path / "r", steps=100, findings=[NAN_FINDING]))
    st.update()
    assert st.diagnoser is None and st.findings()[0]["title"] == "Loss is NaN"


def test_runs_index_summarizes_runs_and_sees_new_ones(tmp_path):
    write_run(tmp_path / "a", steps=300, epochs=3, findings=[OLD_FINDING, NAN_FINDING], state="stopped")
    write_run(tmp_path / "group" / "b", steps=300, epochs=3, config={"lr": 0.3, "reg": 0.0})
    index = RunsIndex(tmp_path)
    rows = {s.name: s.row() for s in index.refresh()}
    assert set(rows) == {"a", "group/b"}
    a = rows["a"]
    assert a["state"] == "stopped" and a["epoch"] == 3 and a["step"] == 300
    full = RunState(tmp_path / "a", diagnose=False)
    full.update()
    assert a["best_val_acc"] == pytest.approx(full.epochs["val_acc"].max()) and 0.5 < a["best_val_acc"] < 1
    assert a["worst_severity"] == "critical" and a["worst_finding"] == "Loss is NaN"
    assert rows["group/b"]["lr"] == 0.3 and rows["group/b"]["reg"] == 0.0
    write_run(tmp_path / "c", steps=10, epochs=1)
    assert index.discover() == ["a", "c", "group/b"]
    assert {s.name for s in index.refresh()} == {"a", "c", "group/b"}
    assert list(index.frame()["run"])[0] == "c"  # most recent activity first


def test_the_runs_table_shows_what_the_run_page_found_once_the_run_is_opened(tmp_path, monkeypatch):
    """A run that recorded nothing, where the dashboard's own rules find a warning: the table said "—" while
    the run's page said "1 warning". Once the page has diagnosed it, the table shows the same finding."""
    class FakeDiagnoser:
        def __init__(self, meta, thresholds=None, run_dir=None):
            self.findings = []

        def update(self, batch, status=None):
            self.findings = [Finding("noisy_weights", "First-layer weights look like noise", "warning", 300, None,
                                     "noise")]
            return self.findings

    monkeypatch.setattr(state_mod, "_OnlineDiagnoser", FakeDiagnoser)
    write_run(tmp_path / "quiet", steps=300, epochs=3)
    index = RunsIndex(tmp_path)
    assert index.refresh()[0].row()["worst_finding"] is None  # nothing recorded, not opened yet
    page = RunState(tmp_path / "quiet")
    page.update()
    assert [f["rule"] for f in page.findings()] == ["noisy_weights"]
    row = index.refresh()[0].row()
    assert row["worst_severity"] == "warning" and row["worst_finding"] == "First-layer weights look like noise"


def test_runs_index_reads_epochs_incrementally_and_ignores_a_partial_line(tmp_path):
    path = write_run(tmp_path / "a", steps=100, epochs=2)
    index = RunsIndex(tmp_path)
    index.refresh()
    summary = index.summaries["a"]
    line = runfile.dumps_line({"type": "epoch", "epoch": 3, "step": 150, "time": 0.0, "metrics": {"val_acc": 0.99}})
    with open(path / runfile.EVENTS, "a", encoding="utf-8") as f:
        f.write(line[:20])
    index.refresh()
    assert summary.epoch == 2
    with open(path / runfile.EVENTS, "a", encoding="utf-8") as f:
        f.write(line[20:])
    index.refresh()
    assert summary.epoch == 3 and summary.best_val_acc == pytest.approx(0.99)


@pytest.mark.parametrize("name", ["..", "../x", "a/../../x", "/etc", "/", "~", "~root", "a\\..\\b", "C:/x",
                                  "a\x00b", "a\nb", "", "x" * 2000])
def test_run_names_from_the_url_cannot_leave_the_root(tmp_path, name):
    (tmp_path / "root" / "a").mkdir(parents=True)
    assert resolve_run(tmp_path / "root", name) is None


def test_symlinks_out_of_the_root_are_refused(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", root / "escape")
    assert resolve_run(root, "a") == root / "a"
    assert resolve_run(root, ".") == root
    assert resolve_run(root, "escape") is None
    assert inside(root, "a/snapshots/x.npy") == root / "a" / "snapshots" / "x.npy"


def test_snapshots_load_without_pickle_and_only_from_the_run(tmp_path):
    path = write_run(tmp_path / "r", steps=100, snapshots=2)
    st = RunState(path, diagnose=False)
    st.update()
    arr = st.load_snapshot(st.snapshots[-1])
    assert arr.shape == (16, 1, 5, 5)
    np.save(path / "snapshots" / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert st.load_snapshot({"file": "snapshots/evil.npy"}) is None
    np.save(tmp_path / "outside.npy", np.zeros(3))
    assert st.load_snapshot({"file": "../outside.npy"}) is None
    assert st.load_snapshot({"file": str(tmp_path / "outside.npy")}) is None


def test_the_fast_step_parser_gives_the_readers_exact_results(tmp_path):
    import pandas as pd

    from babysit.monitor.fastread import FastRunTailer
    from babysit.monitor.reader import RunTailer

    path = write_run(tmp_path / "r", steps=1200, epochs=3, nan_from=1100)
    odd = [
        {"type": "steps", "step": [1201, 1202], "time": [1.0, 2.0], "loss": [float("inf"), float("-inf")],
         "lr": [0.1, 0.1]},
        {"type": "steps", "step": [1203, 1207, 1208], "time": [3.0, 4.0, 5.0], "loss": [0.1, 0.123456789012345678,
                                                                                          1e-300], "lr": [1, 2, 3]},
    ]
    with open(path / runfile.EVENTS, "a", encoding="utf-8") as f:
        f.write("".join(runfile.dumps_line(r) for r in odd))
        f.write("not json at all\n")
        f.write(runfile.dumps_line({"type": "steps", "step": [1209], "time": [6.0], "loss": [0.2], "lr": [0.1]})[:30])
    fast, slow = FastRunTailer(path), RunTailer(path)
    a, b = fast.poll(), slow.poll()
    pd.testing.assert_frame_equal(a.steps, b.steps, check_exact=True)
    pd.testing.assert_frame_equal(a.epochs, b.epochs)
    pd.testing.assert_frame_equal(a.layers, b.layers)
    assert a.corrupt_lines == b.corrupt_lines == 1
    # Steps with extra scalars, mixed with plain ones: the fast path steps aside, results stay the reader's.
    with open(path / runfile.EVENTS, "a", encoding="utf-8") as f:
        f.write(runfile.dumps_line({"type": "steps", "step": [1209], "time": [6.0], "loss": [0.2], "lr": [0.1]})[30:])
        f.write(runfile.dumps_line({"type": "steps", "step": [1210], "time": [7.0], "loss": [0.3], "lr": [0.1],
                                    "scalars": {"grad_norm": [1.5]}}))
    a, b = fast.poll(), slow.poll()
    pd.testing.assert_frame_equal(a.steps, b.steps, check_exact=True)
    assert list(a.steps["step"]) == [1209, 1210] and a.steps["grad_norm"].iloc[1] == 1.5


def test_the_dashboards_rules_read_snapshots_through_the_format(tmp_path):
    st = RunState(write_run(tmp_path / "r", steps=300, snapshots=3))
    st.update()
    record = st.snapshots[-1]
    arr = st.load_snapshot(record)
    assert arr is not None and arr.size
    # the reader's batches hand the engine the format's loader: the rules see the same array, read the same way
    assert np.array_equal(st.diagnoser.ctx.load_snapshot(record["file"]), arr)
    assert st.diagnoser.ctx.load_snapshot("../" + record["file"]) is None
