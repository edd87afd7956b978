"""Layer probes: the numbers equal hand-computed truth, hooks exist only on sampled steps, errors stay inside."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from babysit.hooks import probes
from babysit.hooks.probes import LayerProbe


def _values(records: list[dict], kind: str = "layers") -> dict:
    """The stats of the one `kind` record, tensors turned into floats."""
    (rec,) = [r for r in records if r["type"] == kind]
    return {
        layer: {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in stats.items()}
        for layer, stats in rec["stats"].items()
    }


def _step(model, opt, x, y) -> None:
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _data(n=32, d=5, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, c, (n,), generator=g)


def _hooks_armed(model: nn.Module, opt) -> int:
    return sum(len(m._forward_hooks) for m in model.modules()) + len(opt._optimizer_step_pre_hooks) + len(
        opt._optimizer_step_post_hooks
    )


# ---------------------------------------------------------------------------------------------- update ratio
def test_update_ratio_is_the_applied_sgd_momentum_update(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    lr, mu, wd = 0.1, 0.9, 0.01
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mu, weight_decay=wd)
    probe = LayerProbe(model, opt, tmp_path, every=1)
    x, y = _data()
    w = model[0].weight
    buf = None
    for step in range(1, 5):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        # The update SGD with momentum and weight decay applies, by hand (PyTorch's formulation).
        d = w.grad.detach() + wd * w.detach()
        buf = d.clone() if buf is None else mu * buf + d
        expected = (lr * buf).norm() / w.detach().norm()
        naive = (lr * w.grad).norm() / w.detach().norm()
        opt.step()
        stats = _values(probe.after_step(step))["0"]
        assert stats["update_ratio"] == pytest.approx(float(expected), rel=1e-9)
    # by step 4 momentum has made the applied update differ from lr * grad: the probe saw the real one
    assert abs(float(naive) - stats["update_ratio"]) > 0.1 * stats["update_ratio"]
    probe.close()


def test_update_ratio_is_the_applied_adam_update(tmp_path):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(b1, b2), eps=eps)
    probe = LayerProbe(model, opt, tmp_path, every=1)
    x, y = _data(seed=1)
    w = model[2].weight
    m = v = torch.zeros_like(w)
    for t in range(1, 4):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        g = w.grad.detach()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        update = lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        expected = update.norm() / w.detach().norm()
        opt.step()
        stats = _values(probe.after_step(t))["2"]
        assert stats["update_ratio"] == pytest.approx(float(expected), rel=1e-7)
        # and the gradient/weight statistics describe the same step
        assert stats["g_norm"] == pytest.approx(float(g.norm()), rel=1e-12)
        assert stats["w_norm"] == pytest.approx(float(w.detach().norm()), rel=1e-12)
        assert stats["w_mean"] == pytest.approx(float(w.detach().mean()), rel=1e-9)
        assert stats["w_std"] == pytest.approx(float(w.detach().std(correction=0)), rel=1e-9)
    probe.close()


def test_zero_grad_fraction_and_frozen_layers(tmp_path):
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].bias[:2] = -1e3  # units 0 and 1 never fire: their rows of the first weight get no gradient
    model[2].requires_grad_(False)  # frozen: not reported (a zero update there is no alarm)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    probe = LayerProbe(model, opt, tmp_path, every=1)
    x = torch.randn(16, 4)
    loss = model(x).pow(2).mean()
    loss.backward()
    expected = float((model[0].weight.grad == 0).float().mean())
    opt.step()
    stats = _values(probe.after_step(1))
    assert expected >= 2 / 6
    assert stats["0"]["zero_grad_frac"] == pytest.approx(expected)
    assert "2" not in stats
    probe.close()


# ---------------------------------------------------------------------------------------------- activations
def test_dead_fraction_equals_the_true_value_on_a_hand_built_mlp(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 10), nn.ReLU(), nn.Linear(10, 2))
    with torch.no_grad():
        model[0].bias[[1, 4, 7]] = -100.0  # dead for any input of this scale
        model[0].weight[2] = 0.0
        model[0].bias[2] = 0.0  # outputs exactly 0 everywhere: dead too
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = LayerProbe(model, opt, tmp_path, every=1)
    x, y = torch.randn(64, 3), torch.randint(0, 2, (64,))
    true = float(((model[0](x) > 0).sum(0) == 0).float().mean())  # units that never fire on this batch
    _step(model, opt, x, y)
    stats = _values(probe.after_step(1))["1"]
    assert true == pytest.approx(4 / 10)
    assert stats == {"kind": "relu", "dead_frac": pytest.approx(true), "num_units": 10}
    probe.close()


def test_dead_fraction_counts_conv_channels_zero_at_every_position(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0, 0, 1, 1] = 1.0  # channel 0 copies the input: fires where the input is positive
        model[0].bias[:] = torch.tensor([0.0, -1.0, 1.0, 0.0])  # 1: dead; 2: fires everywhere; 3: exactly 0: dead
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = LayerProbe(model, opt, tmp_path, every=1)
    x = -torch.rand(8, 1, 6, 6)
    x[3, 0, 2, 4] = 0.5  # one positive pixel in one sample keeps channel 0 alive
    _step(model, opt, x, torch.zeros(8, dtype=torch.long))
    stats = _values(probe.after_step(1))["1"]
    assert stats["dead_frac"] == pytest.approx(0.5)
    assert stats["num_units"] == 4
    probe.close()


def test_units_are_the_last_dimension_after_a_linear_on_sequences(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    with torch.no_grad():
        model[0].bias[:] = torch.tensor([-100.0, 100.0, 100.0, 100.0])
    probe = LayerProbe(model, None, tmp_path, every=1)
    model(torch.randn(2, 7, 3)).sum().backward()  # (batch, length, features): 4 units, 1 dead
    stats = _values(probe.after_step(1))["1"]
    assert stats["dead_frac"] == pytest.approx(0.25) and stats["num_units"] == 4
    probe.close()


def test_saturated_fraction_for_tanh_and_sigmoid(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight.mul_(6.0)
        model[2].weight.mul_(8.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = LayerProbe(model, opt, tmp_path, every=1)
    x = torch.randn(32, 4)
    with torch.no_grad():
        h = torch.tanh(model[0](x))
        s = torch.sigmoid(model[2](h))
    tanh_true = float((h.abs() > 0.99).float().mean())
    sig_true = float(((s < 0.01) | (s > 0.99)).float().mean())
    assert 0.05 < tanh_true < 0.95 and 0.05 < sig_true < 0.95  # the test means something
    _step(model, opt, x, torch.zeros(32, dtype=torch.long))
    stats = _values(probe.after_step(1))
    assert stats["1"]["kind"] == "tanh" and stats["1"]["saturated_frac"] == pytest.approx(tanh_true)
    assert stats["3"]["kind"] == "sigmoid" and stats["3"]["saturated_frac"] == pytest.approx(sig_true)
    probe.close()


def test_evaluation_passes_between_steps_are_not_the_batch(tmp_path):
    model = nn.Sequential(nn.Linear(2, 1), nn.ReLU())
    with torch.no_grad():
        model[0].weight[:] = 1.0
        model[0].bias[:] = 0.0
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = LayerProbe(model, opt, tmp_path, every=2)
    model(torch.ones(4, 2)).sum().backward()
    opt.step()
    probe.after_step(1)  # armed now for step 2
    with torch.no_grad():
        model(torch.ones(4, 2))  # a validation pass where the unit fires: must not count
    model.eval()
    model(torch.ones(4, 2))  # eval mode with grad enabled: not the batch either
    model.train()
    opt.zero_grad()
    model(-torch.ones(4, 2)).sum().backward()  # the training batch: the unit never fires
    opt.step()
    assert _values(probe.after_step(2))["1"]["dead_frac"] == 1.0
    probe.close()


def test_gradient_accumulation_counts_a_unit_alive_if_any_micro_batch_fires_it(tmp_path):
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU())
    with torch.no_grad():
        model[0].weight[:] = 1.0
        model[0].bias[:] = 0.0
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = LayerProbe(model, opt, tmp_path, every=1)
    model(-torch.ones(4, 1)).sum().backward()
    model(torch.ones(4, 1)).sum().backward()
    opt.step()
    assert _values(probe.after_step(1))["1"]["dead_frac"] == 0.0
    probe.close()


# ---------------------------------------------------------------------------------------------- idle between samples
def test_hooks_exist_only_for_sampled_steps(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = LayerProbe(model, opt, tmp_path, every=5, snapshot_every=10**9, floor=False)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    sampled, armed_during = [], {}
    for step in range(1, 21):
        armed_during[step] = _hooks_armed(model, opt) > 0
        _step(model, opt, x, y)
        if any(r["type"] == "layers" for r in probe.after_step(step)):
            sampled.append(step)
    assert sampled == [1, 5, 10, 15, 20]
    assert [s for s, armed in armed_during.items() if armed] == sampled  # idle on every other step
    assert _hooks_armed(model, opt) == 0
    probe.close()


def test_time_budget_decides_how_often_to_sample(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))

    def sampled(budget: float) -> list[int]:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        probe = LayerProbe(model, opt, tmp_path, budget=budget, min_every=10, snapshot_every=10**9, floor=False)
        steps = []
        for step in range(1, 61):
            _step(model, opt, x, y)
            if any(r["type"] == "layers" for r in probe.after_step(step)):
                steps.append(step)
        probe.close()
        return steps

    assert sampled(budget=1e-9) == [1]  # the first sample is always taken; no budget for another
    generous = sampled(budget=1e3)
    assert generous[0] == 1 and len(generous) >= 5
    assert all(b - a >= 10 for a, b in zip(generous, generous[1:], strict=False))  # never more often than min_every


# ---------------------------------------------------------------------------------------------- robustness
def test_an_error_inside_a_forward_hook_disables_the_probe_not_training(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = LayerProbe(model, opt, tmp_path, every=1)

    def boom(self, output):
        raise RuntimeError("strange module")

    monkeypatch.setattr(probes._ActivationLayer, "observe", boom)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1, 6):
            _step(model, opt, x, y)  # would raise if the hook let the error out
            assert probe.after_step(step) == []
    messages = [str(w.message) for w in caught if "babysit" in str(w.message)]
    assert len(messages) == 1 and "strange module" in messages[0]
    assert probe.disabled and _hooks_armed(model, opt) == 0


def test_an_error_inside_the_optimizer_hooks_does_not_break_the_step(tmp_path, monkeypatch):
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = LayerProbe(model, opt, tmp_path, every=1)
    monkeypatch.setattr(probes, "_grad_stats", lambda params: 1 / 0)
    before = model.weight.detach().clone()
    with pytest.warns(RuntimeWarning, match="optimizer pre-step hook"):
        _step(model, opt, torch.randn(8, 4), torch.randint(0, 2, (8,)))
    assert not torch.equal(before, model.weight)  # the optimizer still stepped
    assert probe.after_step(1) == [] and _hooks_armed(model, opt) == 0


def test_failing_snapshot_writes_warn_once_and_statistics_go_on(tmp_path, monkeypatch):
    def full_disk(path, array):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(probes, "_save_npy", full_disk)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe = LayerProbe(model, opt, tmp_path, every=2, snapshot_every=2, floor=False)
        assert probe.initial_records() == []
        kinds = []
        for step in range(1, 7):
            _step(model, opt, torch.randn(8, 4), torch.randint(0, 2, (8,)))
            kinds += [r["type"] for r in probe.after_step(step)]
    assert [str(w.message) for w in caught if "babysit" in str(w.message)] == [
        "babysit: weight snapshots disabled after an error (OSError: [Errno 28] No space left on device); "
        "training continues"
    ]
    assert kinds == ["layers"] * 4  # steps 1, 2, 4, 6


# ---------------------------------------------------------------------------------------------- snapshots
def test_conv_snapshots_keep_filter_shape_and_the_initial_weights(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 6, 5), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    initial = model[0].weight.detach().clone()
    probe = LayerProbe(model, opt, tmp_path, every=1000, snapshot_every=3)
    records = probe.initial_records()
    for step in range(1, 7):
        _step(model, opt, torch.randn(4, 3, 8, 8), torch.randint(0, 2, (4,)))
        records += [r for r in probe.after_step(step) if r["type"] == "snapshot"]
    assert [r["step"] for r in records] == [0, 3, 6]
    assert all(r["layer"] == "0" and r["shape"] == [6, 3, 5, 5] for r in records)
    first = np.load(tmp_path / records[0]["file"], allow_pickle=False)
    last = np.load(tmp_path / records[-1]["file"], allow_pickle=False)
    np.testing.assert_array_equal(first, initial.numpy())
    np.testing.assert_array_equal(last, model[0].weight.detach().numpy())
    assert not np.array_equal(first, last)
    probe.close()


def test_a_first_linear_layer_is_snapshotted_as_images_given_the_input_shape(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 3))
    probe = LayerProbe(model, None, tmp_path, input_shape=(2, 4, 4))
    (rec,) = probe.initial_records()
    assert rec["layer"] == "1" and rec["shape"] == [5, 2, 4, 4]
    image = np.load(tmp_path / rec["file"], allow_pickle=False)
    np.testing.assert_array_equal(image[3], model[1].weight.detach()[3].reshape(2, 4, 4).numpy())
    probe.close()
    (flat,) = LayerProbe(model, None, tmp_path / "flat").initial_records()
    assert flat["shape"] == [5, 32]


def test_snapshot_spacing_doubles_so_long_runs_keep_few_files(tmp_path, monkeypatch):
    monkeypatch.setattr(probes, "SNAPSHOTS_PER_DOUBLING", 3)
    model = nn.Linear(2, 2)
    probe = LayerProbe(model, None, tmp_path, every=10**9, snapshot_every=1)
    steps = [0] if probe.initial_records() else []
    for step in range(1, 20):
        steps += [r["step"] for r in probe.after_step(step) if r["type"] == "snapshot"]
    assert steps == [0, 1, 2, 4, 6, 8, 12, 16]
    probe.close()


def test_layer_names_match_the_model_summary(tmp_path):
    from babysit.hooks.summary import model_summary

    model = nn.Linear(3, 2)  # the root module itself owns the weights
    probe = LayerProbe(model, None, tmp_path, every=1)
    model(torch.randn(4, 3)).sum().backward()
    stats = _values(probe.after_step(1))
    assert list(stats) == [layer["name"] for layer in model_summary(model)["layers"]] == ["Linear"]
    assert math.isnan(stats["Linear"].get("update_ratio", math.nan))  # no optimizer: no update to measure
    probe.close()


def test_an_optimizer_without_step_hooks_still_gets_layer_statistics(tmp_path):
    class Wrapped:  # e.g. an old or third-party optimizer wrapper
        def __init__(self, opt):
            self.opt = opt

        def step(self):
            self.opt.step()

    model = nn.Linear(3, 2)
    opt = Wrapped(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.warns(RuntimeWarning, match="no update/weight ratios"):
        probe = LayerProbe(model, opt, tmp_path, every=1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    stats = _values(probe.after_step(1))["Linear"]
    assert "update_ratio" not in stats and stats["g_norm"] > 0
    probe.close()


def test_skipping_after_step_until_wake_loses_no_sample_or_snapshot(tmp_path):
    """Run.step calls after_step only from `probe.wake` on: the same samples and snapshots as every step."""

    def records(skip: bool) -> list[tuple[str, int]]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
        probe = LayerProbe(model, opt, tmp_path / str(skip), every=7, snapshot_every=5)
        out = []
        for step in range(1, 301):
            _step(model, opt, x, y)
            if not skip or step >= probe.wake:
                out += [(r["type"], r["step"]) for r in probe.after_step(step)]
        probe.close()
        return out

    every = records(skip=False)
    assert every == records(skip=True)
    assert ("layers", 7) in every and ("layers", 294) in every and ("snapshot", 300) in every
