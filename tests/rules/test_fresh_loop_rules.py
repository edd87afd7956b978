"""Rule changes found by the fresh user loops (benchmarks/userloops/fresh_loops.py), each on a small real
training run recorded through the hooks, with its healthy counterpart quiet:

- optimizer.step() taken while no layer holds a gradient (a forward under torch.no_grad() "fixed" with
  loss.requires_grad_(), zero_grad() between backward() and step()) is frozen_parameters, not a lr question;
- a weight penalty that crushes the weights to zero is regularization_too_strong, not lr_too_high;
- an (N, 1) prediction against (N,) targets in a regression loss is loss_mismatch;
- a distillation loss (kl_div first) has no ln(C) start: no init_loss_mismatch.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from userloops import digits, findings

import babysit
from babysit.rules.bugs import _cross_broadcast

pytestmark = pytest.mark.filterwarnings("error::rules.engine.RuleWarning")

WARN = ("warning", "critical")


@pytest.fixture(scope="module")
def data():
    return digits()


def _loop(run_dir, model, opt, x, y, *, steps=150, bs=32, order="zero_backward_step", no_grad_forward=False,
          loss_fn=F.cross_entropy, num_classes=10, config=None, epoch_every=30):
    """A user's loop: `order` is where zero_grad sits; the loss is passed to run.step every iteration."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    with babysit.Run(run_dir, num_classes=num_classes, config=config or {}) as run:
        run.watch(model, opt)
        correct = count = 0
        for i in range(steps):
            idx = torch.randint(0, len(x), (bs,), generator=g)
            if order == "zero_backward_step":
                opt.zero_grad()
            if no_grad_forward:
                with torch.no_grad():
                    out = model(x[idx])
            else:
                out = model(x[idx])
            loss = loss_fn(out, y[idx])
            if no_grad_forward:
                loss.requires_grad_()
            loss.backward()
            if order == "backward_zero_step":
                opt.zero_grad()
            opt.step()
            run.step(loss)
            if num_classes:
                correct += int((out.argmax(1) == y[idx]).sum())
            count += bs
            if (i + 1) % epoch_every == 0 and num_classes:
                run.epoch(train_acc=correct / count)
                correct = count = 0
    return run_dir


def _mlp(d_in=64, c=10, hidden=64, depth=1):
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for k in range(depth):
        layers += [nn.Linear(d_in if k == 0 else hidden, hidden), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, c))


# ------------------------------------------------------------------ no gradient anywhere
@pytest.mark.parametrize("bug", ["backward_zero_step", "no_grad_forward"])
def test_steps_without_any_gradient_are_frozen_parameters(tmp_path, data, bug):
    x, y = data
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    kw = {"no_grad_forward": True} if bug == "no_grad_forward" else {"order": bug}
    found = findings(_loop(tmp_path / "run", model, opt, x, y, **kw))
    f = found.get("frozen_parameters")
    assert f is not None and f.severity == "warning", {r: (g.severity, g.message) for r, g in found.items()}
    assert f.fix_ids[0] == "check_requires_grad"
    assert f.evidence["no_gradient"] == f.evidence["parameters"]
    assert "no layer held a gradient" in f.message
    # the zero update ratio is explained by it, not a lead of its own
    ur = found.get("update_ratio")
    assert ur is None or ur.root_cause == "frozen_parameters"


def test_the_same_loop_with_zero_grad_in_place_is_quiet(tmp_path, data):
    x, y = data
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    found = findings(_loop(tmp_path / "run", model, opt, x, y))
    assert "frozen_parameters" not in found
    assert not [f for f in found.values() if f.severity in WARN], {r: f.message for r, f in found.items()}


# ------------------------------------------------------------------ regularization_too_strong
def _circles():
    from sklearn.datasets import make_circles

    x, y = make_circles(1200, noise=0.1, factor=0.5, random_state=0)
    x = torch.tensor(x, dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0), torch.tensor(y)


