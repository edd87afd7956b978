"""The training loop end to end, in-process, one short run per option."""

from __future__ import annotations

import json
import math

import pytest
import torch

from babysit.monitor.cli import main
from babysit.monitor.reader import load_run
from babysit.trainer.checkpoint import CHECKPOINT, load_checkpoint
from babysit.trainer.train import train


def test_convnet_run_records_everything_and_learns(quick_cfg):
    cfg = quick_cfg(model="convnet", epochs=3, lr=0.05)
    result = train(cfg)
    assert result["state"] == "finished" and result["val_acc"] > 0.85 and result["steps"] == 3 * 17
    run = load_run(cfg.run_dir)
    assert run.meta["config"]["lr"] == 0.05 and run.meta["config"]["reg"] == 1e-4  # what the search view reads
    assert list(run.epochs["epoch"]) == [1, 2, 3]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "epoch_loss", "lr"} <= set(run.epochs.columns)
    assert len(run.steps) == 51 and run.steps["loss"].iloc[0] == pytest.approx(math.log(10), rel=0.1)
    assert run.status["state"] == "finished"
    blob = load_checkpoint(f"{cfg.run_dir}/{CHECKPOINT}")
    assert blob["classes"] == [str(i) for i in range(10)] and "head.weight" in blob["model"]


@pytest.mark.parametrize("options", [
    {"optimizer": "sgd", "lr": 0.5}, {"optimizer": "nesterov"}, {"optimizer": "adam", "lr": 0.003},
    {"loss": "svm", "lr": 0.01}, {"reg_type": "l1", "reg": 1e-3}, {"reg_type": "elastic", "reg_bias": True},
    {"max_norm": 1.0}, {"dropout": 0.3}, {"init": "he", "bias_init": 0.01}, {"init": "xavier"},
    {"hidden": "64,32"}, {"normalize": "channel-mean", "std": True},
    {"model": "convnet", "crop_pad": 1, "lr": 0.05}, {"flip": True},  # flips are wrong for digits, but run
    {"model": "resnet", "width": 8, "lr": 0.05},
    {"amp": "bf16", "model": "convnet", "channels_last": "on", "width": 4, "lr": 0.1},  # bf16 is slow on CPUs
])
def test_each_option_trains(quick_cfg, options):
    result = train(quick_cfg(epochs=2, **options))
    assert result["state"] == "finished", result["reason"]
    assert result["val_acc"] > 0.3 and math.isfinite(result["train_loss"])  # chance is 0.1; two short epochs


def test_max_norm_holds_after_training(quick_cfg):
    cfg = quick_cfg(max_norm=0.5, lr=0.3)
    train(cfg)
    state = load_checkpoint(f"{cfg.run_dir}/{CHECKPOINT}")["model"]
    assert state["fc1.weight"].norm(dim=1).max() <= 0.5 + 1e-5


@pytest.mark.parametrize("schedule,check", [
    ("step", lambda lr: lr[17 * 2] == pytest.approx(0.01)),  # x0.1 after lr_step=2 epochs
    ("cosine", lambda lr: lr[-1] < 0.002 and lr[0] == pytest.approx(0.1)),
    ("exp", lambda lr: lr[17] == pytest.approx(0.1 * 0.97)),
])
def test_schedule_shows_in_the_recorded_lr(quick_cfg, schedule, check):
    cfg = quick_cfg(schedule=schedule, lr_step=2, epochs=3)
    train(cfg)
    assert check(list(load_run(cfg.run_dir).steps["lr"]))


def test_warmup_ramps_the_lr(quick_cfg):
    cfg = quick_cfg(warmup=10)
    train(cfg)
    lr = list(load_run(cfg.run_dir).steps["lr"])
    assert lr[0] == pytest.approx(0.01) and lr[9] == pytest.approx(0.1) and lr[12] == pytest.approx(0.1)


def test_toy_set_with_the_lectures_two_layer_net(quick_cfg):
    result = train(quick_cfg(dataset="circle", samples=400, epochs=30, lr=0.1, batch_size=16))
    assert result["val_acc"] >= 0.9


def test_divergence_stops_the_run_even_without_the_hooks_rules(quick_cfg, monkeypatch):
    monkeypatch.setattr("babysit.trainer.train.CHECK_EVERY", 5)
    cfg = quick_cfg(lr=50.0, epochs=5, on_critical="warn")  # warn: the hooks never stop it; the trainer must
    result = train(cfg)
    assert result["state"] == "stopped" and result["steps"] < 17
    assert "non-finite" in result["reason"] or "exceeded" in result["reason"]
    assert json.loads(open(f"{cfg.run_dir}/status.json").read())["state"] == "stopped"


def test_divergence_check_off(quick_cfg):
    result = train(quick_cfg(lr=50.0, epochs=1, max_loss_ratio=0.0, on_critical="warn"))
    assert result["state"] == "finished" and result["steps"] == 17


def test_compile_wraps_the_model(quick_cfg, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or m)
    train(quick_cfg(compile=True))
    assert len(compiled) == 1


def test_refuses_a_directory_that_holds_a_run(quick_cfg):
    cfg = quick_cfg()
    train(cfg)
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg)


@pytest.mark.parametrize("argv,message", [
    (["--lr", "-1"], "--lr must be"),
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--hidden", "a,b"], "--hidden"),
    (["--dataset", "xor", "--model", "convnet"], "needs images"),
    (["--dataset", "xor", "--model", "mlp", "--flip"], "need images"),
    (["--model", "mlp", "--freeze", "conv9"], "fc1"),
    (["--linear-probe"], "--init-from"),
    (["--init-from", "/nonexistent.pt"], "no checkpoint"),
    (["--dropout", "1.5"], "--dropout"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    code = main(["train", "--run-dir", str(tmp_path / "r"), "--epochs", "1", "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_cli_trains_and_reports(tmp_path, capsys):
    code = main(["train", "--model", "mlp", "--epochs", "1", "--run-dir", str(tmp_path / "r"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "val acc" in out and "run written to" in out
