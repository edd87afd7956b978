"""Rule changes found by the third fresh batch of user loops (benchmarks/userloops/fresh3_loops.py), each on a
small real training run recorded through the hooks, with its healthy counterpart quiet:

- a binary cross-entropy given targets outside [0, 1] (class indices cast to float for BCEWithLogitsLoss on a
  one-column head) has no minimum: loss_mismatch, with the classification-loss fix; 0/1 targets are quiet;
- a regression loss between softmax probabilities and one-hot targets (softmax + MSE) is a classification
  trained with a loss whose gradient vanishes through the softmax: loss_mismatch; cross_entropy on the logits
  of the same model is quiet;
- dropout 0.95 (p read as the keep probability): val accuracy far ABOVE a train accuracy stuck near chance is
  no overfitting gap but underfitting from regularization that acts only in training (lower_reg first, not
  'more capacity'), and the declared dropout, not the init, is what inflates the first loss; dropout 0.2 is
  quiet, and so is noise augmentation whose train accuracy sits well under val's but far above chance.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from userloops import digits, findings

import babysit

pytestmark = pytest.mark.filterwarnings("error::rules.engine.RuleWarning")

WARN = ("warning", "critical")


def _show(found: dict) -> dict:
    return {r: (f.severity, f.message[:120]) for r, f in found.items()}


# --------------------------------------------------------------------------- BCE on class indices
def _bce_loop(run_dir, class_indices: bool):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = digits()
    x, y = x[:1200], y[:1200]
    t = y.float() if class_indices else (y % 2).float()  # the user's BCE target: the digit, or its parity
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    with babysit.Run(run_dir, num_classes=10 if class_indices else 2) as run:
        run.watch(model, opt)
        for _epoch in range(3):
            perm = torch.randperm(len(x))
            for i in range(0, len(x), 32):
                idx = perm[i:i + 32]
                loss = loss_fn(model(x[idx]).squeeze(1), t[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
    return run_dir


def test_bce_on_float_class_indices_is_loss_mismatch(tmp_path):
    found = findings(_bce_loop(tmp_path / "run", class_indices=True))
    f = found.get("loss_mismatch")
    assert f is not None and f.severity == "warning", _show(found)
    assert f.fix_ids[0] == "classification_loss"
    assert f.evidence["targets_max"] == 9


def test_bce_on_zero_one_targets_is_quiet(tmp_path):
    found = findings(_bce_loop(tmp_path / "run", class_indices=False))
    assert "loss_mismatch" not in found, _show(found)
    assert not [r for r, f in found.items() if f.severity in WARN], _show(found)


# --------------------------------------------------------------------------- softmax + MSE on one-hot
def _softmax_loop(run_dir, mse: bool):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = digits()
    x, y, xv, yv = x[:1400], y[:1400], x[1400:], y[1400:]
    body = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    model = nn.Sequential(body, nn.Softmax(dim=1)) if mse else body
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for _epoch in range(4):
            perm = torch.randperm(len(x))
            for i in range(0, len(x), 32):
                idx = perm[i:i + 32]
                out = model(x[idx])
                loss = F.mse_loss(out, F.one_hot(y[idx], 10).float()) if mse else F.cross_entropy(out, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
            with torch.no_grad():
                acc = (model(xv).argmax(1) == yv).float().mean().item()
            run.epoch(val_acc=acc)
    return run_dir


def test_softmax_into_mse_against_one_hot_is_loss_mismatch(tmp_path):
    found = findings(_softmax_loop(tmp_path / "run", mse=True))
    f = found.get("loss_mismatch")
    assert f is not None and f.severity == "warning", _show(found)
    assert f.fix_ids[0] == "classification_loss" and "one-hot" in f.message


def test_cross_entropy_on_the_logits_is_quiet(tmp_path):
    found = findings(_softmax_loop(tmp_path / "run", mse=False))
    assert "loss_mismatch" not in found, _show(found)
    assert not [r for r, f in found.items() if f.severity in WARN], _show(found)


# --------------------------------------------------------------------------- dropout read as keep probability
def _dropout_loop(run_dir, p: float, declare: bool = False, seed: int = 1):
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    x, y = digits(normalize=False)
    x = (x - x[:1400].mean(0)) / x[:1400].std()  # the mean image off, one scale for all pixels
    x, y, xv, yv = x[:1400], y[:1400], x[1400:], y[1400:]
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(p), nn.Linear(128, 128), nn.ReLU(),
                          nn.Dropout(p), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with babysit.Run(run_dir, num_classes=10, config={"dropout": p} if declare else None) as run:
        run.watch(model, opt)
        for _epoch in range(6):
            model.train()
            perm = torch.randperm(len(x))
            ta = n = 0.0
            for i in range(0, len(x), 32):
                idx = perm[i:i + 32]
                out = model(x[idx])
                loss = F.cross_entropy(out, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                ta, n = ta + (out.argmax(1) == y[idx]).float().mean().item(), n + 1
            model.eval()
            with torch.no_grad():
                acc = (model(xv).argmax(1) == yv).float().mean().item()
            run.epoch(train_acc=ta / n, val_acc=acc)
    return run_dir


def test_dropout_095_is_underfitting_from_regularization(tmp_path):
    # no dropout declared in the config: val above train is the evidence of train-only regularization
    found = findings(_dropout_loop(tmp_path / "run", 0.95))
    u = found.get("underfitting")
    assert u is not None and u.severity == "warning", _show(found)
    assert u.evidence["val_above_train"] is True and u.fix_ids[0] == "lower_reg"
    assert "ABOVE train accuracy" in u.message


def test_a_declared_heavy_dropout_is_what_inflates_the_first_loss(tmp_path):
    # a seed whose first batch's loss is 3.8 = 1.6 x ln(10): the 20x scaling of the kept units at work
    found = findings(_dropout_loop(tmp_path / "run", 0.95, declare=True, seed=7))
    init = found.get("init_loss_mismatch")
    assert init is not None and init.severity == "warning", _show(found)
    assert init.fix_ids[0] == "lower_reg" and init.evidence["dropout"] == 0.95


def test_dropout_02_is_quiet(tmp_path):
    found = findings(_dropout_loop(tmp_path / "run", 0.2, declare=True))
    assert not [r for r, f in found.items() if f.severity in WARN], _show(found)


def _noise_augmented_loop(run_dir, std: float):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = digits(normalize=False)
    x = (x - x[:1400].mean(0)) / x[:1400].std()
    x, y, xv, yv = x[:1400], y[:1400], x[1400:], y[1400:]
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for _epoch in range(8):
            perm = torch.randperm(len(x))
            ta = n = 0.0
            for i in range(0, len(x), 32):
                idx = perm[i:i + 32]
                out = model(x[idx] + std * torch.randn_like(x[idx]))
                loss = F.cross_entropy(out, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                ta, n = ta + (out.argmax(1) == y[idx]).float().mean().item(), n + 1
            with torch.no_grad():
                acc = (model(xv).argmax(1) == yv).float().mean().item()
            run.epoch(train_acc=ta / n, val_acc=acc)
    return run_dir


def test_strong_augmentation_with_val_above_train_is_only_a_note(tmp_path):
    # noise at 2.5x the signal: train accuracy plateaus at ~0.45 on the noisy batches, the clean val set at ~0.89;
    # val above train, but train accuracy far above chance: augmentation doing its job, not a warning
    found = findings(_noise_augmented_loop(tmp_path / "run", 2.5))
    u = found.get("underfitting")
    assert u is None or u.severity == "info", _show(found)
    assert not [r for r, f in found.items() if f.severity in WARN], _show(found)
