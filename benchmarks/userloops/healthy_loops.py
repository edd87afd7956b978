"""Healthy loops, each written out in full the way a different user would write it.

Any finding at warning or above on one of these is a false alarm. They differ in what the rules see: how the
loss reaches `run.step` (a float, a tensor, a keyword, with `lr=`), the metric names (`accuracy`,
`val_accuracy`, `valid_loss`, `val/loss`), the validation cadence (every epoch, every 3rd, by steps, never),
`Run` as a context manager or closed by hand, `watch()` with or without the optimizer and `input_shape`, and
`num_classes` given or not. Datasets come from the zoo's loaders (benchmarks/faults/common.py); the loops,
models and optimizers are the users' own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import babysit
from benchmarks.faults.common import digits, regression, sequences, tabular, toy2d, waves
from benchmarks.userloops.registry import healthy


def _acc(out, y) -> float:
    return (out.argmax(1) == y).float().mean().item()


@healthy("regression", expect={"val_loss": (0, 4500)})
def regression_mse_raw_targets(run_dir):
    """diabetes with its raw targets (25..346), MSE, Adam; run.step(loss.item()); train/val loss each epoch."""
    torch.manual_seed(1)
    d = regression("diabetes", scale_y=False)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
    with torch.no_grad():
        model[2].bias.fill_(float(d.y.mean()))  # start at the mean target, as a careful user does
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    run = babysit.Run(run_dir, config={"lr": 1e-2})
    run.watch(model, opt)
    for _epoch in range(40):
        perm = torch.randperm(len(d.x))
        tot = 0.0
        for i in range(0, len(d.x), 32):
            idx = perm[i:i + 32]
            loss = F.mse_loss(model(d.x[idx]), d.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss.item())
            tot += loss.item() * len(idx)
        with torch.no_grad():
            val = F.mse_loss(model(d.xv), d.yv).item()
        run.epoch(train_loss=tot / len(d.x), val_loss=val)
    run.close()
    return {"val_loss": val}


@healthy("regression", expect={"val_loss": (0, 0.2)})
def regression_huber_steplr(run_dir):
    """make_regression (standardized), SmoothL1, SGD+momentum, StepLR; `with Run`, run.step(loss=tensor),
    metrics named "loss" and "val/loss"."""
    torch.manual_seed(2)
    d = regression("synthetic")
    model = nn.Sequential(nn.Linear(20, 128), nn.Tanh(), nn.Linear(128, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    crit = nn.SmoothL1Loss()
    with babysit.Run(run_dir) as run:
        run.watch(model, opt, scheduler=sched)
        for _epoch in range(30):
            perm = torch.randperm(len(d.x))
            losses = []
            for i in range(0, len(d.x), 64):
                idx = perm[i:i + 64]
                loss = crit(model(d.x[idx]), d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss=loss)
                losses.append(loss.item())
            sched.step()
            with torch.no_grad():
                val = crit(model(d.xv), d.yv).item()
            run.epoch(loss=sum(losses) / len(losses), **{"val/loss": val})
    with torch.no_grad():
        return {"val_loss": F.mse_loss(model(d.xv), d.yv).item()}


@healthy("image", expect={"val_acc": (0.9, 1)})
def bn_onecycle_accumulation(run_dir):
    """BatchNorm CNN on 16x16 digits, OneCycleLR, gradient accumulation 4; run.step once per optimizer step
    with lr=sched.get_last_lr()[0]; metrics "accuracy"/"val_accuracy"."""
    torch.manual_seed(3)
    d = digits(size=16)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, 10))
    accum, micro, epochs = 4, 16, 5
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = len(d.x) // (micro * accum)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, epochs=epochs, steps_per_epoch=steps_per_epoch)
    run = babysit.Run(run_dir, num_classes=10, config={"max_lr": 0.1, "accum": accum})
    run.watch(model, opt, input_shape=(1, 16, 16))
    for _epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(d.x))
        correct = seen = 0
        for s in range(steps_per_epoch):
            opt.zero_grad()
            acc_loss = 0.0
            for k in range(accum):
                idx = perm[(s * accum + k) * micro:(s * accum + k + 1) * micro]
                out = model(d.x[idx])
                loss = F.cross_entropy(out, d.y[idx]) / accum
                loss.backward()
                acc_loss += loss.item()
                correct += int((out.argmax(1) == d.y[idx]).sum())
                seen += len(idx)
            opt.step()
            sched.step()
            run.step(acc_loss, lr=sched.get_last_lr()[0])
        model.eval()
        with torch.no_grad():
            val_acc = _acc(model(d.xv), d.yv)
        run.epoch(accuracy=correct / seen, val_accuracy=val_acc)
    run.close()
    return {"val_acc": val_acc}


class _Encoder(nn.Module):
    def __init__(self, vocab=12, d=32, length=20, classes=3):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(length, d)
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=64, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.out = nn.Linear(d, classes)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1])
        return self.out(self.enc(self.tok(ids) + self.pos(pos)).mean(1))


@healthy("sequence", expect={"val_acc": (0.8, 1)})
def transformer_warmup_adamw(run_dir):
    """nn.TransformerEncoder on token ids, AdamW with linear warmup then decay (LambdaLR); watch() without
    input_shape; "valid_loss"/"valid_acc" every epoch."""
    torch.manual_seed(4)
    d = sequences()
    model = _Encoder()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    total, warm = 8 * math.ceil(len(d.x) / 32), 60
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / (total - warm))))
    with babysit.Run(run_dir, num_classes=3) as run:
        run.watch(model, opt)
        for _epoch in range(8):
            model.train()
            perm = torch.randperm(len(d.x))
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                run.step(loss)
            model.eval()
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(valid_loss=F.cross_entropy(out, d.yv).item(), valid_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


class _LSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(1, 48, batch_first=True, num_layers=2)
        self.fc = nn.Linear(48, 3)

    def forward(self, x):
        h, _ = self.lstm(x)
        return self.fc(h[:, -1])


@healthy("sequence", expect={"val_acc": (0.8, 1)})
def lstm_waves_clipped(run_dir):
    """A 2-layer LSTM on noisy sine waves, Adam, clip_grad_norm_(1.0); the four standard epoch keys."""
    torch.manual_seed(5)
    d = waves()
    model = _LSTM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with babysit.Run(run_dir, num_classes=3, config={"clip": 1.0}) as run:
        run.watch(model, opt)
        for _epoch in range(8):
            perm = torch.randperm(len(d.x))
            tl = ta = n = 0.0
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                out = model(d.x[idx])
                loss = F.cross_entropy(out, d.y[idx])
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                run.step(loss)
                tl += loss.item()
                ta += _acc(out, d.y[idx])
                n += 1
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(train_loss=tl / n, train_acc=ta / n, val_loss=F.cross_entropy(out, d.yv).item(),
                      val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@healthy("image", expect={"val_acc": (0.85, 1)})
def cnn_dropout_noise_val_every_3(run_dir):
    """CNN with dropout and Gaussian-noise augmentation on 8x8 digits; validation only every 3rd epoch."""
    torch.manual_seed(6)
    d = digits()
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Dropout(0.25), nn.Conv2d(32, 32, 3),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(32 * 9, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    run = babysit.Run(run_dir, num_classes=10)
    run.watch(model, opt, input_shape=(1, 8, 8))
    val_acc = None
    for epoch in range(1, 10):
        model.train()
        perm = torch.randperm(len(d.x))
        losses, accs = [], []
        for i in range(0, len(d.x), 64):
            idx = perm[i:i + 64]
            xb = d.x[idx] + 0.3 * torch.randn_like(d.x[idx])
            out = model(xb)
            loss = F.cross_entropy(out, d.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss.item())
            losses.append(loss.item())
            accs.append(_acc(out, d.y[idx]))
        metrics = {"train_loss": sum(losses) / len(losses), "train_acc": sum(accs) / len(accs)}
        if epoch % 3 == 0:
            model.eval()
            with torch.no_grad():
                out = model(d.xv)
            val_acc = _acc(out, d.yv)
            metrics.update(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=val_acc)
        run.epoch(**metrics)
    run.close()
    return {"val_acc": val_acc}


@healthy("classify", expect={"val_acc": (0.9, 1)})
def label_smoothing_val_by_steps(run_dir):
    """nn.CrossEntropyLoss(label_smoothing=0.1); validation every 150 steps by run.epoch(val_loss, val_acc)
    only; no train metrics per epoch."""
    torch.manual_seed(7)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for step in range(1, 901):
            idx = torch.randint(0, len(d.x), (32,), generator=g)
            loss = crit(model(d.x[idx]), d.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss)
            if step % 150 == 0:
                with torch.no_grad():
                    out = model(d.xv)
                run.epoch(val_loss=crit(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@healthy("classify", expect={"val_acc": (0.85, 1)})
def mixup_soft_targets(run_dir):
    """mixup (alpha 0.4) with soft targets and label smoothing: cross_entropy on probability targets, so the
    loss floors well above zero while accuracy is high."""
    torch.manual_seed(8)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    beta = torch.distributions.Beta(0.4, 0.4)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for _epoch in range(12):
            perm = torch.randperm(len(d.x))
            tl, n = 0.0, 0
            for i in range(0, len(d.x), 64):
                idx = perm[i:i + 64]
                lam = float(beta.sample())
                j = idx[torch.randperm(len(idx))]
                xb = lam * d.x[idx] + (1 - lam) * d.x[j]
                t = lam * F.one_hot(d.y[idx], 10).float() + (1 - lam) * F.one_hot(d.y[j], 10).float()
                t = t * 0.9 + 0.01
                loss = F.cross_entropy(model(xb), t)
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss=loss.item())
                tl, n = tl + loss.item(), n + 1
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(train_loss=tl / n, val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@healthy("classify", expect={"val_acc": (0.85, 1)})
def finetune_frozen_backbone(run_dir):
    """Pretrain a body on digits 0-4 (not recorded), then freeze it and train a new 10-class head only."""
    torch.manual_seed(9)
    d = digits(flat=True)
    body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
    pre = nn.Sequential(body, nn.Linear(64, 5))
    popt = torch.optim.Adam(pre.parameters(), lr=1e-3)
    keep = d.y < 5
    xp, yp = d.x[keep], d.y[keep]
    for _ in range(300):
        idx = torch.randint(0, len(xp), (64,))
        loss = F.cross_entropy(pre(xp[idx]), yp[idx])
        popt.zero_grad()
        loss.backward()
        popt.step()
    for p in body.parameters():
        p.requires_grad = False
    model = nn.Sequential(body, nn.Linear(64, 10))
    opt = torch.optim.Adam(model[1].parameters(), lr=3e-3)
    with babysit.Run(run_dir, num_classes=10, config={"finetune": "head only"}) as run:
        run.watch(model, opt)
        for _epoch in range(8):
            perm = torch.randperm(len(d.x))
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                out = model(d.x[idx])
                loss = F.cross_entropy(out, d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss, acc=_acc(out, d.y[idx]))
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(64, 128), nn.ReLU())
        self.cls = nn.Linear(128, 10)
        self.parity = nn.Linear(128, 1)

    def forward(self, x):
        h = self.trunk(x)
        return self.cls(h), self.parity(h).squeeze(1)


@healthy("classify", expect={"val_acc": (0.9, 1)})
def multitask_two_heads(run_dir):
    """A shared trunk with two heads (digit class + parity by BCE); the summed loss is recorded, each part as
    a scalar; no num_classes given."""
    torch.manual_seed(10)
    d = digits(flat=True)
    model = _TwoHeads()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with babysit.Run(run_dir) as run:
        run.watch(model, opt)
        for _epoch in range(8):
            perm = torch.randperm(len(d.x))
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                logits, par = model(d.x[idx])
                l_cls = F.cross_entropy(logits, d.y[idx])
                l_par = F.binary_cross_entropy_with_logits(par, (d.y[idx] % 2).float())
                loss = l_cls + 0.5 * l_par
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss, cls_loss=l_cls.item(), parity_loss=l_par.item())
            with torch.no_grad():
                logits, _ = model(d.xv)
            run.epoch(val_accuracy=_acc(logits, d.yv))
    return {"val_acc": _acc(logits, d.yv)}


@healthy("classify", expect={"d_loss": (0.3, 2.0)})
def gan_two_optimizers(run_dir):
    """A small GAN on a 2-D Gaussian mixture: generator and discriminator with their own Adam; the loop
    records d_loss as the loss and g_loss as a scalar (neither is meant to fall to zero)."""
    torch.manual_seed(11)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    G = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2))
    D = nn.Sequential(nn.Linear(2, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))
    og = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    od = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    with babysit.Run(run_dir, config={"model": "gan"}) as run:
        run.watch(D, od)
        for _step in range(800):
            real = centers[torch.randint(0, 4, (64,))] + 0.1 * torch.randn(64, 2)
            fake = G(torch.randn(64, 4))
            d_loss = bce(D(real), torch.ones(64, 1)) + bce(D(fake.detach()), torch.zeros(64, 1))
            od.zero_grad()
            d_loss.backward()
            od.step()
            g_loss = bce(D(fake), torch.ones(64, 1))
            og.zero_grad()
            g_loss.backward()
            og.step()
            run.step(d_loss, g_loss=g_loss.item())
    return {"d_loss": d_loss.item()}


@healthy("regression", expect={"val_loss": (0, 0.6)})
def autoencoder_reconstruction(run_dir):
    """A digits autoencoder (64-32-8-32-64), MSE reconstruction, no classes; watch(model) without optimizer;
    "recon_loss"/"val_recon_loss" per epoch."""
    torch.manual_seed(12)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 32), nn.ReLU(),
                          nn.Linear(32, 64))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    run = babysit.Run(run_dir)
    run.watch(model)
    for _epoch in range(15):
        perm = torch.randperm(len(d.x))
        tot = 0.0
        for i in range(0, len(d.x), 64):
            xb = d.x[perm[i:i + 64]]
            loss = F.mse_loss(model(xb), xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss)
            tot += loss.item() * len(xb)
        with torch.no_grad():
            val = F.mse_loss(model(d.xv), d.xv).item()
        run.epoch(recon_loss=tot / len(d.x), val_recon_loss=val)
    run.close()
    return {"val_loss": val}


@healthy("classify", expect={"val_acc": (0.9, 1)})
def eval_toggle_bn_dropout(run_dir):
    """An MLP with BatchNorm and dropout; model.eval() for validation and model.train() back each epoch;
    Run closed by hand."""
    torch.manual_seed(13)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    run = babysit.Run(run_dir, num_classes=10)
    run.watch(model, opt)
    try:
        for _epoch in range(8):
            model.train()
            perm = torch.randperm(len(d.x))
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
            model.eval()
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    finally:
        run.close()
    return {"val_acc": _acc(out, d.yv)}


@healthy("classify", expect={"val_acc": (0.85, 1)})
def early_stopped_patience(run_dir):
    """A wide MLP on 300 training digits that starts to overfit; early stopping (patience 3) on val loss ends
    the run and restores the best weights."""
    torch.manual_seed(14)
    d = digits(flat=True)
    x, y = d.x[:300], d.y[:300]
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    best, best_state, bad = float("inf"), None, 0
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for _epoch in range(60):
            perm = torch.randperm(len(x))
            losses, accs = [], []
            for i in range(0, len(x), 16):
                idx = perm[i:i + 16]
                out = model(x[idx])
                loss = F.cross_entropy(out, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                losses.append(loss.item())
                accs.append(_acc(out, y[idx]))
            with torch.no_grad():
                out = model(d.xv)
            vl = F.cross_entropy(out, d.yv).item()
            run.epoch(train_loss=sum(losses) / len(losses), train_acc=sum(accs) / len(accs), val_loss=vl,
                      val_acc=_acc(out, d.yv))
            if vl < best - 1e-4:
                best, bad = vl, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
                if bad >= 3:
                    run.log_event("early_stopping", best_val_loss=best)
                    break
    model.load_state_dict(best_state)
    with torch.no_grad():
        return {"val_acc": _acc(model(d.xv), d.yv)}


@healthy("classify", expect={"val_acc": (0.85, 1)})
def tiny_run_wine(run_dir):
    """wine (13 features, 3 classes), 6 epochs of batch 16: 54 steps in all; run.step(loss.item(), acc=...)."""
    torch.manual_seed(15)
    d = tabular("wine")
    model = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with babysit.Run(run_dir, num_classes=3) as run:
        run.watch(model, opt)
        for _epoch in range(6):
            perm = torch.randperm(len(d.x))
            for i in range(0, len(d.x), 16):
                idx = perm[i:i + 16]
                out = model(d.x[idx])
                loss = F.cross_entropy(out, d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss.item(), acc=_acc(out, d.y[idx]))
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@healthy("classify", expect={"val_acc": (0.9, 1)})
def clip_grad_norm_sgd(run_dir):
    """breast_cancer, a 3-layer MLP, SGD lr 0.05 + momentum with clip_grad_norm_(5.0); train/val each epoch."""
    torch.manual_seed(16)
    d = tabular("breast_cancer")
    model = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with babysit.Run(run_dir, num_classes=2) as run:
        run.watch(model, opt)
        for _epoch in range(15):
            perm = torch.randperm(len(d.x))
            tl, ta, n = 0.0, 0.0, 0
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                out = model(d.x[idx])
                loss = F.cross_entropy(out, d.y[idx])
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                run.step(loss)
                tl, ta, n = tl + loss.item(), ta + _acc(out, d.y[idx]), n + 1
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(train_loss=tl / n, train_acc=ta / n, val_loss=F.cross_entropy(out, d.yv).item(),
                      val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@healthy("image", expect={"val_acc": (0.9, 1)})
def cosine_to_zero(run_dir):
    """A CNN on 8x8 digits, SGD, CosineAnnealingLR down to exactly 0 at the last step; run.step(loss,
    lr=sched.get_last_lr()[0]) before sched.step()."""
    torch.manual_seed(17)
    d = digits()
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    epochs, bs = 8, 64
    total = epochs * math.ceil(len(d.x) / bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=0.0)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt, input_shape=(1, 8, 8))
        for _epoch in range(epochs):
            perm = torch.randperm(len(d.x))
            for i in range(0, len(d.x), bs):
                idx = perm[i:i + bs]
                loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss, lr=sched.get_last_lr()[0])
                sched.step()
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@healthy("classify", expect={"val_acc": (0.85, 1)})
def step_only_batch1(run_dir):
    """Batch size 1 (pure SGD, lr 0.01) on moons for 1,500 steps; run.step(loss.item()) only, no epochs, no
    validation in the record: a very noisy loss curve."""
    torch.manual_seed(18)
    d = toy2d("moons", noise=0.2)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = babysit.Run(run_dir, num_classes=2)
    run.watch(model, opt)
    for _step in range(1500):
        i = torch.randint(0, len(d.x), (1,))
        loss = F.cross_entropy(model(d.x[i]), d.y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.step(loss.item())
    run.close()
    with torch.no_grad():
        return {"val_acc": _acc(model(d.xv), d.yv)}