def test_crushing_weight_decay_is_regularization_too_strong_not_lr_too_high(tmp_path):
    x, y = _circles()
    model = _mlp(2, 2, 64, depth=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1.0)
    found = findings(_loop(tmp_path / "run", model, opt, x, y, steps=300, num_classes=2))
    f = found.get("regularization_too_strong")
    assert f is not None and f.severity == "warning", {r: (g.severity, g.message) for r, g in found.items()}
    assert f.fix_ids == ["lower_reg"] and f.evidence["regularization"] == 1.0
    assert f.evidence["w_norm_last"] < 0.2 * f.evidence["w_norm_first"]
    assert "lr_too_high" not in found
    for rule in ("dead_units", "flat_loss", "underfitting", "chance_accuracy"):
        if rule in found and found[rule].severity in WARN:
            assert found[rule].root_cause == "regularization_too_strong", (rule, found[rule].message)


def test_a_usual_weight_decay_that_learns_is_quiet(tmp_path):
    x, y = _circles()
    model = _mlp(2, 2, 64, depth=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    found = findings(_loop(tmp_path / "run", model, opt, x, y, steps=300, num_classes=2))
    assert "regularization_too_strong" not in found
    assert not [f for f in found.values() if f.severity in WARN], {r: f.message for r, f in found.items()}


# ------------------------------------------------------------------ loss_mismatch: broadcast shapes
def _regression():
    torch.manual_seed(0)
    x = torch.randn(800, 10)
    y = x @ torch.randn(10) + 0.1 * torch.randn(800)
    return x, (y - y.mean()) / y.std()


@pytest.mark.filterwarnings("ignore:Using a target size")
def test_n_by_1_predictions_against_n_targets_are_loss_mismatch(tmp_path):
    x, y = _regression()  # y is (N,), the model gives (N, 1)
    model = _mlp(10, 1, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    found = findings(_loop(tmp_path / "run", model, opt, x, y, loss_fn=F.mse_loss, num_classes=None))
    f = found.get("loss_mismatch")
    assert f is not None and f.severity == "warning", {r: (g.severity, g.message) for r, g in found.items()}
    assert f.fix_ids == ["match_target_shape"] and f.evidence["broadcast_shape"] == [32, 32]


def test_matching_regression_shapes_are_quiet(tmp_path):
    x, y = _regression()
    model = _mlp(10, 1, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    found = findings(_loop(tmp_path / "run", model, opt, x, y[:, None], loss_fn=F.mse_loss, num_classes=None))
    assert "loss_mismatch" not in found
    assert not [f for f in found.values() if f.severity in WARN], {r: f.message for r, f in found.items()}


def test_cross_broadcast_only_for_a_product_of_shapes():
    assert _cross_broadcast([64, 1], [64]) == [64, 64]
    assert _cross_broadcast([64], [64, 1]) == [64, 64]
    assert _cross_broadcast([64, 1], [64, 1]) is None
    assert _cross_broadcast([64, 3], [64, 1]) is None  # the target expands along the outputs: no N x N
    assert _cross_broadcast([64, 3], [32]) is None  # would not broadcast: the loss raised
    assert _cross_broadcast([], [64]) is None


# ------------------------------------------------------------------ init_loss_mismatch: distillation
def test_distillation_kl_loss_claims_no_ln_c_start(tmp_path, data):
    x, y = data
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    topt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(400):
        idx = torch.randint(0, len(x), (64,))
        loss = F.cross_entropy(teacher(x[idx]), y[idx])
        topt.zero_grad()
        loss.backward()
        topt.step()
    t = 4.0
    student = _mlp(64, 10, 32)
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(2)
    losses = []
    with babysit.Run(tmp_path / "run", num_classes=10) as run:
        run.watch(student, opt)
        for i in range(150):
            idx = torch.randint(0, len(x), (32,), generator=g)
            with torch.no_grad():
                soft = F.softmax(teacher(x[idx]) / t, 1)
            out = student(x[idx])
            loss = 0.9 * t * t * F.kl_div(F.log_softmax(out / t, 1), soft, reduction="batchmean") \
                + 0.1 * F.cross_entropy(out, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss)
            losses.append(loss.item())
            if (i + 1) % 30 == 0:
                with torch.no_grad():
                    run.epoch(train_acc=(student(x[:500]).argmax(1) == y[:500]).float().mean().item())
    assert losses[0] > 1.5 * math.log(10)  # far above ln(C): what init_loss_mismatch used to warn about
    found = findings(tmp_path / "run")
    assert "init_loss_mismatch" not in found, found["init_loss_mismatch"].message
    assert not [f for f in found.values() if f.severity in WARN], {r: f.message for r, f in found.items()}
