"""Second fresh batch: user loops written after the first 52 were tuned on, from how users write code and how
faults arise, before reading any rule's logic (only the rule ids and one-line titles). Their own split,
"fresh2"; their first result is the clean figure (docs/benchmarks.md, "Second fresh batch").

Healthy loops that are legitimate but unusual for a monitor: run.step only every 10th batch, a three-run lr
sweep in one process (the scored run is the slow lr), SGDR warm restarts (the lr jumps back up, and the loss
with it), a siamese net on a contrastive loss, a GRU tagger on padded sequences with ignore_index=-100, a
tiny U-Net with a pixelwise cross_entropy over (N, C, H, W), an EmbeddingBag text classifier, a gradient
clip at 0.1 with an EMA of the weights, and a run with 20% label noise whose val loss is a sum over the set.

Buggy loops: model.eval() for validation in epoch 1 never undone (heavy dropout lost), a warmup that never
ends (1e6 steps), Adam at 1e-7 from a units mistake, Gaussian augmentation at 10x the signal, a hand-written
binary cross-entropy with log(1 - sigmoid) and no epsilon (NaN once the net is confident), ExponentialLR with
gamma 1.5, every weight initialised to zero, and inputs and labels shuffled with two permutations every epoch.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

import babysit
from benchmarks.faults.common import digits, sequences, tabular, toy2d, waves
from benchmarks.userloops.registry import faulty, healthy

LR_HIGH = ("loss_explosion", "nonfinite_loss", "update_ratio:high", "lr_too_high", "exploding_gradients")
LR_HIGH_WRONG = ("bad_labels", "unnormalized_input", "underfitting", "flat_loss", "update_ratio:low",
                 "low_capacity", "overfitting", "double_softmax", "frozen_parameters", "chance_accuracy",
                 "dead_units", "stalled_weights")
LR_LOW = ("flat_loss", "update_ratio:low", "lr_too_low", "underfitting")
LR_LOW_WRONG = ("loss_explosion", "nonfinite_loss", "update_ratio:high", "lr_too_high", "bad_labels",
                "unnormalized_input", "double_softmax", "frozen_parameters", "overfitting", "low_capacity",
                "dead_units", "regularization_too_strong", "exploding_gradients")
CODE_WRONG = ("lr_too_high", "update_ratio:high", "update_ratio:low", "unnormalized_input", "bad_labels",
              "low_capacity", "overfitting", "noisy_weights", "underfitting", "flat_loss", "double_softmax",
              "loss_explosion", "noisy_loss")


def _acc(out, y) -> float:
    return (out.argmax(1) == y).float().mean().item()


# =========================================================================== healthy
@healthy("image", expect={"val_acc": (0.93, 1)})
def fresh2_log_every_10th(run_dir):
    """A CNN on 8x8 digits with Adam; the user calls run.step(loss.item()) only when i % 10 == 0 (to keep the
    log small), so the optimizer steps ten times per recorded step; epoch metrics every epoch."""
    torch.manual_seed(401)
    d = digits()
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4, 10))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt, input_shape=(1, 8, 8))
        i = 0
        for _epoch in range(6):
            model.train()
            perm = torch.randperm(len(d.x))
            for b in range(0, len(d.x), 16):
                idx = perm[b:b + 16]
                loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                if i % 10 == 0:
                    run.step(loss.item())
                i += 1
            model.eval()
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@healthy("toy", expect={"val_acc": (0.85, 1), "best_val_acc": (0.95, 1)})
def fresh2_lr_sweep_three_runs(run_dir):
    """A sweep of three learning rates in one process, one Run each (the first two in sibling directories);
    the scored run is the last, SGD at 0.01 without momentum: slower than the others, not broken. Each trial
    logs a 'trial' event."""
    d = toy2d("moons", n=1500, noise=0.15)
    best = 0.0
    vacc = 0.0
    lrs = (0.3, 0.1, 0.01)
    for k, lr in enumerate(lrs):
        torch.manual_seed(402)
        model = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        path = run_dir if k == len(lrs) - 1 else f"{run_dir}-lr{lr:g}"
        with babysit.Run(path, num_classes=2, config={"lr": lr, "sweep": "lr"}) as run:
            run.watch(model, opt)
            run.log_event("trial", index=k, lr=lr)
            for _epoch in range(10):
                perm = torch.randperm(len(d.x))
                tl = n = 0
                for i in range(0, len(d.x), 32):
                    idx = perm[i:i + 32]
                    loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    run.step(loss)
                    tl, n = tl + loss.item(), n + 1
                with torch.no_grad():
                    out = model(d.xv)
                vacc = _acc(out, d.yv)
                run.epoch(train_loss=tl / n, val_loss=F.cross_entropy(out, d.yv).item(), val_acc=vacc)
        best = max(best, vacc)
    return {"val_acc": vacc, "best_val_acc": best}


@healthy("image", expect={"val_acc": (0.93, 1), "restarts": (2, 5)})
def fresh2_sgdr_warm_restarts(run_dir):
    """SGD + momentum with CosineAnnealingWarmRestarts (T_0 = 2 epochs), stepped per batch with the fractional
    epoch: at each restart the lr jumps from ~0 back to 0.1 and the loss jumps up with it; the user logs a
    'restart' event and passes lr= to run.step."""
    torch.manual_seed(403)
    d = digits()
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=2, T_mult=1, eta_min=0.0)
    bs = 32
    iters = math.ceil(len(d.x) / bs)
    restarts = 0
    with babysit.Run(run_dir, num_classes=10, config={"sched": "SGDR", "T_0": 2}) as run:
        run.watch(model, opt, scheduler=sched)
        for epoch in range(8):
            model.train()
            if epoch and epoch % 2 == 0:
                restarts += 1
                run.log_event("restart", epoch=epoch)
            perm = torch.randperm(len(d.x))
            for k, i in enumerate(range(0, len(d.x), bs)):
                idx = perm[i:i + bs]
                loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step(epoch + k / iters)
                run.step(loss, lr=opt.param_groups[0]["lr"])
            model.eval()
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv), "restarts": restarts}


@healthy("metric", expect={"val_pair_acc": (0.85, 1)})
def fresh2_siamese_contrastive(run_dir):
    """A siamese MLP embedding digits into 16-d; half the pairs same-class; contrastive loss (d^2 for a
    same pair, max(0, 2 - d)^2 otherwise); no classes; the user logs pair accuracy at the threshold d < 1."""
    torch.manual_seed(404)
    d = digits(flat=True)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 16))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    margin = 2.0

    def pairs(y, n, gen):
        a = torch.randint(0, len(y), (n,), generator=gen)
        same = torch.rand(n, generator=gen) < 0.5
        b = torch.randint(0, len(y), (n,), generator=gen)
        for j in torch.nonzero(same).flatten().tolist():  # a same-class partner
            cand = torch.nonzero(y == y[a[j]]).flatten()
            b[j] = cand[torch.randint(0, len(cand), (1,), generator=gen)]
        return a, b, (y[a] == y[b]).float()

    def contrastive(ea, eb, s):
        dist = (ea - eb).pow(2).sum(1).add(1e-9).sqrt()
        return (s * dist.pow(2) + (1 - s) * (margin - dist).clamp(min=0).pow(2)).mean(), dist

    g = torch.Generator().manual_seed(4)
    va, vb, vs = pairs(d.yv, 2000, g)
    with babysit.Run(run_dir, config={"loss": "contrastive", "margin": margin}) as run:
        run.watch(net, opt)
        for _epoch in range(8):
            a, b, s = pairs(d.y, 4000, g)
            tl = n = 0
            for i in range(0, len(a), 64):
                loss, _ = contrastive(net(d.x[a[i:i + 64]]), net(d.x[b[i:i + 64]]), s[i:i + 64])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss=loss)
                tl, n = tl + loss.item(), n + 1
            with torch.no_grad():
                vloss, dist = contrastive(net(d.xv[va]), net(d.xv[vb]), vs)
            pair_acc = ((dist < margin / 2).float() == vs).float().mean().item()
            run.epoch(train_loss=tl / n, val_loss=vloss.item(), val_pair_acc=pair_acc)
    return {"val_pair_acc": pair_acc}


@healthy("sequence", expect={"val_token_acc": (0.9, 1)})
def fresh2_tagger_ignore_index(run_dir):
    """A GRU tagger: variable-length token sequences padded with id 0 to 20, one tag per token
    ((token + previous token) % 3), pads tagged -100 and ignored by cross_entropy; token accuracy over real
    tokens; Run closed by hand."""
    torch.manual_seed(405)
    d = sequences(n=2000, length=20, vocab=12)
    g = torch.Generator().manual_seed(5)

    def prep(x):
        x = x + 1  # ids 1..12, 0 is the pad
        lengths = torch.randint(8, 21, (len(x),), generator=g)
        pad = torch.arange(x.shape[1])[None] >= lengths[:, None]
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
        tags = (x + prev) % 3
        return x.masked_fill(pad, 0), tags.masked_fill(pad, -100)

    x, t = prep(d.x)
    xv, tv = prep(d.xv)

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(13, 32, padding_idx=0)
            self.rnn = nn.GRU(32, 64, batch_first=True)
            self.out = nn.Linear(64, 3)

        def forward(self, x):
            return self.out(self.rnn(self.emb(x))[0])  # (N, L, 3)

    model = Tagger()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    run = babysit.Run(run_dir, num_classes=3, config={"pad": -100})
    run.watch(model, opt)
    for _epoch in range(8):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            out = model(x[idx])
            loss = F.cross_entropy(out.reshape(-1, 3), t[idx].reshape(-1), ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            run.step(loss)
        with torch.no_grad():
            out = model(xv)
        mask = tv != -100
        tok_acc = (out.argmax(-1)[mask] == tv[mask]).float().mean().item()
        run.epoch(val_loss=F.cross_entropy(out.reshape(-1, 3), tv.reshape(-1), ignore_index=-100).item(),
                  val_token_acc=tok_acc)
    run.close()
    return {"val_token_acc": tok_acc}


def _shapes(n, gen):
    """16x16 images: a bright square (class 1) and a dark disk (class 2) on a noisy background (class 0)."""
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    img = torch.randn(n, 1, 16, 16, generator=gen) * 0.3
    mask = torch.zeros(n, 16, 16, dtype=torch.long)
    for j in range(n):
        r, c, s = torch.randint(0, 11, (2,), generator=gen).tolist() + [torch.randint(3, 6, (1,), generator=gen).item()]
        sq = (yy >= r) & (yy < r + s) & (xx >= c) & (xx < c + s)
        cy, cx = torch.randint(3, 13, (2,), generator=gen).tolist()
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2) <= 6
        mask[j][sq] = 1
        mask[j][disk & ~sq] = 2
    img[:, 0][mask == 1] += 1.0
    img[:, 0][mask == 2] -= 1.0
    return img, mask


class _TinyUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 1))

    def forward(self, x):
        e = self.enc(x)
        return self.dec(torch.cat([e, self.up(self.down(e))], 1))


@healthy("segment", expect={"val_pixel_acc": (0.95, 1), "val_miou": (0.8, 1)})
def fresh2_unet_pixel_segmentation(run_dir):
    """A tiny U-Net (one skip) segmenting squares and disks: F.cross_entropy over (N, 3, 16, 16) logits and
    (N, 16, 16) masks, ~80% of the pixels background; pixel accuracy and mean IoU each epoch."""
    torch.manual_seed(406)
    g = torch.Generator().manual_seed(6)
    x, m = _shapes(800, g)
    xv, mv = _shapes(200, g)
    model = _TinyUNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def miou(pred, m):
        return sum(((pred == c) & (m == c)).sum().item() / max(1, ((pred == c) | (m == c)).sum().item())
                   for c in range(3)) / 3

    with babysit.Run(run_dir, num_classes=3, config={"task": "segmentation"}) as run:
        run.watch(model, opt, input_shape=(1, 16, 16))
        for _epoch in range(8):
            perm = torch.randperm(len(x))
            for i in range(0, len(x), 32):
                idx = perm[i:i + 32]
                out = model(x[idx])
                loss = F.cross_entropy(out, m[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss.item(), acc=(out.argmax(1) == m[idx]).float().mean().item())
            with torch.no_grad():
                out = model(xv)
            pred = out.argmax(1)
            pix, iou = (pred == mv).float().mean().item(), miou(pred, mv)
            run.epoch(val_loss=F.cross_entropy(out, mv).item(), val_pixel_acc=pix, val_miou=iou)
    return {"val_pixel_acc": pix, "val_miou": iou}


@healthy("text", expect={"val_acc": (0.8, 1)})
def fresh2_embeddingbag_text(run_dir):
    """A bag-of-tokens text classifier: nn.EmbeddingBag(mode='mean') over flattened token ids with offsets,
    then a ReLU head; Adam; metrics 'acc' and 'val_acc' from run.epoch only. (The label, the most frequent of
    tokens 1-3 with random tie-breaks, caps accuracy near 0.85: set before the first scored run.)"""
    torch.manual_seed(407)
    d = sequences(n=3000, length=20, vocab=12)

    class BagClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = nn.EmbeddingBag(12, 32, mode="mean")
            self.head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))

        def forward(self, tokens, offsets):
            return self.head(self.bag(tokens, offsets))

    def flat(x):
        return x.flatten(), torch.arange(0, x.numel(), x.shape[1])

    model = BagClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with babysit.Run(run_dir, num_classes=3) as run:
        run.watch(model, opt)
        for _epoch in range(12):
            perm = torch.randperm(len(d.x))
            hits = seen = 0
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                out = model(*flat(d.x[idx]))
                loss = F.cross_entropy(out, d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss=loss)
                hits, seen = hits + int((out.argmax(1) == d.y[idx]).sum()), seen + len(idx)
            with torch.no_grad():
                vacc = _acc(model(*flat(d.xv)), d.yv)
            run.epoch(acc=hits / seen, val_acc=vacc)
    return {"val_acc": vacc}


@healthy("tabular", expect={"val_acc": (0.9, 1)})
def fresh2_tight_clip_ema(run_dir):
    """An MLP on breast_cancer with SGD + momentum, clip_grad_norm_(0.1) on purpose (the
    pre-clip norm is ~1-10, passed as grad_norm=), and an EMA copy of the weights (decay 0.99) used for
    validation."""
    torch.manual_seed(408)
    d = tabular("breast_cancer")
    model = nn.Sequential(nn.Linear(30, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 2))
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with babysit.Run(run_dir, num_classes=2, config={"clip": 0.1, "ema": 0.99}) as run:
        run.watch(model, opt)
        for _epoch in range(10):
            perm = torch.randperm(len(d.x))
            tl = ta = n = 0.0
            for i in range(0, len(d.x), 16):
                idx = perm[i:i + 16]
                out = model(d.x[idx])
                loss = F.cross_entropy(out, d.y[idx])
                opt.zero_grad()
                loss.backward()
                gn = nn.utils.clip_grad_norm_(model.parameters(), 0.1)
                opt.step()
                with torch.no_grad():
                    for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
                        pe.mul_(0.99).add_(p, alpha=0.01)
                run.step(loss, grad_norm=gn)
                tl, ta, n = tl + loss.item(), ta + _acc(out, d.y[idx]), n + 1
            with torch.no_grad():
                out = ema(d.xv)
            run.epoch(train_loss=tl / n, train_acc=ta / n, val_loss=F.cross_entropy(out, d.yv).item(),
                      val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@healthy("image", expect={"val_acc": (0.9, 1), "train_acc": (0.6, 0.9)})
def fresh2_label_noise_val_summed(run_dir):
    """20% of the training labels replaced by random classes (a noisy annotator): train accuracy is capped
    near 0.8 while the clean val accuracy is ~0.95; the user's val_loss is a sum over the 360 val images
    (reduction='sum'), train_loss a per-batch mean."""
    torch.manual_seed(409)
    d = digits(flat=True)
    g = torch.Generator().manual_seed(9)
    flip = torch.rand(len(d.y), generator=g) < 0.2
    y = torch.where(flip, torch.randint(0, 10, (len(d.y),), generator=g), d.y)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)
    with babysit.Run(run_dir, num_classes=10, config={"label_noise": 0.2}) as run:
        run.watch(model, opt)
        for _epoch in range(10):
            perm = torch.randperm(len(d.x))
            tl = ta = n = 0.0
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                out = model(d.x[idx])
                loss = F.cross_entropy(out, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                tl, ta, n = tl + loss.item(), ta + _acc(out, y[idx]), n + 1
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(train_loss=tl / n, train_acc=ta / n,
                      val_loss=F.cross_entropy(out, d.yv, reduction="sum").item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv), "train_acc": ta / n}


# =========================================================================== buggy
@faulty("code", accept=("eval_mode_training",),
        wrong=("lr_too_high", "update_ratio:high", "update_ratio:low", "unnormalized_input", "bad_labels",
               "low_capacity", "noisy_weights", "underfitting", "flat_loss", "double_softmax", "loss_explosion",
               "frozen_parameters", "stalled_weights"),
        expect={"epochs_in_train_mode": (1, 1), "final_train_loss": (0, 0.05)})
def fresh2_train_mode_lost_after_val(run_dir):
    """model.train() once before the loop; each epoch ends with model.eval() for validation and the next epoch
    never calls model.train(): from epoch 2 on the 0.5 dropout of a wide MLP on 400 digits is off, the
    training loss drops to ~0 and the net memorises."""
    torch.manual_seed(501)
    d = digits(flat=True, n_train=400)
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 512), nn.ReLU(),
                          nn.Dropout(0.5), nn.Linear(512, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    in_train = 0
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for _epoch in range(20):
            in_train += int(model.training)
            perm = torch.randperm(len(d.x))
            tl = ta = n = 0.0
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                out = model(d.x[idx])
                loss = F.cross_entropy(out, d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                tl, ta, n = tl + loss.item(), ta + _acc(out, d.y[idx]), n + 1
            model.eval()  # the bug: no model.train() at the top of the next epoch
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(train_loss=tl / n, train_acc=ta / n, val_loss=F.cross_entropy(out, d.yv).item(),
                      val_acc=_acc(out, d.yv))
    return {"epochs_in_train_mode": in_train, "final_train_loss": tl / n}


@faulty("optimizer", accept=LR_LOW + ("stalled_weights",), wrong=LR_LOW_WRONG, expect={"val_acc": (0, 0.5),
                                                                                        "final_lr": (0, 1e-6)})
def fresh2_warmup_never_ends(run_dir):
    """A linear warmup written as LambdaLR(lambda s: min(1, s / warmup)) with warmup = 1_000_000 (meant as
    1_000): after 1,000 steps the lr is still 1e-3 of its target, and Adam barely moves."""
    torch.manual_seed(502)
    d = waves()
    x, xv = d.x.flatten(1), d.xv.flatten(1)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    warmup = 1_000_000
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / warmup))
    with babysit.Run(run_dir, num_classes=3, config={"lr": 1e-3, "warmup_steps": warmup}) as run:
        run.watch(model, opt, scheduler=sched)
        for _epoch in range(8):
            perm = torch.randperm(len(x))
            tl = ta = n = 0.0
            for i in range(0, len(x), 16):
                idx = perm[i:i + 16]
                out = model(x[idx])
                loss = F.cross_entropy(out, d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                run.step(loss.item(), lr=sched.get_last_lr()[0])
                tl, ta, n = tl + loss.item(), ta + _acc(out, d.y[idx]), n + 1
            with torch.no_grad():
                out = model(xv)
            run.epoch(train_loss=tl / n, train_acc=ta / n, val_loss=F.cross_entropy(out, d.yv).item(),
                      val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv), "final_lr": sched.get_last_lr()[0]}


@faulty("optimizer", accept=LR_LOW + ("stalled_weights",), wrong=LR_LOW_WRONG, expect={"val_acc": (0, 0.4)})
def fresh2_adam_lr_units_mistake(run_dir):
    """lr = 1e-4 / 1000: the user 'converted' a per-1000-samples lr from a paper; Adam at 1e-7 on a CNN
    for 5 epochs; watch(model) without the optimizer, lr= passed to run.step."""
    torch.manual_seed(503)
    d = digits()
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))
    lr = 1e-4 / 1000
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with babysit.Run(run_dir, num_classes=10, config={"lr": lr}) as run:
        run.watch(model, input_shape=(1, 8, 8))
        for _epoch in range(5):
            model.train()
            perm = torch.randperm(len(d.x))
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss, lr=lr)
            model.eval()
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@faulty("data", accept=("underfitting", "unnormalized_input"),
        wrong=("lr_too_high", "update_ratio:high", "update_ratio:low", "bad_labels", "double_softmax",
               "frozen_parameters", "stalled_weights", "overfitting", "low_capacity", "loss_mismatch",
               "dead_units", "chance_accuracy"),
        expect={"train_acc": (0, 0.5), "val_acc": (0, 0.85)})
def fresh2_augment_noise_10x(run_dir):
    """Gaussian-noise augmentation with std=10.0 (meant 0.1) on standardized inputs: the training batches
    are 10x noise over the signal; the clean val set does better than training but far from what it could."""
    torch.manual_seed(504)
    d = tabular("wine")
    model = nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    noise_std = 10.0
    with babysit.Run(run_dir, num_classes=3, config={"noise_std": noise_std}) as run:
        run.watch(model, opt)
        for _epoch in range(30):
            perm = torch.randperm(len(d.x))
            tl = ta = n = 0.0
            for i in range(0, len(d.x), 16):
                idx = perm[i:i + 16]
                xb = d.x[idx] + noise_std * torch.randn_like(d.x[idx])  # the bug: 10.0 for 0.1
                out = model(xb)
                loss = F.cross_entropy(out, d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                tl, ta, n = tl + loss.item(), ta + _acc(out, d.y[idx]), n + 1
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(train_loss=tl / n, train_acc=ta / n, val_loss=F.cross_entropy(out, d.yv).item(),
                      val_acc=_acc(out, d.yv))
    return {"train_acc": ta / n, "val_acc": _acc(out, d.yv)}


@faulty("code", accept=("nonfinite_loss", "loss_mismatch", "double_softmax", "output_activation"),
        wrong=("bad_labels", "unnormalized_input", "low_capacity", "overfitting", "frozen_parameters",
               "flat_loss", "update_ratio:low", "underfitting", "dead_units", "chance_accuracy"),
        expect={"nan_steps": (1, 10_000), "first_nan_step": (100, 10_000)})
def fresh2_manual_bce_log_nan(run_dir):
    """A hand-written binary cross-entropy on a one-logit head: p = sigmoid(z);
    -(y * log(p) + (1 - y) * log(1 - p)), no epsilon and no clamp. Once the net is confident (z > ~17 on a
    positive), 1 - p is exactly 0 in float32, 0 * log(0) is NaN, and the weights are NaN from then on."""
    torch.manual_seed(505)
    d = toy2d("moons", n=1000, noise=0.05)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    nan_steps = step = 0
    first_nan = None
    with babysit.Run(run_dir, num_classes=2) as run:
        run.watch(model, opt)
        for _epoch in range(25):
            perm = torch.randperm(len(d.x))
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                p = torch.sigmoid(model(d.x[idx]).squeeze(1))
                y = d.y[idx].float()
                loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()  # the bug: no eps / clamp
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss.item())
                step += 1
                if not math.isfinite(loss.item()):
                    nan_steps += 1
                    first_nan = first_nan or step
            with torch.no_grad():
                vacc = ((model(d.xv).squeeze(1) > 0).long() == d.yv).float().mean().item()
            run.epoch(val_acc=vacc)
    return {"nan_steps": nan_steps, "first_nan_step": first_nan}


@faulty("optimizer", accept=LR_HIGH, wrong=LR_HIGH_WRONG, expect={"final_lr": (1, 1e9), "val_acc": (0, 0.6)})
def fresh2_exponential_lr_gamma_up(run_dir):
    """ExponentialLR(gamma=1.5) (the user meant 0.95... or 1/1.5) stepped each epoch: SGD + momentum from 0.01
    reaches ~3 by epoch 15; the net trains, then the loss blows up."""
    torch.manual_seed(506)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.5)
    with babysit.Run(run_dir, num_classes=10, config={"lr": 0.01, "gamma": 1.5}) as run:
        run.watch(model, opt, scheduler=sched)
        for _epoch in range(16):
            perm = torch.randperm(len(d.x))
            tl = ta = n = 0.0
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                out = model(d.x[idx])
                loss = F.cross_entropy(out, d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                tl, ta, n = tl + loss.item(), ta + _acc(out, d.y[idx]), n + 1
            sched.step()
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(train_loss=tl / n, train_acc=ta / n, val_loss=F.cross_entropy(out, d.yv).item(),
                      val_acc=_acc(out, d.yv))
    return {"final_lr": opt.param_groups[0]["lr"], "val_acc": _acc(out, d.yv)}


@faulty("init", accept=("dead_units", "vanishing_gradients", "stalled_weights"),
        wrong=("lr_too_high", "update_ratio:high", "bad_labels", "unnormalized_input", "double_softmax",
               "overfitting", "loss_mismatch", "noisy_weights", "exploding_gradients", "loss_explosion"),
        expect={"val_acc": (0, 0.25)})
def fresh2_zero_init_all_layers(run_dir):
    """The user 'initialised deterministically': nn.init.zeros_ on every weight and bias of a 3-layer ReLU
    MLP. Every hidden unit is 0, no gradient reaches the hidden weights, and only the last bias learns (the
    class prior)."""
    torch.manual_seed(507)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with babysit.Run(run_dir, num_classes=10, config={"init": "zeros"}) as run:
        run.watch(model, opt)
        for _epoch in range(6):
            perm = torch.randperm(len(d.x))
            tl = ta = n = 0.0
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                out = model(d.x[idx])
                loss = F.cross_entropy(out, d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                tl, ta, n = tl + loss.item(), ta + _acc(out, d.y[idx]), n + 1
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(train_loss=tl / n, train_acc=ta / n, val_loss=F.cross_entropy(out, d.yv).item(),
                      val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@faulty("data", accept=("bad_labels", "chance_accuracy"),
        wrong=("overfitting", "lr_too_high", "update_ratio:high", "update_ratio:low", "unnormalized_input",
               "double_softmax", "frozen_parameters", "low_capacity", "dead_units", "stalled_weights",
               "loss_mismatch"),
        expect={"val_acc": (0, 0.5)})
def fresh2_shuffled_apart_each_epoch(run_dir):
    """Each epoch the user shuffles x_train and y_train in place with two separate randperm calls: every
    epoch pairs the inputs with a new random labelling, so nothing carries from one epoch to the next."""
    torch.manual_seed(508)
    d = waves()
    x, y = d.x.clone(), d.y.clone()
    model = nn.Sequential(nn.Flatten(), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with babysit.Run(run_dir, num_classes=3) as run:
        run.watch(model, opt)
        for _epoch in range(8):
            x = x[torch.randperm(len(x))]
            y = y[torch.randperm(len(y))]  # the bug: a second, independent permutation
            tl = ta = n = 0.0
            for i in range(0, len(x), 32):
                out = model(x[i:i + 32])
                loss = F.cross_entropy(out, y[i:i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                tl, ta, n = tl + loss.item(), ta + _acc(out, y[i:i + 32]), n + 1
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(train_loss=tl / n, train_acc=ta / n, val_loss=F.cross_entropy(out, d.yv).item(),
                      val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}
