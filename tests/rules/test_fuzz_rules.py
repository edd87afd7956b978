"""Fuzz the rule inputs: whatever a log holds, `diagnose` and `OnlineDiagnoser.update` return well-formed findings.

Inputs are event records (what a hostile or broken writer could put in events.jsonl: NaN, inf, huge, negative,
constant, empty, one-row arrays; epochs with missing columns; layer statistics with odd values and kinds;
snapshots that do not exist), odd meta (num_classes "ten", 0, 1e9) and odd status. They go through the JSON
codec and `records_to_batch`, exactly the path a real run takes, then to the rules. A rule that raises is
switched off by the engine with a RuleWarning: that is a failure here too (the user silently loses a rule).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from babysit.monitor import runfile
from babysit.monitor.reader import LAYER_STATS, RunData, records_to_batch
from babysit.rules import OnlineDiagnoser, RuleWarning, diagnose
from babysit.rules.base import SEVERITIES
from babysit.rules.catalogue import RULE_IDS

ODD = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308, 1e-308, 5e-324, -1.0, 2.302585, 1e-12, 1e12]
odd_floats = st.one_of(st.sampled_from(ODD), st.floats(allow_nan=True, allow_infinity=True),
                       st.floats(-10, 10, allow_nan=False))
odd_ints = st.one_of(st.integers(-5, 5000), st.sampled_from([0, -1, 2**31, 2**53, 2**62, -(2**62)]))


@st.composite
def loss_column(draw, n: int) -> list[float]:
    kind = draw(st.sampled_from(["odd", "constant", "healthy", "spike", "explode", "flat", "nan_tail"]))
    if kind == "odd":
        return draw(st.lists(odd_floats, min_size=n, max_size=n))
    if kind == "constant":
        return [draw(odd_floats)] * n
    base = [2.3 * math.exp(-i / 50) for i in range(n)]
    if kind == "spike" and n:
        base[draw(st.integers(0, n - 1))] = draw(st.sampled_from([1e308, math.inf, 1e6, -1e6]))
    if kind == "explode":
        base = [2.3 * 1.5**min(i, 1500) for i in range(n)]
    if kind == "flat":
        base = [2.3] * n
    if kind == "nan_tail" and n:
        k = draw(st.integers(0, n - 1))
        base[k:] = [math.nan] * (n - k)
    return base


@st.composite
def step_record(draw, start: int) -> dict:
    n = draw(st.sampled_from([0, 1, 2, 3, 10, 50, 120]))
    order = draw(st.sampled_from(["consecutive", "same", "random", "backwards"]))
    if order == "consecutive":
        steps = list(range(start, start + n))
    elif order == "same":
        steps = [start] * n
    elif order == "backwards":
        steps = list(range(start + n, start, -1))
    else:
        steps = draw(st.lists(odd_ints, min_size=n, max_size=n))
    rec = {"type": "steps", "step": steps, "time": draw(st.sampled_from([
        [1.7e9 + i for i in range(n)], [0.0] * n, [math.nan] * n, [1.7e9 - i * 1e3 for i in range(n)]])),
        "loss": draw(loss_column(n))}
    lr = draw(st.sampled_from(["missing", "constant", "odd", "decay"]))
    if lr == "constant":
        rec["lr"] = [draw(odd_floats)] * n
    elif lr == "odd":
        rec["lr"] = draw(st.lists(odd_floats, min_size=n, max_size=n))
    elif lr == "decay":
        rec["lr"] = [0.1 * 0.97**i for i in range(n)]
    if draw(st.booleans()):
        rec["scalars"] = {"grad_norm": draw(st.lists(odd_floats, min_size=n, max_size=n))}
    return rec


METRICS = ["train_loss", "train_acc", "val_loss", "val_acc"]


@st.composite
def epoch_record(draw, k: int) -> dict:
    keys = draw(st.lists(st.sampled_from([*METRICS, "lr", "test_acc"]), unique=True, max_size=6))
    metrics = {key: draw(st.one_of(odd_floats, st.floats(0, 1))) for key in keys}
    return {"type": "epoch", "epoch": draw(st.one_of(st.just(k), odd_ints)), "step": draw(odd_ints),
            "time": draw(odd_floats), "metrics": metrics}


@st.composite
def layer_record(draw) -> dict:
    stats = {}
    for name in draw(st.lists(st.sampled_from(["conv1", "fc", "0", "relu1", "tanh", "head", ""]), unique=True,
                              max_size=4)):
        kind = draw(st.sampled_from(["weight", "relu", "tanh", "sigmoid", "gelu", "", "weight "]))
        keys = draw(st.lists(st.sampled_from([*LAYER_STATS, "num_units"]), unique=True, max_size=len(LAYER_STATS)))
        stats[name] = {"kind": kind, **{key: draw(odd_floats) for key in keys}}
    return {"type": "layers", "step": draw(odd_ints), "time": draw(odd_floats), "stats": stats}


snapshot_record = st.fixed_dictionaries({
    "type": st.just("snapshot"), "step": odd_ints, "time": odd_floats, "layer": st.sampled_from(["conv1", "fc"]),
    "file": st.sampled_from(["snapshots/missing.npy", "../outside.npy", "/etc/passwd", "", "snapshots/"]),
    "shape": st.sampled_from([[8, 1, 5, 5], [], [0], [3]]),
})
event_record = st.fixed_dictionaries({
    "type": st.just("event"), "name": st.sampled_from(["test_eval", "resume", "note", ""]), "step": odd_ints,
    "time": odd_floats, "data": st.one_of(st.none(), st.fixed_dictionaries({}, optional={
        "split_id": st.one_of(st.text(max_size=5), odd_ints, st.none()), "uses": st.one_of(odd_ints, odd_floats)})),
})


@st.composite
def run_records(draw) -> list[dict]:
    records, step = [], 1
    for k in range(1, draw(st.integers(0, 5)) + 1):
        rec = draw(step_record(step))
        step += max(len(rec["step"]), 1)
        records.append(rec)
        extra = st.one_of(epoch_record(k), layer_record(), snapshot_record, event_record)
        records.extend(draw(st.lists(extra, max_size=3)))
    # the JSON codec, as on disk: non-finite floats become "NaN"/"Infinity" tokens and come back
    return [json.loads(runfile.dumps_line(r)) for r in records]


meta_strategy = st.fixed_dictionaries({"schema": st.just(1)}, optional={
    "num_classes": st.sampled_from([None, 0, 1, 2, 10, -3, 10**9, "ten", True, 2.5, math.nan]),
    "config": st.fixed_dictionaries({}, optional={
        "lr": odd_floats, "batch_size": st.one_of(odd_ints, st.just("big")), "reg": odd_floats,
        "num_classes": st.sampled_from([10, "x", None])}),
    "model": st.sampled_from([None, {}, {"layers": []}, {"layers": [{"name": "conv1", "type": "Conv2d"}]},
                              {"layers": "x"}, {"layers": [1, None, "a", {"name": 1, "type": None, "params": None}]},
                              {"layers": [{"name": "fc", "type": "Linear", "params": {"weight": [10, "x"]}}]}]),
})
status_strategy = st.fixed_dictionaries({}, optional={
    "state": st.sampled_from(["running", "finished", "crashed", "stopped", "unknown", "", "weird"]),
    "heartbeat": st.one_of(odd_floats, st.none(), st.just("yesterday")),
    "start_time": odd_floats, "step": odd_ints, "pid": st.sampled_from([None, 1, -1, "x"]),
})


def assert_well_formed(findings: list) -> None:
    for f in findings:
        assert f.rule in RULE_IDS, f.rule
        assert f.severity in SEVERITIES, f.severity
        assert isinstance(f.title, str) and f.title
        assert isinstance(f.message, str) and f.message
        assert isinstance(f.fix, list) and all(isinstance(x, str) for x in f.fix), f.fix
        assert f.step is None or isinstance(f.step, int)
        assert f.epoch is None or isinstance(f.epoch, int)
        assert isinstance(f.evidence, dict)
        line = runfile.dumps_line(f.to_dict())  # what findings.jsonl and --json write: must serialize
        assert json.loads(line)["rule"] == f.rule


def _no_rule_switched_off(caught: list) -> None:
    broken = [str(w.message) for w in caught if issubclass(w.category, RuleWarning)]
    assert not broken, broken


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@FUZZ
@given(records=run_records(), meta=meta_strategy, status=status_strategy, now=st.sampled_from([None, 0.0, 2e9]))
def test_fuzz_posthoc_diagnose(tmp_path, records, meta, status, now):
    batch = records_to_batch(records)
    run = RunData(steps=batch.steps, epochs=batch.epochs, layers=batch.layers, snapshots=batch.snapshots,
                  events=batch.events, corrupt_lines=batch.corrupt_lines, path=Path(tmp_path), meta=meta,
                  status=status, findings=[])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        findings = diagnose(run, now=now)
    _no_rule_switched_off(caught)
    assert_well_formed(findings)
    assert len({f.rule for f in findings}) == len(findings)  # one current finding per rule


@FUZZ
@given(records=run_records(), meta=meta_strategy, status=status_strategy, cuts=st.lists(st.integers(0, 40),
                                                                                         max_size=4))
def test_fuzz_online_updates(tmp_path, records, meta, status, cuts):
    diagnoser = OnlineDiagnoser(meta, run_dir=tmp_path)
    bounds = sorted({0, len(records), *(c for c in cuts if c < len(records))})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for lo, hi in zip(bounds, bounds[1:] + [len(records)], strict=True):  # the last update may be empty
            new = diagnoser.update(records_to_batch(records[lo:hi]), status=status, now=2e9)
            assert_well_formed(new)
        current = diagnoser.findings
    _no_rule_switched_off(caught)
    assert_well_formed(current)


def _small_run() -> RunData:
    batch = records_to_batch([json.loads(runfile.dumps_line(r)) for r in [
        {"type": "steps", "step": list(range(1, 201)), "time": [1.7e9 + i for i in range(200)],
         "loss": [2.3 * math.exp(-i / 50) for i in range(200)], "lr": [0.1] * 200},
        {"type": "epoch", "epoch": 1, "step": 200, "time": 1.7e9 + 200,
         "metrics": {"train_acc": 0.9, "val_acc": 0.6, "train_loss": 0.2, "val_loss": 0.9}},
        {"type": "layers", "step": 100, "time": 1.7e9 + 100,
         "stats": {"fc": {"kind": "weight", "w_norm": 1.0, "g_norm": 1e-9, "update_ratio": 1e-9},
                   "r": {"kind": "relu", "dead_frac": 0.99}}}]])
    return RunData(batch.steps, batch.epochs, batch.layers, batch.snapshots, batch.events, meta={"num_classes": 10},
                   status={"state": "finished"})


def test_any_finite_threshold_never_crashes_the_rules():
    """A threshold given on the command line is a number, but any number: the rules must not raise."""
    from babysit.rules import THRESHOLDS

    run, failures = _small_run(), []
    for name in THRESHOLDS:
        for value in (0.0, -1.0, 1e308, -1e308, 1e-300, 0.5):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    assert_well_formed(diagnose(run, {name: value}))
                    _no_rule_switched_off(caught)
                except Exception as e:  # noqa: BLE001 - collect them all
                    failures.append(f"{name}={value}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", ["flat_window", "overfit_patience"])
def test_infinite_threshold_is_refused_or_harmless(name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            findings = diagnose(_small_run(), {name: math.inf})
        except ValueError:
            return  # refused with a message: fine
    _no_rule_switched_off(caught)
    assert_well_formed(findings)


@pytest.mark.parametrize("meta", [{"model": "x"}, {"model": [1]}, {"config": "x"}, {"config": [1]},
                                  {"model": {"layers": [{"name": "fc", "type": "Linear", "params": "x"}]}}],
                         ids=["model str", "model list", "config str", "config list", "layer params str"])
def test_meta_with_the_wrong_types(meta):
    batch = records_to_batch([json.loads(runfile.dumps_line(r)) for r in [
        {"type": "steps", "step": list(range(1, 101)), "time": [1.7e9 + i for i in range(100)],
         "loss": [2.3 * math.exp(-i / 50) for i in range(100)], "lr": [0.1] * 100},
        {"type": "layers", "step": 100, "time": 1.7e9 + 100,
         "stats": {"fc": {"kind": "weight", "w_norm": 1.0, "g_norm": 0.1, "update_ratio": 1e-3},
                   "r": {"kind": "relu", "dead_frac": 0.2}}}]])
    run = RunData(batch.steps, batch.epochs, batch.layers, batch.snapshots, batch.events,
                  meta={"schema": 1, **meta}, status={"state": "finished"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        findings = diagnose(run)
    _no_rule_switched_off(caught)
    assert_well_formed(findings)
