"""One import name: a user's own hooks.py, rules.py, monitor.py or trainer.py never shadows babysit's parts."""

import subprocess
import sys

import pytest

USER_SCRIPT = """
import torch
import babysit
import hooks, rules, monitor, trainer  # the user's own files, next to the script
assert hooks.MINE and rules.MINE and monitor.MINE and trainer.MINE
from babysit.monitor.reader import load_run
from babysit.rules import diagnose

model = torch.nn.Linear(4, 3)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with babysit.Run("runs/mine", num_classes=3, on_critical=None) as run:
    run.watch(model, opt)
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
        opt.zero_grad(); loss.backward(); opt.step()
        run.step(loss=loss)
print(len(load_run("runs/mine").steps), isinstance(diagnose(load_run("runs/mine")), list))
"""


@pytest.mark.slow  # a fresh interpreter pays for importing torch
def test_user_files_named_like_our_parts_do_not_shadow_them(tmp_path):
    for name in ("hooks", "rules", "monitor", "trainer"):
        (tmp_path / f"{name}.py").write_text("MINE = True\nRun = None\n")
    (tmp_path / "train.py").write_text(USER_SCRIPT)
    out = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["5", "True"]


def test_importing_babysit_does_not_import_torch():
    code = "import sys, babysit, babysit.monitor.reader, babysit.rules; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_babysit_run_is_the_hooks_run():
    import babysit
    from babysit.hooks import Run

    assert babysit.Run is Run
