"""Third fresh batch: user loops written after the first 69 were tuned on, from how users write code and how
faults arise, before reading any rule's logic (only the rule ids and one-line titles). Their own split,
"fresh3"; their first result is the clean figure (docs/benchmarks.md, "Third fresh batch").

The batch leans to healthy loops, a false alarm being the worst defect. Healthy: run.step before backward with
extra scalars, numpy losses and no watch(), watch() on the backbone only, gradient checkpointing, two peer
models trained in turn under one Run, a GRU language model validated every 5th epoch only, a VAE whose
metrics go to run.log_event, InfoNCE in 200 epochs of 3 steps, CORAL ordinal regression, focal loss on an
imbalanced set, a fine-tune from a checkpoint of the same model, and CE summed then divided by hand under
nn.DataParallel.

Buggy: zero_grad() once before the loop (Adam), float class labels into BCEWithLogits on one output, softmax
into MSE against one-hot, a frozen-BN body with a head at lr 1.0, dropout 0.95, and a hand-written BCE
whose (N, 1) logits broadcast against (N,) targets.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import babysit
from benchmarks.faults.common import digits, regression, tabular, toy2d, waves
from benchmarks.userloops.registry import faulty, healthy

LR_HIGH = ("loss_explosion", "nonfinite_loss", "update_ratio:high", "lr_too_high", "exploding_gradients")
LR_HIGH_WRONG = ("bad_labels", "unnormalized_input", "underfitting", "flat_loss", "update_ratio:low",
                 "low_capacity", "overfitting", "double_softmax", "frozen_parameters", "chance_accuracy",
                 "dead_units", "stalled_weights", "eval_mode_training")
CODE_WRONG = ("lr_too_high", "update_ratio:high", "update_ratio:low", "unnormalized_input", "low_capacity",
              "overfitting", "noisy_weights", "underfitting", "flat_loss", "double_softmax", "noisy_loss",
              "frozen_parameters", "stalled_weights", "dead_units")


def _acc(out, y) -> float:
    return (out.argmax(1) == y).float().mean().item()


# =========================================================================== healthy
@healthy("image", expect={"val_acc": (0.93, 1)})
def fresh3_step_before_backward(run_dir):
    """A CNN on digits with Adam; the user records right after the forward: run.step(loss.item(), acc=batch_acc,
    grad_norm=gn) before loss.backward(), where gn is the previous step's clip_grad_norm_ return (inf-clip, to
    measure only)."""
    torch.manual_seed(501)
    d = digits()
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gn = float("nan")
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for _epoch in range(5):
            model.train()
            perm = torch.randperm(len(d.x))
            for b in range(0, len(d.x), 32):
                idx = perm[b:b + 32]
                out = model(d.x[idx])
                loss = F.cross_entropy(out, d.y[idx])
                run.step(loss.item(), acc=_acc(out, d.y[idx]), grad_norm=gn)
                opt.zero_grad()
                loss.backward()
                gn = nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item()
                opt.step()
            model.eval()
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@healthy("regression", expect={"val_r2": (0.3, 1)})
def fresh3_log_targets_numpy_no_watch(run_dir):
    """A regression on log-scaled targets (diabetes, y -> log(y), then standardized), AdamW + CosineAnnealingLR
    per step; Run without watch(); the loss goes in as a numpy float (loss.detach().numpy()) and the epoch
    metrics as numpy scalars."""
    torch.manual_seed(502)
    d = regression("diabetes", scale_y=False)
    ly, lyv = torch.log(d.y), torch.log(d.yv)
    mu, sd = ly.mean(), ly.std()
    y, yv = (ly - mu) / sd, (lyv - mu) / sd
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    epochs, bs = 40, 32
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(len(y) / bs))
    run = babysit.Run(run_dir, config={"target": "log", "opt": "AdamW"})
    for _epoch in range(epochs):
        perm = torch.randperm(len(y))
        losses = []
        for b in range(0, len(y), bs):
            idx = perm[b:b + bs]
            loss = F.mse_loss(model(d.x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            lv = loss.detach().numpy()
            run.step(lv)
            losses.append(lv)
        with torch.no_grad():
            vmse = F.mse_loss(model(d.xv), yv).item()
        run.epoch(train_loss=np.mean(losses), val_loss=np.float64(vmse))
    run.close()
    return {"val_r2": 1 - vmse / yv.var().item()}


@healthy("image", expect={"val_acc": (0.93, 1)})
def fresh3_watch_backbone_only(run_dir):
    """A model class with .backbone (conv + BN) and .head; the user calls run.watch(model.backbone, opt)
    because 'the head is tiny'; SGD + momentum + nesterov on the whole model; train()/eval() toggled."""
    torch.manual_seed(503)
    d = digits()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                          nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                                          nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
            self.head = nn.Linear(128, 10)

        def forward(self, x):
            return self.head(self.backbone(x))

    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model.backbone, opt)
        for _epoch in range(5):
            model.train()
            perm = torch.randperm(len(d.x))
            for b in range(0, len(d.x), 32):
                idx = perm[b:b + 32]
                loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
            model.eval()
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@healthy("image", expect={"val_acc": (0.9, 1)})
def fresh3_gradient_checkpointing(run_dir):
    """A 6-block residual MLP on flat digits whose blocks run under torch.utils.checkpoint (use_reentrant=False)
    to 'save memory'; LayerNorm in each block; Adam; run.step(loss=loss)."""
    torch.manual_seed(504)
    d = digits(flat=True)

    class Block(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.norm, self.fc1, self.fc2 = nn.LayerNorm(w), nn.Linear(w, 2 * w), nn.Linear(2 * w, w)

        def forward(self, x):
            return x + self.fc2(F.gelu(self.fc1(self.norm(x))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(64, 64)
            self.blocks = nn.ModuleList(Block(64) for _ in range(6))
            self.out = nn.Linear(64, 10)

        def forward(self, x):
            h = self.inp(x)
            for blk in self.blocks:
                h = checkpoint(blk, h, use_reentrant=False) if self.training else blk(h)
            return self.out(h)

    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with babysit.Run(run_dir, num_classes=10, config={"checkpointing": True}) as run:
        run.watch(model, opt, input_shape=(64,))
        for _epoch in range(5):
            model.train()
            perm = torch.randperm(len(d.x))
            tl = n = 0
            for b in range(0, len(d.x), 64):
                idx = perm[b:b + 64]
                loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss=loss)
                tl, n = tl + loss.item(), n + 1
            model.eval()
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(train_loss=tl / n, val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@healthy("toy", expect={"val_acc_a": (0.9, 1), "val_acc_b": (0.9, 1)})
def fresh3_mutual_learning_alternate(run_dir):
    """Deep mutual learning: two peer MLPs on spirals, trained in turn on each batch (A steps on CE + KL to B,
    then B on CE + KL to A), each with its own Adam; one Run, watch(net_a, opt_a) only; run.step(loss_a,
    peer_loss=loss_b)."""
    torch.manual_seed(505)
    d = toy2d("spirals", n=1500, noise=0.1)

    def net():
        return nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))

    a, b = net(), net()
    opt_a, opt_b = torch.optim.Adam(a.parameters(), lr=3e-3), torch.optim.Adam(b.parameters(), lr=3e-3)

    def dml(logits, peer, y):
        return F.cross_entropy(logits, y) + F.kl_div(F.log_softmax(logits, 1), F.softmax(peer.detach(), 1),
                                                      reduction="batchmean")

    with babysit.Run(run_dir, num_classes=3, config={"method": "DML"}) as run:
        run.watch(a, opt_a)
        for _epoch in range(25):
            perm = torch.randperm(len(d.x))
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                x, y = d.x[idx], d.y[idx]
                loss_a = dml(a(x), b(x), y)
                opt_a.zero_grad()
                loss_a.backward()
                opt_a.step()
                loss_b = dml(b(x), a(x), y)
                opt_b.zero_grad()
                loss_b.backward()
                opt_b.step()
                run.step(loss_a, peer_loss=loss_b)
            with torch.no_grad():
                oa, ob = a(d.xv), b(d.xv)
            run.epoch(val_loss=F.cross_entropy(oa, d.yv).item(), val_acc=_acc(oa, d.yv), peer_val_acc=_acc(ob, d.yv))
    return {"val_acc_a": _acc(oa, d.yv), "val_acc_b": _acc(ob, d.yv)}


@healthy("sequence", expect={"val_ppl": (1.0, 4.0)})
def fresh3_gru_lm_val_every_5(run_dir):
    """A GRU language model on synthetic sequences from a sparse Markov chain over 16 tokens (each token has
    2 likely successors): next-token cross_entropy over (N*T, V), perplexity falling from ~16 toward ~2;
    run.epoch(val_loss=...) only every 5th epoch and nothing else; num_classes not given."""
    torch.manual_seed(506)
    g = torch.Generator().manual_seed(6)
    V, T = 16, 24
    trans = torch.full((V, V), 0.02)
    for t in range(V):
        trans[t, (3 * t + 1) % V] += 1.0
        trans[t, (5 * t + 2) % V] += 0.6
    trans = trans / trans.sum(1, keepdim=True)

    def sample(n):
        seq = torch.empty(n, T + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(0, V, (n,), generator=g)
        for k in range(T):
            seq[:, k + 1] = torch.multinomial(trans[seq[:, k]], 1, generator=g).squeeze(1)
        return seq

    train, val = sample(1200), sample(300)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.gru, self.out = nn.Embedding(V, 32), nn.GRU(32, 64, batch_first=True), nn.Linear(64, V)

        def forward(self, x):
            return self.out(self.gru(self.emb(x))[0])

    model = LM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with babysit.Run(run_dir, config={"task": "lm", "vocab": V}) as run:
        run.watch(model, opt)
        for epoch in range(1, 16):
            perm = torch.randperm(len(train))
            for b in range(0, len(train), 64):
                s = train[perm[b:b + 64]]
                loss = F.cross_entropy(model(s[:, :-1]).reshape(-1, V), s[:, 1:].reshape(-1))
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                run.step(loss.item())
            if epoch % 5 == 0:
                with torch.no_grad():
                    vl = F.cross_entropy(model(val[:, :-1]).reshape(-1, V), val[:, 1:].reshape(-1)).item()
                run.epoch(val_loss=vl)
    return {"val_ppl": math.exp(vl)}


@healthy("generative", expect={"val_recon": (0, 35)})
def fresh3_vae_kl_annealed_events(run_dir):
    """A VAE on digits (pixels/16 in 0..1): Bernoulli reconstruction (BCE summed over pixels, per image) plus
    beta * KL with beta annealed linearly from 0 to 1 over the first 300 steps; run.step(loss, recon=, kl=,
    beta=); the epoch metrics go to run.log_event('metrics', **dict) and never to run.epoch."""
    torch.manual_seed(507)
    d = digits(scale="unit", flat=True)

    class VAE(nn.Module):
        def __init__(self, z=8):
            super().__init__()
            self.enc = nn.Sequential(nn.Linear(64, 128), nn.ReLU())
            self.mu, self.logvar = nn.Linear(128, z), nn.Linear(128, z)
            self.dec = nn.Sequential(nn.Linear(z, 128), nn.ReLU(), nn.Linear(128, 64))

        def forward(self, x):
            h = self.enc(x)
            mu, logvar = self.mu(h), self.logvar(h)
            zz = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            return self.dec(zz), mu, logvar

    def terms(x, model):
        logits, mu, logvar = model(x)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean()
        return recon, kl

    model = VAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = 0
    with babysit.Run(run_dir, config={"model": "VAE", "kl_anneal_steps": 300}) as run:
        run.watch(model, opt)
        for epoch in range(12):
            perm = torch.randperm(len(d.x))
            for b in range(0, len(d.x), 64):
                x = d.x[perm[b:b + 64]]
                beta = min(1.0, step / 300)
                recon, kl = terms(x, model)
                loss = recon + beta * kl
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                run.step(loss, recon=recon, kl=kl, beta=beta)
            with torch.no_grad():
                vr, vk = terms(d.xv, model)
            run.log_event("metrics", **{"epoch": epoch, "val_recon": vr.item(), "val_kl": vk.item(),
                                        "val_elbo": (vr + vk).item()})
    return {"val_recon": vr.item()}


@healthy("metric", expect={"val_top1": (0.5, 1)})
def fresh3_infonce_tiny_epochs(run_dir):
    """Contrastive InfoNCE (SimCLR-style, temperature 0.1) on two noisy, masked views of each digit: the loss
    starts near ln(2 * 64 - 1) and falls; the user's 'epoch' is 3 steps (a sampler of 192 images), 200 of
    them, each with run.epoch(train_loss=...); val top-1 = view-to-view retrieval on 256 val images."""
    torch.manual_seed(508)
    d = digits(flat=True)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 32))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    tau = 0.1

    def view(x):
        return (x + 0.3 * torch.randn_like(x)) * (torch.rand_like(x) > 0.2)

    def info_nce(z1, z2):
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        sim = z @ z.t() / tau
        sim.fill_diagonal_(float("-inf"))
        n = len(z1)
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
        return F.cross_entropy(sim, target)

    with babysit.Run(run_dir, config={"loss": "InfoNCE", "tau": tau, "batch": 64}) as run:
        run.watch(net, opt)
        for _epoch in range(200):
            idx = torch.randperm(len(d.x))[:192]
            tl = 0.0
            for b in range(0, 192, 64):
                x = d.x[idx[b:b + 64]]
                loss = info_nce(net(view(x)), net(view(x)))
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                tl += loss.item() / 3
            run.epoch(train_loss=tl)
    with torch.no_grad():
        xv = d.xv[:256]
        z1, z2 = F.normalize(net(view(xv)), dim=1), F.normalize(net(view(xv)), dim=1)
        top1 = ((z1 @ z2.t()).argmax(1) == torch.arange(256)).float().mean().item()
    return {"val_top1": top1}


@healthy("tabular", expect={"val_mae": (0, 0.6)})
def fresh3_coral_ordinal(run_dir):
    """Ordinal regression with CORAL-like cumulative logits: a shared score f(x) minus K-1 = 4 learned
    thresholds; BCEWithLogits against the K-1 'y > k' targets; the user logs val MAE of the predicted rank
    (sum of p > 0.5) and val exact-rank accuracy; run.step(loss.item(), mae=batch_mae)."""
    torch.manual_seed(509)
    g = torch.Generator().manual_seed(9)
    K = 5
    w = torch.randn(12, generator=g)
    x = torch.randn(2000, 12, generator=g)
    score = x @ w / w.norm() + 0.3 * torch.randn(2000, generator=g)
    cuts = torch.quantile(score, torch.tensor([0.2, 0.4, 0.6, 0.8]))
    y = (score[:, None] > cuts[None]).sum(1)
    x, xv, y, yv = x[:1600], x[1600:], y[:1600], y[1600:]

    class Coral(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 1, bias=False))
            self.b = nn.Parameter(torch.linspace(1, -1, K - 1))

        def forward(self, x):
            return self.f(x) + self.b

    def levels(y):
        return (y[:, None] > torch.arange(K - 1)[None]).float()

    model = Coral()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with babysit.Run(run_dir, config={"task": "ordinal", "K": K}) as run:
        run.watch(model, opt)
        for _epoch in range(12):
            perm = torch.randperm(len(x))
            for b in range(0, len(x), 32):
                idx = perm[b:b + 32]
                out = model(x[idx])
                loss = F.binary_cross_entropy_with_logits(out, levels(y[idx]))
                opt.zero_grad()
                loss.backward()
                opt.step()
                mae = ((out > 0).sum(1) - y[idx]).abs().float().mean().item()
                run.step(loss.item(), mae=mae)
            with torch.no_grad():
                ov = model(xv)
                rank = (ov > 0).sum(1)
            vmae = (rank - yv).abs().float().mean().item()
            run.epoch(val_loss=F.binary_cross_entropy_with_logits(ov, levels(yv)).item(), val_mae=vmae,
                      val_acc=(rank == yv).float().mean().item())
    return {"val_mae": vmae}


@healthy("tabular", expect={"val_bal_acc": (0.7, 1)})
def fresh3_focal_imbalanced(run_dir):
    """Focal loss (gamma 2, no alpha) on a 4-class synthetic tabular set at 70/20/7/3 %: the loss starts well
    below ln(4) (focal down-weights everything) and falls toward 0; Adam; balanced accuracy tracked."""
    torch.manual_seed(510)
    d = tabular("synthetic", n_samples=2000, n_features=20, n_informative=10, n_redundant=2, n_classes=4,
                weights=[0.7, 0.2, 0.07, 0.03], class_sep=1.5, flip_y=0.0, random_state=10)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def focal(logits, y, gamma=2.0):
        logp = F.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
        return (-(1 - logp.exp()) ** gamma * logp).mean()

    def bal_acc(out, y):
        pred = out.argmax(1)
        return float(np.mean([(pred[y == k] == k).float().mean().item() for k in range(4) if (y == k).any()]))

    with babysit.Run(run_dir, num_classes=4, config={"loss": "focal", "gamma": 2}) as run:
        run.watch(model, opt)
        for _epoch in range(20):
            perm = torch.randperm(len(d.x))
            tl = n = 0
            for b in range(0, len(d.x), 64):
                idx = perm[b:b + 64]
                loss = focal(model(d.x[idx]), d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                tl, n = tl + loss.item(), n + 1
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(train_loss=tl / n, val_loss=focal(out, d.yv).item(), val_acc=_acc(out, d.yv),
                      val_bal_acc=bal_acc(out, d.yv))
    return {"val_bal_acc": bal_acc(out, d.yv)}


@healthy("image", expect={"val_acc": (0.93, 1), "first_loss": (0, 0.5)})
def fresh3_finetune_from_checkpoint(run_dir):
    """The user trained a CNN yesterday (not recorded), saved its state_dict, and today loads it into a new
    instance and fine-tunes at a 10x lower lr (Adam 1e-4) with light augmentation: the loss starts low,
    far below ln(10), and moves little."""
    torch.manual_seed(511)
    d = digits()

    def make():
        return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(128, 10))

    pre = make()
    popt = torch.optim.Adam(pre.parameters(), lr=1e-3)
    for _epoch in range(4):
        perm = torch.randperm(len(d.x))
        for b in range(0, len(d.x), 32):
            idx = perm[b:b + 32]
            loss = F.cross_entropy(pre(d.x[idx]), d.y[idx])
            popt.zero_grad()
            loss.backward()
            popt.step()
    state = copy.deepcopy(pre.state_dict())
    model = make()
    model.load_state_dict(state)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    first = None
    with babysit.Run(run_dir, num_classes=10, config={"init": "checkpoint", "lr": 1e-4}) as run:
        run.watch(model, opt, input_shape=(1, 8, 8))
        for _epoch in range(3):
            perm = torch.randperm(len(d.x))
            for b in range(0, len(d.x), 32):
                idx = perm[b:b + 32]
                x = d.x[idx] + 0.05 * torch.randn_like(d.x[idx])
                loss = F.cross_entropy(model(x), d.y[idx])
                first = loss.item() if first is None else first
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv), "first_loss": first}


@healthy("sequence", expect={"val_acc": (0.85, 1)})
def fresh3_sum_ce_dataparallel(run_dir):
    """A 1-D CNN on the sine waves wrapped in nn.DataParallel (no GPU here: it just calls the module; parameter
    names gain 'module.'); cross_entropy(reduction='sum') divided by the batch size by hand; SGD + momentum;
    the model's own .module is not what is watched: watch(dp_model, opt)."""
    torch.manual_seed(512)
    d = waves()
    x, xv = d.x.transpose(1, 2), d.xv.transpose(1, 2)
    net = nn.Sequential(nn.Conv1d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(16, 32, 5, padding=2),
                        nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, 3))
    model = nn.DataParallel(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with babysit.Run(run_dir, num_classes=3) as run:
        run.watch(model, opt)
        for _epoch in range(8):
            perm = torch.randperm(len(x))
            tl = ta = n = 0
            for b in range(0, len(x), 32):
                idx = perm[b:b + 32]
                out = model(x[idx])
                loss = F.cross_entropy(out, d.y[idx], reduction="sum") / len(idx)
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss.item())
                tl, ta, n = tl + loss.item(), ta + _acc(out, d.y[idx]), n + 1
            with torch.no_grad():
                ov = model(xv)
            run.epoch(train_loss=tl / n, train_acc=ta / n, val_loss=F.cross_entropy(ov, d.yv).item(),
                      val_acc=_acc(ov, d.yv))
    return {"val_acc": _acc(ov, d.yv)}


