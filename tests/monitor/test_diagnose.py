"""`babysit diagnose RUN`: the report, --json, exit statuses, threshold overrides, bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from babysit.monitor import runfile
from babysit.monitor.cli import main


def write_run(path, losses, num_classes=10, state="finished", extra=()):
    path.mkdir(parents=True)
    runfile.write_json_atomic(path / runfile.META, {"schema": 1, "run_id": "t", "num_classes": num_classes,
                                                    "config": {"lr": 0.1}})
    runfile.write_json_atomic(path / runfile.STATUS, {"schema": 1, "state": state, "step": len(losses),
                                                      "heartbeat": 1000.0})
    steps = list(range(1, len(losses) + 1))
    with open(path / runfile.EVENTS, "w") as f:
        f.write(runfile.dumps_line({"type": "steps", "step": steps, "time": [1000.0 + s for s in steps],
                                    "loss": losses, "lr": [0.1] * len(steps)}))
        for rec in extra:
            f.write(runfile.dumps_line(rec))
    return path


@pytest.fixture
def healthy(tmp_path):
    return write_run(tmp_path / "healthy", [2.3 * math.exp(-s / 30) + 0.05 for s in range(300)])


@pytest.fixture
def exploded(tmp_path):
    losses = [2.3] * 50 + [8.0] * 10 + [math.nan] * 5
    return write_run(tmp_path / "exploded", losses)


@pytest.fixture
def big_init(tmp_path):
    return write_run(tmp_path / "big_init", [10.0] + [2.0 * math.exp(-s / 30) + 0.05 for s in range(299)])


def test_healthy_run_exit_0(healthy, capsys):
    assert main(["diagnose", str(healthy)]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "finished, 300 steps" in out


def test_report_grouped_by_severity_with_evidence_and_fix(exploded, capsys):
    assert main(["diagnose", str(exploded)]) == 1  # critical by default fails
    out = capsys.readouterr().out
    assert out.index("CRITICAL") < out.index("[nonfinite_loss]") and "WARNING" not in out.split("CRITICAL")[0]
    assert "[loss_explosion]" in out and "is 3.5x the initial 2.3" in out
    assert "evidence: " in out and "fix: 1. " in out


def test_json_format(exploded, capsys):
    assert main(["diagnose", str(exploded), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["run"] == str(exploded)
    rules = [f["rule"] for f in doc["findings"]]
    assert rules[:2] == ["nonfinite_loss", "loss_explosion"]
    for f in doc["findings"]:
        assert list(f) == ["rule", "severity", "step", "epoch", "message", "evidence", "fix", "fix_ids",
                           "caused_by", "root_cause"]
        assert isinstance(f["fix"], list) and f["fix"] and len(f["fix_ids"]) == len(f["fix"])
    assert isinstance(doc["not_evaluated"], list)
    nan = doc["findings"][0]["evidence"]["value"]
    assert nan == "NaN"  # the run format's codec: valid JSON that keeps the NaN


def test_fail_on_warning(big_init, capsys):
    assert main(["diagnose", str(big_init)]) == 0  # only a warning: fine by default
    assert main(["diagnose", str(big_init), "--fail-on", "warning"]) == 1
    assert "[init_loss_mismatch]" in capsys.readouterr().out


def test_threshold_override_and_config(big_init, tmp_path, capsys):
    assert main(["diagnose", str(big_init), "--fail-on", "warning", "--threshold", "init_loss_ratio=5"]) == 0
    cfg = tmp_path / "th.toml"
    cfg.write_text("[thresholds]\ninit_loss_ratio = 5.0\n")
    assert main(["diagnose", str(big_init), "--fail-on", "warning", "--config", str(cfg)]) == 0
    # --threshold wins over --config
    assert main(["diagnose", str(big_init), "--fail-on", "warning", "--config", str(cfg),
                 "--threshold", "init_loss_ratio=1.5"]) == 1
    capsys.readouterr()


@pytest.mark.parametrize("args, message", [
    (["--threshold", "nope=1"], "unknown threshold 'nope'"),
    (["--threshold", "init_loss_ratio"], "expected NAME=VALUE"),
    (["--config", "/nonexistent/th.json"], "cannot read config"),
])
def test_bad_threshold_arguments_exit_2(healthy, capsys, args, message):
    assert main(["diagnose", str(healthy), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_input_exit_2_one_line(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path / "missing")]) == 2
    assert "no such" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["diagnose", str(tmp_path / "empty")]) == 2
    assert "not a" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / runfile.META).write_text("{not json")
    assert main(["diagnose", str(corrupt)]) == 2
    err = capsys.readouterr().err
    assert "meta.json" in err and len(err.strip().splitlines()) == 1


def test_corrupt_lines_are_reported_not_fatal(tmp_path, capsys):
    run = write_run(tmp_path / "r", [2.3 * math.exp(-s / 30) + 0.05 for s in range(300)])
    with open(run / runfile.EVENTS, "a") as f:
        f.write("{garbage\n")
    assert main(["diagnose", str(run)]) == 0
    assert "1 corrupt log lines skipped" in capsys.readouterr().out


def test_cli_process_never_prints_a_traceback(tmp_path, exploded):
    cmd = [sys.executable, "-c", "import sys; from babysit.monitor.cli import main; sys.exit(main())", "diagnose"]
    bad = subprocess.run([*cmd, str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
    good = subprocess.run([*cmd, str(exploded), "--json"], capture_output=True, text=True, timeout=60)
    assert good.returncode == 1 and json.loads(good.stdout)["findings"]
    assert "torch" not in subprocess.run(
        [sys.executable, "-c", "import sys, babysit.monitor.diagnose; print(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=60).stdout.split()
