"""Sampling with a guaranteed floor (issue 11 item 1): short runs are not blind, sampling reaches the end,
and the online rules act within one flush of a critical condition however short the run."""

from __future__ import annotations

import math

import torch
from torch import nn

from babysit import hooks
from babysit.hooks import probes
from babysit.monitor.reader import load_run


def _setup(seed: int = 0, dead: bool = False):
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    if dead:  # every ReLU unit dead from step 1: exactly-zero gradients into the first layer
        with torch.no_grad():
            model[0].bias.fill_(-100.0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return model, x, y


def _train(run, model, opt, x, y, steps: int) -> int:
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (32,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.step(loss=loss)
        if run.should_stop:
            return step
    return steps


def test_a_60_step_run_with_dead_relus_has_dead_unit_data_at_10_or_more_steps(run_dir):
    model, x, y = _setup(dead=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with hooks.Run(run_dir, num_classes=3, on_critical=None) as run:
        run.watch(model, opt)  # defaults: the time budget, with its floor
        _train(run, model, opt, x, y, 60)
    layers = load_run(run_dir).layers
    relu = layers[layers["kind"] == "relu"]
    dead_steps = set(relu.loc[relu["dead_frac"] == 1.0, "step"])
    assert len(dead_steps) >= 10 and set(range(1, 11)) <= dead_steps
    first = layers[(layers["layer"] == "0") & layers["zero_grad_frac"].notna()]
    assert (first["zero_grad_frac"] == 1.0).sum() >= 10
    assert layers["step"].max() == 60  # sampling reaches the end


def test_a_500_step_run_has_30_or_more_sampled_steps_through_to_its_end(run_dir):
    model, x, y = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with hooks.Run(run_dir, num_classes=3, on_critical=None) as run:
        run.watch(model, opt)
        _train(run, model, opt, x, y, 500)
    layers = load_run(run_dir).layers
    sampled = sorted(set(layers["step"]))
    assert len(sampled) >= 30
    assert sampled[:10] == list(range(1, 11))
    assert sampled[-1] == 500
    gaps = [b - a for a, b in zip(sampled, sampled[1:], strict=False)]
    assert max(gaps) <= math.ceil(500 * (probes.FLOOR_GROWTH - 1)) + 1  # no long blind stretch


def test_the_last_state_is_recorded_at_close_when_the_last_step_was_not_sampled(run_dir):
    model, x, y = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with hooks.Run(run_dir, num_classes=3, on_critical=None) as run:
        run.watch(model, opt, every=1000)
        _train(run, model, opt, x, y, 13)  # the floor samples 1..10 and 12; 13 only at close
    data = load_run(run_dir)
    last = data.layers[data.layers["step"] == 13]
    weights = last[last["kind"] == "weight"]
    assert set(weights["layer"]) == {"0", "2"}
    assert weights["w_norm"].notna().all() and weights["g_norm"].notna().all()  # the last backward's grads
    assert torch.allclose(torch.tensor(float(weights.loc[weights["layer"] == "0", "w_norm"].iloc[0])),
                          model[0].weight.detach().norm())


def test_every_n_keeps_its_multiples_and_gets_the_early_floor(run_dir):
    model, x, y = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with hooks.Run(run_dir, num_classes=3, on_critical=None) as run:
        run.watch(model, opt, every=50)
        _train(run, model, opt, x, y, 200)
    sampled = set(load_run(run_dir).layers["step"])
    assert {50, 100, 150, 200} <= sampled and set(range(1, 11)) <= sampled


def test_the_floor_can_be_turned_off_for_a_probe(tmp_path):
    model, x, y = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = probes.LayerProbe(model, opt, tmp_path, every=50, floor=False, snapshot_every=10**9)
    sampled = []
    for step in range(1, 101):
        loss = nn.functional.cross_entropy(model(x[:32]), y[:32])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if any(r["type"] == "layers" for r in probe.after_step(step)):
            sampled.append(step)
    probe.close()
    assert sampled == [1, 50, 100]


def test_a_budgeted_probe_is_woken_rarely_between_samples_and_still_samples_on_time(tmp_path):
    """While the probe waits for its time budget, `wake` (the step run.step calls it at) jumps ahead by an
    estimate of the steps left, instead of a call per step; the samples still come as the budget allows."""
    model, x, y = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = probes.LayerProbe(model, opt, tmp_path, floor=False, snapshot_every=10**9, budget=0.01, min_every=1)
    calls, sampled, steps = 0, [], 3000
    for step in range(1, steps + 1):
        loss = nn.functional.cross_entropy(model(x[:32]), y[:32])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= probe.wake:  # what run.step does
            calls += 1
            if any(r["type"] == "layers" for r in probe.after_step(step)):
                sampled.append(step)
    probe.close()
    assert len(sampled) >= 5 and sampled[-1] > steps // 2  # the budget keeps sampling through the run
    assert calls <= steps / 5  # not a call per step (without the estimate: 3,000)
    assert calls <= 10 * len(sampled) + 10  # a few wake-ups per sample: they close in on the time


# ---------------------------------------------------------------------------------------------- online rules
def test_a_short_run_with_a_critical_condition_is_stopped_within_one_flush(run_dir):
    """A run of a few hundred fast steps (well under 2 seconds): the loss triples at step 30 and stays."""
    flush_steps = 20
    with hooks.Run(run_dir, num_classes=10, on_critical="stop", flush_interval=3600, flush_steps=flush_steps) as run:
        for step in range(1, 400):
            run.step(loss=2.3 if step < 30 else 30.0)
            if run.should_stop:
                break
    assert run.should_stop and "loss_explosion" in (run.stop_reason or "")
    window = 5  # explosion_window: the rule needs a majority of 5 steps above the limit
    assert step <= 30 + window + flush_steps
    assert load_run(run_dir).status["state"] == "stopped"


def test_an_lr_8_run_stops_within_one_flush_of_the_blow_up(run_dir):
    model, x, y = _setup(seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=8.0)
    flush_steps = 10
    with hooks.Run(run_dir, num_classes=3, on_critical="stop", flush_interval=3600, flush_steps=flush_steps) as run:
        run.watch(model, opt)
        stopped_at = _train(run, model, opt, x, y, 500)
    assert run.should_stop and stopped_at < 500
    loss = load_run(run_dir).steps.set_index("step")["loss"]
    initial = float(loss.iloc[0])
    blown = loss[~loss.lt(3 * initial)]  # above 3x the start, or not finite
    assert len(blown), "the run should blow up at lr 8"
    assert stopped_at <= int(blown.index[0]) + 5 + flush_steps, (stopped_at, int(blown.index[0]), run.stop_reason)
