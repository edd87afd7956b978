"""`babysit evaluate`: the checkpoint on val, and on test only with --test, each use in the ledger and the run."""

from __future__ import annotations

import json

import pytest

from babysit.monitor.cli import main
from babysit.monitor.reader import load_run
from babysit.trainer.evaluate import evaluate_run
from babysit.trainer.ledger import uses
from babysit.trainer.train import train


@pytest.fixture
def trained(quick_cfg):
    cfg = quick_cfg(epochs=2)
    result = train(cfg)
    return cfg, result


def test_evaluate_matches_training_and_keeps_test_closed(trained):
    cfg, result = trained
    m = evaluate_run(cfg.run_dir, device="cpu")
    assert m["val_acc"] == pytest.approx(result["val_acc"]) and "test_acc" not in m
    assert m["split_id"] == result["split_id"]


def test_each_test_use_is_recorded_and_the_second_warns(trained, capsys, private_ledger):
    cfg, result = trained
    assert main(["evaluate", cfg.run_dir, "--test"]) == 0
    first = capsys.readouterr()
    assert "test  acc" in first.out and "false discovery" not in first.err
    assert main(["evaluate", cfg.run_dir, "--test"]) == 0
    second = capsys.readouterr()
    assert "false discovery" in second.err and "evaluated 2 times" in second.err
    lines = [json.loads(x) for x in private_ledger.read_text().splitlines()]
    assert [x["uses"] for x in lines] == [1, 2] and {x["split_id"] for x in lines} == {result["split_id"]}
    events = [e for e in load_run(cfg.run_dir).events if e.get("name") == "test_eval"]
    assert [e["data"]["uses"] for e in events] == [1, 2]
    assert events[0]["step"] == result["steps"] and 0 < events[0]["data"]["test_acc"] <= 1
    assert events[0]["data"]["split_id"] == result["split_id"]


def test_ledger_counts_per_split_not_per_run(trained, quick_cfg, private_ledger, capsys):
    cfg, result = trained
    other = quick_cfg("other_lr", lr=0.3)  # same split, another model: looking again is the same sin
    train(other)
    reseeded = quick_cfg("other_seed", seed=1)  # another split
    train(reseeded)
    for run_dir in (cfg.run_dir, other.run_dir, reseeded.run_dir):
        assert main(["evaluate", run_dir, "--test", "--ledger", str(private_ledger)]) == 0
    assert uses(private_ledger, result["split_id"]) == 2
    assert "evaluated 2 times" in capsys.readouterr().err
    seeded_events = [e for e in load_run(reseeded.run_dir).events if e.get("name") == "test_eval"]
    assert seeded_events[0]["data"]["uses"] == 1


def test_errors_are_one_line(tmp_path, capsys, trained):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    cfg, _ = trained
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    import shutil

    shutil.copy(tmp_path / "bad.pt", f"{cfg.run_dir}/checkpoint.pt")
    assert main(["evaluate", cfg.run_dir]) == 2
    err = capsys.readouterr().err
    assert "no such run directory" in err and "cannot load checkpoint" in err and err.count("\n") == 2
