"""Live augmentation: each example a jittered crop of its padded self, flips half the time."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from babysit.trainer.augment import augment, random_crop, random_flip


def test_crop_is_a_shifted_window_of_the_padded_image():
    torch.manual_seed(0)
    x = torch.randn(32, 2, 6, 6)
    pad = 2
    out = random_crop(x, pad)
    assert out.shape == x.shape
    padded = F.pad(x, (pad,) * 4)
    offsets = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                 if torch.equal(padded[i, :, dy:dy + 6, dx:dx + 6], out[i])]
        assert found, f"example {i} is not a window of its padded image"
        offsets.add(found[0])
    assert len(offsets) > 5  # each example gets its own jitter


def test_crop_pad_zero_is_identity_and_flip_mirrors_about_half():
    x = torch.randn(64, 1, 4, 4)
    assert random_crop(x, 0) is x
    torch.manual_seed(1)
    out = random_flip(x)
    same = [torch.equal(out[i], x[i]) for i in range(64)]
    mirrored = [torch.equal(out[i], x[i].flip(2)) for i in range(64)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 16 < sum(mirrored) < 48


def test_augment_is_reproducible_and_off_by_default():
    x = torch.randn(8, 1, 8, 8)
    assert torch.equal(augment(x), x)
    torch.manual_seed(5)
    a = augment(x, crop_pad=1, flip=True)
    torch.manual_seed(5)
    assert torch.equal(a, augment(x, crop_pad=1, flip=True))
