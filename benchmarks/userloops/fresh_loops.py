"""Fresh loops: a second set of user loops, written after the first 34 were tuned on and before reading
any rule's logic (only the rule ids, their titles and their fix lists). Nothing is tuned on them: they are
their own split, "fresh", and their first result is the clean figure (docs/benchmarks.md).

Healthy loops that are legitimate but unusual for a monitor: multilabel BCE on sigmoid logits, AdamW with
warmup and linear decay, gradient accumulation that passes the scaled loss (loss / k) to run.step, bf16
autocast on CPU, a class-weighted loss on an imbalanced set, ReduceLROnPlateau on a small residual net,
knowledge distillation (a KL term at T^2 scale), a Poisson count regression, and a run resumed in a
second session with `Run(..., resume=True)`.

Buggy loops from mistakes seen in the wild: the model re-created after the optimizer was built,
zero_grad between backward and step, a per-epoch StepLR stepped every batch, a forward under no_grad
"fixed" with loss.requires_grad_(), an (N, 1) prediction against (N,) targets in MSE (broadcast to N x N),
data sorted by class and never shuffled, weight_decay=1.0 typed for 1e-4, regression targets in the
thousands with plain SGD, and optimizer.step() dedented out of the batch loop.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import babysit
from benchmarks.faults.common import digits, regression, tabular, toy2d, waves
from benchmarks.userloops.registry import faulty, healthy

CODE_WRONG = ("lr_too_high", "update_ratio:high", "update_ratio:low", "unnormalized_input", "bad_labels",
              "low_capacity", "overfitting", "noisy_weights", "underfitting", "flat_loss", "double_softmax",
              "loss_explosion", "noisy_loss")


def _acc(out, y) -> float:
    return (out.argmax(1) == y).float().mean().item()


# =========================================================================== healthy
@healthy("multilabel", expect={"val_loss": (0, 0.3), "val_label_acc": (0.88, 1)})
def fresh_multilabel_bce(run_dir):
    """Four yes/no attributes of each digit (even, >= 5, has a loop, prime) from one sigmoid head:
    BCEWithLogitsLoss on float 0/1 targets, Adam, no num_classes; run.step(loss) and label accuracy."""
    torch.manual_seed(201)
    d = digits(flat=True)

    def attrs(y):
        return torch.stack([y % 2 == 0, y >= 5, (y == 0) | (y == 6) | (y == 8) | (y == 9),
                            (y == 2) | (y == 3) | (y == 5) | (y == 7)], 1).float()

    y, yv = attrs(d.y), attrs(d.yv)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = nn.BCEWithLogitsLoss()
    with babysit.Run(run_dir, config={"task": "multilabel", "labels": 4}) as run:
        run.watch(model, opt)
        for _epoch in range(12):
            perm = torch.randperm(len(d.x))
            tot = 0.0
            for i in range(0, len(d.x), 64):
                idx = perm[i:i + 64]
                loss = crit(model(d.x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                tot += loss.item() * len(idx)
            with torch.no_grad():
                logits = model(d.xv)
            val_loss = crit(logits, yv).item()
            label_acc = ((logits > 0).float() == yv).float().mean().item()
            run.epoch(train_loss=tot / len(d.x), val_loss=val_loss, val_label_acc=label_acc)
    return {"val_loss": val_loss, "val_label_acc": label_acc}


@healthy("image", expect={"val_acc": (0.93, 1)})
def fresh_adamw_warmup_linear(run_dir):
    """GELU MLP, AdamW (wd 0.05) at 3e-3 with 40 warmup steps then a linear decay to 0 (LambdaLR);
    run.step(loss.item(), lr=sched.get_last_lr()[0]); Run closed by hand."""
    torch.manual_seed(202)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    epochs, bs, warm = 8, 32, 40
    total = epochs * math.ceil(len(d.x) / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else (total - s) / (total - warm))
    run = babysit.Run(run_dir, num_classes=10, config={"lr": 3e-3, "warmup": warm, "wd": 0.05})
    run.watch(model, opt, scheduler=sched)
    for _epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(d.x))
        for i in range(0, len(d.x), bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(model(d.x[idx]), d.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run.step(loss.item(), lr=sched.get_last_lr()[0])
            sched.step()
        model.eval()
        with torch.no_grad():
            out = model(d.xv)
        run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    run.close()
    return {"val_acc": _acc(out, d.yv)}


@healthy("image", expect={"val_acc": (0.9, 1)})
def fresh_accum_scaled_loss(run_dir):
    """Gradient accumulation over 4 micro-batches as most people write it: loss = ce / 4, backward each
    micro-batch, step every 4th, and run.step(loss) with that last scaled micro-batch loss; accumulation
    not declared in the config."""
    torch.manual_seed(203)
    d = digits()
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    accum = 4
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt, input_shape=(1, 8, 8))
        for _epoch in range(6):
            model.train()
            perm = torch.randperm(len(d.x))
            opt.zero_grad()
            for k, i in enumerate(range(0, len(d.x), 16)):
                idx = perm[i:i + 16]
                loss = F.cross_entropy(model(d.x[idx]), d.y[idx]) / accum
                loss.backward()
                if (k + 1) % accum == 0:
                    opt.step()
                    opt.zero_grad()
                    run.step(loss)
            model.eval()
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@healthy("sequence", expect={"val_acc": (0.85, 1)})
def fresh_bf16_conv1d_waves(run_dir):
    """A 1-D CNN on the sine waves under torch.autocast('cpu', bfloat16); run.step(loss=loss) with the
    float32 loss autocast returns; metrics "acc"/"val_acc"."""
    torch.manual_seed(204)
    d = waves()
    x, xv = d.x.transpose(1, 2), d.xv.transpose(1, 2)  # (N, 1, 32)
    model = nn.Sequential(nn.Conv1d(1, 16, 5, padding=2), nn.ReLU(), nn.Conv1d(16, 32, 5, padding=2), nn.ReLU(),
                          nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with babysit.Run(run_dir, num_classes=3, config={"amp": "bf16"}) as run:
        run.watch(model, opt)
        for _epoch in range(10):
            perm = torch.randperm(len(x))
            hits = seen = 0
            for i in range(0, len(x), 64):
                idx = perm[i:i + 64]
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = model(x[idx])
                    loss = F.cross_entropy(out, d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss=loss)
                hits += int((out.argmax(1) == d.y[idx]).sum())
                seen += len(idx)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                vacc = _acc(model(xv), d.yv)
            run.epoch(acc=hits / seen, val_acc=vacc)
    return {"val_acc": vacc}


@healthy("tabular", expect={"val_balanced_acc": (0.7, 1)})
def fresh_class_weighted_imbalanced(run_dir):
    """A 3-class tabular set at 85/10/5 %, cross_entropy with weight = 1/frequency, Adam; the user tracks
    balanced accuracy (mean per-class recall) next to plain accuracy."""
    torch.manual_seed(205)
    d = tabular("synthetic", n_samples=3000, n_features=20, n_informative=8, n_redundant=2, n_classes=3,
                weights=[0.85, 0.10, 0.05], class_sep=1.2)
    counts = torch.bincount(d.y, minlength=3).float()
    weight = counts.sum() / (3 * counts)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def balanced(out, y):
        pred = out.argmax(1)
        return sum(((pred == c) & (y == c)).sum().item() / max(1, (y == c).sum().item()) for c in range(3)) / 3

    with babysit.Run(run_dir, num_classes=3) as run:
        run.watch(model, opt)
        for _epoch in range(15):
            perm = torch.randperm(len(d.x))
            tl = n = 0
            for i in range(0, len(d.x), 64):
                idx = perm[i:i + 64]
                loss = F.cross_entropy(model(d.x[idx]), d.y[idx], weight=weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                tl, n = tl + loss.item(), n + 1
            with torch.no_grad():
                out = model(d.xv)
            bacc = balanced(out, d.yv)
            run.epoch(train_loss=tl / n, val_loss=F.cross_entropy(out, d.yv, weight=weight).item(),
                      val_acc=_acc(out, d.yv), val_balanced_acc=bacc)
    return {"val_balanced_acc": bacc}


class _Res(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                               nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.a(x))


@healthy("image", expect={"val_acc": (0.93, 1)})
def fresh_resblock_plateau(run_dir):
    """A stem, two residual blocks with BatchNorm, global pooling; SGD + momentum + wd; ReduceLROnPlateau on
    the val loss each epoch (passed to watch as the scheduler); train()/eval() toggled."""
    torch.manual_seed(206)
    d = digits()
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), _Res(16),
                          _Res(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.3, patience=1)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt, scheduler=sched)
        for _epoch in range(7):
            model.train()
            perm = torch.randperm(len(d.x))
            tl = ta = n = 0.0
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                out = model(d.x[idx])
                loss = F.cross_entropy(out, d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss=loss)
                tl, ta, n = tl + loss.item(), ta + _acc(out, d.y[idx]), n + 1
            model.eval()
            with torch.no_grad():
                out = model(d.xv)
            val_loss = F.cross_entropy(out, d.yv).item()
            sched.step(val_loss)
            run.epoch(train_loss=tl / n, train_acc=ta / n, val_loss=val_loss, val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@healthy("image", expect={"val_acc": (0.9, 1)})
def fresh_distillation_kl(run_dir):
    """Knowledge distillation: a teacher MLP trained first (not recorded), then a small student on
    0.7 * T^2 * KL(student/T || teacher/T) + 0.3 * CE at T = 4; run.step(loss) with that blend."""
    torch.manual_seed(207)
    d = digits(flat=True)
    teacher = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    topt = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    for _ in range(6):
        perm = torch.randperm(len(d.x))
        for i in range(0, len(d.x), 32):
            idx = perm[i:i + 32]
            loss = F.cross_entropy(teacher(d.x[idx]), d.y[idx])
            topt.zero_grad()
            loss.backward()
            topt.step()
    teacher.eval()
    student = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    t = 4.0
    with babysit.Run(run_dir, num_classes=10, config={"T": t, "alpha": 0.7}) as run:
        run.watch(student, opt)
        for _epoch in range(8):
            perm = torch.randperm(len(d.x))
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                with torch.no_grad():
                    soft = F.softmax(teacher(d.x[idx]) / t, 1)
                out = student(d.x[idx])
                kd = F.kl_div(F.log_softmax(out / t, 1), soft, reduction="batchmean") * t * t
                loss = 0.7 * kd + 0.3 * F.cross_entropy(out, d.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
            with torch.no_grad():
                out = student(d.xv)
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@healthy("regression", expect={"val_mae_ratio": (0, 0.75)})
def fresh_poisson_counts(run_dir):
    """Count regression: y ~ Poisson(exp(0.5 + x.w)), PoissonNLLLoss(log_input=True), Adam; the user logs
    the val MAE against predicting the mean (val_mae_ratio)."""
    torch.manual_seed(208)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2500, 8, generator=g)
    w = torch.randn(8, generator=g) * 0.4
    y = torch.poisson(torch.exp(0.5 + x @ w), generator=g)[:, None]
    x, xv, y, yv = x[:2000], x[2000:], y[:2000], y[2000:]
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    crit = nn.PoissonNLLLoss(log_input=True)
    base = (yv - y.mean()).abs().mean().item()
    run = babysit.Run(run_dir)
    run.watch(model, opt)
    for _epoch in range(25):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = crit(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss.item())
        with torch.no_grad():
            lv = model(xv)
        ratio = (lv.exp() - yv).abs().mean().item() / base
        run.epoch(val_loss=crit(lv, yv).item(), val_mae_ratio=ratio)
    run.close()
    return {"val_mae_ratio": ratio}


@healthy("toy", expect={"val_acc": (0.9, 1)})
def fresh_resumed_session(run_dir):
    """Spirals, trained in two sessions: the first writes a checkpoint (kept in memory here) and closes; the
    second rebuilds the model, loads it, opens Run(..., resume=True) on the same directory and goes on at a
    lower lr. The user does not restore the step count."""
    torch.manual_seed(209)
    d = toy2d("spirals", n=1500, noise=0.05)

    def make():
        return nn.Sequential(nn.Linear(2, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 3))

    def train(run, model, opt, epochs):
        for _epoch in range(epochs):
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
            run.epoch(train_loss=tl / n, val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
        return _acc(out, d.yv)

    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with babysit.Run(run_dir, num_classes=3, config={"lr": 3e-3}) as run:
        run.watch(model, opt)
        train(run, model, opt, 12)
    ckpt = {"model": model.state_dict(), "opt": opt.state_dict()}

    model = make()
    model.load_state_dict(ckpt["model"])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    opt.load_state_dict(ckpt["opt"])
    for g in opt.param_groups:
        g["lr"] = 1e-3
    with babysit.Run(run_dir, num_classes=3, config={"lr": 1e-3}, resume=True) as run:
        run.watch(model, opt)
        vacc = train(run, model, opt, 8)
    return {"val_acc": vacc}


# =========================================================================== buggy
@faulty("code", accept=("stalled_weights", "frozen_parameters"), wrong=CODE_WRONG + ("chance_accuracy",),
        expect={"val_acc": (0, 0.3)})
def fresh_model_rebuilt_after_optimizer(run_dir):
    """The optimizer is built, then a notebook cell re-creates the model 'for a clean start': the optimizer
    updates the old parameters; the watched model gets gradients and never changes."""
    torch.manual_seed(301)
    d = digits(flat=True)

    def make():
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model = make()  # the bug
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for _epoch in range(5):
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
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@faulty("code", accept=("missing_zero_grad", "stalled_weights", "frozen_parameters"),
        wrong=CODE_WRONG + ("chance_accuracy",), expect={"val_acc": (0, 0.5)})
def fresh_zero_grad_before_step(run_dir):
    """loss.backward(); optimizer.zero_grad(); optimizer.step(): the gradients are wiped before every step,
    so Adam never moves (an MLP on the flattened waves)."""
    torch.manual_seed(302)
    d = waves()
    x, xv = d.x.flatten(1), d.xv.flatten(1)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with babysit.Run(run_dir, num_classes=3) as run:
        run.watch(model, opt)
        for _epoch in range(8):
            perm = torch.randperm(len(x))
            tl = ta = n = 0.0
            for i in range(0, len(x), 32):
                idx = perm[i:i + 32]
                out = model(x[idx])
                loss = F.cross_entropy(out, d.y[idx])
                loss.backward()
                opt.zero_grad()  # the bug: belongs before backward
                opt.step()
                run.step(loss.item())
                tl, ta, n = tl + loss.item(), ta + _acc(out, d.y[idx]), n + 1
            with torch.no_grad():
                out = model(xv)
            run.epoch(train_loss=tl / n, train_acc=ta / n, val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}


@faulty("optimizer", accept=("flat_loss", "update_ratio:low", "stalled_weights"),
        wrong=("lr_too_high", "update_ratio:high", "loss_explosion", "nonfinite_loss", "bad_labels",
               "unnormalized_input", "double_softmax", "overfitting", "low_capacity", "exploding_gradients"),
        expect={"val_acc": (0, 0.75), "final_lr": (0, 1e-9)})
def fresh_steplr_every_batch(run_dir):
    """StepLR(step_size=2, gamma=0.1) meant as 'every 2 epochs', but sched.step() sits in the batch loop:
    the lr is 1e-6 of its start after 12 steps, and training stops in the first epoch."""
    torch.manual_seed(303)
    d = digits(flat=True)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    with babysit.Run(run_dir, num_classes=10, config={"lr": 0.02, "lr_step_epochs": 2}) as run:
        run.watch(model, opt, scheduler=sched)
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
                sched.step()  # the bug: belongs after the batch loop
                run.step(loss)
                tl, ta, n = tl + loss.item(), ta + _acc(out, d.y[idx]), n + 1
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(train_loss=tl / n, train_acc=ta / n, val_loss=F.cross_entropy(out, d.yv).item(),
                      val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv), "final_lr": opt.param_groups[0]["lr"]}


@faulty("code", accept=("frozen_parameters", "stalled_weights"), wrong=CODE_WRONG + ("chance_accuracy",),
        expect={"val_acc": (0, 0.45)})
def fresh_no_grad_forward(run_dir):
    """The forward sits under torch.no_grad() (copied from the eval code); backward then raised 'does not
    require grad', so the user added loss.requires_grad_(): no gradient reaches any weight."""
    torch.manual_seed(304)
    d = tabular("synthetic")
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    run = babysit.Run(run_dir, num_classes=4)
    run.watch(model, opt)
    for _epoch in range(6):
        perm = torch.randperm(len(d.x))
        tl = n = 0
        for i in range(0, len(d.x), 32):
            idx = perm[i:i + 32]
            with torch.no_grad():
                out = model(d.x[idx])
            loss = F.cross_entropy(out, d.y[idx])
            loss.requires_grad_()  # the "fix"
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss=loss)
            tl, n = tl + loss.item(), n + 1
        with torch.no_grad():
            out = model(d.xv)
        run.epoch(train_loss=tl / n, val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    run.close()
    return {"val_acc": _acc(out, d.yv)}


@faulty("code", accept=("loss_mismatch", "bad_labels"),
        wrong=("lr_too_high", "update_ratio:high", "update_ratio:low", "unnormalized_input", "low_capacity",
               "overfitting", "double_softmax", "loss_explosion", "nonfinite_loss", "exploding_gradients",
               "dead_units", "saturated_activations", "frozen_parameters", "stalled_weights"),
        expect={"val_mse": (0.8, 1.5)})
def fresh_mse_broadcast_shapes(run_dir):
    """Targets loaded as a (N,) vector, predictions (N, 1): F.mse_loss broadcasts them to N x N (its
    UserWarning silenced), so the net can only learn the mean target."""
    torch.manual_seed(305)
    d = regression("synthetic")
    y, yv = d.y.squeeze(1), d.yv.squeeze(1)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    warnings.filterwarnings("ignore", message="Using a target size")
    with babysit.Run(run_dir) as run:
        run.watch(model, opt)
        for _epoch in range(15):
            perm = torch.randperm(len(d.x))
            tl = n = 0
            for i in range(0, len(d.x), 64):
                idx = perm[i:i + 64]
                loss = F.mse_loss(model(d.x[idx]), y[idx])  # the bug: (64, 1) vs (64,)
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss)
                tl, n = tl + loss.item(), n + 1
            with torch.no_grad():
                pv = model(d.xv)
            run.epoch(train_loss=tl / n, val_loss=F.mse_loss(pv, yv).item())
    return {"val_mse": F.mse_loss(pv.squeeze(1), yv).item()}


