"""The bugs users make in their own loops, on real tiny training runs recorded through the hooks.

Each check has the fault (caught, with numbers and the right first fix) and its healthy look-alikes (quiet):
double_softmax, frozen_parameters, skipped_optimizer_steps, and noisy_weights judging only image weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from userloops import FILLED, Loop, digits, digits28, findings, mlp, online, train

BUGS = ("double_softmax", "output_activation", "frozen_parameters", "skipped_optimizer_steps")


@pytest.fixture(scope="module")
def data():
    return digits()


ONLINE: dict[str, dict] = {}  # run name -> {rule: highest severity reported inside training}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """runs(name, loop) -> {rule: Finding}; each loop trains once per module."""
    cache: dict[str, dict] = {}

    def get(name: str, make_loop):
        if name not in cache:
            run_dir = train(tmp_path_factory.mktemp(name) / "run", make_loop())
            cache[name] = findings(run_dir)
            ONLINE[name] = online(run_dir)
        return cache[name]

    return get


def _quiet(found: dict, *rules: str) -> None:
    for r in rules or BUGS:
        assert r not in found, f"{r}: {found[r].message}"


# ------------------------------------------------------------------ double_softmax
def test_softmax_head_before_cross_entropy_is_caught_with_the_loss_floor(runs, data):
    x, y = data
    found = runs("softmax_head", lambda: Loop(mlp(64, 10, head=nn.Softmax(1)), x, y, steps=200))
    f = found["double_softmax"]
    assert f.severity == "warning" and f.fix_ids[0] == "logits_to_loss"
    assert f.evidence["head"] == "Softmax" and f.evidence["loss_fn"] == "cross_entropy"
    assert f.evidence["loss_floor"] == pytest.approx(np.log1p(9 / np.e))  # 1.46 for 10 classes
    assert "1.46" in f.message
    _quiet(found, "frozen_parameters", "skipped_optimizer_steps", "unnormalized_input", "bad_labels")


def test_functional_softmax_before_cross_entropy_is_caught_from_the_loss_input(runs, data):
    x, y = data  # F.softmax is no module: the head is Linear, only the tensor handed to the loss shows it
    found = runs("functional_softmax", lambda: Loop(mlp(64, 10), x, y, steps=200, to_loss=lambda o: o.softmax(1)))
    f = found["double_softmax"]
    assert f.severity == "warning" and f.evidence["head"] == "Linear"
    assert f.evidence["loss_input_rows_sum_to_one"] is True


def test_logits_or_log_softmax_with_nll_stay_quiet(runs, data):
    x, y = data
    _quiet(runs("logits", lambda: Loop(mlp(64, 10), x, y, steps=200)))
    _quiet(runs("log_softmax_nll", lambda: Loop(mlp(64, 10, head=nn.LogSoftmax(1)), x, y, steps=200,
                                                loss="nll_loss")))


def test_softmax_used_only_for_reporting_stays_quiet(runs, data):
    x, y = data

    class Net(nn.Module):  # a Softmax module the loss never sees: predict() uses it, forward returns logits
        def __init__(self):
            super().__init__()
            self.body, self.probs = mlp(64, 10), nn.Softmax(1)

        def forward(self, z):
            return self.body(z)

    _quiet(runs("softmax_reporting", lambda: Loop(Net(), x, y, steps=200)))


# ------------------------------------------------------------------ output_activation
def test_a_relu_or_sigmoid_on_the_logits_is_caught(runs, data):
    x, y = data
    relu = runs("relu_head", lambda: Loop(mlp(64, 10, head=nn.ReLU()), x, y, steps=200))
    f = relu["output_activation"]
    assert f.severity == "warning" and f.fix_ids == ["remove_output_activation"] and f.evidence["range"][0] == 0
    assert "double_softmax" not in relu  # non-negative, but the rows do not sum to 1
    f = runs("sigmoid_head", lambda: Loop(mlp(64, 10, head=nn.Sigmoid()), x, y, steps=200))["output_activation"]
    assert f.evidence["loss_floor"] == pytest.approx(np.log1p(9 / np.e)) and "1.46" in f.message


def test_a_sigmoid_before_binary_cross_entropy_or_tanh_before_mse_stays_quiet(runs, data):
    x, y = data
    yb = (y >= 5).float()[:, None]
    found = runs("sigmoid_bce", lambda: Loop(mlp(64, 1, head=nn.Sigmoid()), x, yb, num_classes=2,
                                             loss="binary_cross_entropy", steps=200))
    assert "output_activation" not in found and "double_softmax" not in found
    t = torch.tanh(x[:, :1] + x[:, 1:2])
    found = runs("tanh_mse", lambda: Loop(mlp(64, 1, head=nn.Tanh()), x, t, num_classes=None, loss="mse_loss",
                                          steps=200))
    assert "output_activation" not in found and "bad_labels" not in found


# ------------------------------------------------------------------ frozen_parameters
def _all_frozen():
    m = mlp(64, 10)
    for p in m.parameters():
        p.requires_grad_(False)
    m[2].bias.requires_grad_(True)  # something for the optimizer to hold
    return m


def test_a_frozen_model_is_caught_and_capacity_is_not_advised(runs, data):
    x, y = data
    found = runs("all_frozen", lambda: Loop(_all_frozen(), x, y, steps=200, opt="sgd", lr=0.05))
    f = found["frozen_parameters"]
    assert f.severity == "warning" and f.fix_ids[0] == "check_requires_grad"
    assert f.evidence["idle_frac"] > 0.99 and f.evidence["frozen"] == 2400
    for symptom in ("flat_loss", "chance_accuracy", "underfitting"):
        if symptom in found:  # the symptoms name the cause; none leads with "more capacity"
            assert "more_capacity" not in found[symptom].fix_ids[:1]


def test_trainable_parameters_missing_from_the_optimizer_are_caught(runs, data):
    x, y = data
    stale = mlp(64, 10)  # the optimizer was built on an earlier model object
    found = runs("stale_optimizer", lambda: Loop(mlp(64, 10), x, y, steps=200, params=stale.parameters()))
    f = found["frozen_parameters"]
    assert f.severity == "warning" and f.fix_ids[0] == "check_optimizer_params"
    assert f.evidence["not_in_optimizer"] == 2410 and f.evidence["frozen"] == 0


class _Detached(nn.Module):
    """A .detach() left in forward from a debugging session: the feature layers never get a gradient."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, z):
        return self.head(self.features(z).detach())


