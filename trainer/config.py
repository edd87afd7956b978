"""`TrainConfig`: every knob of the reference trainer, in one flat dataclass.

Torch-free on purpose: `babysit search` builds trial command lines from it without importing torch, and the
whole config is stored in the run's meta.json (the dashboard's search view reads `lr` and `reg` from there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

__all__ = ["TrainConfig", "TOY_DATASETS", "MODELS", "INITS", "LOSSES", "OPTIMIZERS", "SCHEDULES", "REG_TYPES",
           "NORMALIZE"]

TOY_DATASETS = ("circle", "xor", "gauss", "spiral")
MODELS = ("mlp", "convnet", "resnet")
INITS = ("default", "small", "xavier", "he")
LOSSES = ("softmax", "svm")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")
SCHEDULES = ("constant", "step", "exp", "sqrt", "inv", "expt", "cosine")
REG_TYPES = ("l2", "l1", "elastic")
NORMALIZE = ("mean-image", "channel-mean", "none")


@dataclass
class TrainConfig:
    # data
    dataset: str = "digits"  # digits | circle | xor | gauss | spiral | folder:PATH | torchvision:NAME
    samples: int = 500  # toy sets: points generated
    noise: float = 0.0  # toy sets: the playground's noise, 0..1 (its slider's 0..50 is 0..0.5 here)
    val_frac: float = 0.2
    test_frac: float = 0.2
    train_ratio: float | None = None  # if set: train fraction, val and test share the rest equally
    image_size: int | None = None  # folder:PATH: resize every image to this square size
    data_root: str = "data"  # torchvision:NAME
    download: bool = False  # torchvision:NAME
    normalize: str = "mean-image"
    std: bool = False
    crop_pad: int = 0  # live pad-and-crop jitter, in pixels (0: off)
    flip: bool = False  # live random horizontal flips
    # model
    model: str = "convnet"
    hidden: str = "50"  # mlp hidden sizes, comma separated
    width: int = 16  # convnet/resnet channels of the first layer
    activation: str = "relu"  # mlp: relu | tanh
    dropout: float = 0.0  # probability of dropping a unit (PyTorch's convention; the lecture's p is keep)
    init: str = "default"
    init_scale: float = 0.001  # std of the "small" init
    bias_init: float | None = None  # None: 0 for small/xavier/he, PyTorch's for default
    # loss and optimization
    loss: str = "softmax"
    optimizer: str = "momentum"
    momentum: float = 0.9
    lr: float = 0.05
    schedule: str = "constant"
    lr_gamma: float | None = None  # step: 0.1, exp: 0.97 per epoch
    lr_step: int = 10  # step: epochs between drops
    lr_decay: float = 1.0  # inv and expt: k in 1/(1+k t) and exp(-k t), t in epochs
    warmup: int = 0  # linear warmup over this many steps (combines with any schedule)
    # regularization
    reg: float = 1e-4
    reg_type: str = "l2"
    l1_ratio: float = 0.5  # elastic: reg * (l1_ratio |W|_1 + (1 - l1_ratio) 1/2 |W|^2)
    reg_bias: bool = False  # also penalize biases (and norm layers' parameters)
    max_norm: float = 0.0  # clamp each unit's incoming weight vector to this L2 norm (0: off)
    # run
    epochs: int = 20
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | off
    channels_last: str = "auto"  # auto (on CUDA for conv models) | on | off
    compile: bool = False
    max_loss_ratio: float = 3.0  # stop when the loss exceeds this multiple of the initial loss (0: off)
    step_delay: float = 0.0  # seconds to pause after each step, so a demo run can be watched live
    # transfer
    init_from: str | None = None
    freeze: str | None = None
    linear_probe: bool = False
    # recording
    run_dir: str = "runs/train"
    on_critical: str = "stop"
    heal: bool = False  # on a blow-up roll back to the last good state and fix (hooks/heal.py)
    progress: bool = True

    def fractions(self) -> tuple[float, float]:
        """(val, test) fractions of the whole dataset."""
        if self.train_ratio is not None:
            rest = 1.0 - self.train_ratio
            return rest / 2, rest / 2
        return self.val_frac, self.test_frac

    def hidden_sizes(self) -> tuple[int, ...]:
        try:
            sizes = tuple(int(h) for h in str(self.hidden).split(",") if h.strip())
        except ValueError:
            raise ValueError(f"--hidden takes comma-separated sizes like 100,50, not {self.hidden!r}") from None
        if any(h < 1 for h in sizes):
            raise ValueError(f"--hidden sizes must be at least 1: {self.hidden!r}")
        return sizes

    def validate(self) -> TrainConfig:
        """Raise ValueError with a one-line message for a bad combination; return self."""
        choices = {"model": MODELS, "init": INITS, "loss": LOSSES, "optimizer": OPTIMIZERS,
                   "schedule": SCHEDULES, "reg_type": REG_TYPES, "normalize": NORMALIZE,
                   "activation": ("relu", "tanh"), "amp": ("auto", "bf16", "off"),
                   "channels_last": ("auto", "on", "off"), "device": ("auto", "cpu", "cuda")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")
        for name in ("lr", "reg", "momentum", "noise", "init_scale", "max_norm", "lr_decay", "max_loss_ratio",
                     "step_delay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, not {value}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("--epochs and --batch-size must be at least 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout is a probability in [0, 1), not {self.dropout}")
        if not 0 <= self.l1_ratio <= 1:
            raise ValueError(f"--l1-ratio must be in [0, 1], not {self.l1_ratio}")
        val, test = self.fractions()
        if not (0 < val < 1 and 0 <= test < 1 and val + test < 1):
            raise ValueError(f"bad split fractions: val {val}, test {test} (val > 0, together below 1)")
        if self.crop_pad < 0 or self.warmup < 0 or self.lr_step < 1 or self.samples < 4 or self.width < 1:
            raise ValueError("--crop-pad and --warmup must be >= 0, --lr-step and --width >= 1, --samples >= 4")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError("--image-size must be at least 1")
        if self.linear_probe and not self.init_from:
            raise ValueError("--linear-probe needs --init-from CHECKPOINT (features of a trained net)")
        self.hidden_sizes()
        self._check_run_dir()
        return self

    def _check_run_dir(self) -> None:
        """The run directory (or the nearest existing folder above it) must be a directory, not a file."""
        if not self.run_dir:
            return
        p = Path(self.run_dir)
        for q in (p, *p.parents):
            if q.is_dir():
                return
            if q.exists() or q.is_symlink():
                where = "" if q == p else f": {q}"
                raise ValueError(f"--run-dir {self.run_dir} is not a directory{where}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """From a stored config (meta.json); unknown keys are ignored, missing ones take defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
