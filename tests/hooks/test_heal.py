"""Self-healing runs (hooks/heal.py) on real CPU training: sklearn digits, an MLP, a few hundred steps.

Each broken run is compared with the same configuration at a good learning rate (its healthy twin).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import babysit
from babysit.hooks.heal import Healer
from babysit.monitor.reader import load_run
from babysit.rules import diagnose
from benchmarks.heal import Setup, scenario

GOOD = Setup()  # SGD momentum 0.9, lr 0.05, 600 steps: ~0.98 val accuracy


def _twin(setup: Setup) -> float:
    return scenario(Setup(**{**setup.__dict__, "fault": "none"})).val_acc


def _heal_events(run_dir) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in lines if r.get("type") == "event" and r.get("name") == "heal"]


@pytest.mark.parametrize(
    "broken",
    [
        Setup(fault="lr_high", factor=30),  # lr 1.5 instead of 0.05
        Setup(fault="bad_batch", factor=1e3, fault_step=300),  # one batch scaled 1000x with shifted labels
        Setup(fault="bad_batch", factor=0, fault_step=300),  # one NaN in one batch
        Setup(fault="lr_spike", factor=30, fault_step=300),  # the schedule jumps 30x for 60 steps
    ],
    ids=["lr_30x", "bad_batch", "nan_batch", "lr_spike"],
)
def test_a_broken_run_heals_to_its_healthy_twin(tmp_path, broken):
    healthy = _twin(broken)
    plain = scenario(broken, tmp_path / "plain", heal=False)  # on_critical="stop"
    healed = scenario(broken, tmp_path / "healed", heal=True)
    chance = 0.1 + 0.05
    assert plain.stopped or plain.val_acc < chance, "without heal the run must be stopped or end at chance"
    assert plain.val_acc < chance
    assert not healed.stopped, healed.reason
    assert healed.val_acc >= healthy - 0.02, (healed.val_acc, healthy, healed.heals)
    events = _heal_events(tmp_path / "healed")
    assert len(events) == len(healed.heals) >= 1
    for ev in events:
        d = ev["data"]
        assert set(d) >= {"finding", "message", "rolled_back_to", "action", "lr_before", "lr_after", "clip",
                          "attempt"}
        assert d["rolled_back_to"] < ev["step"]
        assert d["action"] in ("lr_x0.1", "clip_grad_norm", "warmup")
        if d["action"] == "lr_x0.1":
            assert math.isclose(d["lr_after"], 0.1 * d["lr_before"], rel_tol=1e-6)
    status = json.loads((tmp_path / "healed" / "status.json").read_text())
    assert status["healed"] == len(events) and status["state"] == "finished"
    found = {f.rule: f for f in diagnose(load_run(tmp_path / "healed"))}
    assert "healed" in found and found["healed"].evidence["heals"] == len(events)
    # what the heal fixed is history post hoc: a note pointing at `healed`, not a critical "stop this run"
    fixed = {e["data"]["finding"] for e in events}
    for rule in fixed & set(found):
        if found[rule].step is not None and found[rule].step <= events[0]["step"]:
            assert found[rule].severity == "info" and found[rule].fix_ids == ["see_healed"], found[rule]
    assert not any(f.severity == "critical" for f in found.values()), [f.rule for f in found.values()]


def test_a_healthy_run_is_bit_for_bit_the_same_with_heal(tmp_path):
    setup = Setup(steps=300)
    torch.manual_seed(1)
    warn = scenario(setup, tmp_path / "warn", heal=False, heal_every=50)
    torch.manual_seed(1)
    heal = scenario(setup, tmp_path / "heal", heal=True, heal_every=50)
    assert heal.heals == [] and not heal.stopped
    assert warn.losses == heal.losses  # exact floats: keeping the good state changes nothing


def test_after_heal_max_attempts_the_run_stops_with_every_attempt_in_the_reason(tmp_path):
    broken = Setup(fault="lr_high", factor=30, steps=400)
    res = scenario(broken, tmp_path / "r", heal=True, heal_max=1)
    assert res.stopped
    assert "not healed after 1 attempts" in res.reason and "lr_x0.1" in res.reason
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["state"] == "stopped" and "rolled back to step" in status["reason"]


def test_restore_is_in_place_and_exact_for_adam_scheduler_and_rng(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1000)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))

    def train(n):
        for _ in range(n):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()

    with babysit.Run(tmp_path / "r", on_critical="heal") as run:
        train(3)
        run.watch(model, opt, scheduler=sched)
        healer: Healer = run._healer
        params = [p for p in model.parameters()]
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        saved_opt = {i: {k: v.clone() for k, v in opt.state[p].items()} for i, p in enumerate(params)}
        rng = torch.rand(3)
        torch.manual_seed(123)  # move the RNG on; restore must bring it back
        train(5)
        assert not torch.equal(model[0].weight, saved["0.weight"])
        healer._restore(healer._good)
        for k, v in model.state_dict().items():
            assert torch.equal(v, saved[k]), k
        assert [p for p in model.parameters()] == params  # the same Parameter objects: user references stay valid
        for i, p in enumerate(params):
            for k, v in opt.state[p].items():
                assert torch.equal(v, saved_opt[i][k]), (i, k)
        assert sched.last_epoch == 8  # the schedule's position follows the loop: batches are not replayed
        # the RNG is back where it was at watch(): the next draw repeats the one taken then
        assert torch.equal(torch.rand(3), rng)


def test_heal_without_a_model_says_so_and_stops_on_critical(tmp_path, capsys):
    with babysit.Run(tmp_path / "r", num_classes=10, on_critical="heal", flush_steps=5) as run:
        run.watch()
        assert run._healer is None
        for _ in range(20):
            run.step(loss=float("nan"))
            if run.should_stop:
                break
    assert run.should_stop
    assert "cannot roll back" in capsys.readouterr().err


def test_bad_heal_options_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="heal_max"):
        babysit.Run(tmp_path / "r", on_critical="heal", heal_max=0)
    with pytest.raises(ValueError, match="on_critical"):
        babysit.Run(tmp_path / "q", on_critical="mend")


def test_watch_report_and_dashboard_show_the_heals(tmp_path):
    from babysit.monitor.dashboard.state import RunState
    from babysit.monitor.dashboard.views import run_plans
    from babysit.monitor.report import build_report
    from babysit.monitor.watcher import Watcher

    class Notes:
        min_severity = "info"

        def __init__(self):
            self.notes = []

        def emit(self, alert):
            pass

        def note(self, text):
            self.notes.append(text)

        def close(self, deadline=None):
            pass

    res = scenario(Setup(fault="lr_high", factor=30, steps=300), tmp_path / "r", heal=True)
    assert res.heals
    sink = Notes()
    Watcher([tmp_path / "r"], sinks=[sink], log=False, announce_ended=True).scan()
    assert any("healed at step" in n and "lr_x0.1" in n for n in sink.notes), sink.notes
    html = build_report(load_run(tmp_path / "r"))
    assert 'id="heals"' in html and "lr_x0.1" in html
    state = RunState(tmp_path / "r")
    state.update()
    plan = run_plans(state)["loss"]
    assert list(plan.frames["heals"]["step"]) == [float(h["step"]) for h in res.heals]


# ----------------------------------------------------------------------------- Lightning and HF callbacks
class _LitTrainer:
    """The attributes of lightning.Trainer the callback reads (duck-typed: lightning is not installed here)."""

    def __init__(self, optimizer, scheduler):
        self.global_step, self.optimizers, self.should_stop = 0, [optimizer], False
        self.callback_metrics: dict = {}
        self.lr_scheduler_configs = [type("Config", (), {"scheduler": scheduler})()]


def test_lightning_callback_heals_a_nan_batch(tmp_path):
    from babysit.hooks.lightning import LightningHooks
    from benchmarks.heal import data, make_model

    xt, yt, xv, yv = data("digits")
    module = make_model(GOOD, 64, 10)
    opt = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    trainer = _LitTrainer(opt, sched)
    cb = LightningHooks(tmp_path / "lit", num_classes=10, on_critical="heal", flush_steps=25, every=10)
    cb.setup(trainer, module, "fit")
    cb.on_train_start(trainer, module)
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(perm) - 31, 32):
            xb = xt[perm[i:i + 32]].clone()
            if trainer.global_step == 250:
                xb[0, 0] = float("nan")
            loss = nn.functional.cross_entropy(module(xb), yt[perm[i:i + 32]])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            trainer.global_step += 1
            cb.on_train_batch_end(trainer, module, {"loss": loss.detach()}, None, i)
        cb.on_train_epoch_end(trainer, module)
    cb.on_train_end(trainer, module)
    cb.teardown(trainer, module, "fit")
    assert not trainer.should_stop
    assert [e["data"]["finding"] for e in _heal_events(tmp_path / "lit")] == ["nonfinite_loss"]
    assert math.isclose(sched.base_lrs[0], 0.005)  # the scheduler it was handed got the lr cut too
    with torch.no_grad():
        acc = float((module(xv).argmax(1) == yv).float().mean())
    assert acc > 0.9


def test_hf_callback_without_the_model_says_it_cannot_heal_and_stops(tmp_path, capsys):
    from babysit.hooks.huggingface import HFHooks

    class Args:
        logging_steps, num_train_epochs = 1, 1

    state = type("State", (), {"global_step": 0, "epoch": 0.0})()
    control = type("Control", (), {"should_training_stop": False})()
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cb = HFHooks(tmp_path / "hf", num_classes=3, on_critical="heal", watch=False, flush_steps=2)
    cb.on_train_begin(Args(), state, control, model=model, optimizer=opt)
    assert "cannot roll back" in capsys.readouterr().err
    for _ in range(10):
        cb.on_step_begin(Args(), state, control)
        state.global_step += 1
        control = cb.on_step_end(Args(), state, control)
        control = cb.on_log(Args(), state, control, logs={"loss": float("nan")})
        if control.should_training_stop:
            break
    assert control.should_training_stop


def test_a_fault_no_rollback_fixes_gets_the_whole_policy_then_stops(tmp_path):
    """Every batch from step 150 on holds a NaN: lr x0.1, then clipping, then warmup, then a stop naming all three."""
    from benchmarks.heal import data, make_model

    xt, yt, _, _ = data("digits")
    model = make_model(GOOD, 64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with babysit.Run(tmp_path / "r", num_classes=10, on_critical="heal", flush_steps=25) as run:
        run.watch(model, opt, every=10)
        for step in range(1, 1000):
            i = (step * 32) % (len(xt) - 32)
            xb = xt[i:i + 32].clone()
            if step >= 150:
                xb[0, 0] = float("nan")
            loss = nn.functional.cross_entropy(model(xb), yt[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss=loss)
            if run.should_stop:
                break
    actions = [e["data"]["action"] for e in _heal_events(tmp_path / "r")]
    assert actions == ["lr_x0.1", "clip_grad_norm", "warmup"]
    assert run.should_stop and step < 999
    assert "not healed after 3 attempts" in run.stop_reason
    assert all(a in run.stop_reason for a in actions)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the last rollback left good weights


def test_the_healed_rule_takes_odd_heal_events_in_its_stride():
    from babysit.monitor.reader import records_to_batch
    from babysit.rules import OnlineDiagnoser

    odd = [{"type": "event", "name": "heal", "step": 5, "data": {"action": ["x"], "lr_after": "fast", "clip": {}}},
           {"type": "event", "name": "heal", "step": None, "data": None},
           {"type": "event", "name": "heal", "step": 9, "data": {"finding": "<b>x</b>", "action": "clip_grad_norm",
                                                                 "clip": float("nan"), "lr_after": 1e400}}]
    found = OnlineDiagnoser({}).update(records_to_batch(odd))
    healed = [f for f in found if f.rule == "healed"]
    assert len(healed) == 1 and healed[0].evidence["heals"] == 2
