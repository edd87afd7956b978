"""Transfer learning, the lecture's last table: start from a trained net's weights (`--init-from`), freeze the
generic early layers and fine-tune the rest (`--freeze LAYER`), or with very little data put a linear classifier
on top (`--linear-probe`: scikit-learn's logistic regression on the penultimate features).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from babysit.trainer.checkpoint import load_checkpoint, state_dict_of
from babysit.trainer.models import layer_names

__all__ = ["load_pretrained", "freeze_up_to", "train_mode", "penultimate_features", "linear_probe"]


def load_pretrained(model: nn.Module, path: str) -> list[str]:
    """Copy every tensor whose name and shape match; say what was skipped (e.g. a head with other classes)."""
    state = state_dict_of(load_checkpoint(path))
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ValueError(f"--init-from {path}: no tensor matches this model by name and shape (same --model?)")
    model.load_state_dict(matched, strict=False)
    notes = [f"init from {path}: {len(matched)} of {len(own)} tensors loaded"]
    for k, v in state.items():
        if k in own and k not in matched:
            notes.append(f"  kept fresh: {k} (checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)})")
    return notes


def freeze_up_to(model: nn.Module, layer: str) -> list[nn.Module]:
    """Stop gradients for the top-level layers up to and including `layer`; return them."""
    names = layer_names(model)
    if layer not in names:
        raise ValueError(f"--freeze {layer!r}: no such layer; this model's layers are {', '.join(names)}")
    frozen = []
    for name, module in model.named_children():
        module.requires_grad_(False)
        frozen.append(module)
        if name == layer:
            break
    return frozen


def train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    """model.train(), but frozen layers stay in eval mode (their batch-norm statistics do not drift)."""
    model.train()
    for module in frozen:
        module.eval()


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """What `model.head` receives, in eval mode, as float32 on the host."""
    captured: list[torch.Tensor] = []
    handle = model.head.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].float().cpu()))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured)


def linear_probe(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
                 y_val: torch.Tensor, reg: float) -> dict[str, float]:
    """Fit multinomial logistic regression on penultimate features and write it into `model.head`.

    Softmax regression has the head's exact form (W f + b), so the result is an ordinary model: its checkpoint
    evaluates like any other. Features are standardized for the solver; the scaling is folded into W and b.
    The strength `reg` is the trainer's lambda: sklearn's C = 1 / (lambda n).
    """
    from sklearn.linear_model import LogisticRegression

    f_train = penultimate_features(model, x_train).numpy().astype(np.float64)
    f_val = penultimate_features(model, x_val).numpy().astype(np.float64)
    y_tr, y_va = y_train.cpu().numpy(), y_val.cpu().numpy()
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-8
    c = 1.0 / (reg * len(f_train)) if reg > 0 else 1e6
    clf = LogisticRegression(C=c, max_iter=2000).fit((f_train - mu) / sd, y_tr)
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: sklearn keeps one row; softmax over (0, w.f + b) is the same sigmoid
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    head: nn.Linear = model.head
    w = torch.zeros_like(head.weight, dtype=torch.float64, device="cpu")
    b = torch.zeros(head.out_features, dtype=torch.float64)
    rows = torch.as_tensor(clf.classes_)
    w[rows] = torch.from_numpy(coef / sd)
    b[rows] = torch.from_numpy(intercept - (coef * mu / sd).sum(1))
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
    return {
        "probe_train_acc": float(clf.score((f_train - mu) / sd, y_tr)),
        "probe_val_acc": float(clf.score((f_val - mu) / sd, y_va)),
    }
