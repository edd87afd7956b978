"""Initialization, activation and gradient-flow faults.

The lecture: small random weights, biases 0 (or slightly positive for ReLU); a ReLU that never fires is
dead for good; tanh and sigmoid saturate on large inputs and their gradients vanish through depth; too
large an init makes activations and gradients explode.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.faults.common import (
    cnn,
    digits,
    fit,
    mlp,
    open_run,
    relu_dead_fraction,
    saturated_fraction,
    seed_all,
    tabular,
)
from benchmarks.faults.registry import faulty

# a lead that sends the user to the lr, the data or the code when the net itself cannot learn
NOT_LR_OR_DATA = ("bad_labels", "unnormalized_input", "double_softmax", "skipped_optimizer_steps", "overfitting",
                  "noisy_weights", "lr_too_high", "update_ratio:high", "lr_too_low", "update_ratio:low")
DEAD = ("dead_units", "stalled_weights", "vanishing_gradients")
SATURATED_WRONG = ("bad_labels", "double_softmax", "skipped_optimizer_steps", "overfitting", "noisy_weights",
                   "lr_too_low", "update_ratio:low", "frozen_parameters")


def _init_(model: nn.Module, weight_std: float | None = None, bias: float | None = None, scale: float = 1.0):
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            with torch.no_grad():
                if weight_std is not None:
                    m.weight.normal_(0, weight_std)
                m.weight.mul_(scale)
                if bias is not None and m.bias is not None:
                    m.bias.fill_(bias)


@faulty("init", accept=DEAD, wrong=NOT_LR_OR_DATA, expect={"dead": (0.9, 1), "val_acc": (0, 0.2)})
def dead_relu_negative_bias_mlp(run_dir):
    """Hidden biases initialized to -5: every ReLU is dead from step 1, only the output bias learns."""
    seed_all(20)
    d = digits(flat=True)
    model = mlp([64, 128, 128, 10])
    _init_(model, bias=-5.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with open_run(run_dir, 10, lr=0.05, init="bias -5") as run:
        run.watch(model, opt, every=10)
        m = fit(run, model, opt, d, epochs=8, batch_size=64)
    m["dead"] = relu_dead_fraction(model, d.xv)
    return m


@faulty("init", accept=DEAD, wrong=NOT_LR_OR_DATA, expect={"dead": (0.9, 1), "val_acc": (0, 0.2)})
def dead_relu_negative_bias_cnn(run_dir):
    """A CNN without BatchNorm whose conv biases start at -3: no filter ever fires on 16x16 digits."""
    seed_all(21)
    d = digits(size=16)
    model = cnn(bn=False)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.bias, -3.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with open_run(run_dir, 10, lr=1e-3, init="conv bias -3") as run:
        run.watch(model, opt)
        m = fit(run, model, opt, d, epochs=4, batch_size=32)
    m["dead"] = relu_dead_fraction(model, d.xv)
    return m


@faulty("init", accept=("saturated_activations", "unnormalized_input"), wrong=SATURATED_WRONG,
        expect={"saturated": (0.5, 1)})
def tanh_saturated_raw_pixels(run_dir):
    """A tanh MLP fed raw 0..16 pixels: most units sit at +-1 and learning crawls."""
    seed_all(22)
    d = digits(scale="raw", flat=True)
    model = mlp([64, 256, 256, 10], act=nn.Tanh)
    _init_(model, weight_std=0.3)  # an "it's small" init that is not small for 0..16 inputs
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with open_run(run_dir, 10, lr=0.01, act="tanh", inputs="raw 0..16") as run:
        run.watch(model, opt, every=10)
        m = fit(run, model, opt, d, epochs=8, batch_size=32)
    m["saturated"] = saturated_fraction(model, d.xv)
    return m


@faulty("init", accept=("vanishing_gradients", "saturated_activations", "flat_loss", "stalled_weights"),
        wrong=NOT_LR_OR_DATA, expect={"val_acc": (0, 0.3)})
def vanishing_deep_sigmoid(run_dir):
    """A 10-layer sigmoid MLP with plain SGD: the gradient at the first layers is ~1e-6 of the last's."""
    seed_all(23)
    d = digits(flat=True)
    model = mlp([64] + [64] * 9 + [10], act=nn.Sigmoid)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with open_run(run_dir, 10, lr=0.1, depth=10, act="sigmoid") as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=10, batch_size=64)


