"""Loops with the bugs users actually make, each written out in full with the bug in plain sight.

The faults come from published lists of real training bugs, not from the rule list: Karpathy's "A recipe
for training neural networks" (forgot zero_grad, softmax before a logits loss, a frozen body, labels not
aligned with inputs, overfit one batch by accident, a too-high/too-low lr, unnormalized inputs), the
CS231n notes (dead ReLUs from a bad bias init, exploding RNN gradients without clipping, the lr sweep), and
"Taxonomy of real faults in deep learning systems" / "A comprehensive study on deep learning bug
characteristics" (wrong loss function for the task, API misuse such as nll_loss on raw logits).

`accept` lists the rule ids whose fix the evidence supports for the case; `wrong` lists the ids whose lead
would send the user the wrong way (a misleading lead is worse than silence).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import babysit
from benchmarks.faults.common import digits, sequences, tabular, toy2d
from benchmarks.userloops.registry import faulty

LR_HIGH = ("loss_explosion", "nonfinite_loss", "update_ratio:high", "lr_too_high", "exploding_gradients")
LR_HIGH_WRONG = ("bad_labels", "unnormalized_input", "underfitting", "flat_loss", "update_ratio:low",
                 "lr_too_low", "low_capacity", "overfitting", "double_softmax", "frozen_parameters")
LR_LOW = ("flat_loss", "update_ratio:low", "lr_too_low", "underfitting")
LR_LOW_WRONG = ("loss_explosion", "nonfinite_loss", "update_ratio:high", "lr_too_high", "bad_labels",
                "unnormalized_input", "double_softmax", "frozen_parameters", "overfitting")
CODE_WRONG = ("lr_too_high", "update_ratio:high", "lr_too_low", "update_ratio:low", "unnormalized_input",
              "bad_labels", "low_capacity", "overfitting", "noisy_weights", "underfitting", "flat_loss")
LABELS = ("bad_labels", "chance_accuracy")
LABELS_WRONG = ("overfitting", "lr_too_high", "update_ratio:high", "lr_too_low", "update_ratio:low",
                "unnormalized_input", "double_softmax", "frozen_parameters", "low_capacity")


def _acc(out, y) -> float:
    return (out.argmax(1) == y).float().mean().item()


def _classifier_epochs(run, model, opt, d, epochs, bs=32, loss_fn=F.cross_entropy, zero_grad=True, clip=None,
                       batch_of=None):
    """What most of these users wrote: shuffle, forward, loss, backward, step; train and val each epoch."""
    vacc = None
    for _epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(d.x))
        tl = ta = n = 0.0
        for i in range(0, len(d.x), bs):
            idx = perm[i:i + bs] if batch_of is None else batch_of(i)
            out = model(d.x[idx])
            loss = loss_fn(out, d.y[idx])
            if zero_grad:
                opt.zero_grad()
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            run.step(loss)
            tl, ta, n = tl + loss.item(), ta + _acc(out, d.y[idx]), n + 1
        model.eval()
        with torch.no_grad():
            out = model(d.xv)
        vacc = _acc(out, d.yv)
        run.epoch(train_loss=tl / n, train_acc=ta / n, val_loss=loss_fn(out, d.yv).item(), val_acc=vacc)
        if not math.isfinite(tl):
            break
    return {"train_loss": tl / n, "train_acc": ta / n, "val_acc": vacc}


@faulty("code", accept=("exploding_gradients", "missing_zero_grad", "accumulating_gradients"),
        wrong=("bad_labels", "unnormalized_input", "double_softmax", "low_capacity", "lr_too_low",
               "update_ratio:low", "overfitting", "frozen_parameters", "lr_too_high", "update_ratio:high"),
        expect={"val_acc": (0, 0.8)})
def forgot_zero_grad(run_dir):
    """optimizer.zero_grad() forgotten: every backward adds to the last gradient (SGD + momentum)."""
    torch.manual_seed(101)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        return _classifier_epochs(run, model, opt, d, epochs=5, bs=64, zero_grad=False)


@faulty("code", accept=("loss_mismatch", "double_softmax", "nonfinite_loss"), wrong=CODE_WRONG,
        expect={"train_loss": (-1e30, 0)})
def nll_loss_on_logits(run_dir):
    """F.nll_loss on the raw logits (the log_softmax was forgotten): the 'loss' is -logit[y], unbounded below."""
    torch.manual_seed(102)
    d = tabular("wine")
    model = nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with babysit.Run(run_dir, num_classes=3) as run:
        run.watch(model, opt)
        return _classifier_epochs(run, model, opt, d, epochs=25, bs=16, loss_fn=F.nll_loss)


@faulty("code", accept=("double_softmax",), wrong=CODE_WRONG, expect={"train_loss": (1.4, 3)})
def softmax_module_then_crossentropy(run_dir):
    """nn.Softmax(dim=1) as the model's last module, then nn.CrossEntropyLoss (which applies log_softmax)."""
    torch.manual_seed(103)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10), nn.Softmax(dim=1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        return _classifier_epochs(run, model, opt, d, epochs=6, loss_fn=nn.CrossEntropyLoss())


@faulty("data", accept=LABELS, wrong=LABELS_WRONG, expect={"val_acc": (0, 0.25)})
def labels_shuffled_apart(run_dir):
    """The user shuffled the inputs and the labels with two different permutations once, before training."""
    torch.manual_seed(104)
    d = digits(flat=True)
    d = d.with_(x=d.x[torch.randperm(len(d.x))], y=d.y[torch.randperm(len(d.y))])
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        return _classifier_epochs(run, model, opt, d, epochs=12)


@faulty("data", accept=("unnormalized_input", "saturated_activations"), wrong=LABELS_WRONG[:1] + (
        "bad_labels", "double_softmax", "frozen_parameters", "low_capacity"), expect={"val_acc": (0, 0.95)})
def pixels_0_255(run_dir):
    """Images fed as 0..255 floats (the /255 was forgotten) to a tanh MLP with SGD."""
    torch.manual_seed(105)
    d = digits(scale="255", flat=True)
    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt, input_shape=(8, 8))
        return _classifier_epochs(run, model, opt, d, epochs=5)


