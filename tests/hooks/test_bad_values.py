"""A bad value costs only itself: each kind, passed in the middle of a real (tiny) run, is converted or dropped
with one warning naming it, and every other value around it is written and readable (issue 11 items 2, 3, 7).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import pathlib
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from babysit import hooks
from babysit.monitor import runfile
from babysit.monitor.reader import load_run

STEPS = 60
BAD_AT = 30


def _babysit_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "babysit" in str(w.message)]


def _run(run_dir, inject, steps: int = STEPS, **run_kwargs) -> tuple[hooks.Run, list[str]]:
    """A real training loop recording `k` = the step number at every step and an epoch every 10 steps;
    `inject(run, step, loss)` replaces the ordinary calls at step BAD_AT (it returns True when it did)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with hooks.Run(run_dir, num_classes=3, on_critical=None, flush_interval=0.0, **run_kwargs) as run:
            run.watch(model, opt, every=5)
            for step in range(1, steps + 1):
                idx = torch.randint(0, len(x), (32,))
                losses = nn.functional.cross_entropy(model(x[idx]), y[idx], reduction="none")
                loss = losses.mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if not (step == BAD_AT and inject(run, step, losses)):
                    run.step(loss=loss, k=float(step))
                if step % 10 == 0:
                    run.epoch(train_loss=loss.detach(), val_loss=float(step), val_acc=0.5)
    return run, _babysit_warnings(caught)


