"""Capacity and regularization faults: the lecture's underfitting and overfitting.

No gap between train and val with both poor: too little capacity or too much regularization. A big gap:
overfitting (more data, regularization, early stopping). First-layer weights that stay noise on image
inputs: regularization not strong enough.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.faults.common import digits, fit, mlp, open_run, roughness, seed_all, toy2d
from benchmarks.faults.registry import faulty

CAPACITY = ("low_capacity", "underfitting")
CAPACITY_WRONG = ("lr_too_high", "update_ratio:high", "lr_too_low", "update_ratio:low", "bad_labels",
                  "unnormalized_input", "double_softmax", "frozen_parameters", "overfitting", "loss_explosion",
                  "dead_units", "skipped_optimizer_steps", "chance_accuracy")
OVERFIT = ("overfitting", "noisy_weights")
OVERFIT_WRONG = ("underfitting", "low_capacity", "lr_too_low", "update_ratio:low", "bad_labels", "chance_accuracy",
                 "frozen_parameters", "double_softmax", "unnormalized_input", "flat_loss")
REG_STRONG = ("underfitting", "flat_loss", "regularization_too_strong")


@faulty("model", accept=CAPACITY, wrong=CAPACITY_WRONG, expect={"train_acc": (0, 0.7), "val_acc": (0, 0.7)})
def linear_model_on_circles(run_dir):
    """Logistic regression on concentric circles: no line separates them, accuracy stays near 50%."""
    seed_all(70)
    d = toy2d("circles", noise=0.05)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with open_run(run_dir, 2, lr=0.1, model="linear") as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=25, batch_size=32)


@faulty("model", accept=CAPACITY, wrong=CAPACITY_WRONG, expect={"train_acc": (0, 0.7), "val_acc": (0, 0.7)})
def linear_model_on_spirals(run_dir):
    """A linear classifier on three interleaved spirals (Adam): the loss plateaus well above zero."""
    seed_all(71)
    d = toy2d("spirals", n=1500, noise=0.05)
    model = nn.Linear(2, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with open_run(run_dir, 3, lr=1e-2, model="linear") as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=20, batch_size=64)


@faulty("model", accept=CAPACITY, wrong=CAPACITY_WRONG, expect={"train_acc": (0, 0.75)})
def bottleneck_two_units_digits(run_dir):
    """An MLP with a 2-unit hidden layer on digits: train and val accuracy both stall around 50-70%."""
    seed_all(72)
    d = digits(flat=True)
    model = mlp([64, 2, 10])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with open_run(run_dir, 10, lr=3e-3) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=20, batch_size=64)


@faulty("model", accept=OVERFIT, wrong=OVERFIT_WRONG, expect={"train_acc": (0.99, 1), "gap": (0.07, 1)})
def overfit_small_train_no_reg(run_dir):
    """A 512-wide MLP on 100 training digits for 300 epochs, no regularization: 100% train, val far below."""
    seed_all(73)
    d = digits(flat=True, n_train=100)
    model = mlp([64, 512, 512, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with open_run(run_dir, 10, lr=1e-3, n_train=100) as run:
        run.watch(model, opt, every=25)
        m = fit(run, model, opt, d, epochs=300, batch_size=50)
    m["gap"] = m["train_acc"] - m["val_acc"]
    return m


@faulty("model", accept=OVERFIT, wrong=OVERFIT_WRONG, expect={"train_acc": (0.99, 1), "roughness": (0.8, 2)})
def noisy_first_layer_28x28_no_reg(run_dir):
    """An MLP on 150 upsampled 28x28 digits with no weight decay: first-layer weights stay speckled noise."""
    seed_all(74)
    d = digits(size=28, flat=True, n_train=150)
    model = mlp([784, 256, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with open_run(run_dir, 10, lr=0.05, n_train=150, weight_decay=0) as run:
        run.watch(model, opt, every=20, input_shape=(1, 28, 28))
        m = fit(run, model, opt, d, epochs=100, batch_size=50)
    m["roughness"] = roughness(model[1].weight.detach().reshape(-1, 28, 28))
    return m


@faulty("model", accept=REG_STRONG, wrong=CAPACITY_WRONG[:8] + ("overfitting",),
        expect={"train_acc": (0, 0.75), "train_loss": (1.0, 3)})
def weight_decay_far_too_strong(run_dir):
    """SGD weight_decay 0.3 (meant 3e-4): the weights are pulled to zero, train and val loss stay ~1.8."""
    seed_all(75)
    d = digits(flat=True)
    model = mlp([64, 128, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.3)
    with open_run(run_dir, 10, lr=0.05, weight_decay=0.3) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=10, batch_size=64)


@faulty("model", accept=REG_STRONG, wrong=CAPACITY_WRONG[:8] + ("overfitting",),
        expect={"val_acc": (0, 0.7)})
def dropout_095_small_net(run_dir):
    """Dropout 0.95 after every layer of a narrow MLP: almost nothing gets through; it underfits."""
    seed_all(76)
    d = digits(flat=True)
    model = mlp([64, 32, 32, 10], dropout=0.95)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with open_run(run_dir, 10, lr=1e-3, dropout=0.95) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=10, batch_size=32)


@faulty("model", accept=REG_STRONG, wrong=CAPACITY_WRONG[:8] + ("overfitting",),
        expect={"train_acc": (0, 0.6)})
def l2_penalty_in_loss_too_strong(run_dir):
    """A hand-added L2 term, 1.0 * sum(w^2), on a CNN-free MLP with SGD: the penalty dominates the loss."""
    seed_all(77)
    d = toy2d("moons", noise=0.2)
    model = mlp([2, 64, 64, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def loss_fn(out, y):
        return nn.functional.cross_entropy(out, y) + 1.0 * sum((p ** 2).sum() for p in model.parameters())

    with open_run(run_dir, 2, lr=0.05, l2=1.0) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=20, batch_size=32, loss_fn=loss_fn)
