"""Bugs in the user's own training code: the loop and the API calls, not the hyperparameters.

Each case writes its loop out, the way the user did, with the bug in plain sight: softmax before
cross_entropy, parameters frozen or missing from the optimizer, optimizer.step() skipped or never called,
zero_grad forgotten, NLL on raw logits, log(0) in a hand-written loss, a per-batch normalization that
divides by zero, a detach in forward, a gradient clip that erases the gradient, a summed loss.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.faults.common import (
    batches,
    cnn,
    digits,
    fit,
    log_epoch,
    mlp,
    open_run,
    seed_all,
    tabular,
)
from benchmarks.faults.registry import faulty

# a lead that blames hyperparameters or data for a code bug sends the user tuning for hours
CODE_WRONG = ("lr_too_high", "update_ratio:high", "lr_too_low", "update_ratio:low", "unnormalized_input",
              "bad_labels", "low_capacity", "overfitting", "noisy_weights", "underfitting", "flat_loss")
FROZEN = ("frozen_parameters", "stalled_weights")


def _loop(run, model, opt, d, *, epochs, batch_size, forward=None, loss_fn=F.cross_entropy, step_if=None,
          zero_grad=True, seed=0):
    """The user's loop, with the knobs the bugs below need (forward, loss, when to step, zero_grad)."""
    forward = forward or model
    gen = torch.Generator().manual_seed(seed)
    m, it = {}, 0
    for _ in range(epochs):
        losses, accs = [], []
        for idx in batches(len(d.x), batch_size, gen):
            out = forward(d.x[idx])
            loss = loss_fn(out, d.y[idx])
            if zero_grad:
                opt.zero_grad()
            loss.backward()
            if step_if is None or step_if(it):
                opt.step()
            run.step(loss=loss)
            it += 1
            losses.append(loss.item())
            accs.append((out.argmax(1) == d.y[idx]).float().mean().item())
        with torch.no_grad():
            model.eval()
            out = forward(d.xv)
            model.train()
        val = (loss_fn(out, d.yv).item(), (out.argmax(1) == d.yv).float().mean().item())
        m = log_epoch(run, float(np.mean(losses)), float(np.mean(accs)), val)
        if not math.isfinite(m["train_loss"]):
            break
    m["steps"] = it
    return m


