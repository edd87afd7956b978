"""What the structure and data checks need, recorded once in meta.json (issue 11 item 5; team contracts 1, 2):
frozen counts, optimizer coverage, the head, first-batch statistics, the targets seen, optimizer_steps.
The loss-function observer never breaks training and costs nothing after its steps."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from babysit import hooks
from babysit.hooks import structure
from babysit.monitor.reader import load_run


def _mode_depth() -> int:
    return torch._C._len_torch_function_stack()


def _loop(run, model, opt, x, y, steps, loss_fn=nn.functional.cross_entropy, skip_every: int = 0, batch: int = 32):
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (batch,))
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        if not (skip_every and step % skip_every == 0):
            opt.step()
        run.step(loss=loss)


def _data(n=512, d=8, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, torch.randint(0, c, (n,), generator=g)


def test_frozen_counts_optimizer_coverage_and_optimizer_steps(run_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    model[0].requires_grad_(False)  # intended freezing
    opt = torch.optim.Adam(list(model[4].parameters()), lr=1e-3, weight_decay=0.01)  # forgets layer 2
    x, y = _data()
    with hooks.Run(run_dir, num_classes=4, on_critical=None, flush_steps=25) as run:
        run.watch(model, opt)
        _loop(run, model, opt, x, y, 100, skip_every=4)  # every 4th step skips optimizer.step()
    data = load_run(run_dir)
    meta = data.meta
    layers = {layer["name"]: layer for layer in meta["model"]["layers"]}
    assert (layers["0"]["trainable"], layers["0"]["frozen"]) == (0, 8 * 16 + 16)
    assert (layers["2"]["trainable"], layers["2"]["frozen"]) == (16 * 16 + 16, 0)
    assert meta["model"]["frozen"] == 8 * 16 + 16
    o = meta["optimizer"]
    assert o["class"] == "Adam" and o["params_in_optimizer"] == 16 * 4 + 4
    assert o["param_groups"] == [{"lr": 1e-3, "weight_decay": 0.01, "momentum": 0.9, "params": 16 * 4 + 4}]
    assert o["trainable_not_in_optimizer"] == 16 * 16 + 16 and o["layers_not_in_optimizer"] == ["2"]
    assert data.status["optimizer_steps"] == 75
    # in each steps record: the cumulative count at its last step (read from the raw records: any reader)
    import json

    from babysit.monitor import runfile

    records = [json.loads(line) for line in (run_dir / runfile.EVENTS).read_text().splitlines()]
    counts = [(r["step"][-1], r["optimizer_steps"]) for r in records if r["type"] == "steps"]
    assert counts and all(n == last - last // 4 for last, n in counts)


def test_first_batch_head_loss_input_and_targets(run_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.Softmax(dim=1))  # softmax twice
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = _data()
    x = x * 40 + 100  # unnormalized input
    with hooks.Run(run_dir, num_classes=4, on_critical=None) as run:
        run.watch(model, opt)
        _loop(run, model, opt, x, y, 30, loss_fn=nn.CrossEntropyLoss())
    meta = load_run(run_dir).meta
    assert meta["model"]["head"] == {"name": "3", "type": "Softmax"}
    first = meta["first_batch"]
    inputs = first["inputs"]
    assert inputs["dtype"] == "float32" and inputs["shape"] == [32, 8] and inputs["integer"] is False
    assert 60 < inputs["mean"] < 140 and 20 < inputs["std"] < 60 and len(inputs["channel_mean"]) == 8
    assert first["outputs"]["rows_sum_to_one"] is True and first["outputs"]["nonneg"] is True
    assert first["loss_fn"] == "cross_entropy" and first["loss_input"]["rows_sum_to_one"] is True
    targets = first["targets"]
    assert targets["integer"] is True and targets["shape"] == [32] and 0 <= targets["min"] <= targets["max"] <= 3
    assert sum(targets["histogram"].values()) == 32
    seen = meta["targets_seen"]
    assert seen["steps"] == 30 and seen["count"] == 30 * 32 and sum(seen["histogram"].values()) == 30 * 32
    assert (seen["min"], seen["max"]) == (0, 3)


@pytest.mark.parametrize("batch", [8, 32, 256])
def test_targets_seen_stops_once_enough_targets_or_200_steps_and_then_nothing_is_hooked(run_dir, batch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    y[y == 3] = 7  # a label outside num_classes
    min_steps, enough = structure.TARGET_ENOUGH
    # batch 8: 200 steps see 1,600 targets, the step cap ends it; 32: 4,096 targets at step 128; 256: step 50
    expected = min(structure.TARGET_STEPS, max(min_steps, math.ceil(enough / batch)))
    with hooks.Run(run_dir, num_classes=4, on_critical=None) as run:
        run.watch(model, opt, every=10**6)
        _loop(run, model, opt, x, y, expected - 1, batch=batch,
              loss_fn=lambda o, t: (o.sum() - t.sum()) * 0 + nn.functional.cross_entropy(o, t.clamp(max=3)))
        assert run._structure is not None and not run._structure.done and _mode_depth() <= 1
        _loop(run, model, opt, x, y, 21, batch=batch,
              loss_fn=lambda o, t: nn.functional.cross_entropy(o, t.clamp(max=3)))
        assert run._structure is None or run._structure.done  # done: written at the next flush
        assert len(model._forward_hooks) == 0 and len(model._forward_pre_hooks) == 0 and _mode_depth() == 0
    seen = load_run(run_dir).meta["targets_seen"]
    assert seen["steps"] == expected and seen["count"] == expected * batch
    assert seen["max"] == 3  # what the loss function saw (clamped)


def test_integer_inputs_are_marked_and_nll_after_log_softmax_is_seen(run_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(8 * 6, 5), nn.LogSoftmax(dim=-1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tokens = torch.randint(0, 50, (256, 6))
    labels = torch.randint(0, 5, (256,))
    with hooks.Run(run_dir, num_classes=5, on_critical=None) as run:
        run.watch(model, opt)
        _loop(run, model, opt, tokens, labels, 12, loss_fn=nn.functional.nll_loss)
    meta = load_run(run_dir).meta
    inputs = meta["first_batch"]["inputs"]
    assert inputs["integer"] is True and inputs["dtype"] == "int64" and "channel_mean" not in inputs
    assert meta["model"]["head"]["type"] == "LogSoftmax"
    assert meta["first_batch"]["loss_fn"] == "nll_loss" and meta["first_batch"]["loss_input"]["log_probs"] is True


def test_regression_targets_have_statistics_and_no_histogram(run_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 1), nn.Flatten(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, _ = _data()
    y = x[:, 0] * 3 + 10
    with hooks.Run(run_dir, on_critical=None) as run:
        run.watch(model, opt)
        _loop(run, model, opt, x, y, 10, loss_fn=nn.MSELoss())
    meta = load_run(run_dir).meta
    targets = meta["first_batch"]["targets"]
    assert meta["first_batch"]["loss_fn"] == "mse_loss"
    assert targets["integer"] is False and targets["histogram"] is None and 5 < targets["mean"] < 15
    assert "targets_seen" not in meta  # integer targets only


def test_a_model_that_computes_its_loss_inside_forward_with_labels(run_dir):
    class WithLoss(nn.Module):  # the Hugging Face way: forward(input_ids=..., labels=...) -> (loss, logits)
        def __init__(self):
            super().__init__()
            self.emb, self.out = nn.Embedding(30, 8), nn.Linear(8, 30)

        def forward(self, input_ids, labels=None):
            logits = self.out(self.emb(input_ids))
            loss = nn.functional.cross_entropy(logits.reshape(-1, 30), labels.reshape(-1))
            return {"loss": loss, "logits": logits}

    torch.manual_seed(0)
    model = WithLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 30, (64, 5))
    labels = ids.clone()
    labels[:, 0] = -100  # ignored positions
    with hooks.Run(run_dir, num_classes=30, on_critical=None) as run:
        run.watch(model, opt)
        for step in range(15):
            out = model(input_ids=ids[step * 4:(step + 1) * 4], labels=labels[step * 4:(step + 1) * 4])
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            run.step(loss=out["loss"])
    meta = load_run(run_dir).meta
    first = meta["first_batch"]
    assert first["inputs"]["integer"] is True and first["loss_fn"] == "cross_entropy"
    assert first["targets"]["min"] >= 0 and first["targets"]["ignore_index"] == -100
    seen = meta["targets_seen"]
    assert seen["ignored"] == 15 * 4 and seen["count"] == 15 * 4 * 5 and seen["min"] >= 0


# ---------------------------------------------------------------------------------------------- never in the way
def test_a_users_own_torch_function_mode_is_respected(run_dir):
    calls = []

    class Counting(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            calls.append(func)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    with hooks.Run(run_dir, num_classes=4, on_critical=None) as run:
        run.watch(model, opt)
        for step in range(20):
            out = model(x[:16])
            with Counting():  # the user's mode, above ours while the loss is computed
                loss = nn.functional.cross_entropy(out, y[:16])
            if step == 5:
                Counting().__enter__()  # ... and once left on the stack across run.step
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss=loss)
        assert run.global_step == 20
    assert nn.functional.cross_entropy in calls  # the user's mode saw every call it should
    while _mode_depth():  # the user's leftover mode (and ours beneath it, a pass-through) are theirs to pop
        torch._C._pop_torch_function_stack()
    assert load_run(run_dir).meta["first_batch"]["loss_fn"] == "cross_entropy"


def test_an_error_in_the_observer_warns_once_and_training_goes_on(run_dir, monkeypatch):
    def broken(t):
        raise RuntimeError("boom")

    monkeypatch.setattr(structure, "_output_stats", broken)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with hooks.Run(run_dir, num_classes=4, on_critical=None) as run:
            run.watch(model, opt)
            _loop(run, model, opt, x, y, 20)
    messages = [str(w.message) for w in caught if "babysit" in str(w.message)]
    assert len(messages) == 1 and "first-batch checks disabled" in messages[0] and "boom" in messages[0]
    assert run.global_step == 20 and _mode_depth() == 0 and len(model._forward_hooks) == 0
    data = load_run(run_dir)
    assert data.steps["step"].tolist() == list(range(1, 21)) and data.status["state"] == "finished"


def test_no_host_sync_per_step_from_the_observer(run_dir, monkeypatch):
    """Like the run's own no-sync test: the observer's statistics stay on the device until a flush."""
    counts = {"calls": 0}
    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            counts["calls"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    with hooks.Run(run_dir, num_classes=4, on_critical=None, flush_interval=3600, flush_steps=10**6) as run:
        run.watch(model, opt, every=10**6, snapshot_every=10**6)
        before = counts["calls"]
        _loop(run, model, opt, x, y, 150)
        during = counts["calls"] - before
    assert during <= 10, during  # the first batch written at steps 1, 10, 50 and the early flushes: not per step
    assert not math.isnan(load_run(run_dir).meta["targets_seen"]["count"])


@pytest.mark.parametrize("grad", [False, True])
def test_evaluation_passes_are_not_the_first_batch(run_dir, grad):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    with hooks.Run(run_dir, num_classes=4, on_critical=None) as run:
        run.watch(model, opt)
        model.eval()
        with torch.set_grad_enabled(grad):
            nn.functional.cross_entropy(model(x[:7] * 1000), y[:7])  # a validation pass before training
        model.train()
        _loop(run, model, opt, x, y, 3)
    assert load_run(run_dir).meta["first_batch"]["inputs"]["shape"] == [32, 8]
