"""Models, initialization, losses, regularization, schedules and optimizers, each against a reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from babysit.trainer.config import TrainConfig
from babysit.trainer.initialize import initialize
from babysit.trainer.losses import initial_loss, softmax_loss, svm_loss
from babysit.trainer.models import build_model, layer_names
from babysit.trainer.optim import make_optimizer
from babysit.trainer.regularize import apply_max_norm, penalized, penalty
from babysit.trainer.schedules import lr_factor, make_scheduler


@pytest.mark.parametrize("model", ["mlp", "convnet", "resnet"])
def test_models_map_images_to_class_scores_and_end_in_a_head(model):
    net = build_model(TrainConfig(model=model), (1, 8, 8), 10)
    assert net(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    assert layer_names(net)[-1] == "head" and isinstance(net.head, nn.Linear)


def test_mlp_hidden_sizes_and_activation():
    net = build_model(TrainConfig(model="mlp", hidden="100,20", activation="tanh"), (2,), 2)
    assert [n for n in layer_names(net) if n.startswith("fc")] == ["fc1", "fc2"]
    assert net.fc1.out_features == 100 and net.fc2.out_features == 20 and isinstance(net.tanh1, nn.Tanh)
    assert build_model(TrainConfig(model="mlp"), (1, 8, 8), 10).fc1.out_features == 50  # the lecture's toy


def test_convnet_needs_images_and_pools_large_ones():
    with pytest.raises(ValueError, match="needs images"):
        build_model(TrainConfig(model="convnet", dataset="circle"), (2,), 2)
    net = build_model(TrainConfig(model="convnet"), (3, 64, 64), 5)
    assert net.head.in_features == 32 * 4 * 4
    with pytest.raises(ValueError, match="--hidden"):
        TrainConfig(hidden="50,x").validate()


def test_dropout_is_active_in_training_and_off_in_eval():
    net = build_model(TrainConfig(model="mlp", dropout=0.5), (1, 8, 8), 10)
    assert isinstance(net.dropout1, nn.Dropout) and net.dropout1.p == 0.5
    x = torch.randn(4, 1, 8, 8)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))
    assert not any(isinstance(m, nn.Dropout) for m in build_model(TrainConfig(model="mlp"), (2,), 2).modules())


def test_init_schemes_set_the_documented_scales():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(400, 300))
    initialize(lin, "small", scale=0.001)
    assert lin[0].weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert torch.all(lin[0].bias == 0)
    initialize(lin, "xavier")
    assert lin[0].weight.std().item() == pytest.approx(math.sqrt(2 / 700), rel=0.05)
    initialize(lin, "he", bias=0.01)
    assert lin[0].weight.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.05)
    assert torch.all(lin[0].bias == 0.01)  # small positive bias for ReLU units
    initialize(lin, "default")
    assert torch.all(lin[0].bias == 0.01)  # default init does not touch what the user did not ask for
    with pytest.raises(ValueError):
        initialize(lin, "orthogonal")


def test_losses_at_zero_scores_read_chance():
    y = torch.tensor([0, 3, 9, 2])
    zeros = torch.zeros(4, 10)
    assert softmax_loss(zeros, y).item() == pytest.approx(math.log(10)) == initial_loss("softmax", 10)
    assert svm_loss(zeros, y).item() == pytest.approx(9.0) == initial_loss("svm", 10)


def test_svm_loss_matches_the_cs231n_reference():
    torch.manual_seed(0)
    s, y = torch.randn(6, 4, requires_grad=True), torch.tensor([0, 1, 2, 3, 0, 1])
    expected = sum(max(0.0, s[i, j].item() - s[i, y[i]].item() + 1) for i in range(6) for j in range(4) if j != y[i])
    loss = svm_loss(s, y)
    assert loss.item() == pytest.approx(expected / 6, rel=1e-6)
    loss.backward()  # differentiable
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert svm_loss(s.bfloat16(), y).dtype == torch.float32


def test_penalties_follow_the_lecture_formulas():
    net = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]))
        net[0].bias.fill_(10.0)
    params = penalized(net)
    assert len(params) == 1  # biases excluded by default
    sq, ab = 1 + 4 + 0.25 + 9 + 1, 1 + 2 + 0.5 + 3 + 1
    assert penalty(params, 0.1, "l2").item() == pytest.approx(0.1 * 0.5 * sq)
    assert penalty(params, 0.1, "l1").item() == pytest.approx(0.1 * ab)
    assert penalty(params, 0.1, "elastic", 0.3).item() == pytest.approx(0.1 * (0.3 * ab + 0.7 * 0.5 * sq))
    with_bias = penalized(net, include_bias=True)
    assert penalty(with_bias, 0.1, "l2").item() == pytest.approx(0.1 * 0.5 * (sq + 200))
    assert penalty(params, 0.0, "l2") is None


def test_max_norm_clamps_each_units_incoming_weights():
    w = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    conv = torch.ones(2, 1, 3, 3)  # each filter has norm 3
    apply_max_norm([w, conv, torch.ones(5)], 1.0)
    assert w[0].norm().item() == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(w[1], torch.tensor([0.3, 0.4]))  # under the limit: untouched
    assert conv[0].norm().item() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("kind,step,expected", [
    ("constant", 500, 1.0),
    ("step", 9 * 10, 1.0), ("step", 10 * 10, 0.1), ("step", 25 * 10, 0.01),  # x0.1 every 10 epochs
    ("exp", 3 * 10, 0.97 ** 3), ("exp", 35, 0.97 ** 3),  # per epoch, staircase
    ("sqrt", 250, math.sqrt(0.5)), ("sqrt", 500, 0.0),
    ("inv", 20, 1 / 3), ("expt", 20, math.exp(-2)),
    ("cosine", 250, 0.5), ("cosine", 0, 1.0),
])
def test_schedules(kind, step, expected):
    # 10 steps per epoch, 500 steps in all
    assert lr_factor(kind, step, 10, 500) == pytest.approx(expected)


def test_warmup_and_scheduler_write_the_optimizer_lr():
    assert lr_factor("constant", 0, 10, 100, warmup=4) == pytest.approx(0.25)
    assert lr_factor("constant", 3, 10, 100, warmup=4) == pytest.approx(1.0)
    assert lr_factor("step", 30, 10, 100, gamma=0.5, lr_step=1) == pytest.approx(0.125)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = make_scheduler(opt, "inv", 10, 100, decay=1.0)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_optimizers():
    p = [nn.Parameter(torch.zeros(2))]
    sgd, mom, nest, adam = (make_optimizer(n, p, 0.1) for n in ("sgd", "momentum", "nesterov", "adam"))
    assert sgd.defaults["momentum"] == 0 and mom.defaults["momentum"] == 0.9 and not mom.defaults["nesterov"]
    assert nest.defaults["nesterov"] and isinstance(adam, torch.optim.Adam)
    assert sgd.defaults.get("weight_decay", 0) == 0  # regularization lives in the loss
    with pytest.raises(ValueError, match="frozen"):
        make_optimizer("sgd", [], 0.1)


def test_models_under_bf16_autocast_and_channels_last():
    net = build_model(TrainConfig(model="resnet"), (1, 8, 8), 10).to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.bfloat16 and F.cross_entropy(out.float(), torch.zeros(4, dtype=torch.long)).isfinite()