def test_layers_that_never_get_a_gradient_count_as_frozen(runs, data):
    x, y = data
    found = runs("detached", lambda: Loop(_Detached(), x, y, steps=200, lr=1e-3))
    f = found["frozen_parameters"]
    assert f.severity == "warning" and f.evidence["layers_without_gradient"] == ["features.0", "features.2"]
    assert f.fix_ids[0] == "check_requires_grad" and ".detach()" in f.message


def _pretrained(tmp_path_factory, x, y, hidden=64):
    net = mlp(64, 10, hidden=hidden)
    train(tmp_path_factory.mktemp("pretrain") / "run", Loop(net, x, y, steps=200))
    net[2] = nn.Linear(hidden, 10)  # a fresh head on the pretrained body
    return net


def test_a_linear_probe_on_a_pretrained_net_stays_quiet(runs, data, tmp_path_factory):
    x, y = data

    def loop():
        net = _pretrained(tmp_path_factory, x, y)
        for p in net[0].parameters():
            p.requires_grad_(False)
        return Loop(net, x, y, steps=200)

    found = runs("linear_probe", loop)
    _quiet(found)
    assert not [f for f in found.values() if f.severity != "info"], {r: f.message for r, f in found.items()}


def test_a_probe_built_by_the_optimizer_list_is_only_an_info_note(runs, data, tmp_path_factory):
    x, y = data

    def loop():
        net = _pretrained(tmp_path_factory, x, y)
        return Loop(net, x, y, steps=200, params=net[2].parameters())

    f = runs("probe_by_optimizer", loop)["frozen_parameters"]
    assert f.severity == "info" and "intended" in f.message


# ------------------------------------------------------------------ skipped_optimizer_steps
def test_an_optimizer_that_never_steps_is_caught(runs, data):
    x, y = data
    found = runs("never_steps", lambda: Loop(mlp(64, 10), x, y, steps=200, step_when=lambda i: False))
    f = found["skipped_optimizer_steps"]
    assert f.severity == "warning" and f.evidence["optimizer_steps"] == 0 and f.evidence["loop_steps"] == 200
    assert f.fix_ids[0] == "step_every_iteration"
    flat = found["flat_loss"]  # the symptom names the cause and leads with its fix, not "raise the lr"
    assert (flat.root_cause or flat.evidence.get("root_cause")) == "skipped_optimizer_steps"


def test_irregularly_skipped_steps_are_caught_even_when_the_loss_falls(runs, data):
    x, y = data  # zero_grad every iteration: the skipped gradients are lost
    found = runs("irregular", lambda: Loop(mlp(64, 10), x, y, steps=200, step_when=lambda i: (i * 7919) % 10 < 3,
                                           zero_when=lambda i: True))
    f = found["skipped_optimizer_steps"]
    assert f.severity == "warning" and f.evidence["ratio"] == pytest.approx(0.3) and f.evidence["regular_every"] is None


