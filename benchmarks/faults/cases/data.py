"""Data and preprocessing faults: the inputs or labels the net sees are not what the user thinks.

The studies of real faults (Humbatova et al., Islam et al.) put these among the most common: missing
normalization, labels misaligned with inputs, train and validation preprocessed differently, unshuffled
data, targets on the wrong scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.faults.common import cnn, digits, fit, mlp, open_run, regression, seed_all, tabular
from benchmarks.faults.registry import faulty

# "check the labels / the pipeline" is the fix; regularization or the lr would mislead
LABELS = ("bad_labels", "chance_accuracy")
LABELS_WRONG = ("overfitting", "lr_too_high", "update_ratio:high", "lr_too_low", "update_ratio:low",
                "unnormalized_input", "frozen_parameters", "double_softmax", "low_capacity", "underfitting",
                "noisy_weights", "dead_units", "skipped_optimizer_steps")
INPUTS = ("unnormalized_input",)
INPUTS_WRONG = ("bad_labels", "double_softmax", "frozen_parameters", "overfitting", "low_capacity",
                "skipped_optimizer_steps", "lr_too_low", "update_ratio:low")


@faulty("data", accept=INPUTS + ("saturated_activations",), wrong=INPUTS_WRONG,
        expect={"val_acc": (0, 0.5)})
def pixels_0_255_mlp_sgd(run_dir):
    """Digits fed as 0..255 pixels to an MLP with SGD at a normal lr: the first updates are huge, it collapses."""
    seed_all(30)
    d = digits(scale="255", flat=True)
    model = mlp([64, 128, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with open_run(run_dir, 10, lr=0.01, inputs="0..255") as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=6, batch_size=64)


@faulty("data", accept=INPUTS, wrong=INPUTS_WRONG, expect={"val_acc": (0, 0.9)})
def raw_tabular_breast_cancer_sgd(run_dir):
    """breast_cancer's raw features (0.001 to 4,000) into an MLP with SGD: the big features swamp the rest."""
    seed_all(31)
    d = tabular("breast_cancer", scale="raw")
    model = mlp([30, 64, 2])
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    with open_run(run_dir, 2, lr=1e-4, inputs="raw") as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=30, batch_size=32)


