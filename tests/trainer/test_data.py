"""Datasets, the stratified split, split ids and train-only preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from babysit.trainer.config import TrainConfig
from babysit.trainer.data import Preprocess, load_splits, split_id, stratified_split
from babysit.trainer.datasets import load_examples
from babysit.trainer.toy import make_toy


def test_split_is_stratified_disjoint_complete_and_seeded():
    y = np.repeat(np.arange(5), [100, 50, 40, 30, 20])
    train, val, test = stratified_split(y, 0.2, 0.2, seed=0)
    assert len(set(train) | set(val) | set(test)) == len(y) == len(train) + len(val) + len(test)
    for c, n in zip(range(5), [100, 50, 40, 30, 20], strict=True):
        assert (y[val] == c).sum() == round(0.2 * n) and (y[test] == c).sum() == round(0.2 * n)
    again = stratified_split(y, 0.2, 0.2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    assert not np.array_equal(stratified_split(y, 0.2, 0.2, seed=1)[2], test)
    assert not np.array_equal(np.sort(train), train)  # train order is shuffled (overfit-20 takes the first 20)


def test_split_refuses_a_class_too_small_to_split():
    with pytest.raises(ValueError, match="too few"):
        stratified_split(np.array([0, 0, 0, 0, 1, 1]), 0.2, 0.2, seed=0)


def test_split_id_names_dataset_seed_and_fractions():
    base = TrainConfig()
    assert split_id(base) == split_id(TrainConfig(lr=1.0, model="mlp"))  # hyperparameters do not matter
    others = [TrainConfig(seed=1), TrainConfig(test_frac=0.3), TrainConfig(dataset="circle"),
              TrainConfig(train_ratio=0.5)]
    assert len({split_id(base), *(split_id(c) for c in others)}) == 5
    assert split_id(TrainConfig(dataset="circle", noise=0.1)) != split_id(TrainConfig(dataset="circle"))


def test_digits_fast_path_matches_sklearn():
    from sklearn.datasets import load_digits

    ex = load_examples(TrainConfig())
    ref = load_digits()
    assert ex.x.shape == (1797, 1, 8, 8) and ex.x.dtype == np.float32
    np.testing.assert_allclose(ex.x[:, 0], ref.images / 16.0, rtol=1e-6)
    np.testing.assert_array_equal(ex.y, ref.target)


def test_test_split_is_locked_away_and_mean_comes_from_train_only():
    cfg = TrainConfig()
    s = load_splits(cfg)
    assert s.x_test is None and s.y_test is None
    assert (len(s.y_train), len(s.y_val)) == (1079, 359)  # 20% per class, rounded per class
    # the mean image is the training split's: after subtraction the train mean is zero, the val mean is not
    assert s.x_train.mean(0).abs().max() < 1e-5
    assert s.x_val.mean(0).abs().max() > 1e-3
    ex = load_examples(cfg)
    train_idx, _, test_idx = stratified_split(ex.y, 0.2, 0.2, cfg.seed)
    torch.testing.assert_close(s.preprocess.mean, torch.from_numpy(ex.x[train_idx].mean(0)))
    full = load_splits(cfg, with_test=True)
    assert len(full.y_test) == 359
    np.testing.assert_array_equal(full.y_test.numpy(), ex.y[test_idx])
    assert s.split_id == full.split_id


def test_channel_mean_and_std_options():
    pre = load_splits(TrainConfig(normalize="channel-mean", std=True)).preprocess
    assert pre.mean.shape == (1, 1, 1) and pre.std.shape == (1, 1, 1)
    s = load_splits(TrainConfig(std=True))
    assert s.preprocess.std.shape == (1, 8, 8)
    std = s.x_train.std(0)
    varying = s.preprocess.std != 1.0  # constant pixels (the digits' corners) keep scale 1
    assert torch.allclose(std[varying], torch.ones_like(std[varying]), atol=1e-4)
    none = load_splits(TrainConfig(normalize="none"))
    assert none.x_train.min() >= 0  # raw pixels in [0, 1]


def test_preprocess_none_keeps_shape_for_features():
    x = torch.randn(10, 2)
    pre = Preprocess.fit(x, "none", use_std=False)
    torch.testing.assert_close(pre(x), x)


@pytest.mark.parametrize("name", ["circle", "xor", "gauss", "spiral"])
def test_toy_sets_are_seeded_two_class_points(name):
    x, y = make_toy(name, 200, 0.0, seed=3)
    assert x.shape == (200, 2) and x.dtype == np.float32 and set(np.unique(y)) == {0, 1}
    assert np.abs(x).max() < 1.6  # divided by 5: about unit size
    x2, y2 = make_toy(name, 200, 0.0, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_toy_noise_follows_the_playground():
    x, y = make_toy("circle", 400, 0.0, seed=0)
    np.testing.assert_array_equal(y, (np.hypot(x[:, 0], x[:, 1]) < 0.5).astype(int))  # radius 2.5 / 5
    xn, yn = make_toy("circle", 400, 0.5, seed=0)
    assert (yn != (np.hypot(xn[:, 0], xn[:, 1]) < 0.5)).mean() > 0.05  # noise flips labels near the boundary
    _, yx = make_toy("xor", 400, 0.0, seed=0)
    assert 0.3 < yx.mean() < 0.7


def test_train_ratio_sets_the_split():
    s = load_splits(TrainConfig(dataset="spiral", samples=400, train_ratio=0.5))
    assert len(s.y_train) == 200 and len(s.y_val) == 100 and s.input_shape == (2,)


def _digit_folder(root, classes=(0, 1, 2), per_class=15, fmt="npy"):
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in classes:
        (root / f"digit{c}").mkdir(parents=True)
        for i, img in enumerate(d.images[d.target == c][:per_class]):
            a = (img * 15).astype(np.uint8)
            if fmt == "npy":
                np.save(root / f"digit{c}" / f"{i}.npy", a)
            else:
                from PIL import Image

                Image.fromarray(a).save(root / f"digit{c}" / f"{i}.png")
    return root


def test_folder_of_npy_images(tmp_path):
    root = _digit_folder(tmp_path / "data")
    (root / "digit0" / "notes.txt").write_text("ignored")
    s = load_splits(TrainConfig(dataset=f"folder:{root}"))
    assert s.classes == ["digit0", "digit1", "digit2"] and s.input_shape == (1, 8, 8)
    assert len(s.y_train) + len(s.y_val) == 45 - 9


def test_folder_of_png_images_mixed_gray_and_colour(tmp_path):
    from PIL import Image

    root = _digit_folder(tmp_path / "data", fmt="png")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "digit1" / "red.png")
    ex = load_examples(TrainConfig(dataset=f"folder:{root}"))
    assert ex.x.shape == (46, 3, 8, 8) and ex.x.max() <= 1.0
    resized = load_examples(TrainConfig(dataset=f"folder:{root}", image_size=16))
    assert resized.x.shape == (46, 3, 16, 16)


@pytest.mark.parametrize("problem,message", [
    ("corrupt", "cannot read"), ("size", "--image-size"), ("one_class", "two class"), ("missing", "not a directory"),
])
def test_folder_errors_are_one_line(tmp_path, problem, message):
    root = tmp_path / "data"
    if problem != "missing":
        _digit_folder(root, classes=(0,) if problem == "one_class" else (0, 1))
    if problem == "corrupt":
        (root / "digit0" / "broken.png").write_bytes(b"not an image")
    if problem == "size":
        np.save(root / "digit1" / "big.npy", np.zeros((16, 16), np.uint8))
    with pytest.raises(ValueError, match=message) as err:
        load_examples(TrainConfig(dataset=f"folder:{root}"))
    assert "\n" not in str(err.value)


def test_unknown_and_unavailable_datasets():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_examples(TrainConfig(dataset="imagenet"))
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="torchvision is not installed"):
            load_examples(TrainConfig(dataset="torchvision:MNIST"))