def test_every_other_step_skipped_with_zero_grad_every_iteration_is_caught_while_learning(runs, data):
    # The loss still falls (half the updates), but the skipped steps' gradients are thrown away: the gradient
    # norm when the optimizer steps is that of one batch, not the sum accumulation would give.
    x, y = data
    f = runs("every_other", lambda: Loop(mlp(64, 10), x, y, steps=200, step_when=lambda i: i % 2 == 0,
                                         zero_when=lambda i: True))["skipped_optimizer_steps"]
    assert f.severity == "warning" and f.evidence["regular_every"] == 2 and f.fix_ids[0] == "step_every_iteration"
    assert f.evidence["grad_growth_over_skipped"] < 1.15


def test_undeclared_accumulation_whose_gradients_add_up_stays_quiet(runs, data):
    x, y = data  # run.step() per micro-batch, no config, no loss scaling: the gradient sums show it
    found = runs("accum_undeclared", lambda: Loop(mlp(64, 10), x, y, steps=200, step_when=lambda i: i % 4 == 3))
    _quiet(found)
    assert "stalled_weights" not in found


def test_accumulation_over_a_variable_number_of_micro_batches_stays_quiet(runs, data):
    x, y = data  # steps on ~30% of iterations, irregularly, zeroing only after a step: the gradients add up
    found = runs("accum_variable", lambda: Loop(mlp(64, 10), x, y, steps=200, step_when=lambda i: (i * 7919) % 10 < 3,
                                                zero_when=lambda i: (i * 7919) % 10 < 3))
    _quiet(found)


def test_every_other_step_skipped_while_not_learning_is_caught(runs, data):
    x, y = data
    found = runs("every_other_stuck", lambda: Loop(mlp(64, 10), x, y, steps=200, opt="sgd", lr=1e-4,
                                                   step_when=lambda i: i % 2 == 0, zero_when=lambda i: True))
    assert found["skipped_optimizer_steps"].severity == "warning"


def test_gradient_accumulation_stays_quiet(runs, data):
    x, y = data
    declared = runs("accum_declared", lambda: Loop(mlp(64, 10), x, y, steps=200, step_when=lambda i: i % 4 == 3,
                                                   loss_scale=4, config={"grad_accum": 4}))
    _quiet(declared)
    assert "stalled_weights" not in declared  # the micro-steps between updates are not a stall
    scaled = runs("accum_scaled", lambda: Loop(mlp(64, 10), x, y, steps=200, step_when=lambda i: i % 2 == 1,
                                               loss_scale=2))  # undeclared, but the loss is ln(C)/2: accumulation
    _quiet(scaled)
    assert not [f for f in scaled.values() if f.severity != "info"], {r: f.message for r, f in scaled.items()}


# ------------------------------------------------------------------ noisy_weights judges only images
def test_noisy_weights_never_judges_tabular_or_lstm_weights(runs, tmp_path_factory):
    torch.manual_seed(0)
    xt = torch.randn(2000, 256)
    yt = (xt[:, :8].sum(1) > 0).long()
    tab = runs("tabular256", lambda: Loop(mlp(256, 2, hidden=64), xt, yt, num_classes=2, steps=400, opt="sgd",
                                          lr=0.05))
    assert "noisy_weights" not in tab
    x, y = digits()

    class LSTMNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.fc = nn.LSTM(8, 64, batch_first=True), nn.Linear(64, 10)

        def forward(self, z):
            return self.fc(self.lstm(z.view(-1, 8, 8))[0][:, -1])

    assert "noisy_weights" not in runs("lstm", lambda: Loop(LSTMNet(), x, y, steps=400))


def test_noisy_weights_image_filter_selection():
    from babysit.rules.weights import as_images

    assert as_images(np.zeros((64, 256)), "Linear") is None  # tabular features, no input_shape declared
    assert as_images(np.zeros((10, 64)), None) is None  # an LSTM's head: 64 hidden units are no 8x8 image
    assert as_images(np.zeros((100, 16)), "Embedding") is None
    assert as_images(np.zeros((16, 8, 5)), "Conv1d") is None
    assert as_images(np.zeros((8, 3, 5, 5)), "Conv2d").shape == (8, 3, 5, 5)
    assert as_images(np.zeros((8, 28, 28)), "Linear").shape == (8, 1, 28, 28)  # watch(input_shape=(28, 28))
    assert as_images(np.zeros((8, 1, 8, 8)), None).shape == (8, 1, 8, 8)