@faulty("data", accept=LABELS, wrong=LABELS_WRONG, expect={"train_acc": (0.5, 1), "val_acc": (0, 0.2)})
def labels_shuffled_independently(run_dir):
    """Labels permuted separately from the inputs: a big MLP memorizes the noise, validation stays at chance."""
    seed_all(33)
    d = digits(flat=True)
    perm = torch.randperm(len(d.y), generator=torch.Generator().manual_seed(1))
    d = d.with_(y=d.y[perm])
    model = mlp([64, 512, 512, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with open_run(run_dir, 10, lr=1e-3) as run:
        run.watch(model, opt, every=20)
        return fit(run, model, opt, d, epochs=40, batch_size=128)


@faulty("data", accept=LABELS, wrong=LABELS_WRONG, expect={"train_acc": (0.9, 1), "val_acc": (0, 0.1)})
def val_labels_off_by_one(run_dir):
    """The validation loader's labels are shifted by one class (a 1-based file): train fine, val near 0%."""
    seed_all(34)
    d = digits(flat=True)
    d = d.with_(yv=(d.yv + 1) % 10)
    model = mlp([64, 128, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with open_run(run_dir, 10, lr=0.05) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=10, batch_size=32)


@faulty("data", accept=("bad_labels",), wrong=LABELS_WRONG, expect={"val_acc": (0, 0.92)})
def class_missing_from_train(run_dir):
    """A filter bug drops every 9 from the training set; validation still has them (accuracy capped ~90%)."""
    seed_all(35)
    d = digits(size=16)
    keep = d.y != 9
    d = d.with_(x=d.x[keep], y=d.y[keep])
    model = cnn(bn=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with open_run(run_dir, 10, lr=3e-3) as run:
        run.watch(model, opt)
        return fit(run, model, opt, d, epochs=6, batch_size=64)


@faulty("data", accept=LABELS, wrong=LABELS_WRONG, expect={"train_acc": (0.95, 1), "val_acc": (0, 0.88)})
def val_not_normalized(run_dir):
    """Train is standardized; the val loader only divides by 16 (no mean subtraction): val lags far behind."""
    seed_all(36)
    d = digits(flat=True)
    d = d.with_(xv=digits(scale="unit", flat=True).xv)
    model = mlp([64, 128, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with open_run(run_dir, 10, lr=1e-3) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=10, batch_size=64)


@faulty("data", accept=("noisy_loss", "bad_labels", "unshuffled_data"),
        wrong=LABELS_WRONG + ("loss_explosion", "nonfinite_loss"),
        expect={"val_acc": (0, 0.9)})
def sorted_by_class_no_shuffle(run_dir):
    """Training data sorted by class, never shuffled, batch 4: each class for ~36 steps in a row; val ~84%
    where shuffled batches give ~97%."""
    seed_all(37)
    d = digits(flat=True)
    order = torch.argsort(d.y, stable=True)
    d = d.with_(x=d.x[order], y=d.y[order])
    model = mlp([64, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with open_run(run_dir, 10, lr=0.05, shuffle=False) as run:
        run.watch(model, opt, every=20)
        return fit(run, model, opt, d, epochs=3, batch_size=4, shuffle=False)


@faulty("data", accept=("bad_labels", "overfitting", "chance_accuracy"),
        wrong=("lr_too_high", "lr_too_low", "unnormalized_input", "double_softmax", "frozen_parameters",
               "low_capacity", "underfitting", "dead_units"),
        expect={"val_acc": (0, 0.8)})
def noisy_labels_60pct(run_dir):
    """60% of the training labels replaced by random classes (a broken annotation join); val labels clean."""
    seed_all(38)
    d = digits(flat=True)
    g = torch.Generator().manual_seed(2)
    flip = torch.rand(len(d.y), generator=g) < 0.6
    y = torch.where(flip, torch.randint(0, 10, d.y.shape, generator=g), d.y)
    d = d.with_(y=y)
    model = mlp([64, 256, 256, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with open_run(run_dir, 10, lr=1e-3) as run:
        run.watch(model, opt, every=20)
        return fit(run, model, opt, d, epochs=40, batch_size=64)


@faulty("data", accept=("bad_labels", "unscaled_targets"),
        wrong=("unnormalized_input", "double_softmax", "frozen_parameters", "low_capacity", "overfitting",
               "lr_too_low", "update_ratio:low"),
        expect={"val_loss": (100, 1e30)})
def regression_unscaled_targets_diabetes(run_dir):
    """diabetes targets left at 25..346 with MSE: the loss starts ~25,000 and the net fits them badly."""
    seed_all(39)
    d = regression("diabetes", scale_y=False)
    model = mlp([10, 64, 64, 1])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with open_run(run_dir, None, lr=1e-3, task="regression", targets="raw") as run:
        run.watch(model, opt, every=5)
        return fit(run, model, opt, d, epochs=30, batch_size=32, loss_fn=F.mse_loss)


@faulty("data", accept=("bad_labels", "unscaled_targets", "loss_explosion", "nonfinite_loss"),
        wrong=("unnormalized_input", "double_softmax", "frozen_parameters", "low_capacity", "overfitting",
               "lr_too_low", "update_ratio:low"),
        expect={"val_loss": (100, 1e30)})
def regression_unscaled_targets_adam(run_dir):
    """make_regression targets (+-300) with Adam: an MSE in the tens of thousands that creeps down."""
    seed_all(40)
    d = regression("synthetic", scale_y=False)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with open_run(run_dir, None, lr=1e-3, task="regression", targets="raw") as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=5, batch_size=64, loss_fn=F.mse_loss)