@faulty("optimizer", accept=LR_HIGH, wrong=LR_HIGH_WRONG, expect={"val_acc": (0, 0.5)})
def lr_100x_sgd(run_dir):
    """SGD + momentum at lr 1.0 (100x the 0.01 the user meant) on a CNN."""
    torch.manual_seed(106)
    d = digits()
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16 * 64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        return _classifier_epochs(run, model, opt, d, epochs=4, bs=64)


@faulty("optimizer", accept=LR_HIGH, wrong=LR_HIGH_WRONG, expect={"val_acc": (0, 0.6)})
def lr_10x_adam(run_dir):
    """Adam at lr 0.1 (the user typed 1e-1 for 1e-3) on an MLP: no NaN, the net collapses."""
    torch.manual_seed(107)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        return _classifier_epochs(run, model, opt, d, epochs=6)


@faulty("optimizer", accept=LR_LOW, wrong=LR_LOW_WRONG, expect={"val_acc": (0, 0.6)})
def lr_far_too_low(run_dir):
    """SGD at lr 1e-5 (no momentum) for 6 epochs: the loss barely moves."""
    torch.manual_seed(108)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=1e-5)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        return _classifier_epochs(run, model, opt, d, epochs=6)


@faulty("init", accept=("dead_units", "stalled_weights", "vanishing_gradients"),
        wrong=("bad_labels", "unnormalized_input", "double_softmax", "overfitting", "lr_too_low", "update_ratio:low",
               "low_capacity"), expect={"val_acc": (0, 0.3)})
def dead_relu_negative_bias(run_dir):
    """The user 'initialized' the hidden biases to -10: every ReLU is dead from the first step."""
    torch.manual_seed(109)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    with torch.no_grad():
        model[0].bias.fill_(-10.0)
        model[2].bias.fill_(-10.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        return _classifier_epochs(run, model, opt, d, epochs=5)


@faulty("code", accept=("frozen_parameters", "stalled_weights"), wrong=CODE_WRONG, expect={"val_acc": (0, 0.85)})
def body_frozen_by_mistake(run_dir):
    """A fresh (not pretrained) CNN whose whole body got requires_grad=False from a copied fine-tuning
    snippet: only the linear head trains, on random features."""
    torch.manual_seed(110)
    d = digits(size=16)
    body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(4), nn.Flatten())
    for p in body.parameters():
        p.requires_grad = False
    model = nn.Sequential(body, nn.Linear(32, 10))
    opt = torch.optim.Adam(filter(lambda p: p.requires_grad, model.parameters()), lr=1e-3)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        return _classifier_epochs(run, model, opt, d, epochs=5)


@faulty("code", accept=("loss_mismatch", "bad_labels"), wrong=CODE_WRONG + ("double_softmax", "chance_accuracy"),
        expect={"val_acc": (0, 0.6)})