@faulty("code", accept=("double_softmax",), wrong=CODE_WRONG, expect={"train_acc": (0.8, 1), "train_loss": (1.4, 3)})
def double_softmax_mlp(run_dir):
    """forward returns softmax(logits), then F.cross_entropy softmaxes again: accuracy rises, loss floors ~1.5."""
    seed_all(50)
    d = digits(flat=True)
    model = mlp([64, 128, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with open_run(run_dir, 10, lr=1e-3) as run:
        run.watch(model, opt, every=10)
        return _loop(run, model, opt, d, epochs=10, batch_size=32, forward=lambda x: model(x).softmax(1))


@faulty("code", accept=("double_softmax",), wrong=CODE_WRONG, expect={"train_acc": (0.5, 1), "train_loss": (1.4, 3)})
def double_softmax_cnn_module(run_dir):
    """nn.Softmax(dim=1) as the CNN's last module (copied from an inference script), trained with CrossEntropyLoss."""
    seed_all(51)
    d = digits(size=16)
    model = nn.Sequential(*cnn(bn=True), nn.Softmax(dim=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with open_run(run_dir, 10, lr=0.1) as run:
        run.watch(model, opt)
        return fit(run, model, opt, d, epochs=6, batch_size=64, loss_fn=nn.CrossEntropyLoss())


@faulty("code", accept=("double_softmax",), wrong=CODE_WRONG, expect={"train_loss": (0.45, 1)})
def double_sigmoid_bce_with_logits(run_dir):
    """Binary head with torch.sigmoid in forward, trained with BCEWithLogitsLoss: the loss cannot go below ~0.5."""
    seed_all(52)
    d = tabular("breast_cancer")
    model = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    bce = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(0)
    with open_run(run_dir, 2, lr=3e-3, loss="BCEWithLogits") as run:
        run.watch(model, opt, every=5)
        for _ in range(30):
            losses, accs = [], []
            for idx in batches(len(d.x), 32, gen):
                p = model(d.x[idx]).squeeze(1)
                loss = bce(p, d.y[idx].float())
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss=loss)
                losses.append(loss.item())
                accs.append(((p > 0.5).long() == d.y[idx]).float().mean().item())
            with torch.no_grad():
                pv = model(d.xv).squeeze(1)
            m = log_epoch(run, float(np.mean(losses)), float(np.mean(accs)),
                          (bce(pv, d.yv.float()).item(), ((pv > 0.5).long() == d.yv).float().mean().item()))
    return m


@faulty("code", accept=FROZEN, wrong=CODE_WRONG, expect={"val_acc": (0, 0.75)})
def frozen_backbone_not_pretrained(run_dir):
    """requires_grad=False on a backbone the user believed pretrained -- it is random: only the head learns."""
    seed_all(53)
    d = digits(flat=True)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
    for p in backbone.parameters():
        p.requires_grad = False
    model = nn.Sequential(backbone, nn.Linear(16, 10))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    with open_run(run_dir, 10, lr=0.05) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=10, batch_size=32)


@faulty("code", accept=FROZEN, wrong=CODE_WRONG, expect={"val_acc": (0, 0.75)})
def optimizer_gets_head_params_only(run_dir):
    """The optimizer is built from model[-1].parameters(): the CNN's conv layers never change."""
    seed_all(54)
    d = digits(size=16)
    model = cnn(bn=False, width=4)
    opt = torch.optim.Adam(model[-1].parameters(), lr=3e-3)
    with open_run(run_dir, 10, lr=3e-3) as run:
        run.watch(model, opt)
        return fit(run, model, opt, d, epochs=5, batch_size=64)


@faulty("code", accept=FROZEN, wrong=CODE_WRONG, expect={"val_acc": (0, 0.5)})
def optimizer_on_stale_model(run_dir):
    """The optimizer is built, then the model is re-created (a config reload): nothing the loop uses trains."""
    seed_all(55)
    d = tabular("wine")
    model = mlp([13, 64, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model = mlp([13, 64, 3])  # the bug: a fresh model the optimizer does not hold
    with open_run(run_dir, 3, lr=0.05) as run:
        run.watch(model, opt, every=5)
        return fit(run, model, opt, d, epochs=20, batch_size=16)


@faulty("code", accept=("skipped_optimizer_steps",), wrong=CODE_WRONG, expect={"val_acc": (0, 1)})
def step_every_other_iteration(run_dir):
    """`if i % 2 == 0: optimizer.step()` left over from an accumulation experiment; zero_grad every step."""
    seed_all(56)
    d = digits(flat=True)
    model = mlp([64, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with open_run(run_dir, 10, lr=0.01) as run:
        run.watch(model, opt, every=10)
        return _loop(run, model, opt, d, epochs=8, batch_size=32, step_if=lambda i: i % 2 == 0)


@faulty("code", accept=("skipped_optimizer_steps",) + FROZEN, wrong=CODE_WRONG, expect={"val_acc": (0, 0.2)})
def optimizer_step_never_called(run_dir):
    """The loop calls scheduler.step() but optimizer.step() was deleted in a refactor: nothing trains."""
    seed_all(57)
    d = digits(size=16)
    model = cnn(bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 50, 0.5)
    with open_run(run_dir, 10, lr=0.05) as run:
        run.watch(model, opt)

        def scheduler_only(_i):
            sched.step()  # where optimizer.step() used to be
            return False

        return _loop(run, model, opt, d, epochs=4, batch_size=64, step_if=scheduler_only)


@faulty("code", accept=("missing_zero_grad", "accumulating_gradients", "exploding_gradients"),
        wrong=("bad_labels", "unnormalized_input", "double_softmax", "low_capacity", "lr_too_low",
               "update_ratio:low", "overfitting", "frozen_parameters", "lr_too_high", "update_ratio:high"),
        expect={"val_acc": (0, 0.7)})
def zero_grad_missing(run_dir):
    """optimizer.zero_grad() never called: gradients add up forever, the steps grow until the loss blows up."""
    seed_all(58)
    d = digits(flat=True)
    model = mlp([64, 128, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with open_run(run_dir, 10, lr=0.01) as run:
        run.watch(model, opt, every=10)
        return _loop(run, model, opt, d, epochs=6, batch_size=64, zero_grad=False)


@faulty("code", accept=("double_softmax", "loss_mismatch", "negative_loss", "nonfinite_loss"),
        wrong=CODE_WRONG, expect={"train_loss": (-1e30, -1)})
def nll_loss_on_raw_logits(run_dir):
    """F.nll_loss on raw logits (no log_softmax): the 'loss' is -logit[y], which the net drives to -infinity."""
    seed_all(59)
    d = digits(flat=True)
    model = mlp([64, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with open_run(run_dir, 10, lr=0.05) as run:
        run.watch(model, opt, every=10)
        return _loop(run, model, opt, d, epochs=5, batch_size=64, loss_fn=F.nll_loss)


def _manual_ce(out, y):
    return -torch.log(out.softmax(1)[torch.arange(len(y)), y]).mean()  # log(0) = -inf once a prob underflows


@faulty("code", accept=("nonfinite_loss",), wrong=("bad_labels", "unnormalized_input", "low_capacity",
                                                   "frozen_parameters", "overfitting", "lr_too_low"),
        expect={"nan": (1, 1)})
def handwritten_ce_log_zero(run_dir):
    """A hand-written cross-entropy, log(softmax(x))[y], with SGD lr 0.5: a probability underflows to 0 -> inf."""
    seed_all(60)
    d = digits(flat=True)
    model = mlp([64, 256, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    with open_run(run_dir, 10, lr=0.5, loss="handwritten") as run:
        run.watch(model, opt, every=10)
        m = _loop(run, model, opt, d, epochs=5, batch_size=64, loss_fn=_manual_ce)
    m["nan"] = int(not math.isfinite(m["train_loss"]))
    return m


@faulty("code", accept=("nonfinite_loss", "unnormalized_input"),
        wrong=("bad_labels", "low_capacity", "frozen_parameters", "overfitting", "lr_too_low", "lr_too_high",
               "loss_explosion"),
        expect={"nan": (1, 1)})
def per_batch_standardize_divides_by_zero(run_dir):
    """The loop standardizes each batch by its own std; digits' blank corner pixels give 0/0 = NaN at step 1."""
    seed_all(61)
    d = digits(scale="raw", flat=True)
    model = mlp([64, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    norm = lambda x: model((x - x.mean(0)) / x.std(0))
    with open_run(run_dir, 10, lr=0.05) as run:
        run.watch(model, opt, every=10)
        m = _loop(run, model, opt, d, epochs=2, batch_size=32, forward=norm)
    m["nan"] = int(not math.isfinite(m["train_loss"]))
    return m


class _DetachedNet(nn.Module):
    """A forward pass with `.detach()` left in from a debugging session: nothing before it gets gradients."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.features(x).detach())


@faulty("code", accept=FROZEN, wrong=CODE_WRONG, expect={"val_acc": (0, 0.85)})
def detach_in_forward(run_dir):
    """features(x).detach() in forward: the feature layers never get a gradient, only the head learns."""
    seed_all(62)
    d = digits(flat=True)
    model = _DetachedNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with open_run(run_dir, 10, lr=1e-3) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=8, batch_size=32)


@faulty("code", accept=("update_ratio:low", "lr_too_low", "flat_loss", "gradient_clipping"),
        wrong=("lr_too_high", "update_ratio:high", "bad_labels", "unnormalized_input", "double_softmax",
               "overfitting", "low_capacity", "loss_explosion"),
        expect={"val_acc": (0, 0.5)})
def clip_grad_norm_tiny(run_dir):
    """clip_grad_norm_(params, 1e-4) (meant 1e-4 as the lr?): every update is scaled to nothing."""
    seed_all(63)
    d = digits(flat=True)
    model = mlp([64, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with open_run(run_dir, 10, lr=0.1, clip=1e-4) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=6, batch_size=32, clip=1e-4)


@faulty("code", accept=("loss_explosion", "nonfinite_loss", "lr_too_high", "update_ratio:high"),
        wrong=("bad_labels", "unnormalized_input", "double_softmax", "low_capacity", "lr_too_low",
               "update_ratio:low", "frozen_parameters", "overfitting"),
        expect={"val_acc": (0, 0.5)})
def loss_summed_not_averaged(run_dir):
    """reduction='sum' over batches of 512 with an lr tuned for the mean: every step is 512x too big."""
    seed_all(64)
    d = digits(flat=True)
    model = mlp([64, 128, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with open_run(run_dir, 10, lr=0.1, reduction="sum") as run:
        run.watch(model, opt, every=2)
        return fit(run, model, opt, d, epochs=20, batch_size=512,
                   loss_fn=lambda o, y: F.cross_entropy(o, y, reduction="sum"))



@faulty("code", accept=("dead_units", "output_activation"),
        wrong=("lr_too_high", "update_ratio:high", "lr_too_low", "update_ratio:low", "bad_labels",
               "unnormalized_input", "overfitting", "noisy_weights", "double_softmax"),
        expect={"val_acc": (0, 0.9)})
def relu_on_output_logits(run_dir):
    """The MLP builder appends a ReLU after the last Linear too: logits are clipped at 0, dead classes stay dead."""
    seed_all(65)
    d = digits(flat=True)
    model = nn.Sequential(*mlp([64, 64, 10]), nn.ReLU())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with open_run(run_dir, 10, lr=0.05) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=8, batch_size=32)