@faulty("data", accept=("bad_labels", "chance_accuracy"),
        wrong=("lr_too_high", "update_ratio:high", "update_ratio:low", "unnormalized_input", "low_capacity",
               "overfitting", "double_softmax", "frozen_parameters", "stalled_weights",
               "dead_units", "loss_mismatch", "flat_loss"),
        expect={"val_acc": (0, 0.6)})
def fresh_sorted_never_shuffled(run_dir):
    """The training set is sorted by class (as it came from a folder per class) and iterated in order every
    epoch with SGD + momentum: each stretch of batches is one class, and the net keeps forgetting the others.

    Rebuilt after the first fresh run: with Adam at 1e-3 the first version still reached 0.94 val accuracy (vs
    0.97 shuffled), so it did not show its fault; SGD + momentum 0.9 at 0.05 ends at ~0.45 (0.98 shuffled). And
    bad_labels, first listed as misleading by its static fix (check the label indices), reports sorted data with
    the fix 'shuffle the training data': it is accepted."""
    torch.manual_seed(306)
    d = digits(flat=True)
    order = torch.argsort(d.y, stable=True)
    x, y = d.x[order], d.y[order]
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt)
        for _epoch in range(6):
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


@faulty("regularization", accept=("underfitting", "flat_loss", "regularization_too_strong"),
        wrong=("lr_too_high", "update_ratio:high", "unnormalized_input", "overfitting", "double_softmax",
               "frozen_parameters", "bad_labels", "loss_mismatch", "low_capacity", "dead_units", "nonfinite_loss",
               "loss_explosion"),
        expect={"val_acc": (0, 0.7)})
