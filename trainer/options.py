"""The trainer's command-line options, declared once: `babysit train`, `sanity` and `search` share them, and
`to_argv` turns a config back into the `babysit train` command line a search trial (or a cluster job) runs.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from babysit.trainer import config as C
from babysit.trainer.config import TrainConfig

__all__ = ["add_train_options", "config_from_args", "to_argv"]

# field -> (group, help, extra argparse kwargs). Flags are the field names with dashes.
OPTIONS: dict[str, tuple[str, str, dict]] = {
    "dataset": ("data", "digits | circle | xor | gauss | spiral | folder:PATH | torchvision:NAME", {}),
    "samples": ("data", "toy 2-D sets: number of points (default 500)", {}),
    "noise": ("data", "toy 2-D sets: noise as in the playground, 0..1 (its slider 0..50 is 0..0.5; default 0)", {}),
    "val_frac": ("data", "validation fraction, stratified (default 0.2)", {}),
    "test_frac": ("data", "test fraction, locked away for `babysit evaluate --test` (default 0.2)", {}),
    "train_ratio": ("data", "train fraction; val and test share the rest equally (overrides the two above)",
                    {"type": float}),
    "image_size": ("data", "folder:PATH: resize images to this square size", {"type": int}),
    "data_root": ("data", "torchvision:NAME: where the dataset lives (default ./data)", {}),
    "download": ("data", "torchvision:NAME: download it if missing", {}),
    "normalize": ("data", "subtract the train split's mean image (default), per-channel mean, or nothing",
                  {"choices": C.NORMALIZE}),
    "std": ("data", "also divide by the train split's std (same granularity as the mean)", {}),
    "crop_pad": ("data", "live augmentation: pad by N pixels and crop back at a random offset (default 0: off)",
                 {}),
    "flip": ("data", "live augmentation: random horizontal flips (off by default; wrong for digits)", {}),
    "model": ("model", "mlp | convnet | resnet (default convnet)", {"choices": C.MODELS}),
    "hidden": ("model", "mlp hidden sizes, comma separated (default 50)", {}),
    "width": ("model", "convnet/resnet channels in the first layer (default 16)", {}),
    "activation": ("model", "mlp activation (default relu)", {"choices": ("relu", "tanh")}),
    "dropout": ("model", "dropout probability of dropping a unit (default 0)", {}),
    "init": ("model", "default (PyTorch) | small (gaussian * --init-scale) | xavier | he", {"choices": C.INITS}),
    "init_scale": ("model", "std of the small gaussian init (default 0.001)", {}),
    "bias_init": ("model", "bias value, e.g. 0.01 for ReLU nets (default 0; PyTorch's for --init default)",
                  {"type": float}),
    "loss": ("optimization", "softmax (cross-entropy) | svm (multiclass hinge)", {"choices": C.LOSSES}),
    "optimizer": ("optimization", "sgd | momentum | nesterov | adam (default momentum)",
                  {"choices": C.OPTIMIZERS}),
    "momentum": ("optimization", "momentum for momentum/nesterov (default 0.9)", {}),
    "lr": ("optimization", "learning rate (default 0.05)", {}),
    "schedule": ("optimization", "constant | step | exp | sqrt | inv | expt | cosine", {"choices": C.SCHEDULES}),
    "lr_gamma": ("optimization", "step: factor per drop (0.1); exp: factor per epoch (0.97)", {"type": float}),
    "lr_step": ("optimization", "step: epochs between drops (default 10)", {}),
    "lr_decay": ("optimization", "inv/expt: k in 1/(1+kt), exp(-kt), t in epochs (default 1)", {}),
    "warmup": ("optimization", "linear warmup over N steps, with any schedule (default 0)", {}),
    "reg": ("regularization", "regularization strength lambda (default 1e-4)", {}),
    "reg_type": ("regularization", "l2 (lambda/2 |W|^2) | l1 (lambda |W|_1) | elastic", {"choices": C.REG_TYPES}),
    "l1_ratio": ("regularization", "elastic: share of L1 (default 0.5)", {}),
    "reg_bias": ("regularization", "also regularize biases (excluded by default)", {}),
    "max_norm": ("regularization", "clamp each unit's incoming weights to this L2 norm (default 0: off)", {}),
    "epochs": ("run", "passes over the training split (default 20)", {}),
    "batch_size": ("run", "examples per step, over all processes (default 64)", {}),
    "seed": ("run", "seed for the split, init and batches (default 0)", {}),
    "device": ("run", "auto (CUDA when present) | cpu | cuda", {"choices": ("auto", "cpu", "cuda")}),
    "amp": ("run", "auto (bf16 autocast on CUDA) | bf16 | off", {"choices": ("auto", "bf16", "off")}),
    "channels_last": ("run", "auto (on CUDA for conv models) | on | off", {"choices": ("auto", "on", "off")}),
    "compile": ("run", "torch.compile the model", {}),
    "max_loss_ratio": ("run", "quit when the loss exceeds this multiple of the initial loss (default 3; 0 off)",
                       {}),
    "step_delay": ("run", "pause this many seconds after each step, to watch a run live (demos; default 0)", {}),
    "init_from": ("transfer", "start from this checkpoint's weights (matching names and shapes)", {}),
    "freeze": ("transfer", "freeze the layers up to and including this named layer", {}),
    "linear_probe": ("transfer", "fit a logistic regression on penultimate features instead of SGD", {}),
    "run_dir": ("run", "where to record the run (default runs/<time>)", {}),
    "on_critical": ("run", "what a critical finding does to the run (default: stop it)",
                    {"choices": ("warn", "stop", "raise", "heal")}),
    "heal": ("run", "self-healing: on a blow-up roll back to the last good state, lower the lr 10x (then clip "
             "gradients, then warm up) and go on; stop after 3 attempts (same as --on-critical heal)", {}),
}

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_options(parser: argparse.ArgumentParser, skip: set[str] | frozenset[str] = frozenset()) -> None:
    """Add every trainer option (but those in `skip`), grouped as in `babysit train --help`."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, (group, help_text, extra) in OPTIONS.items():
        if name in skip:
            continue
        g = groups.get(group) or groups.setdefault(group, parser.add_argument_group(group))
        default = _DEFAULTS[name]
        kwargs: dict = {"dest": name, "help": help_text, **extra}
        if isinstance(default, bool):
            kwargs["action"] = "store_true"
        else:
            kwargs.setdefault("type", type(default) if default is not None else str)
            kwargs["default"] = default
        g.add_argument(_flag(name), **kwargs)


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    """A TrainConfig from parsed options; options the parser did not have keep their defaults."""
    values = {name: getattr(args, name) for name in OPTIONS if hasattr(args, name)}
    values.update(overrides)
    return TrainConfig(**values)


def to_argv(cfg: TrainConfig, always: tuple[str, ...] = ("lr", "reg", "epochs", "seed", "run_dir"),
            skip: frozenset[str] = frozenset()) -> list[str]:
    """The `babysit train` options that reproduce cfg: every non-default value, plus those in `always`; none
    of those in `skip` (a command that does not take them, e.g. `babysit lr-find`)."""
    argv: list[str] = []
    for name in OPTIONS:
        if name in skip:
            continue
        value = getattr(cfg, name)
        if name not in always and value == _DEFAULTS[name]:
            continue
        if isinstance(_DEFAULTS[name], bool):
            if value:
                argv.append(_flag(name))
        elif value is not None:
            argv += [_flag(name), repr(value) if isinstance(value, float) else str(value)]
    if not cfg.progress:
        argv.append("--no-progress")
    return argv