@faulty("init", accept=("exploding_gradients", "loss_explosion", "nonfinite_loss", "init_loss_mismatch"),
        wrong=("bad_labels", "double_softmax", "underfitting", "lr_too_low", "update_ratio:low", "overfitting"),
        expect={"val_acc": (0, 0.6)})
def exploding_deep_no_norm(run_dir):
    """A 12-layer ReLU MLP, no normalization, weights at 2x He scale: activations grow 2^12, the loss explodes."""
    seed_all(24)
    d = digits(flat=True)
    model = mlp([64] + [128] * 11 + [10])
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 2 * (2 / m.in_features) ** 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with open_run(run_dir, 10, lr=0.01, depth=12, init="2x He") as run:
        run.watch(model, opt, every=5)
        return fit(run, model, opt, d, epochs=4, batch_size=64)


@faulty("init", accept=DEAD + ("frozen_parameters",), wrong=NOT_LR_OR_DATA, expect={"val_acc": (0, 0.25)})
def zero_init_mlp(run_dir):
    """Every weight initialized to 0: hidden units are identical and get no gradient; nothing but biases move."""
    seed_all(25)
    d = digits(flat=True)
    model = mlp([64, 64, 64, 10])
    _init_(model, weight_std=0.0, bias=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with open_run(run_dir, 10, lr=0.1, init="zeros") as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=6, batch_size=64)


@faulty("init", accept=("init_loss_mismatch", "exploding_gradients", "loss_explosion"),
        wrong=("bad_labels", "double_softmax", "lr_too_low", "update_ratio:low", "frozen_parameters"),
        expect={"first_loss": (10, 1e9)})
def init_std_one_wide_mlp(run_dir):
    """Weights drawn N(0, 1) in a 512-wide MLP (no fan-in scaling): the first loss is ~100, far above ln 4."""
    seed_all(26)
    d = tabular("synthetic", n_features=64, n_informative=16, n_redundant=4)
    model = mlp([64, 512, 512, 4])
    _init_(model, weight_std=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with open_run(run_dir, 4, lr=1e-3, init="N(0,1)") as run:
        run.watch(model, opt, every=10)
        with torch.no_grad():
            first = torch.nn.functional.cross_entropy(model(d.x[:64]), d.y[:64]).item()
        m = fit(run, model, opt, d, epochs=6, batch_size=64)
    m["first_loss"] = first
    return m


@faulty("init", accept=("saturated_activations", "unnormalized_input"), wrong=SATURATED_WRONG,
        expect={"saturated": (0.3, 1), "val_acc": (0, 0.8)})
def sigmoid_saturated_raw_breast_cancer(run_dir):
    """A sigmoid MLP on breast_cancer's raw features (up to 4,000): half the units pinned at 0 or 1, ~67% acc."""
    seed_all(27)
    d = tabular("breast_cancer", scale="raw")
    model = mlp([30, 64, 64, 2], act=nn.Sigmoid)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with open_run(run_dir, 2, lr=0.1, act="sigmoid", inputs="raw") as run:
        run.watch(model, opt, every=5)
        m = fit(run, model, opt, d, epochs=20, batch_size=32)
    m["saturated"] = saturated_fraction(model, d.xv)
    return m


@faulty("init", accept=("dead_units", "lr_too_high", "loss_explosion", "update_ratio:high"),
        wrong=("bad_labels", "unnormalized_input", "double_softmax", "lr_too_low", "update_ratio:low",
               "overfitting", "noisy_weights"),
        expect={"dead": (0.4, 1), "val_acc": (0, 0.8)})
def dead_relu_after_lr_spike_breast_cancer(run_dir):
    """SGD lr 5 on breast_cancer knocks half the ReLUs into never firing in the first steps; they stay dead."""
    seed_all(28)
    d = tabular("breast_cancer")
    model = mlp([30, 128, 128, 2])
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    with open_run(run_dir, 2, lr=5.0) as run:
        run.watch(model, opt, every=5)
        m = fit(run, model, opt, d, epochs=20, batch_size=32)
    m["dead"] = relu_dead_fraction(model, d.xv)
    return m
