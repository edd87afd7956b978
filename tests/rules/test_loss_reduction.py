"""The loss of a uniform guess is ln(C) per example: what the rules compare with depends on how the loop adds
the loss up. reduction="sum" makes it N x ln(C); a total with other terms (an auxiliary loss, a penalty) is
judged by its categorical term, which the hooks see when the loss function returns. Real small runs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from userloops import digits, findings

import babysit
from babysit.monitor.reader import load_run

pytestmark = pytest.mark.filterwarnings("error::rules.engine.RuleWarning")

WARN = ("warning", "critical")


@pytest.fixture(scope="module")
def data():
    return digits()


def _mlp(head_scale: float = 1.0) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        model[2].weight.mul_(head_scale)
    return model


def _loop(run_dir, model, x, y, loss_of, lr: float, steps: int = 240, bs: int = 32):
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        correct = count = 0
        for i in range(steps):
            idx = torch.randint(0, len(x), (bs,), generator=g)
            out = model(x[idx])
            loss = loss_of(out, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss)
            correct += int((out.argmax(1) == y[idx]).sum())
            count += bs
            if (i + 1) % 40 == 0:
                run.epoch(train_acc=correct / count)
                correct = count = 0
    return run_dir


def test_the_hooks_record_the_reduction_and_the_first_loss_terms_own_value(tmp_path, data):
    x, y = data
    criterion = nn.CrossEntropyLoss(reduction="sum")
    run_dir = _loop(tmp_path / "r", _mlp(), x, y, lambda o, t: criterion(o, t) + 100.0, lr=0.05 / 32, steps=20)
    fb = load_run(run_dir).meta["first_batch"]
    assert fb["loss_fn"] == "cross_entropy" and fb["reduction"] == "sum"
    assert fb["loss_value"] == pytest.approx(32 * math.log(10), rel=0.15)  # the term alone, not +100


def test_a_healthy_loop_with_reduction_sum_is_quiet(tmp_path, data):
    x, y = data
    found = findings(_loop(tmp_path / "r", _mlp(), x, y, lambda o, t: F.cross_entropy(o, t, reduction="sum"),
                           lr=0.05 / 32))
    assert not {r: f.severity for r, f in found.items() if f.severity in WARN}


def test_a_bad_init_is_still_seen_with_reduction_sum(tmp_path, data):
    x, y = data
    found = findings(_loop(tmp_path / "r", _mlp(head_scale=30.0), x, y,
                           lambda o, t: F.cross_entropy(o, t, reduction="sum"), lr=0.05 / 32 / 30, steps=60))
    f = found.get("init_loss_mismatch")
    assert f is not None and f.severity == "warning" and f.evidence["loss_scale"] == 32
    assert "32 x ln(10)" in f.message


def test_an_auxiliary_term_in_the_total_is_not_an_init_problem(tmp_path, data):
    """CE + a large activity penalty: the total starts far above ln(10), the classifier's own loss does not."""
    x, y = data
    found = findings(_loop(tmp_path / "r", _mlp(), x, y,
                           lambda o, t: F.cross_entropy(o, t) + 10.0 * (1 + o.pow(2).mean()), lr=0.02))
    assert "init_loss_mismatch" not in found or found["init_loss_mismatch"].severity not in WARN


def test_heavy_dropout_is_known_from_the_model_without_a_config(tmp_path, data):
    """nn.Dropout(0.95) in the model, nothing in the config: the hooks record each Dropout's p, so the first
    loss inflated by 1/(1 - p) puts lowering the dropout first, not the init."""
    x, y = data
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.95), nn.Linear(256, 10))
    with torch.no_grad():
        model[3].weight.mul_(3.0)
    run_dir = _loop(tmp_path / "r", model, x, y, F.cross_entropy, lr=0.01, steps=60)
    layers = load_run(run_dir).meta["model"]["layers"]
    assert [x["p"] for x in layers if x["type"] == "Dropout"] == [pytest.approx(0.95)]
    f = findings(run_dir).get("init_loss_mismatch")
    assert f is not None and f.fix_ids[0] == "lower_reg" and f.evidence["dropout"] == pytest.approx(0.95)