# =========================================================================== buggy
@faulty("code", accept=("missing_zero_grad",),
        wrong=CODE_WRONG + ("lr_too_high", "loss_explosion", "bad_labels", "chance_accuracy"),
        expect={"val_acc": (0, 0.9)})
def fresh3_zero_grad_once(run_dir):
    """optimizer.zero_grad() called once, before the loop ('to start clean'), never inside it: every backward
    adds to the sum of all earlier gradients, so Adam follows the running sum (an MLP on flat digits; with the
    zero_grad in place the same loop reaches ~0.97 val accuracy, here ~0.85)."""
    torch.manual_seed(521)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.zero_grad()
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for _epoch in range(5):
            perm = torch.randperm(len(d.x))
            for b in range(0, len(d.x), 32):
                idx = perm[b:b + 32]
                loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
                loss.backward()
                opt.step()
                run.step(loss.item())
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@faulty("code", accept=("loss_mismatch", "bad_labels"),
        wrong=CODE_WRONG + ("loss_explosion", "nonfinite_loss", "exploding_gradients", "chance_accuracy"),
        expect={"train_loss": (-1e30, 0), "val_acc": (0, 0.3)})
def fresh3_bce_on_class_labels(run_dir):
    """A 10-class digit task written with BCEWithLogitsLoss on a one-column output: loss_fn(model(x).squeeze(1),
    y.float()) with y in 0..9 (the user 'fixed' the dtype error by casting). With targets above 1 the loss
    has no minimum: it goes negative and down without end; accuracy = round(logit) is near chance."""
    torch.manual_seed(522)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for _epoch in range(5):
            perm = torch.randperm(len(d.x))
            tl = n = 0
            for b in range(0, len(d.x), 32):
                idx = perm[b:b + 32]
                loss = loss_fn(model(d.x[idx]).squeeze(1), d.y[idx].float())
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                tl, n = tl + loss.item(), n + 1
            with torch.no_grad():
                z = model(d.xv).squeeze(1)
            vacc = (z.round().clamp(0, 9).long() == d.yv).float().mean().item()
            run.epoch(train_loss=tl / n, val_loss=loss_fn(z, d.yv.float()).item(), val_acc=vacc)
    return {"train_loss": tl / n, "val_acc": vacc}


