"""Where the examples come from: a dataset name -> all its examples as arrays, before any split.

    digits              scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, no download)
    circle|xor|gauss|spiral   the lecture demo's 2-D toy sets (trainer/toy.py)
    folder:PATH         one sub-folder per class (trainer/folder.py)
    torchvision:NAME    e.g. torchvision:MNIST, torchvision:CIFAR10, when torchvision is installed
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from babysit.trainer.config import TOY_DATASETS, TrainConfig

__all__ = ["Examples", "load_examples", "describe"]


@dataclass
class Examples:
    x: np.ndarray  # float32: (N, C, H, W) images or (N, D) features
    y: np.ndarray  # int64 class indices
    classes: list[str]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def _digits() -> Examples:
    # Read sklearn's bundled CSV directly: importing sklearn.datasets costs 2-3 s per process, and every
    # search trial is a process. Fall back to the public loader if the file ever moves.
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else None
    if csv is not None and csv.exists():
        with gzip.open(csv, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
        images, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, target = digits.images, digits.target
    x = (images.astype(np.float32) / 16.0)[:, None]
    return Examples(x, target.astype(np.int64), [str(i) for i in range(10)])


def _torchvision(name: str, root: str, download: bool) -> Examples:
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise ValueError("torchvision is not installed: pip install torchvision to use torchvision:NAME") from None
    cls = getattr(tvd, name, None)
    if cls is None:
        raise ValueError(f"torchvision has no dataset {name!r} (e.g. MNIST, FashionMNIST, CIFAR10)")
    xs, ys, classes = [], [], None
    for train in (True, False):  # our own stratified split is made from both official halves
        try:
            ds = cls(root, train=train, download=download)
        except TypeError:
            raise ValueError(f"torchvision:{name} has no train/test halves; use a folder:PATH instead") from None
        except RuntimeError as e:
            raise ValueError(f"torchvision:{name}: {str(e).splitlines()[0]} (under {root!r}; add --download)") from None
        data = np.asarray(ds.data)
        data = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)  # (N,H,W) or (N,H,W,C)
        xs.append(data.astype(np.float32) / (255.0 if data.dtype == np.uint8 else 1.0))
        ys.append(np.asarray(ds.targets, dtype=np.int64))
        classes = [str(c) for c in getattr(ds, "classes", [])]
    y = np.concatenate(ys)
    return Examples(np.concatenate(xs), y, classes or [str(i) for i in range(int(y.max()) + 1)])


def load_examples(cfg: TrainConfig) -> Examples:
    """Every example of cfg.dataset. Raises ValueError with a one-line message for a bad name or bad data."""
    name = cfg.dataset
    if name == "digits":
        return _digits()
    if name in TOY_DATASETS:
        from babysit.trainer.toy import make_toy

        x, y = make_toy(name, cfg.samples, cfg.noise, cfg.seed)
        return Examples(x, y, ["negative", "positive"])
    if name.startswith("folder:"):
        from babysit.trainer.folder import load_folder

        return Examples(*load_folder(name[len("folder:"):], cfg.image_size))
    if name.startswith("torchvision:"):
        return _torchvision(name[len("torchvision:"):], cfg.data_root, cfg.download)
    raise ValueError(
        f"unknown dataset {name!r}; use digits, {', '.join(TOY_DATASETS)}, folder:PATH or torchvision:NAME"
    )


def describe(cfg: TrainConfig) -> dict:
    """What identifies the examples (for the split id): the name, resolved paths, generator settings."""
    d: dict = {"dataset": cfg.dataset}
    if cfg.dataset in TOY_DATASETS:
        d.update(samples=cfg.samples, noise=cfg.noise, seed=cfg.seed)
    elif cfg.dataset.startswith("folder:"):
        d.update(dataset="folder:" + str(Path(cfg.dataset[len("folder:"):]).expanduser().resolve()),
                 image_size=cfg.image_size)
    return d
