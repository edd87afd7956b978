"""`babysit sanity`: passes on the defaults, and each planted bug fails the check meant to catch it."""

from __future__ import annotations

import math

import pytest
import torch.nn.functional as F

from babysit.monitor.cli import main
from babysit.monitor.reader import load_run
from babysit.trainer import losses
from babysit.trainer.config import TrainConfig
from babysit.trainer.sanity import run_checks


def _row(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(name))


def test_defaults_pass_and_overfit_20_reaches_100_percent(capsys):
    assert main(["sanity", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 3 and "FAIL" not in out
    assert "train acc 1.000" in _row(out, "overfit 20 examples")
    assert "ln(10) = 2.3026" in _row(out, "initial loss")


@pytest.mark.parametrize("bug,failing", [
    ("init", "initial loss"), ("reg", "loss rises with reg"), ("labels", "overfit 20 examples"),
])
def test_planted_bug_fails_its_check(capsys, bug, failing):
    assert main(["sanity", "--model", "mlp", "--plant-bug", bug]) == 1
    out = capsys.readouterr().out
    assert _row(out, failing).endswith("FAIL")
    assert out.count("FAIL") == 1


def test_a_real_bug_in_the_loss_is_caught(monkeypatch):
    # a .detach() in the wrong place: the loss reads right but no gradient reaches the model
    monkeypatch.setitem(losses.LOSSES, "softmax", lambda s, y: F.cross_entropy(s.detach() + 0 * s, y))
    checks = run_checks(TrainConfig(model="mlp"))
    assert [c.passed for c in checks] == [True, True, False]


def test_svm_expects_c_minus_1_and_records_the_overfit_run(tmp_path):
    checks = run_checks(TrainConfig(model="mlp", loss="svm", lr=0.01), run_dir=str(tmp_path / "overfit"))
    assert all(c.passed for c in checks), checks
    assert "C-1 = 9" in checks[0].expected
    run = load_run(tmp_path / "overfit")
    assert run.meta["config"]["sanity"] == "overfit 20" and run.meta["config"]["reg"] == 0.0
    assert run.epochs["train_acc"].iloc[-1] == 1.0 and math.isfinite(run.steps["loss"].iloc[-1])


def test_tiny_init_on_a_deep_net_fails_the_overfit_check():
    # the lecture's 0.001 gaussian: fine for the two-layer net, vanishing signals in a conv net
    checks = run_checks(TrainConfig(model="convnet", init="small"), overfit_steps=50)
    assert checks[0].passed and not checks[2].passed
