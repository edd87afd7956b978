"""Learning rate and schedule faults: the lecture's first suspects.

Too high: the loss explodes (NaN/inf, or > 3x the start), or the net collapses to a constant predictor (the
loss jumps, then sits at or above ln C, accuracy at chance) without ever exploding. Too low: the loss falls
slowly and linearly. A schedule bug can spike the lr mid-run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from benchmarks.faults.common import (
    TinyTransformer,
    cnn,
    digits,
    fit,
    mlp,
    open_run,
    regression,
    relu_dead_fraction,
    seed_all,
    sequences,
    tabular,
)
from benchmarks.faults.registry import faulty

# "lower the learning rate" is the fix; these ids (or a direction-tagged update ratio) say so
LR_HIGH = ("loss_explosion", "nonfinite_loss", "update_ratio:high", "lr_too_high", "dead_units",
           "exploding_gradients")
# what would send the user the wrong way when the lr is far too high
LR_HIGH_WRONG = ("bad_labels", "unnormalized_input", "underfitting", "flat_loss", "update_ratio:low",
                 "lr_too_low", "frozen_parameters", "double_softmax", "overfitting", "noisy_weights",
                 "skipped_optimizer_steps", "chance_accuracy", "init_loss_mismatch")
LR_LOW = ("flat_loss", "update_ratio:low", "lr_too_low", "underfitting")
LR_LOW_WRONG = ("loss_explosion", "nonfinite_loss", "update_ratio:high", "lr_too_high", "bad_labels",
                "unnormalized_input", "overfitting", "noisy_loss", "double_softmax", "dead_units")
COLLAPSED = {"val_acc": (0, 0.25), "nan": (0, 0)}  # chance accuracy and no NaN in the final numbers


def _nan(m: dict) -> dict:
    m["nan"] = int(not all(math.isfinite(v) for v in m.values() if isinstance(v, float)))
    return m


@faulty("optimizer", accept=LR_HIGH, wrong=LR_HIGH_WRONG, expect=COLLAPSED)
def lr_collapse_sgd_mlp_digits(run_dir):
    """SGD lr 3 on an MLP: the loss jumps, ReLUs die, the net predicts a constant (loss ~ ln 10), no NaN."""
    seed_all(0)
    d = digits(flat=True)
    model = mlp([64, 128, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=3.0)
    with open_run(run_dir, 10, lr=3.0, optimizer="sgd", model="mlp") as run:
        run.watch(model, opt, every=10)
        m = fit(run, model, opt, d, epochs=15, batch_size=32)
    m["dead"] = relu_dead_fraction(model, d.xv)
    return _nan(m)


@faulty("optimizer", accept=LR_HIGH, wrong=LR_HIGH_WRONG, expect=COLLAPSED)
def lr_collapse_adam_cnn_digits16(run_dir):
    """Adam lr 1.0 (an SGD-sized lr) on a CNN without BatchNorm on 16x16 digits: a constant predictor."""
    seed_all(1)
    d = digits(size=16)
    model = cnn(bn=False)
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    with open_run(run_dir, 10, lr=1.0, optimizer="adam", model="cnn") as run:
        run.watch(model, opt)
        m = fit(run, model, opt, d, epochs=6, batch_size=64)
    m["dead"] = relu_dead_fraction(model, d.xv)
    return _nan(m)


@faulty("optimizer", accept=LR_HIGH, wrong=LR_HIGH_WRONG, expect={"val_acc": (0, 0.5), "nan": (0, 0)})
def lr_collapse_momentum_wine(run_dir):
    """SGD momentum 0.9 at lr 1.5 on wine (3 classes): the loss settles above ln 3, chance accuracy."""
    seed_all(2)
    d = tabular("wine")
    model = mlp([13, 64, 64, 3])
    opt = torch.optim.SGD(model.parameters(), lr=1.5, momentum=0.9)
    with open_run(run_dir, 3, lr=1.5, momentum=0.9) as run:
        run.watch(model, opt, every=5)
        m = fit(run, model, opt, d, epochs=40, batch_size=16)
    return _nan(m)


@faulty("optimizer", accept=LR_HIGH, wrong=LR_HIGH_WRONG, expect={"nan": (1, 1)})
def lr_explode_momentum_mlp(run_dir):
    """SGD momentum lr 5 on an MLP: the loss goes to NaN within the first epoch."""
    seed_all(3)
    d = digits(flat=True)
    model = mlp([64, 256, 10])
    opt = torch.optim.SGD(model.parameters(), lr=5.0, momentum=0.9)
    with open_run(run_dir, 10, lr=5.0, momentum=0.9) as run:
        run.watch(model, opt, every=20)
        m = fit(run, model, opt, d, epochs=3, batch_size=64)
    return _nan(m)


@faulty("optimizer", accept=LR_LOW, wrong=LR_LOW_WRONG, expect={"val_acc": (0, 0.5)})
def lr_too_low_sgd_mlp(run_dir):
    """SGD lr 1e-4 on an MLP: after 1,000 steps the loss has barely moved from ln 10."""
    seed_all(4)
    d = digits(flat=True)
    model = mlp([64, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    with open_run(run_dir, 10, lr=1e-4) as run:
        run.watch(model, opt, every=25)
        return fit(run, model, opt, d, epochs=22, batch_size=32)


@faulty("optimizer", accept=LR_LOW, wrong=LR_LOW_WRONG, expect={"val_acc": (0, 0.5)})
def lr_too_low_adam_cnn(run_dir):
    """Adam lr 1e-6 on a BatchNorm CNN: a slow, linear decrease, far from trained."""
    seed_all(5)
    d = digits()
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    with open_run(run_dir, 10, lr=1e-6, optimizer="adam") as run:
        run.watch(model, opt)
        return fit(run, model, opt, d, epochs=5, batch_size=64)


@faulty("optimizer", accept=LR_HIGH + ("lr_schedule",), wrong=LR_HIGH_WRONG,
        expect={"val_acc": (0, 0.5)})
def lr_schedule_spike_midrun(run_dir):
    """A LambdaLR with a bug multiplies the lr by 100 at epoch 6: the healthy loss explodes mid-run."""
    seed_all(6)
    d = digits(flat=True)
    model = mlp([64, 128, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    per_epoch = math.ceil(len(d.x) / 64)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 100.0 if s >= 5 * per_epoch else 1.0)
    with open_run(run_dir, 10, lr=0.05, schedule="lambda") as run:
        run.watch(model, opt, every=10)
        m = fit(run, model, opt, d, epochs=10, batch_size=64, sched=sched)
    return _nan(m)


@faulty("optimizer", accept=LR_HIGH + ("lr_warmup",), wrong=LR_HIGH_WRONG, expect=COLLAPSED | {"val_acc": (0, 0.5)})
def lr_too_high_transformer_no_warmup(run_dir):
    """Adam lr 0.03 on a tiny Transformer with no warmup: it collapses to the majority class."""
    seed_all(7)
    d = sequences()
    model = TinyTransformer(3, vocab=12, length=20)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    with open_run(run_dir, 3, lr=0.03, model="transformer") as run:
        run.watch(model, opt, every=10)
        m = fit(run, model, opt, d, epochs=6, batch_size=64)
    return _nan(m)


@faulty("optimizer", accept=LR_HIGH, wrong=LR_HIGH_WRONG, expect={"val_loss": (0.9, 1e30)})
def lr_too_high_regression_sgd(run_dir):
    """SGD momentum lr 0.5 on an MLP regressor (scaled targets): the MSE jumps, then the net predicts the mean."""
    seed_all(8)
    d = regression("synthetic")
    model = mlp([20, 64, 64, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    with open_run(run_dir, None, lr=0.5, task="regression") as run:
        run.watch(model, opt, every=10)
        m = fit(run, model, opt, d, epochs=5, batch_size=32, loss_fn=F.mse_loss)
    return _nan(m)


@faulty("optimizer", accept=LR_HIGH + ("lr_schedule",), wrong=LR_HIGH_WRONG, expect={"val_acc": (0, 0.6)})
def onecycle_max_lr_too_high(run_dir):
    """OneCycle with max_lr 20 on a BatchNorm CNN: fine at first, the loss blows up as the lr peaks."""
    seed_all(9)
    d = digits(size=16)
    model = cnn(bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=20.0, momentum=0.9)
    epochs, per_epoch = 6, math.ceil(len(d.x) / 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=20.0, total_steps=epochs * per_epoch)
    with open_run(run_dir, 10, max_lr=20.0, schedule="onecycle") as run:
        run.watch(model, opt)
        m = fit(run, model, opt, d, epochs=epochs, batch_size=64, sched=sched)
    return _nan(m)


@faulty("optimizer", accept=LR_HIGH, wrong=LR_HIGH_WRONG, expect=COLLAPSED | {"val_acc": (0, 0.6)})
def lr_collapse_adamw_tabular256(run_dir):
    """AdamW lr 0.5 on an MLP over 256 tabular features: the net collapses, the loss sits near ln 4."""
    seed_all(10)
    d = tabular("synthetic")
    model = mlp([256, 128, 64, 4])
    opt = torch.optim.AdamW(model.parameters(), lr=0.5)
    with open_run(run_dir, 4, lr=0.5, optimizer="adamw") as run:
        run.watch(model, opt, every=10)
        m = fit(run, model, opt, d, epochs=8, batch_size=128)
    return _nan(m)


@faulty("optimizer", accept=LR_LOW, wrong=LR_LOW_WRONG, expect={"val_acc": (0, 0.55)})
def lr_too_low_lstm_sgd(run_dir):
    """Plain SGD at lr 1e-3 on an LSTM over token sequences: the loss barely leaves ln 3."""
    from benchmarks.faults.common import LSTMClassifier

    seed_all(11)
    d = sequences()
    model = LSTMClassifier(3, vocab=12)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with open_run(run_dir, 3, lr=1e-3, model="lstm") as run:
        run.watch(model, opt, every=20)
        return fit(run, model, opt, d, epochs=8, batch_size=32)


@faulty("optimizer", accept=("noisy_loss",) + LR_HIGH,
        wrong=("bad_labels", "unnormalized_input", "overfitting", "double_softmax", "underfitting", "flat_loss",
               "stalled_weights", "frozen_parameters", "lr_too_low", "update_ratio:low"),
        expect={"val_acc": (0, 0.93)})
def batch1_high_lr_noisy(run_dir):
    """Batch size 1 with SGD lr 0.1: the loss curve is a wide band of spikes; lr 0.05 would reach 97%."""
    seed_all(12)
    d = digits(flat=True)
    model = mlp([64, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with open_run(run_dir, 10, lr=0.1, batch_size=1) as run:
        run.watch(model, opt, every=100)
        return fit(run, model, opt, d, epochs=2, batch_size=1, max_steps=2500)



class _BagOfTokens(torch.nn.Module):
    def __init__(self, vocab: int, classes: int, dim: int = 16):
        super().__init__()
        self.bag = torch.nn.EmbeddingBag(vocab, dim, mode="sum")
        self.hidden = torch.nn.Linear(dim, 32)
        self.act = torch.nn.ReLU()
        self.head = torch.nn.Linear(32, classes)

    def forward(self, x):
        return self.head(self.act(self.hidden(self.bag(x))))


@faulty("optimizer", accept=LR_HIGH, wrong=LR_HIGH_WRONG, expect={"val_acc": (0, 0.6)})
def embedding_bag_sgd_lr5(run_dir):
    """An EmbeddingBag model over token ids with SGD lr 5: it diverges -- inputs are ids, nothing to normalize."""
    seed_all(13)
    d = sequences()
    model = _BagOfTokens(12, 3)
    opt = torch.optim.SGD(model.parameters(), lr=5.0, momentum=0.9)
    with open_run(run_dir, 3, lr=5.0, model="embedding_bag") as run:
        run.watch(model, opt, every=10)
        return _nan(fit(run, model, opt, d, epochs=10, batch_size=32))


@faulty("optimizer", accept=LR_HIGH + ("noisy_loss",), wrong=LR_HIGH_WRONG, expect={"val_acc": (0, 0.7)})
def lstm_sgd_high_lr_no_clip(run_dir):
    """An LSTM on float waves with SGD lr 2 and no gradient clipping: gradient spikes throw the loss around."""
    from benchmarks.faults.common import LSTMClassifier, waves

    seed_all(14)
    d = waves()
    model = LSTMClassifier(3, inputs=1)
    opt = torch.optim.SGD(model.parameters(), lr=2.0, momentum=0.9)
    with open_run(run_dir, 3, lr=2.0, model="lstm", clip=None) as run:
        run.watch(model, opt, every=10)
        return _nan(fit(run, model, opt, d, epochs=6, batch_size=32))


@faulty("optimizer", accept=LR_HIGH, wrong=LR_HIGH_WRONG, expect={"val_acc": (0, 0.4), "nan": (0, 0)})
def lr_too_high_adam_mlp_partial_collapse(run_dir):
    """Adam lr 0.3 on an MLP: the loss jumps, then plateaus near 1.9 -- below ln 10 -- at ~25% accuracy."""
    seed_all(15)
    d = digits(flat=True)
    model = mlp([64, 256, 256, 10])
    opt = torch.optim.Adam(model.parameters(), lr=0.3)
    with open_run(run_dir, 10, lr=0.3, optimizer="adam") as run:
        run.watch(model, opt, every=10)
        m = fit(run, model, opt, d, epochs=8, batch_size=64)
    m["dead"] = relu_dead_fraction(model, d.xv)
    return _nan(m)
