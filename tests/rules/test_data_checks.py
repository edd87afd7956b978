"""What goes into the net, on real tiny training runs: unnormalized_input and bad_labels, faults and look-alikes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from userloops import Loop, digits, findings, mlp, online, train


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def raw():
    x, y = digits(normalize=False)
    return x * 16, y  # 0..255, like raw pixels


ONLINE: dict[str, dict] = {}  # run name -> {rule: highest severity reported inside training}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache: dict[str, dict] = {}

    def get(name: str, make_loop):
        if name not in cache:
            run_dir = train(tmp_path_factory.mktemp(name) / "run", make_loop())
            cache[name] = findings(run_dir)
            ONLINE[name] = online(run_dir)
        return cache[name]

    return get


# ------------------------------------------------------------------ unnormalized_input
def test_raw_pixels_into_tanh_are_a_warning_with_the_saturation(runs, raw):
    x, y = raw
    found = runs("tanh_raw", lambda: Loop(mlp(64, 10, act=nn.Tanh), x, y, steps=300, opt="sgd", lr=0.01))
    f = found["unnormalized_input"]
    assert f.severity == "warning" and f.fix_ids == ["normalize_inputs"]
    assert f.evidence["std"] > 10 and f.evidence["max"] >= 200
    sat = found.get("saturated_activations")
    if sat is not None:  # the saturation is explained by the inputs, and says so
        assert (sat.root_cause or sat.evidence.get("root_cause")) == "unnormalized_input"


def test_raw_pixels_that_train_fine_are_an_info_note_unless_they_blow_up_the_first_loss(runs, raw):
    """An oddity that does not hurt is a note; a first loss far above ln C is the trouble raw inputs cause (huge
    logits at init): then the inputs are the warning, and the init-loss finding leads with their fix."""
    x, y = raw
    found = runs("relu_raw_adam", lambda: Loop(mlp(64, 10), x, y, steps=300, lr=1e-3))
    f = found["unnormalized_input"]
    init = found.get("init_loss_mismatch")
    if init is None or init.severity == "info":
        assert f.severity == "info"
    else:
        assert f.severity == "warning" and init.root_cause == "unnormalized_input"
        assert init.fix_ids[0] == "normalize_inputs"
    xs = x / 255.0  # the same pixels scaled to 0..1: the first loss is near ln C and the note stays a note
    g = runs("relu_unit_adam", lambda: Loop(mlp(64, 10), xs, y, steps=300, lr=1e-3)).get("unnormalized_input")
    assert g is None or g.severity == "info"


def test_a_normalization_layer_first_or_unit_scale_inputs_stay_quiet(runs, raw, data):
    x, y = raw
    bn = runs("bn_first", lambda: Loop(nn.Sequential(nn.BatchNorm1d(64), *mlp(64, 10, act=nn.Tanh)), x, y, steps=300,
                                       opt="sgd", lr=0.05))
    assert "unnormalized_input" not in bn
    xs, ys = data
    assert "unnormalized_input" not in runs("unit", lambda: Loop(mlp(64, 10, act=nn.Tanh), xs, ys, steps=300,
                                                                 opt="sgd", lr=0.05))


def test_token_ids_are_never_told_to_normalize(runs, raw):
    x, y = raw

    class Emb(nn.Module):
        def __init__(self):
            super().__init__()
            self.e, self.fc = nn.Embedding(17, 16), nn.Linear(16 * 64, 10)

        def forward(self, t):
            return self.fc(self.e(t).flatten(1))

    found = runs("embedding_lr5", lambda: Loop(Emb(), x.long() // 16, y, steps=200, opt="sgd", lr=5.0))
    assert "unnormalized_input" not in found
    for f in found.values():
        assert "normalize_inputs" not in f.fix_ids, f"{f.rule}: {f.fix}"


# ------------------------------------------------------------------ bad_labels
def test_one_based_labels_are_caught(runs, data):
    x, y = data  # 11 outputs so cross_entropy accepts label 10; num_classes says 10
    f = runs("one_based", lambda: Loop(mlp(64, 11), x, y + 1, steps=200))["bad_labels"]
    assert f.severity == "warning" and f.fix_ids[0] == "check_label_indices"
    assert (f.evidence["min"], f.evidence["max"]) == (1, 10) and "1-based" in f.message


def test_a_class_missing_from_training_is_caught(runs, data):
    x, y = data
    keep = y != 3
    f = runs("missing_class", lambda: Loop(mlp(64, 10), x[keep], y[keep], steps=200))["bad_labels"]
    assert f.severity == "warning" and f.evidence["missing"] == [3]


def test_data_sorted_by_class_and_never_shuffled_is_caught(runs, data):
    x, y = data
    order = torch.argsort(y, stable=True)
    f = runs("sorted", lambda: Loop(mlp(64, 10), x[order], y[order], steps=200, batch=8, sequential=True))["bad_labels"]
    assert f.severity == "warning" and f.fix_ids[0] == "shuffle_data" and f.evidence["first_batch_one_class"] == 0


def test_balanced_classes_stay_quiet(runs, data):
    x, y = data
    assert "bad_labels" not in runs("balanced", lambda: Loop(mlp(64, 10), x, y, steps=200))


def test_extreme_imbalance_that_is_learned_is_an_info_note(runs, data):
    x, y = data
    idx = torch.cat([torch.nonzero(y == 0).flatten().repeat(40), torch.nonzero(y == 1).flatten()[:3]])
    f = runs("imbalanced", lambda: Loop(mlp(64, 2), x[idx], y[idx], num_classes=2, steps=200))["bad_labels"]
    assert f.severity == "info" and f.evidence["imbalance"] > 100 and f.fix_ids == ["rebalance_classes"]


def _regression(x, scale, shift):
    torch.manual_seed(1)
    t = (x @ torch.randn(64))[:, None]
    return t / t.std() * scale + shift


def test_raw_scale_regression_targets_that_do_not_fall_are_caught(runs, data):
    x, _ = data
    f = runs("regression_raw", lambda: Loop(mlp(64, 1), x, _regression(x, 3000, 5000), num_classes=None,
                                            loss="mse_loss", opt="sgd", lr=1e-7, steps=200))["bad_labels"]
    assert f.severity == "warning" and f.fix_ids == ["standardize_targets"] and f.evidence["std"] > 100


def test_regression_at_unit_scale_or_that_learns_stays_quiet(runs, data):
    x, _ = data
    assert "bad_labels" not in runs("regression_unit", lambda: Loop(mlp(64, 1), x, _regression(x, 1, 0),
                                                                    num_classes=None, loss="mse_loss", steps=200))
    assert "bad_labels" not in runs("regression_raw_adam", lambda: Loop(
        mlp(64, 1), x, _regression(x, 300, 0), num_classes=None, loss="mse_loss", lr=0.01, steps=300))
