"""Transfer learning: --init-from (weights_only), --freeze up to a layer, --linear-probe."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from babysit.monitor.reader import load_run
from babysit.trainer.checkpoint import CHECKPOINT, load_checkpoint
from babysit.trainer.evaluate import evaluate_run
from babysit.trainer.train import train


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from babysit.trainer.config import TrainConfig

    run_dir = tmp_path_factory.mktemp("pre") / "run"
    cfg = TrainConfig(model="convnet", epochs=3, lr=0.05, run_dir=str(run_dir), progress=False, on_critical="warn")
    result = train(cfg)
    assert result["val_acc"] > 0.85
    return run_dir / CHECKPOINT


def test_freeze_keeps_early_layers_and_fine_tunes_the_rest(pretrained, quick_cfg):
    cfg = quick_cfg(model="convnet", init_from=str(pretrained), freeze="conv2", lr=0.01)
    result = train(cfg)
    before = load_checkpoint(pretrained)["model"]
    after = load_checkpoint(f"{cfg.run_dir}/{CHECKPOINT}")["model"]
    for name in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"):
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert "6 of 6 tensors loaded" in result["notes"][0]
    first_loss = load_run(cfg.run_dir).steps["loss"].iloc[0]
    assert first_loss < 1.0  # starts from a trained net, far below ln(10)
    assert result["val_acc"] > 0.85


def test_linear_probe_writes_a_softmax_head_that_evaluates_like_sklearn(pretrained, quick_cfg):
    cfg = quick_cfg(model="convnet", init_from=str(pretrained), linear_probe=True)
    result = train(cfg)
    assert result["probe_val_acc"] > 0.85
    assert result["val_acc"] == pytest.approx(result["probe_val_acc"], abs=0.01)  # same classifier, in torch
    assert evaluate_run(cfg.run_dir, device="cpu")["val_acc"] == pytest.approx(result["val_acc"])
    events = [e for e in load_run(cfg.run_dir).events if e.get("name") == "linear_probe"]
    assert events and events[0]["data"]["probe_val_acc"] == pytest.approx(result["probe_val_acc"])


def test_init_from_another_task_keeps_a_fresh_head(pretrained, quick_cfg, tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in (3, 5, 8):  # a three-class task from the same kind of images
        (tmp_path / "data" / str(c)).mkdir(parents=True)
        for i, img in enumerate(d.images[d.target == c][:40]):
            np.save(tmp_path / "data" / str(c) / f"{i}.npy", (img * 15).astype(np.uint8))
    cfg = quick_cfg(model="convnet", dataset=f"folder:{tmp_path / 'data'}", init_from=str(pretrained),
                    freeze="relu2", epochs=5, lr=0.05, batch_size=16)
    result = train(cfg)
    assert any("kept fresh: head.weight" in n for n in result["notes"])
    assert result["val_acc"] > 0.8


def test_init_from_a_bare_state_dict(pretrained, quick_cfg, tmp_path):
    torch.save(load_checkpoint(pretrained)["model"], tmp_path / "bare.pt")
    result = train(quick_cfg(model="convnet", init_from=str(tmp_path / "bare.pt"), lr=0.01))
    assert result["val_acc"] > 0.85


class Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoints_never_unpickle_code(tmp_path, quick_cfg, capsys):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": Payload()}, f)
    with pytest.raises(ValueError, match="cannot load checkpoint") as err:
        train(quick_cfg(init_from=str(tmp_path / "evil.pt")))
    assert "\n" not in str(err.value) and "code ran" not in capsys.readouterr().out


def test_init_from_an_unrelated_checkpoint(tmp_path, quick_cfg):
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no tensor matches"):
        train(quick_cfg(init_from=str(tmp_path / "other.pt")))


def test_freeze_names_an_existing_layer(quick_cfg):
    with pytest.raises(ValueError, match="flatten, fc1, relu1, head"):
        train(quick_cfg(freeze="conv1"))
