"""Healthy runs: any warning on these is a false alarm.

Three families. `lookalike`: runs that share a symptom with a fault but are right (label smoothing's high
loss floor, a prior-initialized bias's low first loss, fine-tuning's low first loss, warmup spikes, heavy
dropout, an intended linear probe, a noisy batch-1 curve, a dataset whose labels are hard, 0..1 pixels,
token-id inputs). `architecture`: the models and optimizers users train, trained well. `loop`: the ways
users write their loops (step-only, validation every 3rd epoch, gradient accumulation, long runs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.faults.common import (
    LSTMClassifier,
    TinyTransformer,
    batches,
    cnn,
    digits,
    evaluate,
    fit,
    log_epoch,
    mlp,
    open_run,
    regression,
    resnet,
    seed_all,
    sequences,
    tabular,
    toy2d,
    waves,
)
from benchmarks.faults.registry import healthy

GOOD = {"val_acc": (0.9, 1)}


def _per_epoch(n: int, bs: int) -> int:
    return math.ceil(n / bs)


# --------------------------------------------------------------------------- lookalikes
@healthy("lookalike", expect=GOOD | {"train_loss": (0.5, 3)})
def label_smoothing_03(run_dir):
    """Cross-entropy with label_smoothing=0.3: the loss floors near 1.2 by design, accuracy is high."""
    seed_all(100)
    d = digits(flat=True)
    model = mlp([64, 128, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with open_run(run_dir, 10, lr=1e-3, label_smoothing=0.3) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=10, batch_size=32,
                   loss_fn=lambda o, y: F.cross_entropy(o, y, label_smoothing=0.3))


@healthy("lookalike", expect={"val_acc": (0.9, 1), "first_loss": (0, 0.6)})
def imbalanced_prior_bias_init(run_dir):
    """90/10 classes, the output bias set to log class priors (Karpathy's recipe): first loss ~0.33 < ln 2."""
    seed_all(101)
    d = tabular("synthetic", n_features=20, n_informative=8, n_redundant=2, n_classes=2, class_sep=1.2,
                weights=[0.9, 0.1], flip_y=0.0)
    model = mlp([20, 64, 2])
    prior = torch.bincount(d.y, minlength=2).float() / len(d.y)
    with torch.no_grad():
        model[-1].bias.copy_(prior.log())
        model[-1].weight.mul_(0.01)
        first = F.cross_entropy(model(d.x), d.y).item()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with open_run(run_dir, 2, lr=1e-3, bias_init="log prior") as run:
        run.watch(model, opt, every=10)
        m = fit(run, model, opt, d, epochs=10, batch_size=64)
    m["first_loss"] = first
    return m


def _pretrain_cnn(size: int = 16, epochs: int = 4):
    """A BatchNorm CNN trained on digits, as a 'pretrained checkpoint' for the cases below (no hooks)."""
    seed_all(7)
    d = digits(size=size)
    model = cnn(bn=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(7)
    for _ in range(epochs):
        for idx in batches(len(d.x), 64, gen):
            loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model, d


@healthy("lookalike", expect=GOOD | {"first_loss": (0, 0.5)})
def finetune_from_checkpoint(run_dir):
    """Fine-tuning a trained CNN at a low lr: the first loss is ~0.1, far below ln 10, and that is right."""
    model, d = _pretrain_cnn()
    with torch.no_grad():
        first = F.cross_entropy(model(d.x[:256]), d.y[:256]).item()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    with open_run(run_dir, 10, lr=1e-3, init="checkpoint") as run:
        run.watch(model, opt)
        m = fit(run, model, opt, d, epochs=3, batch_size=64)
    m["first_loss"] = first
    return m


@healthy("lookalike", expect=GOOD)
def linear_probe_on_pretrained(run_dir):
    """An intended linear probe: a pretrained CNN frozen, a new head trained on its features; it learns well."""
    model, d = _pretrain_cnn()
    for p in model.parameters():
        p.requires_grad = False
    model[-1] = nn.Linear(model[-1].in_features, 10)
    opt = torch.optim.Adam(model[-1].parameters(), lr=1e-2)
    with open_run(run_dir, 10, lr=1e-2, frozen="backbone", probe=True) as run:
        run.watch(model, opt)
        return fit(run, model, opt, d, epochs=5, batch_size=64)


@healthy("lookalike", expect={"val_acc": (0.8, 1)})
def transformer_warmup_spike(run_dir):
    """A tiny Transformer with linear warmup to Adam 3e-3 then cosine decay: early spikes, then it learns."""
    seed_all(102)
    d = sequences(n=3000)
    model = TinyTransformer(3, vocab=12, length=20)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    epochs, per_epoch = 10, _per_epoch(len(d.x), 32)
    total, warm = epochs * per_epoch, 100
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
    with open_run(run_dir, 3, lr=3e-3, warmup=warm, schedule="cosine") as run:
        run.watch(model, opt, every=20)
        return fit(run, model, opt, d, epochs=epochs, batch_size=32, sched=sched)


@healthy("lookalike", expect={"val_acc": (0.9, 1)})
def heavy_dropout_05(run_dir):
    """Dropout 0.5 on a wide MLP: train accuracy (measured with dropout on) sits below val; that is expected."""
    seed_all(103)
    d = digits(flat=True)
    model = mlp([64, 512, 512, 10], dropout=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with open_run(run_dir, 10, lr=1e-3, dropout=0.5) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=12, batch_size=64)


@healthy("lookalike", expect={"val_acc": (0.95, 1)})
def batch1_sgd_small_lr(run_dir):
    """Batch size 1 with SGD lr 0.02: a wide, noisy per-step loss, but the net reaches 97%."""
    seed_all(12)
    d = digits(flat=True)
    model = mlp([64, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    with open_run(run_dir, 10, lr=0.02, batch_size=1) as run:
        run.watch(model, opt, every=100)
        return fit(run, model, opt, d, epochs=2, batch_size=1, max_steps=2500)


@healthy("lookalike", expect={"val_acc": (0.6, 0.8)})
def hard_dataset_noisy_labels_by_nature(run_dir):
    """make_classification with flip_y 0.3 and overlapping classes: ~70% is the best any model gets; no bug."""
    seed_all(104)
    d = tabular("synthetic", n_features=20, n_informative=6, n_redundant=2, n_classes=2, class_sep=1.0,
                flip_y=0.3, n_samples=3000)
    model = mlp([20, 32, 2])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)
    with open_run(run_dir, 2, lr=1e-3) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=10, batch_size=64)


@healthy("lookalike", expect=GOOD)
def unit_scaled_pixels_0_1(run_dir):
    """Pixels divided by 16 (0..1, not zero-centered) -- the common practice -- into a BatchNorm CNN."""
    seed_all(105)
    d = digits(size=16, scale="unit")
    model = cnn(bn=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with open_run(run_dir, 10, lr=3e-3, inputs="0..1") as run:
        run.watch(model, opt)
        return fit(run, model, opt, d, epochs=6, batch_size=64)


@healthy("lookalike", expect={"val_acc": (0.8, 1)})
def lstm_token_ids(run_dir):
    """An LSTM over token ids 0..11 (integers, not features to normalize) with an embedding; Adam."""
    seed_all(106)
    d = sequences(n=3000)
    model = LSTMClassifier(3, vocab=12)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with open_run(run_dir, 3, lr=1e-2, model="lstm") as run:
        run.watch(model, opt, every=20)
        return fit(run, model, opt, d, epochs=6, batch_size=32)


@healthy("lookalike", expect={"val_acc": (0.95, 1)})
def mlp_tabular_256_features(run_dir):
    """An MLP on 256 standardized tabular features: its first layer is not an image (no noisy_weights)."""
    seed_all(107)
    d = tabular("synthetic", class_sep=3.0, n_informative=32)
    model = mlp([256, 64, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-2)
    with open_run(run_dir, 4, lr=1e-3, weight_decay=1e-2) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=6, batch_size=64)


@healthy("lookalike", expect={"val_acc": (0.95, 1)})
def early_plateau_moons_long(run_dir):
    """Moons solved in a few hundred steps, then 5,000 steps of a flat, near-zero loss: done, not stuck."""
    seed_all(108)
    d = toy2d("moons", noise=0.1)
    model = mlp([2, 32, 32, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with open_run(run_dir, 2, lr=0.05) as run:
        run.watch(model, opt, every=50)
        return fit(run, model, opt, d, epochs=200, batch_size=32)


@healthy("lookalike", expect={"val_acc": (0.95, 1)})
def wide_mlp_early_stopped(run_dir):
    """A big MLP with weight decay that would overfit later; the user stops at the best val (epoch 8)."""
    seed_all(109)
    d = digits(flat=True)
    model = mlp([64, 1024, 10])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    with open_run(run_dir, 10, lr=1e-3, early_stopping=True) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=8, batch_size=64)


# --------------------------------------------------------------------------- architectures
@healthy("architecture", expect=GOOD)
def mlp_digits_sgd_momentum(run_dir):
    """The baseline: an MLP on standardized digits, SGD momentum 0.9, lr 0.05."""
    seed_all(110)
    d = digits(flat=True)
    model = mlp([64, 128, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with open_run(run_dir, 10, lr=0.05, momentum=0.9) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=10, batch_size=32)


@healthy("architecture", expect=GOOD)
def cnn_bn_digits16_adam(run_dir):
    """A BatchNorm CNN on 16x16 digits with Adam 3e-3 and a StepLR halving every 2 epochs."""
    seed_all(111)
    d = digits(size=16)
    model = cnn(bn=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2 * _per_epoch(len(d.x), 64), 0.5)
    with open_run(run_dir, 10, lr=3e-3, schedule="step") as run:
        run.watch(model, opt)
        return fit(run, model, opt, d, epochs=6, batch_size=64, sched=sched)


@healthy("architecture", expect=GOOD)
def cnn_no_bn_digits8_sgd(run_dir):
    """A CNN without BatchNorm on 8x8 digits, SGD momentum, 12 epochs."""
    seed_all(112)
    d = digits()
    model = cnn(bn=False, width=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with open_run(run_dir, 10, lr=0.05, momentum=0.9) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=12, batch_size=32)


@healthy("architecture", expect=GOOD)
def resnet_digits16_adamw_cosine(run_dir):
    """A small ResNet on 16x16 digits with AdamW and cosine decay, 5 epochs at batch 64."""
    seed_all(113)
    d = digits(size=16)
    model = resnet(width=8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    total = 5 * _per_epoch(len(d.x), 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    with open_run(run_dir, 10, lr=3e-3, schedule="cosine", model="resnet") as run:
        run.watch(model, opt)
        return fit(run, model, opt, d, epochs=5, batch_size=64, sched=sched)


@healthy("architecture", expect={"val_loss": (0, 0.2)})
def regression_mlp_scaled(run_dir):
    """MSE regression on make_regression with standardized targets (num_classes None), Adam."""
    seed_all(114)
    d = regression("synthetic")
    model = mlp([20, 64, 64, 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with open_run(run_dir, None, lr=1e-3, task="regression") as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=15, batch_size=32, loss_fn=F.mse_loss)


@healthy("architecture", expect={"val_loss": (0, 0.8)})
def regression_diabetes_linear(run_dir):
    """Linear regression on diabetes with scaled targets, SGD: val MSE ~0.5 of the variance is the data's limit."""
    seed_all(115)
    d = regression("diabetes")
    model = nn.Linear(10, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with open_run(run_dir, None, lr=0.01, task="regression", model="linear") as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=40, batch_size=16, loss_fn=F.mse_loss)


@healthy("architecture", expect={"val_acc": (0.9, 1)})
def lstm_waves_floats(run_dir):
    """An LSTM on noisy sine waves (float inputs through a linear projection), 3 frequency bands, Adam."""
    seed_all(116)
    d = waves()
    model = LSTMClassifier(3, inputs=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with open_run(run_dir, 3, lr=1e-2, model="lstm") as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=8, batch_size=32)


@healthy("architecture", expect={"val_acc": (0.95, 1)})
def logistic_regression_breast_cancer(run_dir):
    """Logistic regression on standardized breast_cancer: a linear model is right here and reaches ~97%."""
    seed_all(117)
    d = tabular("breast_cancer")
    model = nn.Linear(30, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with open_run(run_dir, 2, lr=0.05, model="linear") as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=30, batch_size=32)


@healthy("architecture", expect={"val_acc": (0.9, 1)})
def wine_mlp_weight_decay(run_dir):
    """An MLP on wine (178 samples, 3 classes) with SGD momentum and weight decay 1e-3."""
    seed_all(118)
    d = tabular("wine")
    model = mlp([13, 32, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    with open_run(run_dir, 3, lr=0.05) as run:
        run.watch(model, opt, every=5)
        return fit(run, model, opt, d, epochs=40, batch_size=16)


@healthy("architecture", expect={"val_acc": (0.95, 1)})
def tanh_mlp_spirals(run_dir):
    """A tanh MLP on three spirals, Adam 1e-2: a non-linear problem with the capacity to solve it."""
    seed_all(119)
    d = toy2d("spirals", n=1500, noise=0.05)
    model = mlp([2, 64, 64, 3], act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with open_run(run_dir, 3, lr=1e-2, act="tanh") as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=40, batch_size=64)


@healthy("architecture", expect={"val_acc": (0.9, 1)})
def sigmoid_shallow_normalized(run_dir):
    """A one-hidden-layer sigmoid MLP on standardized digits with SGD momentum: shallow, so no vanishing."""
    seed_all(120)
    d = digits(flat=True)
    model = mlp([64, 64, 10], act=nn.Sigmoid)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    with open_run(run_dir, 10, lr=0.2, act="sigmoid") as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=12, batch_size=32)


# --------------------------------------------------------------------------- loops
@healthy("loop", expect=GOOD)
def bn_onecycle_grad_accum(run_dir):
    """BatchNorm CNN, OneCycle, gradient accumulation over 4 micro-batches (run.step on every micro-batch)."""
    seed_all(121)
    d = digits(size=16)
    model = cnn(bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    epochs, accum = 6, 4
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=epochs * (_per_epoch(len(d.x), 16) // 4))
    with open_run(run_dir, 10, max_lr=0.2, schedule="onecycle", accumulation=accum) as run:
        run.watch(model, opt)
        return fit(run, model, opt, d, epochs=epochs, batch_size=16, sched=sched, accum=accum)


@healthy("loop", expect=GOOD)
def val_every_third_epoch(run_dir):
    """Validation only on epochs 3, 6, 9, 12 (run.epoch without val keys in between)."""
    seed_all(122)
    d = digits(flat=True)
    model = mlp([64, 128, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with open_run(run_dir, 10, lr=1e-3) as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=12, batch_size=64, val_every=3)


@healthy("loop", expect={"val_acc": (0.9, 1)})
def step_only_loop_no_epochs(run_dir):
    """3,000 steps of random minibatches, run.step only: no epochs, no validation in the record."""
    seed_all(123)
    d = toy2d("spirals", n=1500, noise=0.05)
    model = mlp([2, 128, 128, 3])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    with open_run(run_dir, 3, lr=3e-3) as run:
        run.watch(model, opt)
        for _ in range(3000):
            idx = torch.randint(0, len(d.x), (32,), generator=g)
            loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss=loss)
    val_loss, val_acc = evaluate(model, d.xv, d.yv)
    return {"val_loss": val_loss, "val_acc": val_acc, "steps": 3000}


@healthy("loop", expect=GOOD)
def full_batch_512_adam(run_dir):
    """Batch size 512 with Adam 3e-3 for 60 epochs: few, smooth steps."""
    seed_all(124)
    d = digits(flat=True)
    model = mlp([64, 256, 10])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with open_run(run_dir, 10, lr=3e-3, batch_size=512) as run:
        run.watch(model, opt, every=5)
        return fit(run, model, opt, d, epochs=60, batch_size=512)


@healthy("loop", expect={"val_acc": (0.9, 1)})
def short_run_50_steps(run_dir):
    """A 50-step run (breast_cancer, Adam): too short for most rules, and nothing is wrong."""
    seed_all(125)
    d = tabular("breast_cancer")
    model = mlp([30, 32, 2])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with open_run(run_dir, 2, lr=3e-3) as run:
        run.watch(model, opt, every=5)
        return fit(run, model, opt, d, epochs=4, batch_size=40, max_steps=50)


@healthy("loop", expect=GOOD)
def manual_loop_eval_mode_toggle(run_dir):
    """A hand-written loop with dropout + BatchNorm that switches to eval() for validation and back."""
    seed_all(126)
    d = digits(flat=True)
    model = mlp([64, 256, 10], dropout=0.2, bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(0)
    with open_run(run_dir, 10, lr=0.05, nesterov=True) as run:
        run.watch(model, opt, every=10)
        for _ in range(10):
            model.train()
            tot, correct, n = 0.0, 0, 0
            for idx in batches(len(d.x), 64, gen):
                out = model(d.x[idx])
                loss = F.cross_entropy(out, d.y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                run.step(loss=loss)
                tot += loss.item() * len(idx)
                correct += int((out.argmax(1) == d.y[idx]).sum())
                n += len(idx)
            m = log_epoch(run, tot / n, correct / n, evaluate(model, d.xv, d.yv))
    return m


@healthy("lookalike", expect={"val_acc": (0.9, 1), "roughness": (0, 0.8)})
def mlp_28x28_weight_decay_images(run_dir):
    """An MLP on all 28x28 digits with weight decay and input_shape declared: first-layer weights turn smooth."""
    from benchmarks.faults.common import roughness

    seed_all(127)
    d = digits(size=28, flat=True)
    model = mlp([784, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    with open_run(run_dir, 10, lr=0.05, weight_decay=5e-3) as run:
        run.watch(model, opt, every=20, input_shape=(1, 28, 28))
        m = fit(run, model, opt, d, epochs=15, batch_size=64)
    m["roughness"] = roughness(model[1].weight.detach().reshape(-1, 28, 28))
    return m


@healthy("architecture", expect={"val_acc": (0.8, 1)})
def embedding_bag_adam_clipped(run_dir):
    """An EmbeddingBag model over token ids, Adam 1e-2 with clip_grad_norm_ 1.0: ids in, no normalization."""
    from benchmarks.faults.cases.optimizer import _BagOfTokens

    seed_all(128)
    d = sequences(n=3000)
    model = _BagOfTokens(12, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with open_run(run_dir, 3, lr=1e-2, clip=1.0, model="embedding_bag") as run:
        run.watch(model, opt, every=10)
        return fit(run, model, opt, d, epochs=10, batch_size=32, clip=1.0)