@faulty("code", accept=("loss_mismatch", "double_softmax", "output_activation"),
        wrong=("lr_too_high", "update_ratio:high", "unnormalized_input", "bad_labels", "low_capacity",
               "overfitting", "noisy_weights", "noisy_loss", "loss_explosion", "nonfinite_loss",
               "exploding_gradients", "frozen_parameters", "stalled_weights", "dead_units", "eval_mode_training"),
        expect={"val_acc": (0, 0.75)})
def fresh3_softmax_mse_onehot(run_dir):
    """The model ends in softmax and the loss is F.mse_loss(probs, one_hot(y)) (a 'probabilities vs targets'
    habit from regression): gradients through the softmax vanish as it saturates and SGD crawls (an MLP on
    flat digits, SGD 0.05 for 4 epochs, where cross_entropy would reach ~0.95)."""
    torch.manual_seed(523)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10), nn.Softmax(dim=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for _epoch in range(4):
            model.train()
            perm = torch.randperm(len(d.x))
            tl = ta = n = 0
            for b in range(0, len(d.x), 32):
                idx = perm[b:b + 32]
                probs = model(d.x[idx])
                loss = F.mse_loss(probs, F.one_hot(d.y[idx], 10).float())
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss.item())
                tl, ta, n = tl + loss.item(), ta + _acc(probs, d.y[idx]), n + 1
            with torch.no_grad():
                pv = model(d.xv)
            run.epoch(train_loss=tl / n, train_acc=ta / n,
                      val_loss=F.mse_loss(pv, F.one_hot(d.yv, 10).float()).item(), val_acc=_acc(pv, d.yv))
    return {"val_acc": _acc(pv, d.yv)}


