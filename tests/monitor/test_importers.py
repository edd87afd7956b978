"""Importers: TensorBoard event files and CSVs of metrics read into the RunData the rules diagnose.

The TensorBoard reader is tested on event files encoded here byte by byte (no tensorboard needed) and, where
the tensorboard package is installed, on logs written by torch's SummaryWriter.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from babysit.monitor.importers import detect, load_any, parse_map
from babysit.monitor.importers.names import epoch_metrics, normalize, resolve
from babysit.monitor.importers.tensorboard import layer_of_tag, read_events
from babysit.monitor.reader import RunReadError
from babysit.rules import diagnose


def _rules(run) -> dict[str, str]:
    return {f.rule: f.severity for f in diagnose(run)}


# --------------------------------------------------------------------------- a tiny event-file writer
def _varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def _field(num: int, wt: int, payload: bytes) -> bytes:
    key = _varint(num << 3 | wt)
    return key + (_varint(len(payload)) + payload if wt == 2 else payload)


def _scalar(tag: str, value: float) -> bytes:
    return _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value))


def _histo(tag: str, values: np.ndarray) -> bytes:
    v = np.asarray(values, dtype=float)
    h = b"".join(_field(n, 1, struct.pack("<d", x)) for n, x in
                 ((1, v.min()), (2, v.max()), (3, v.size), (4, v.sum()), (5, (v * v).sum())))
    return _field(1, 2, tag.encode()) + _field(5, 2, h)


def _event(step: int, values: list[bytes], wall: float = 1000.0) -> bytes:
    summary = b"".join(_field(1, 2, v) for v in values)
    body = _field(1, 1, struct.pack("<d", wall + step)) + _field(2, 0, _varint(step)) + _field(5, 2, summary)
    return struct.pack("<Q", len(body)) + b"\0\0\0\0" + body + b"\0\0\0\0"


def _write_events(path, events: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    version = _field(1, 1, struct.pack("<d", 999.0)) + _field(3, 2, b"brain.Event:2")
    path.write_bytes(struct.pack("<Q", len(version)) + b"\0" * 4 + version + b"\0" * 4 + b"".join(events))


def _loss_curve(n: int, nan_from: int | None = None) -> list[float]:
    return [2.3 * math.exp(-s / 40) + 0.05 * math.sin(s) + (math.nan if nan_from and s >= nan_from else 0.0)
            for s in range(n)]


# --------------------------------------------------------------------------- names
def test_default_names_cover_lightning_hf_keras_and_tensorboard_habits():
    assert resolve(["epoch", "step", "train_loss_step", "train_loss_epoch", "val_loss", "val_acc", "lr-SGD"]) == {
        "epoch": "epoch", "step": "step", "loss": "train_loss_step", "train_loss": "train_loss_epoch",
        "val_loss": "val_loss", "val_acc": "val_acc", "lr": "lr-SGD"}
    hf = resolve(["train/loss", "train/learning_rate", "train/epoch", "eval/loss", "eval/accuracy"])
    assert hf == {"loss": "train/loss", "lr": "train/learning_rate", "epoch": "train/epoch",
                  "val_loss": "eval/loss", "val_acc": "eval/accuracy"}
    keras = resolve(["loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"])
    assert keras == {"loss": "loss", "train_acc": "accuracy", "val_loss": "val_loss", "val_acc": "val_accuracy",
                     "lr": "learning_rate"}
    assert resolve(["Loss/train", "Loss/val"]) == {"loss": "Loss/train", "val_loss": "Loss/val"}
    assert normalize("Loss/Train-Step") == "loss_train_step"


def test_map_wins_over_defaults_and_names_what_they_miss():
    assert resolve(["loss", "my odd column"], {"val_acc": "my odd column"})["val_acc"] == "my odd column"
    assert resolve(["loss", "objective"], {"loss": "objective"})["loss"] == "objective"
    with pytest.raises(KeyError):
        resolve(["loss"], {"val_acc": "nope"})
    assert parse_map(["loss=train/loss", " val_acc = acc "]) == {"loss": "train/loss", "val_acc": "acc"}
    for bad in (["loss"], ["=x"], ["loss="]):
        with pytest.raises(ValueError):
            parse_map(bad)


def test_epoch_metrics_maps_a_trainers_names_to_ours():
    got = epoch_metrics({"train_loss_step": 1.0, "train_loss_epoch": 0.9, "val_loss": 1.1, "val_acc": 0.5,
                         "epoch": 3.0, "lr-SGD": 0.1})
    assert got["train_loss"] == 0.9 and got["val_loss"] == 1.1 and got["val_acc"] == 0.5
    assert "epoch" not in got and got["lr-SGD"] == 0.1
    assert epoch_metrics({"train_loss": 0.7})["train_loss"] == 0.7  # Lightning's per-step name at epoch end


# --------------------------------------------------------------------------- TensorBoard, hand-encoded
def test_event_file_with_a_planted_nan_yields_nonfinite_loss(tmp_path):
    losses = _loss_curve(120, nan_from=90)
    events = [_event(s, [_scalar("train/loss", v), _scalar("train/learning_rate", 0.5)])
              for s, v in enumerate(losses)]
    events += [_event(s, [_scalar("eval/loss", 1.0), _scalar("eval/accuracy", 0.6), _scalar("train/epoch", e)])
               for e, s in enumerate(range(29, 120, 30), start=1)]
    _write_events(tmp_path / "tb" / "events.out.tfevents.1.host", events)
    assert detect(tmp_path / "tb") == "tensorboard"
    run = load_any(tmp_path / "tb")
    assert run.meta["source"] == "tensorboard"
    assert list(run.steps["step"][:2]) == [1, 2]  # 0-based global steps become optimizer steps 1, 2, ...
    assert np.isnan(run.steps["loss"].iloc[95]) and run.steps["lr"].iloc[0] == 0.5
    assert list(run.epochs["epoch"]) == [1, 2, 3, 4] and list(run.epochs["val_acc"]) == pytest.approx([0.6] * 4)
    found = _rules(run)
    assert found.get("nonfinite_loss") == "critical"


def test_event_file_histograms_become_layer_statistics(tmp_path):
    rng = np.random.default_rng(0)
    w, g = rng.normal(size=(8, 4)), rng.normal(scale=1e-3, size=(8, 4))
    events = [_event(s, [_scalar("loss", 1.0 / (s + 1))]) for s in range(1, 40)]
    events += [_event(10, [_histo("fc1.weight", w), _histo("fc1.weight.grad", g), _histo("fc1.bias", w[0]),
                           _histo("activations/relu1", w)])]
    _write_events(tmp_path / "events.out.tfevents.2.host", events)
    run = load_any(tmp_path)
    row = run.layers.iloc[0]
    assert row["layer"] == "fc1" and row["step"] == 10 and len(run.layers) == 1
    assert row["w_norm"] == pytest.approx(np.linalg.norm(w))
    assert row["w_std"] == pytest.approx(w.std())
    assert row["g_norm"] == pytest.approx(np.linalg.norm(g))
    assert any("activations/relu1" in n for n in run.meta["import"]["notes"])


def test_tf2_tensor_scalars_are_read(tmp_path):
    def tensor_scalar(tag: str, value: float, packed_float: bool) -> bytes:
        if packed_float:  # DT_FLOAT in float_val
            tensor = _field(1, 0, _varint(1)) + _field(2, 2, b"") + _field(5, 2, struct.pack("<f", value))
        else:  # DT_DOUBLE in tensor_content
            tensor = _field(1, 0, _varint(2)) + _field(2, 2, b"") + _field(4, 2, struct.pack("<d", value))
        plugin = _field(1, 2, _field(1, 2, b"scalars"))
        return _field(1, 2, tag.encode()) + _field(9, 2, plugin) + _field(8, 2, tensor)

    _write_events(tmp_path / "events.out.tfevents.1.a",
                  [_event(s, [tensor_scalar("loss", 2.0 - s / 10, True), tensor_scalar("lr", 0.01, False)])
                   for s in range(1, 6)])
    run = load_any(tmp_path)
    assert list(run.steps["loss"]) == pytest.approx([1.9, 1.8, 1.7, 1.6, 1.5])
    assert list(run.steps["lr"]) == [0.01] * 5


def test_layer_of_tag():
    assert layer_of_tag("conv1.weight") == ("conv1", "weight")
    assert layer_of_tag("weights/conv1") == ("conv1", "weight")
    assert layer_of_tag("conv1.weight.grad") == ("conv1", "grad")
    assert layer_of_tag("gradients/block.0.conv") == ("block.0.conv", "grad")
    assert layer_of_tag("conv1.bias") is None and layer_of_tag("relu1") is None


def test_keras_split_dirs_and_add_scalars_dirs_are_one_run(tmp_path):
    keras = tmp_path / "keras"
    _write_events(keras / "train" / "events.out.tfevents.1.a",
                  [_event(e, [_scalar("epoch_loss", 1.0 - 0.1 * e), _scalar("epoch_accuracy", 0.5 + 0.1 * e)])
                   for e in range(4)])
    _write_events(keras / "validation" / "events.out.tfevents.1.b",
                  [_event(e, [_scalar("epoch_loss", 1.1 - 0.1 * e), _scalar("epoch_accuracy", 0.45 + 0.1 * e)])
                   for e in range(4)])
    run = load_any(keras)
    assert list(run.epochs["epoch"]) == [1, 2, 3, 4]
    assert list(run.epochs["val_acc"]) == pytest.approx([0.45, 0.55, 0.65, 0.75])
    assert list(run.epochs["train_loss"]) == pytest.approx([1.0, 0.9, 0.8, 0.7])
    assert run.meta["import"]["loss_per"] == "epoch"

    scal = tmp_path / "scalars"
    _write_events(scal / "events.out.tfevents.1.a", [_event(0, [_scalar("lr", 0.1)])])
    _write_events(scal / "Loss_train" / "events.out.tfevents.1.b",
                  [_event(s, [_scalar("Loss", 2.0 - s / 100)]) for s in range(50)])
    _write_events(scal / "Loss_val" / "events.out.tfevents.1.c", [_event(49, [_scalar("Loss", 1.9)])])
    run = load_any(scal)
    assert run.meta["import"]["columns"]["loss"] == "Loss/train"
    assert run.epochs["val_loss"].iloc[0] == pytest.approx(1.9)


def test_several_runs_in_one_directory_is_an_error_naming_them(tmp_path):
    for v in (0, 1):
        _write_events(tmp_path / f"version_{v}" / "events.out.tfevents.1.a", [_event(0, [_scalar("loss", 1.0)])])
    with pytest.raises(RunReadError, match="2 TensorBoard runs.*version_0"):
        load_any(tmp_path)


def test_truncated_last_record_and_garbage_records(tmp_path):
    path = tmp_path / "events.out.tfevents.3.host"
    good = [_event(s, [_scalar("loss", 1.0)]) for s in range(5)]
    garbage = struct.pack("<Q", 3) + b"\0" * 4 + b"\xff\xff\xff" + b"\0" * 4
    _write_events(path, good[:3] + [garbage] + good[3:] + [good[0][:-9]])
    records, corrupt = read_events(path)
    assert corrupt == 1 and len(records) == 5
    assert load_any(path).corrupt_lines == 1


def test_restart_overwrites_steps_and_session_start_purges(tmp_path):
    start = _field(1, 1, struct.pack("<d", 5.0)) + _field(2, 0, _varint(3)) + _field(7, 2, _field(1, 0, _varint(1)))
    first = [_event(s, [_scalar("loss", 9.0)]) for s in range(1, 8)]
    second = [struct.pack("<Q", len(start)) + b"\0" * 4 + start + b"\0" * 4]
    second += [_event(s, [_scalar("loss", 1.0)]) for s in range(3, 6)]
    _write_events(tmp_path / "events.out.tfevents.1.a", first)
    _write_events(tmp_path / "events.out.tfevents.2.a", second)
    run = load_any(tmp_path)
    assert list(run.steps["step"]) == [1, 2, 3, 4, 5]
    assert list(run.steps["loss"]) == [9.0, 9.0, 1.0, 1.0, 1.0]


# --------------------------------------------------------------------------- TensorBoard, real SummaryWriter
def test_summary_writer_log_with_exploding_then_nan_loss(tmp_path):
    pytest.importorskip("tensorboard")
    import torch
    from torch.utils.tensorboard import SummaryWriter

    fc = torch.nn.Linear(4, 3)
    with SummaryWriter(str(tmp_path / "tb")) as w:
        for s in range(150):
            loss = 2.3 * math.exp(-s / 50) if s < 100 else 2.3 * 10 ** ((s - 100) / 5)
            w.add_scalar("Loss/train", loss if s < 140 else math.nan, s)
            w.add_scalar("lr", 0.5, s)
            if s % 25 == 24:
                w.add_scalar("Loss/val", loss * 1.1, s)
                w.add_scalar("Accuracy/val", 0.5, s)
                w.add_scalar("epoch", s // 25, s)
            if s % 50 == 0:
                w.add_histogram("fc.weight", fc.weight, s)
                w.add_histogram("fc.weight.grad", fc.weight * 1e-3, s)
    run = load_any(tmp_path / "tb")
    found = _rules(run)
    assert found.get("loss_explosion") == "critical"
    assert found.get("nonfinite_loss") == "critical"
    assert len(run.steps) == 150 and list(run.epochs["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert run.layers["w_norm"].iloc[0] == pytest.approx(float(fc.weight.detach().norm()), rel=1e-5)


# --------------------------------------------------------------------------- CSV
LIGHTNING_HEADER = "epoch,step,lr-SGD,train_loss_step,val_loss,val_acc,train_loss_epoch,train_acc_epoch\n"


def _lightning_csv(path, epochs: int = 6, steps_per_epoch: int = 20, nan_at: int | None = None,
                   overfit: bool = False) -> None:
    rows = [LIGHTNING_HEADER]
    step = 0
    for e in range(epochs):
        for _ in range(steps_per_epoch):
            loss = 2.3 * math.exp(-step / 30) + 0.05
            rows.append(f"{e},{step},0.1,{'nan' if nan_at is not None and step >= nan_at else loss},,,,\n")
            step += 1
        train_acc = min(0.5 + 0.1 * e, 1.0)
        val_acc = 0.55 - (0.05 * e if overfit else -0.06 * e)
        rows.append(f"{e},{step - 1},,,{1.0 + (0.2 * e if overfit else -0.1 * e)},{val_acc},,\n")
        rows.append(f"{e},{step - 1},,,,,{loss},{train_acc}\n")
    path.write_text("".join(rows))


def test_lightning_csv_with_a_planted_nan(tmp_path):
    path = tmp_path / "metrics.csv"
    _lightning_csv(path, nan_at=70)
    run = load_any(path)
    assert run.meta["import"]["columns"]["loss"] == "train_loss_step"
    assert list(run.steps["step"][:3]) == [1, 2, 3]
    assert len(run.steps) == 120 and np.isnan(run.steps["loss"].to_numpy()[70:]).all()
    assert list(run.epochs["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert run.epochs["step"].iloc[0] == 20  # the validation of epoch 1 came after its 20th step
    assert _rules(run).get("nonfinite_loss") == "critical"


def test_lightning_csv_with_planted_overfitting(tmp_path):
    (tmp_path / "hparams.yaml").write_text("lr: 0.1\nnum_classes: 10\nmodel: {depth: 3}\n")
    _lightning_csv(tmp_path / "metrics.csv", epochs=8, overfit=True)
    run = load_any(tmp_path)  # a Lightning version directory
    assert run.meta["num_classes"] == 10 and run.meta["config"]["lr"] == 0.1
    found = _rules(run)
    assert found.get("overfitting") in ("warning", "critical")
    assert "nonfinite_loss" not in found and "loss_explosion" not in found


def test_empty_cells_are_missing_but_nan_text_is_a_nan(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("step,loss,val_loss\n0,1.0,\n1,,\n2,NaN,\n3,0.5,0.7\n")
    run = load_any(path)
    assert list(run.steps["step"]) == [1, 3, 4]
    assert np.isnan(run.steps["loss"].iloc[1]) and run.epochs["val_loss"].iloc[0] == 0.7


def test_history_csv_one_row_per_epoch(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,accuracy,val_loss,val_accuracy\n0,1.2,0.6,1.1,0.62\n1,0.8,0.8,0.9,0.7\n"
                    "2,0.5,0.9,1.0,0.7\n")
    run = load_any(path)
    assert run.meta["import"]["loss_per"] == "epoch"
    assert list(run.epochs["epoch"]) == [1, 2, 3] and list(run.epochs["train_loss"]) == [1.2, 0.8, 0.5]
    assert list(run.epochs["train_acc"]) == [0.6, 0.8, 0.9]
    assert run.meta["name"] == tmp_path.name  # a generic file name: the run is named by its directory


def test_map_names_a_tensorboard_csv_export(tmp_path):
    path = tmp_path / "run-train-tag-loss.csv"
    path.write_text("Wall time,Step,Value\n1700000000.5,1,2.3\n1700000001.5,2,inf\n1700000002.5,3,2.0\n")
    with pytest.raises(RunReadError, match="--map loss="):
        load_any(path)
    run = load_any(path, mapping={"loss": "Value"})
    assert list(run.steps["loss"]) == [2.3, math.inf, 2.0] and run.steps["time"].iloc[0] == 1700000000.5
    assert _rules(run).get("nonfinite_loss") == "critical"
    with pytest.raises(RunReadError, match="'nope'"):
        load_any(path, mapping={"loss": "nope"})


@pytest.mark.parametrize("text, message", [("", "empty"), ("a,b\n", "no rows"), ("step,x\n1,abc\n", "no loss")])
def test_unusable_csvs_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(RunReadError, match=message) as e:
        load_any(path)
    assert "\n" not in str(e.value)


def test_detect_and_dispatch(tmp_path, run_dir):
    from babysit import hooks

    with hooks.Run(run_dir, num_classes=3, on_critical=None) as run:
        run.step(loss=1.0)
    assert detect(run_dir) == "run"
    assert load_any(run_dir, num_classes=None).meta.get("source") is None
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(RunReadError, match="neither"):
        load_any(tmp_path / "x.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunReadError, match="not a babysit run"):
        load_any(tmp_path / "empty")
    with pytest.raises(RunReadError, match="no such"):
        load_any(tmp_path / "missing")