def _assert_nothing_else_lost(run_dir, run, skip_step_row: bool = False) -> None:
    data = load_run(run_dir)
    assert data.status["state"] == "finished" and data.status["step"] == STEPS and data.corrupt_lines == 0
    steps = data.steps
    expected = [s for s in range(1, STEPS + 1) if not (skip_step_row and s == BAD_AT)]
    assert steps["step"].tolist() == expected
    assert steps["loss"].notna().all()
    others = steps[steps["step"] != BAD_AT]
    assert others["k"].tolist() == others["step"].astype(float).tolist()  # nothing shifted onto another step
    assert data.epochs["epoch"].tolist() == list(range(1, STEPS // 10 + 1))
    assert data.epochs["val_acc"].notna().sum() >= STEPS // 10 - 1
    assert {1, 25, 30, 35, 60} <= set(data.layers["step"])  # the layer records of the flushes around it
    assert run.enabled


# ---------------------------------------------------------------------------------------------- run.step
def test_a_vector_loss_records_its_mean_and_says_so_once(run_dir):
    seen = {}

    def inject(run, step, losses):
        seen["mean"] = float(losses.mean())
        run.step(loss=losses, k=float(step))
        run.step(loss=losses.detach(), k=float(step) + 0.5)  # a second vector loss: no second warning
        return True

    run, messages = _run(run_dir, inject)
    assert len(messages) == 1 and "loss is a tensor of 32 values" in messages[0] and "mean" in messages[0]
    data = load_run(run_dir)
    row = data.steps[data.steps["step"] == BAD_AT]
    assert row["loss"].iloc[0] == pytest.approx(seen["mean"], rel=1e-6)
    assert data.steps["step"].tolist() == list(range(1, STEPS + 2))


@pytest.mark.parametrize(
    ("value", "recorded", "said"),
    [
        ("n/a", None, "str ('n/a'), not a number: dropped"),
        (10**400, math.inf, "integer too large for a float"),
        (np.array([1.0, 3.0]), 2.0, "ndarray of 2 values: recorded its mean"),
        (torch.tensor([1.0, 3.0]), 2.0, "tensor of 2 values"),
        (np.float32(0.25), 0.25, None),
        (np.int64(7), 7.0, None),
        (pathlib.Path("/tmp/x"), None, "PosixPath"),
        (datetime.datetime(2024, 1, 1), None, "datetime"),
        (b"\x00\xff", None, "bytes"),
        (object(), None, "an object"),
        ([1, 2, 3], 2.0, "list of 3 values"),
        (torch.tensor([]), None, "empty tensor"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_a_bad_scalar_in_run_step_costs_only_itself(run_dir, value, recorded, said):
    def inject(run, step, losses):
        run.step(loss=losses.mean(), k=float(step), bad=value)
        return True

    run, messages = _run(run_dir, inject)
    _assert_nothing_else_lost(run_dir, run)
    data = load_run(run_dir)
    if said is None:
        assert messages == []
    else:
        assert len(messages) == 1 and "run.step: bad is" in messages[0] and said in messages[0], messages
    if recorded is None:
        assert "bad" not in data.steps or data.steps["bad"].isna().all()
    else:
        row = data.steps[data.steps["step"] == BAD_AT]
        assert row["bad"].iloc[0] == pytest.approx(recorded)
        assert data.steps.loc[data.steps["step"] != BAD_AT, "bad"].isna().all()  # on its own step only


def test_a_loss_that_is_not_a_number_drops_that_row_only(run_dir):
    def inject(run, step, losses):
        run.step(loss="oops", k=float(step))
        return True

    run, messages = _run(run_dir, inject)
    assert len(messages) == 1 and "loss is a str" in messages[0]
    _assert_nothing_else_lost(run_dir, run, skip_step_row=True)


def test_a_name_with_a_lone_surrogate_keeps_later_flushes_readable(run_dir):
    def inject(run, step, losses):
        run.step(loss=losses.mean(), k=float(step), **{"acc\udc80": 0.5})
        return True

    run, messages = _run(run_dir, inject)
    assert len(messages) == 1 and "not valid Unicode" in messages[0]
    _assert_nothing_else_lost(run_dir, run)
    assert load_run(run_dir).steps["acc\ufffd"].notna().sum() == 1
    for line in (run_dir / runfile.EVENTS).read_bytes().splitlines():
        json.loads(line.decode("utf-8"))  # every line is valid UTF-8 JSON


# ---------------------------------------------------------------------------------------------- run.epoch
def test_missing_epoch_metrics_are_absent_not_nan(run_dir):
    """Validation every 3rd epoch: the other epochs carry no val_loss key at all, and no warning."""
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with hooks.Run(run_dir, num_classes=3, on_critical="stop", flush_interval=0.0) as run:
            for epoch in range(1, 10):
                for _ in range(5):
                    run.step(loss=1.0 / epoch)
                if epoch % 3 == 0:
                    run.epoch(train_loss=1.0 / epoch, train_acc=0.5, val_loss=1.2 / epoch, val_acc=0.5)
                elif epoch % 3 == 1:
                    run.epoch(train_loss=1.0 / epoch, train_acc=0.5)
                else:
                    run.epoch(train_loss=1.0 / epoch, train_acc=0.5, val_loss=None, val_acc=None)
    assert _babysit_warnings(caught) == []
    records = [json.loads(line) for line in (run_dir / runfile.EVENTS).read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert ["val_loss" in r["metrics"] for r in epochs] == [e % 3 == 0 for e in range(1, 10)]
    data = load_run(run_dir)
    assert not run.should_stop and data.status["state"] == "finished"
    if "nonfinite_metrics" in data.epochs:
        assert all(t == () for t in data.epochs["nonfinite_metrics"])


def test_a_real_nan_metric_is_recorded_as_nan(run_dir):
    with hooks.Run(run_dir, on_critical=None) as run:
        run.step(loss=1.0)
        run.epoch(train_loss=1.0, val_loss=float("nan"))
    (line,) = [r for r in map(json.loads, (run_dir / runfile.EVENTS).read_text().splitlines()) if r["type"] == "epoch"]
    assert line["metrics"] == {"train_loss": 1.0, "val_loss": "NaN"}
    epochs = load_run(run_dir).epochs
    if "nonfinite_metrics" in epochs:
        assert epochs["nonfinite_metrics"].iloc[0] == ("val_loss",)


@pytest.mark.parametrize("value", ["n/a", 10**400, np.array([0.5, 0.7]), object()], ids=lambda v: type(v).__name__)
def test_a_bad_epoch_metric_costs_only_itself(run_dir, value):
    def inject(run, step, losses):
        run.step(loss=losses.mean(), k=float(step))
        run.epoch(train_loss=0.5, val_acc=value, val_loss=1.0)
        return True

    run, messages = _run(run_dir, inject)
    assert len(messages) == 1 and "run.epoch: val_acc is" in messages[0]
    data = load_run(run_dir)
    bad = data.epochs[data.epochs["step"] == BAD_AT]
    assert bad["train_loss"].iloc[0] == 0.5 and bad["val_loss"].iloc[0] == 1.0
    assert data.epochs["epoch"].tolist() == list(range(1, STEPS // 10 + 2))


# ---------------------------------------------------------------------------------------------- run.log_event
def test_log_event_values_convert_and_never_switch_the_writer_off(run_dir):
    def inject(run, step, losses):
        run.step(loss=losses.mean(), k=float(step))
        run.log_event("odd", f32=np.float32(1.5), path=pathlib.Path("/data/x"), when=datetime.datetime(2024, 5, 1),
                      raw=b"\xff\x00", huge=10**400, t=torch.tensor(2.0), v=torch.tensor([1.0, 2.0]),
                      obj=object(), **{"na\udc80me": 1})
        return True

    run, messages = _run(run_dir, inject)
    _assert_nothing_else_lost(run_dir, run)
    assert messages and all("run.log_event('odd')" in m for m in messages)
    assert not any("disabled" in m for m in messages)
    (event,) = [e for e in load_run(run_dir).events if e.get("name") == "odd"]
    data = event["data"]
    assert data["f32"] == 1.5 and data["path"] == "/data/x" and data["when"] == "2024-05-01T00:00:00"
    assert data["t"] == 2.0 and data["v"] == [1.0, 2.0] and data["huge"] == "Infinity"
    assert isinstance(data["raw"], str) and isinstance(data["obj"], str) and data["na\ufffdme"] == 1


# ---------------------------------------------------------------------------------------------- config
@dataclasses.dataclass
class _Config:
    lr: float = 0.1
    out: pathlib.Path = pathlib.Path("/runs")
    layers: tuple = (64, 32)


@pytest.mark.parametrize(
    "config", [argparse.Namespace(lr=0.1, out=pathlib.Path("/runs"), layers=(64, 32)), _Config()],
    ids=["Namespace", "dataclass"],
)
def test_config_as_namespace_or_dataclass_stores_its_fields(run_dir, config):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with hooks.Run(run_dir, config=config, on_critical=None) as run:
            run.step(loss=1.0)
    assert _babysit_warnings(caught) == []
    assert load_run(run_dir).meta["config"] == {"lr": 0.1, "out": "/runs", "layers": [64, 32]}