def fresh_weight_decay_one(run_dir):
    """SGD(momentum=0.9, weight_decay=1.0): the user typed 1.0 for 1e-4; the decay crushes the weights of an
    MLP on circles towards zero and the net stays near a coin flip. (regularization_too_strong, accepted, is a
    rule added after the first fresh run, for this case's miss.)"""
    torch.manual_seed(307)
    d = toy2d("circles", n=1500)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1.0)
    with babysit.Run(run_dir, num_classes=2, config={"weight_decay": 1.0}) as run:
        run.watch(model, opt)
        for _epoch in range(15):
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


@faulty("optimizer", accept=("nonfinite_loss", "loss_explosion", "exploding_gradients", "lr_too_high",
                             "update_ratio:high"),
        wrong=("bad_labels", "unnormalized_input", "low_capacity", "overfitting", "double_softmax",
               "frozen_parameters", "flat_loss", "update_ratio:low", "underfitting", "loss_mismatch"),
        expect={"diverged": (1, 1)})
def fresh_targets_in_thousands_sgd(run_dir):
    """Regression targets in raw units (about +-10,000: the user multiplied by 30 to get dollars) with
    standardized inputs, MSE and plain SGD at 0.01: the first gradients are huge and the run diverges."""
    torch.manual_seed(308)
    d = regression("synthetic", scale_y=False)
    y, yv = d.y * 30, d.yv * 30
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with babysit.Run(run_dir, config={"lr": 0.01}) as run:
        run.watch(model, opt)
        for _epoch in range(4):
            perm = torch.randperm(len(d.x))
            tl = n = 0
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                loss = F.mse_loss(model(d.x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                run.step(loss.item())
                tl, n = tl + loss.item(), n + 1
            with torch.no_grad():
                val = F.mse_loss(model(d.xv), yv).item()
            run.epoch(train_loss=tl / n, val_loss=val)
    first_mse = float((yv ** 2).mean())
    return {"diverged": int(not math.isfinite(val) or val > 10 * first_mse)}


@faulty("code", accept=("skipped_optimizer_steps",), wrong=CODE_WRONG + ("chance_accuracy", "stalled_weights"),
        expect={"val_acc": (0, 0.85)})
def fresh_step_outside_batch_loop(run_dir):
    """optimizer.step() dedented one level: zero_grad/backward run every batch, the step once per epoch, on
    the last batch's gradient only; run.step is still called every batch."""
    torch.manual_seed(309)
    d = digits(size=16)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 16, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with babysit.Run(run_dir, num_classes=10) as run:
        run.watch(model, opt, input_shape=(1, 16, 16))
        for _epoch in range(6):
            model.train()
            perm = torch.randperm(len(d.x))
            for i in range(0, len(d.x), 32):
                idx = perm[i:i + 32]
                out = model(d.x[idx])
                loss = F.cross_entropy(out, d.y[idx])
                opt.zero_grad()
                loss.backward()
                run.step(loss)
            opt.step()  # the bug: one level too far out
            model.eval()
            with torch.no_grad():
                out = model(d.xv)
            run.epoch(val_loss=F.cross_entropy(out, d.yv).item(), val_acc=_acc(out, d.yv))
    return {"val_acc": _acc(out, d.yv)}