def test_noisy_weights_still_judges_a_linear_layer_watched_with_its_input_shape(runs, data):
    x, y = data  # the rule still looks at image weights: evidence of a judged snapshot, whatever the verdict
    from babysit.rules.weights import NoisyWeights, as_images

    assert NoisyWeights.id == "noisy_weights"
    found = runs("images", lambda: Loop(mlp(64, 10), x, y, steps=250, input_shape=(1, 8, 8)))
    f = found.get("noisy_weights")
    assert f is None or f.evidence["shape"][1:] == [1, 8, 8]
    assert as_images(np.zeros((32, 1, 8, 8)), "Linear") is not None


def test_noisy_filters_that_are_still_the_init_are_an_info_note(runs):
    # 150 MNIST-sized digits without weight decay: the first layer keeps its init noise (roughness ~0.8). The net
    # fits anyway; a healthy full-data run early on looks the same, so this is a note, never a warning.
    x, y = digits28(150)
    f = runs("noisy28", lambda: Loop(mlp(784, 10, hidden=256), x, y, steps=300, opt="momentum", lr=0.05,
                                     input_shape=(1, 28, 28)))["noisy_weights"]
    assert f.severity == "info" and f.evidence["roughness"] > 0.7 and f.evidence["shape"] == [256, 1, 28, 28]
    x, y = digits28()
    found = runs("smooth28", lambda: Loop(mlp(784, 10, hidden=256), x, y, steps=300, opt="momentum", lr=0.02,
                                          weight_decay=1e-3, input_shape=(1, 28, 28)))
    assert found.get("noisy_weights") is None or found["noisy_weights"].severity == "info"


def test_a_model_that_flattens_image_batches_itself_gets_its_rows_judged_as_images(runs):
    x, y = digits28(150)  # (N, 1, 28, 28) batches, nn.Flatten first, no input_shape given to watch()
    net = lambda: nn.Sequential(nn.Flatten(), *mlp(784, 10, hidden=256))  # noqa: E731
    f = runs("noisy28_flatten", lambda: Loop(net(), x.view(-1, 1, 28, 28), y, steps=300, opt="momentum",
                                             lr=0.05))["noisy_weights"]
    assert f.evidence["shape"] == [256, 1, 28, 28]


def test_fields_come_from_the_hooks(tmp_path, data):
    """The hooks record every field these checks read: the test loops fill nothing in."""
    x, y = data
    FILLED.clear()
    train(tmp_path / "run", Loop(mlp(64, 10), x, y, steps=40))
    assert not FILLED, f"the hooks did not record {sorted(FILLED)}"


def test_rules_stay_quiet_when_the_fields_are_missing(tmp_path, data):
    x, y = data
    run_dir = train(tmp_path / "run", Loop(mlp(64, 10, head=nn.Softmax(1)), x, y, steps=120, step_when=lambda i: False))
    meta = json.loads((run_dir / "meta.json").read_text())
    for key in ("first_batch", "optimizer", "targets_seen"):
        meta.pop(key, None)
    meta["model"] = {"class": "Sequential"}
    (run_dir / "meta.json").write_text(json.dumps(meta))
    status = json.loads((run_dir / "status.json").read_text())
    status.pop("optimizer_steps", None)
    (run_dir / "status.json").write_text(json.dumps(status))
    found = findings(run_dir)
    _quiet(found, *BUGS, "unnormalized_input", "bad_labels")


HEALTHY = ("logits", "log_softmax_nll", "softmax_reporting", "linear_probe", "accum_declared", "accum_scaled",
           "accum_undeclared", "accum_variable", "tabular256", "lstm", "images", "sigmoid_bce", "tanh_mse")


def test_inside_training_the_same_checks_agree(runs):
    """The rules also run inside training (on_critical="warn"): faults are caught there, look-alikes stay quiet."""
    assert ONLINE, "run this module whole: the loops above record what the hooks reported"
    for name in HEALTHY:
        loud = {r: s for r, s in ONLINE.get(name, {}).items() if r in BUGS and s != "info"}
        assert not loud, f"{name}: {loud}"
    for name, rule in (("softmax_head", "double_softmax"), ("all_frozen", "frozen_parameters"),
                       ("never_steps", "skipped_optimizer_steps"), ("every_other", "skipped_optimizer_steps")):
        if name in ONLINE:
            assert ONLINE[name].get(rule) == "warning", f"{name}: {ONLINE[name]}"
    print({name: ONLINE[name] for name in ONLINE})
