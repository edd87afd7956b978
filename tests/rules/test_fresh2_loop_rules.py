"""Rule changes found by the second fresh batch of user loops (benchmarks/userloops/fresh2_loops.py), each on a
small real training run recorded through the hooks, with its healthy counterpart quiet:

- model.eval() for a validation pass at the end of epoch 1 and no model.train() after it: the probes stop
  seeing training-mode activations while the gradients go on, which is eval_mode_training mid-run;
- train accuracy that sits at chance (inputs and labels shuffled apart every epoch) is not underfitting's
  capacity question: a note, and chance_accuracy leads;
- a loss that goes NaN straight from near its floor (a hand-written log(1 - sigmoid)) puts guard_loss_math
  first, while one that rose first (an lr that keeps growing) keeps lower_lr_10x first.
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


def _acc(out, y) -> float:
    return (out.argmax(1) == y).float().mean().item()


def _show(found: dict) -> dict:
    return {r: (f.severity, f.message[:120]) for r, f in found.items()}


# --------------------------------------------------------------------------- eval mode mid-run
def _dropout_loop(run_dir, train_each_epoch: bool):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = digits()
    x, y, xv, yv = x[:400], y[:400], x[1400:], y[1400:]
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for _epoch in range(16):
            if train_each_epoch:
                model.train()
            perm = torch.randperm(len(x))
            for i in range(0, len(x), 32):
                idx = perm[i:i + 32]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
            model.eval()
            with torch.no_grad():
                out = model(xv)
            run.epoch(val_loss=F.cross_entropy(out, yv).item(), val_acc=_acc(out, yv))
    return run_dir


def test_eval_left_on_after_the_first_validation_is_eval_mode_training(tmp_path):
    found = findings(_dropout_loop(tmp_path / "run", train_each_epoch=False))
    f = found.get("eval_mode_training")
    assert f is not None and f.severity == "warning", _show(found)
    assert f.fix_ids[0] == "call_model_train"
    assert 10 <= f.step <= 20  # the first sampled step of epoch 2 (13 steps an epoch)
    assert "Dropout" in f.evidence["layers"][0]


def test_the_same_loop_with_model_train_each_epoch_is_quiet(tmp_path):
    found = findings(_dropout_loop(tmp_path / "run", train_each_epoch=True))
    assert "eval_mode_training" not in found, _show(found)
    assert not [r for r, f in found.items() if f.severity in WARN], _show(found)


# --------------------------------------------------------------------------- train accuracy at chance
def _shuffle_loop(run_dir, apart: bool):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = digits()
    x, y, xv, yv = x[:1400], y[:1400], x[1400:], y[1400:]
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for _epoch in range(8):
            p = torch.randperm(len(x))
            x, y = x[p], y[torch.randperm(len(y))] if apart else y[p]
            tl = ta = n = 0.0
            for i in range(0, len(x), 32):
                out = model(x[i:i + 32])
                loss = F.cross_entropy(out, y[i:i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                tl, ta, n = tl + loss.item(), ta + _acc(out, y[i:i + 32]), n + 1
            with torch.no_grad():
                out = model(xv)
            run.epoch(train_loss=tl / n, train_acc=ta / n, val_loss=F.cross_entropy(out, yv).item(),
                      val_acc=_acc(out, yv))
    return run_dir


def test_train_accuracy_at_chance_is_not_underfitting(tmp_path):
    found = findings(_shuffle_loop(tmp_path / "run", apart=True))
    u = found.get("underfitting")
    assert u is None or u.severity == "info", _show(found)
    if u is not None:
        assert "at chance" in u.message
    c = found.get("chance_accuracy")
    assert c is not None and c.severity == "warning", _show(found)
    assert c.fix_ids[0] == "check_labels"


def test_the_same_loop_with_one_permutation_is_quiet(tmp_path):
    found = findings(_shuffle_loop(tmp_path / "run", apart=False))
    assert not [r for r, f in found.items() if f.severity in WARN], _show(found)


# --------------------------------------------------------------------------- NaN from the loss's own math
def _bce_loop(run_dir, guarded: bool):
    from sklearn.datasets import make_moons

    torch.set_num_threads(1)
    torch.manual_seed(0)
    xs, ys = make_moons(1000, noise=0.05, random_state=0)
    x = torch.tensor((xs - xs.mean(0)) / xs.std(0), dtype=torch.float32)
    y = torch.tensor(ys, dtype=torch.float32)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    eps = 1e-7 if guarded else 0.0
    with babysit.Run(run_dir, num_classes=2) as run:
        run.watch(model, opt)
        for _epoch in range(40):  # unguarded, NaN at step ~950 (epoch 30)
            perm = torch.randperm(len(x))
            for i in range(0, len(x), 32):
                idx = perm[i:i + 32]
                p = torch.sigmoid(model(x[idx]).squeeze(1))
                loss = -(y[idx] * torch.log(p + eps) + (1 - y[idx]) * torch.log(1 - p + eps)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss.item())
            with torch.no_grad():
                vacc = ((model(x).squeeze(1) > 0).float() == y).float().mean().item()
            run.epoch(train_acc=vacc)
    return run_dir


def test_nan_from_a_loss_near_its_floor_puts_the_loss_math_first(tmp_path):
    found = findings(_bce_loop(tmp_path / "run", guarded=False))
    f = found.get("nonfinite_loss")
    assert f is not None and f.severity == "critical", _show(found)
    assert f.fix_ids[0] == "guard_loss_math", f.fix_ids
    assert f.evidence.get("from_low_loss") is True


def test_the_same_loss_with_an_epsilon_is_quiet(tmp_path):
    found = findings(_bce_loop(tmp_path / "run", guarded=True))
    assert not [r for r, f in found.items() if f.severity in WARN], _show(found)


def test_nan_after_a_rising_loss_keeps_lower_lr_first(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = digits()
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.5)
    with babysit.Run(tmp_path / "run", num_classes=10) as run:
        run.watch(model, opt, scheduler=sched)
        for _epoch in range(18):
            for i in range(0, len(x), 32):
                loss = F.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
            sched.step()
    f = findings(tmp_path / "run").get("nonfinite_loss")
    assert f is not None and f.fix_ids[0] == "lower_lr_10x", f and f.fix_ids
    assert not f.evidence.get("from_low_loss")
