"""One option table for train, sanity and search; `to_argv` reproduces a config exactly."""

from __future__ import annotations

import argparse
from dataclasses import fields

from babysit.trainer import cli as train_cli
from babysit.trainer.config import TrainConfig
from babysit.trainer.options import OPTIONS, config_from_args, to_argv


def _parse(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    train_cli.configure(parser)
    args = parser.parse_args(argv)
    return config_from_args(args, progress=not args.no_progress)


def test_every_config_field_has_an_option():
    assert {f.name for f in fields(TrainConfig)} - set(OPTIONS) == {"progress"}


def test_to_argv_round_trips():
    cfg = TrainConfig(dataset="spiral", noise=0.25, train_ratio=0.6, model="mlp", hidden="64,32", dropout=0.1,
                      init="he", bias_init=0.01, loss="svm", optimizer="adam", lr=1.2345e-05, reg=3e-7,
                      schedule="step", lr_gamma=0.5, warmup=7, reg_type="elastic", reg_bias=True, max_norm=3.0,
                      epochs=4, seed=9, std=True, flip=False, run_dir="runs/x", progress=False)
    assert _parse(to_argv(cfg)) == cfg
    default = TrainConfig(run_dir="runs/y")
    assert _parse(to_argv(default)) == default
    assert to_argv(default) == ["--lr", "0.05", "--reg", "0.0001", "--epochs", "20", "--seed", "0",
                                "--run-dir", "runs/y"]