@faulty("optimizer", accept=LR_HIGH, wrong=LR_HIGH_WRONG, expect={"val_acc": (0, 0.6)})
def fresh3_frozen_bn_body_head_lr1(run_dir):
    """Transfer: a BN CNN body pretrained on digits 0-4 (not recorded), frozen with requires_grad=False and
    kept in eval() (BN statistics frozen, on purpose); a new two-layer ReLU head in its own param group at lr
    1.0 (the user copied the 'head lr x100' trick onto SGD + momentum at 0.01 -> 1.0): the loss spikes, the
    head's hidden ReLUs die and the net collapses to one class. (First written with a one-layer head, which
    this lr did not break: rebuilt before any rule was read.)"""
    torch.manual_seed(524)
    d = digits()
    body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten())
    pre_head = nn.Linear(128, 10)
    popt = torch.optim.Adam([*body.parameters(), *pre_head.parameters()], lr=2e-3)
    low = d.y < 5
    xs, ys = d.x[low], d.y[low]
    for _epoch in range(3):
        perm = torch.randperm(len(xs))
        for b in range(0, len(xs), 32):
            idx = perm[b:b + 32]
            loss = F.cross_entropy(pre_head(body(xs[idx])), ys[idx])
            popt.zero_grad()
            loss.backward()
            popt.step()
    for p in body.parameters():
        p.requires_grad_(False)
    body.eval()
    head = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    model = nn.Sequential(body, head)
    opt = torch.optim.SGD([{"params": head.parameters(), "lr": 1.0}], lr=0.01, momentum=0.9)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for _epoch in range(5):
            head.train()
            perm = torch.randperm(len(d.x))
            for b in range(0, len(d.x), 32):
                idx = perm[b:b + 32]
                loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@faulty("regularization", accept=("underfitting", "regularization_too_strong"),
        wrong=("lr_too_high", "update_ratio:high", "update_ratio:low", "bad_labels", "unnormalized_input",
               "overfitting", "double_softmax", "loss_mismatch", "eval_mode_training", "frozen_parameters",
               "stalled_weights", "dead_units", "exploding_gradients", "loss_explosion"),
        expect={"train_acc": (0, 0.6)})