def classification_with_mse(run_dir):
    """Class labels 0..9 regressed with MSE by a one-output model (rounded to predict): a regression loss on a
    classification task."""
    torch.manual_seed(111)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for _epoch in range(8):
            perm = torch.randperm(len(d.x))
            tl = ta = n = 0.0
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                pred = model(d.x[idx]).squeeze(1)
                loss = F.mse_loss(pred, d.y[idx].float())
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                tl += loss.item()
                ta += (pred.round() == d.y[idx]).float().mean().item()
                n += 1
            with torch.no_grad():
                pv = model(d.xv).squeeze(1)
            vacc = (pv.round() == d.yv).float().mean().item()
            run.epoch(train_loss=tl / n, train_acc=ta / n, val_loss=F.mse_loss(pv, d.yv.float()).item(), val_acc=vacc)
    return {"val_acc": vacc}


@faulty("data", accept=("overfitting", "single_batch"), wrong=LABELS_WRONG[1:] + ("bad_labels", "underfitting"),
        expect={"train_loss": (0, 0.05), "val_acc": (0, 0.8)})
def same_batch_every_step(run_dir):
    """The batch index never advances (`xb, yb = next(iter(loader))` outside the loop): 600 steps on one batch."""
    torch.manual_seed(112)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xb, yb = d.x[:32], d.y[:32]
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for epoch in range(6):
            tl = 0.0
            for _ in range(100):
                out = model(xb)
                loss = F.cross_entropy(out, yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                tl += loss.item()
            with torch.no_grad():
                ov = model(d.xv)
            run.epoch(epoch=epoch, train_loss=tl / 100, train_acc=_acc(out, yb),
                      val_loss=F.cross_entropy(ov, d.yv).item(), val_acc=_acc(ov, d.yv))
    return {"train_loss": tl / 100, "val_acc": _acc(ov, d.yv)}


class _RNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(12, 32)
        self.rnn = nn.RNN(32, 128, batch_first=True)
        self.fc = nn.Linear(128, 3)

    def forward(self, x):
        h, _ = self.rnn(self.emb(x))
        return self.fc(h[:, -1])


@faulty("optimizer", accept=LR_HIGH + ("gradient_clipping",), wrong=LR_HIGH_WRONG, expect={"val_acc": (0, 0.6)})
def rnn_exploding_no_clip(run_dir):
    """A vanilla tanh RNN over 60-token sequences with SGD lr 0.5 and no gradient clipping."""
    torch.manual_seed(113)
    d = sequences(length=60)
    model = _RNN()
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(3.0)  # the user's 'better' init: a recurrent gain well above 1
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with babysit.Run(run_dir, num_classes=3) as run:
        run.watch(model, opt)
        return _classifier_epochs(run, model, opt, d, epochs=4)


@faulty("code", accept=("train_mode", "eval_mode_training"), wrong=CODE_WRONG + ("double_softmax",),
        expect={"val_acc": (0, 1)})
def eval_mode_left_on(run_dir):
    """model.eval() called for a validation pass before training and never undone: dropout is off and
    BatchNorm never updates its running statistics while the model trains."""
    torch.manual_seed(114)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.eval()
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        vacc = None
        for _epoch in range(6):
            perm = torch.randperm(len(d.x))
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
            with torch.no_grad():
                out = model(d.xv)
            vacc = _acc(out, d.yv)
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=vacc)
    return {"val_acc": vacc}


@faulty("data", accept=("unnormalized_input",), wrong=("bad_labels", "double_softmax", "frozen_parameters",
                                                       "overfitting", "low_capacity"), expect={"val_acc": (0, 0.95)})
def tabular_raw_features(run_dir):
    """breast_cancer's raw features (areas in the thousands next to ratios below 1) into an MLP with SGD."""
    torch.manual_seed(115)
    d = tabular("breast_cancer", scale="raw")
    model = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with babysit.Run(run_dir, num_classes=2) as run:
        run.watch(model, opt)
        return _classifier_epochs(run, model, opt, d, epochs=10)


@faulty("model", accept=("low_capacity", "underfitting"), wrong=("lr_too_high", "update_ratio:high", "bad_labels",
                                                                  "unnormalized_input", "double_softmax"),
        expect={"val_acc": (0, 0.7)})
def linear_model_on_circles(run_dir):
    """A single nn.Linear (the user forgot the hidden layer) on concentric circles: not linearly separable."""
    torch.manual_seed(116)
    d = toy2d("circles")
    model = nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with babysit.Run(run_dir, num_classes=2) as run:
        run.watch(model, opt)
        return _classifier_epochs(run, model, opt, d, epochs=10)