def fresh3_dropout_095(run_dir):
    """nn.Dropout(0.95) after each hidden layer (the user read p as the keep probability): in training 95% of
    the units are zeroed, so the train loss stays high and the train accuracy low; in eval mode the net does
    better than it trains, but far from what it could."""
    torch.manual_seed(525)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.95), nn.Linear(128, 128), nn.ReLU(),
                          nn.Dropout(0.95), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with babysit.Run(run_dir, num_classes=10, config={"dropout": 0.95}) as run:
        run.watch(model, opt)
        for _epoch in range(6):
            model.train()
            perm = torch.randperm(len(d.x))
            tl = ta = n = 0
            for b in range(0, len(d.x), 32):
                idx = perm[b:b + 32]
                out = model(d.x[idx])
                loss = F.cross_entropy(out, d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                tl, ta, n = tl + loss.item(), ta + _acc(out, d.y[idx]), n + 1
            model.eval()
            with torch.no_grad():
                ov = model(d.xv)
            run.epoch(train_loss=tl / n, train_acc=ta / n, val_loss=F.cross_entropy(ov, d.yv).item(),
                      val_acc=_acc(ov, d.yv))
    return {"train_acc": ta / n, "val_acc": _acc(ov, d.yv)}


@faulty("code", accept=("loss_mismatch", "bad_labels"),
        wrong=CODE_WRONG + ("loss_explosion", "nonfinite_loss", "exploding_gradients", "chance_accuracy"),
        expect={"val_acc": (0, 0.7)})
def fresh3_bce_broadcast_n1_vs_n(run_dir):
    """A hand-written, numerically stable binary cross-entropy, bce(z, t) = relu(z) - z * t + log1p(exp(-|z|)),
    then loss = bce(model(x), y).mean() with logits (N, 1) and targets (N,): the broadcast makes it N x N, every
    logit against every label in the batch, so the net can only learn the base rate (breast_cancer, 63% one
    class)."""
    torch.manual_seed(526)
    d = tabular("breast_cancer")
    y, yv = d.y.float(), d.yv.float()
    model = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def bce(z, t):
        return z.clamp(min=0) - z * t + torch.log1p(torch.exp(-z.abs()))

    with babysit.Run(run_dir, num_classes=2) as run:
        run.watch(model, opt)
        for _epoch in range(20):
            perm = torch.randperm(len(y))
            for b in range(0, len(y), 32):
                idx = perm[b:b + 32]
                loss = bce(model(d.x[idx]), y[idx]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss.item())
            with torch.no_grad():
                z = model(d.xv)
            vacc = ((z.squeeze(1) > 0).float() == yv).float().mean().item()
            run.epoch(val_loss=bce(z, yv).mean().item(), val_acc=vacc)
    return {"val_acc": vacc}
