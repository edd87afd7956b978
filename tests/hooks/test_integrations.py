"""The Lightning and Hugging Face callbacks drive hooks.Run.

Each is tested twice: against duck-typed fakes that call the hooks in the order the real trainer does
(always runs), and against the real trainer where the package is installed (marked slow).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from babysit.hooks.huggingface import HFHooks
from babysit.hooks.integration import step_loss, unwrap_optimizer
from babysit.hooks.lightning import LightningHooks, callback_class
from babysit.monitor import runfile
from babysit.monitor.reader import load_run


def _data(n: int = 128, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def _model(classes: int = 3):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, classes))


def _data10(n: int = 256, seed: int = 0):
    """10 classes; with `_fresh10` the first loss is ln 10 up to a few hundredths."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 10, (n,), generator=g)


def _fresh10():
    net = _model(10)
    with torch.no_grad():
        net[2].weight.mul_(0.01)  # small last layer: near-uniform scores, loss ~ ln 10
        net[2].bias.zero_()
    return net


LN10 = math.log(10)


# --------------------------------------------------------------------------- Lightning, duck-typed
class FakeModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _model()
        self.hparams = {"lr": 0.1, "num_classes": 3}

    def forward(self, x):
        return self.net(x)


class FakeTrainer:
    """The attributes of lightning.Trainer the callback reads and writes."""

    def __init__(self, optimizer):
        self.global_step = 0
        self.optimizers = [optimizer]
        self.callback_metrics: dict = {}
        self.should_stop = False
        self.sanity_checking = False
        self.max_epochs = 3
        self.accumulate_grad_batches = 1


def _fit_like_lightning(cb, epochs=3, lr=0.1, accumulate=1, nan_at=None, stop_file_at=None, batch=16, data=None,
                        net=None):
    """Lightning's automatic optimization: on_train_batch_end gets the loss divided by accumulate_grad_batches."""
    module = FakeModule()
    if net is not None:
        module.net = net
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    trainer = FakeTrainer(opt)
    trainer.accumulate_grad_batches = accumulate
    x, y = data if data is not None else _data()
    trainer.losses = []  # what training_step returned, per micro-batch
    cb.setup(trainer, module, "fit")
    cb.on_train_start(trainer, module)
    micro = 0
    for _ in range(epochs):
        for i in range(0, len(x), batch):
            loss = F.cross_entropy(module(x[i : i + batch]), y[i : i + batch])
            if nan_at is not None and trainer.global_step >= nan_at:
                loss = loss * float("nan")
            trainer.losses.append(float(loss))
            scaled = loss / accumulate  # what Lightning calls backward on, and hands to the callback
            scaled.backward()
            micro += 1
            if micro % accumulate == 0:
                opt.step()
                opt.zero_grad()
                trainer.global_step += 1
            if stop_file_at is not None and trainer.global_step == stop_file_at:
                (cb.run.path / runfile.STOP).write_text('{"reason": "enough"}')
            cb.on_train_batch_end(trainer, module, {"loss": scaled.detach()}, None, i)
            if trainer.should_stop:
                break
        with torch.no_grad():
            out = module(x)
        trainer.callback_metrics = {"train_loss": loss.detach(), "val_loss": F.cross_entropy(out, y),
                                    "val_acc": (out.argmax(1) == y).float().mean(), "epoch": torch.tensor(1.0)}
        cb.on_train_epoch_end(trainer, module)
        if trainer.should_stop:
            break
    cb.on_train_end(trainer, module)
    cb.teardown(trainer, module, "fit")
    return trainer


def test_lightning_hooks_record_steps_epochs_and_layers(run_dir):
    _fit_like_lightning(LightningHooks(run_dir, every=2, flush_interval=0.0))
    run = load_run(run_dir)
    assert list(run.steps["step"]) == list(range(1, 25))
    assert list(run.epochs["epoch"]) == [1, 2, 3] and list(run.epochs["step"]) == [8, 16, 24]
    assert run.epochs["val_acc"].notna().all() and "train_loss" in run.epochs
    assert {"net.0", "net.2"} <= set(run.layers["layer"]) and len(run.snapshots) >= 1
    assert run.meta["num_classes"] == 3 and run.meta["config"]["lr"] == 0.1
    assert run.status["state"] == "finished"


def test_lightning_hooks_average_accumulated_micro_batches(run_dir):
    trainer = _fit_like_lightning(LightningHooks(run_dir, watch=False), epochs=1, accumulate=2)
    run = load_run(run_dir)
    assert list(run.steps["step"]) == [1, 2, 3, 4]  # 8 micro-batches, 4 optimizer steps
    means = [sum(trainer.losses[i:i + 2]) / 2 for i in range(0, 8, 2)]  # the loss training_step returned
    assert list(run.steps["loss"]) == pytest.approx(means, rel=1e-5)


@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_lightning_first_loss_is_ln_c_whatever_the_accumulation(tmp_path, accumulate):
    """Issue 11: the callback divided by accumulate_grad_batches a second time (0.58 instead of 2.30 at 4)."""
    _fit_like_lightning(LightningHooks(tmp_path / "run", watch=False), epochs=1, accumulate=accumulate,
                        data=_data10(), net=_fresh10(), lr=0.01)
    first = load_run(tmp_path / "run").steps["loss"].iloc[0]
    assert first == pytest.approx(LN10, abs=0.05)


def test_lightning_manual_optimization_loss_is_not_rescaled(run_dir):
    cb = LightningHooks(run_dir, watch=False)
    module = FakeModule()
    module.automatic_optimization = False
    trainer = FakeTrainer(torch.optim.SGD(module.parameters(), lr=0.1))
    trainer.accumulate_grad_batches = 4  # ignored by Lightning under manual optimization
    cb.setup(trainer, module, "fit")
    cb.on_train_start(trainer, module)
    trainer.global_step = 1
    cb.on_train_batch_end(trainer, module, {"loss": torch.tensor(2.5)}, None, 0)
    cb.on_train_end(trainer, module)
    assert list(load_run(run_dir).steps["loss"]) == [2.5]


def test_lightning_hooks_stop_the_trainer_on_a_critical_finding(run_dir):
    trainer = _fit_like_lightning(LightningHooks(run_dir, on_critical="stop", watch=False), nan_at=5)
    assert trainer.should_stop
    run = load_run(run_dir)
    assert run.status["state"] == "stopped" and "nonfinite_loss" in run.status["reason"]
    assert any(f["rule"] == "nonfinite_loss" and f["severity"] == "critical" for f in run.findings)
    assert len(run.steps) < 24


def test_lightning_hooks_honour_a_stop_file(run_dir):
    trainer = _fit_like_lightning(LightningHooks(run_dir, watch=False, flush_interval=0.0), stop_file_at=3)
    assert trainer.should_stop
    assert load_run(run_dir).status["reason"] == "enough"


def test_lightning_exception_closes_the_run_as_crashed(run_dir):
    cb = LightningHooks(run_dir, watch=False)
    module = FakeModule()
    trainer = FakeTrainer(torch.optim.SGD(module.parameters(), lr=0.1))
    cb.setup(trainer, module, "fit")
    cb.on_train_start(trainer, module)
    cb.on_exception(trainer, module, RuntimeError("CUDA out of memory"))
    cb.teardown(trainer, module, "fit")
    status = load_run(run_dir).status
    assert status["state"] == "crashed" and status["error"]["message"] == "CUDA out of memory"


def test_lightning_callback_class_subclasses_the_given_base(run_dir):
    class Base:
        def on_validation_end(self, trainer, pl_module):
            return "base hook"

    cls = callback_class(Base)
    cb = cls(run_dir, watch=False)
    assert isinstance(cb, Base) and isinstance(cb, LightningHooks) and callback_class(Base) is cls
    assert cb.on_validation_end(None, None) == "base hook"
    assert cb.state_key == f"BabysitCallback[{run_dir}]"


def test_lightning_missing_is_one_clear_import_error(monkeypatch):
    import babysit.hooks.lightning as hl

    for name in ("lightning.pytorch", "pytorch_lightning", "lightning"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="pip install lightning"):
        hl.BabysitCallback  # noqa: B018 - the attribute access is what builds the class


@pytest.mark.slow  # a fresh interpreter pays for importing torch
def test_importing_the_integrations_imports_neither_framework():
    code = ("import sys, babysit.hooks.lightning, babysit.hooks.huggingface; "
            "bad = [m for m in ('lightning', 'pytorch_lightning', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------- Hugging Face, duck-typed
class Args:
    learning_rate = 0.1
    num_train_epochs = 2
    logging_steps = 2
    eval_strategy = "epoch"


class State:
    global_step = 0
    epoch = 0.0


class Control:
    should_training_stop = False


class Wrapped:
    """Like accelerate's AcceleratedOptimizer: the real optimizer inside, as `.optimizer`."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups

    def step(self):
        self.optimizer.step()


def _fit_like_hf(cb, epochs=2, batch=16, nan_at=None, stop_file_at=None):
    """The event order of transformers.Trainer's inner loop (logging every 2 steps, eval at epoch end)."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    args, state, control = Args(), State(), Control()
    x, y = _data()
    cb.on_train_begin(args, state, control, model=model, optimizer=Wrapped(opt))
    logged: list[float] = []
    for epoch in range(epochs):
        cb.on_epoch_begin(args, state, control)
        for i in range(0, len(x), batch):
            cb.on_step_begin(args, state, control)
            loss = F.cross_entropy(model(x[i : i + batch]), y[i : i + batch])
            if nan_at is not None and state.global_step >= nan_at:
                loss = loss * float("nan")
            loss.backward()
            opt.step()
            opt.zero_grad()
            logged.append(float(loss.detach()))
            state.global_step += 1
            state.epoch = epoch + (i + batch) / len(x)
            if stop_file_at == state.global_step:
                (cb.run.path / runfile.STOP).write_text('{"reason": "enough"}')
            control = cb.on_step_end(args, state, control)
            if state.global_step % args.logging_steps == 0:
                mean, logged = sum(logged) / len(logged), []
                control = cb.on_log(args, state, control, logs={"loss": mean, "grad_norm": 1.0,
                                                                "learning_rate": 0.1, "epoch": state.epoch})
            if control.should_training_stop:
                break
        control = cb.on_epoch_end(args, state, control)
        with torch.no_grad():
            out = model(x)
        metrics = {"eval_loss": float(F.cross_entropy(out, y)), "eval_runtime": 0.1, "epoch": state.epoch,
                   "eval_accuracy": float((out.argmax(1) == y).float().mean()), "eval_samples_per_second": 1e3}
        control = cb.on_log(args, state, control, logs=metrics)
        control = cb.on_evaluate(args, state, control, metrics=metrics)
        if control.should_training_stop:
            break
    cb.on_train_end(args, state, control)
    return control


def test_hf_hooks_record_logged_losses_evals_and_layers(run_dir):
    _fit_like_hf(HFHooks(run_dir, num_classes=3, every=2, flush_interval=0.0))
    run = load_run(run_dir)
    assert list(run.steps["step"]) == [2, 4, 6, 8, 10, 12, 14, 16]  # the logged steps, at their step numbers
    assert run.steps["grad_norm"].eq(1.0).all()
    assert list(run.epochs["epoch"]) == [1, 2] and list(run.epochs["step"]) == [8, 16]
    assert run.epochs[["val_loss", "val_acc", "train_loss"]].notna().all().all()
    assert "val_runtime" not in run.epochs and "eval_runtime" not in run.epochs
    epoch1 = run.steps[run.steps["step"] <= 8]["loss"].mean()
    assert run.epochs["train_loss"].iloc[0] == pytest.approx(epoch1)
    assert len(run.layers) and run.layers["update_ratio"].notna().any()  # probes saw the unwrapped optimizer
    assert run.meta["config"]["learning_rate"] == 0.1 and run.status["state"] == "finished"


def test_hf_hooks_stop_training_on_nan_and_on_a_stop_file(tmp_path):
    control = _fit_like_hf(HFHooks(tmp_path / "nan", on_critical="stop", watch=False), nan_at=3)
    assert control.should_training_stop
    run = load_run(tmp_path / "nan")
    assert run.status["state"] == "stopped" and any(f["rule"] == "nonfinite_loss" for f in run.findings)

    control = _fit_like_hf(HFHooks(tmp_path / "stop", watch=False, flush_interval=0.0), stop_file_at=5)
    assert control.should_training_stop and load_run(tmp_path / "stop").status["reason"] == "enough"


class HFNet(torch.nn.Module):
    """A model the way transformers writes them: labels in, {"loss", "logits"} out. With `items=True` it takes
    `num_items_in_batch` and divides the summed loss by it (a causal LM under the Trainer does this)."""

    def __init__(self, net, items=False):
        super().__init__()
        self.net = net
        self.items = items

    def forward(self, x, labels=None, num_items_in_batch=None):
        logits = self.net(x)
        if labels is None:
            return {"logits": logits}
        if self.items and num_items_in_batch is not None:
            loss = F.cross_entropy(logits, labels, reduction="sum") / num_items_in_batch
        else:
            loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


def _fit_like_hf_accumulating(cb, accumulate, items=False, steps=6, batch=16, nan_at=None):
    """transformers.Trainer's inner loop with gradient accumulation: each micro-batch's loss is divided by the
    accumulation (or the model divides by the step's item count), summed into tr_loss, logged every 2 steps
    with NaN replaced by the running mean (logging_nan_inf_filter). Returns the step losses a plain loop sees."""
    model = HFNet(_fresh10(), items=items)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    args, state, control = Args(), State(), Control()
    x, y = _data10(steps * accumulate * batch)
    cb.on_train_begin(args, state, control, model=model, optimizer=Wrapped(opt))
    cb.on_epoch_begin(args, state, control)
    truth, tr_loss, logged = [], 0.0, []
    for step in range(steps):
        cb.on_step_begin(args, state, control)
        parts, nan = [], nan_at == step
        for m in range(accumulate):
            i = (step * accumulate + m) * batch
            xb, yb = x[i:i + batch] * (float("nan") if nan else 1.0), y[i:i + batch]
            out = model(xb, labels=yb, num_items_in_batch=len(yb) * accumulate if items else None)
            loss = out["loss"] if items else out["loss"] / accumulate
            loss.backward()
            parts.append(float(F.cross_entropy(model.net(xb), yb)))
            if not math.isnan(float(loss)):
                tr_loss += float(loss)
            else:
                tr_loss += tr_loss / max(len(logged) + 1, 1)  # the Trainer's NaN filter
        opt.step()
        opt.zero_grad()
        truth.append(sum(parts) / len(parts))
        state.global_step += 1
        control = cb.on_step_end(args, state, control)
        logged.append(tr_loss)
        if state.global_step % args.logging_steps == 0:
            control = cb.on_log(args, state, control, logs={"loss": sum(logged) / len(logged), "grad_norm": 1.0})
            logged = []
        tr_loss = 0.0
    cb.on_epoch_end(args, state, control)
    cb.on_train_end(args, state, control)
    return truth


@pytest.mark.parametrize("accumulate", [1, 2, 4])
@pytest.mark.parametrize("items", [False, True])
def test_hf_records_each_steps_true_loss_whatever_the_accumulation(tmp_path, accumulate, items):
    truth = _fit_like_hf_accumulating(HFHooks(tmp_path / "run", watch=False), accumulate, items=items)
    run = load_run(tmp_path / "run")
    assert list(run.steps["step"]) == [1, 2, 3, 4, 5, 6]  # every optimizer step, not only the logged ones
    assert list(run.steps["loss"]) == pytest.approx(truth, rel=1e-4)
    assert run.steps["loss"].iloc[0] == pytest.approx(LN10, abs=0.05)


def test_hf_records_a_nan_the_trainers_log_filters_out(run_dir):
    _fit_like_hf_accumulating(HFHooks(run_dir, watch=False), 2, nan_at=3)
    losses = load_run(run_dir).steps["loss"]
    assert losses.iloc[:3].notna().all() and math.isnan(losses.iloc[3])  # the Trainer logged a finite mean there


def test_unwrap_optimizer():
    opt = torch.optim.SGD(_model().parameters(), lr=0.1)
    assert unwrap_optimizer(Wrapped(Wrapped(opt))) is opt and unwrap_optimizer(opt) is opt
    assert unwrap_optimizer(None) is None


def test_step_loss_is_the_micro_batch_mean_or_sum_and_stays_on_the_device():
    tensors = [torch.tensor(1.0), torch.tensor([3.0])]
    mean, total = step_loss(tensors), step_loss(tensors, summed=True)
    assert isinstance(mean, torch.Tensor) and float(mean) == 2.0 and float(total) == 4.0
    assert step_loss([1.0, torch.tensor(3.0)]) == 2.0 and step_loss([1.0, 3.0], summed=True) == 4.0
    assert step_loss([]) is None and step_loss([math.nan, 1.0]) != step_loss([math.nan, 1.0])  # NaN kept


# --------------------------------------------------------------------------- the real trainers
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*LeafSpec")  # Lightning's own deprecation noise
def test_real_lightning_fit_with_a_planted_fault(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import CSVLogger

    from babysit.hooks.lightning import BabysitCallback
    from babysit.monitor.importers import load_any
    from babysit.rules import diagnose

    class Module(L.LightningModule):
        def __init__(self, lr: float, num_classes: int = 3):
            super().__init__()
            self.save_hyperparameters()
            self.net = _model()

        def training_step(self, b, i):
            out = self.net(b[0])
            loss = F.cross_entropy(out, b[1])
            self.log("train_loss", loss)
            return loss

        def validation_step(self, b, i):
            out = self.net(b[0])
            self.log("val_loss", F.cross_entropy(out, b[1]))
            self.log("val_acc", (out.argmax(1) == b[1]).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    ds = torch.utils.data.TensorDataset(*_data(256))
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    trainer = L.Trainer(max_epochs=2, logger=CSVLogger(tmp_path, name="csv"), log_every_n_steps=1,
                        callbacks=[BabysitCallback(tmp_path / "run", every=4)], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, accelerator="cpu")
    trainer.fit(Module(lr=1000.0), loader, torch.utils.data.DataLoader(ds, batch_size=64))
    run = load_run(tmp_path / "run")
    assert issubclass(BabysitCallback, L.Callback) and any(isinstance(c, BabysitCallback) for c in trainer.callbacks)
    assert run.status["state"] == "finished" and len(run.steps) == 32 and list(run.epochs["epoch"]) == [1, 2]
    assert run.epochs["val_acc"].notna().all() and len(run.layers)
    recorded = {f.rule: f.severity for f in diagnose(run)}
    imported = {f.rule: f.severity for f in diagnose(load_any(tmp_path / "csv" / "version_0"))}
    for found in (recorded, imported):
        assert found.get("nonfinite_loss") == "critical" and found.get("loss_explosion") == "critical"


@pytest.mark.slow
def test_real_hf_trainer(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from babysit.hooks.huggingface import BabysitCallback

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _model()

        def forward(self, x, labels=None):
            logits = self.net(x)
            return {"logits": logits, "loss": F.cross_entropy(logits, labels)}

    x, y = _data(128)
    ds = [{"x": x[i], "labels": y[i]} for i in range(len(x))]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), num_train_epochs=2, per_device_train_batch_size=16, learning_rate=0.1,
        logging_steps=1, eval_strategy="epoch", report_to=[], use_cpu=True, save_strategy="no",
        disable_tqdm=True, optim="sgd", lr_scheduler_type="constant")
    trainer = transformers.Trainer(model=Net(), args=args, train_dataset=ds, eval_dataset=ds,
                                   callbacks=[BabysitCallback(tmp_path / "run", num_classes=3, every=4)])
    trainer.train()
    run = load_run(tmp_path / "run")
    assert run.status["state"] == "finished" and list(run.steps["step"]) == list(range(1, 17))
    assert list(run.epochs["epoch"]) == [1, 2] and run.epochs["val_loss"].notna().all()
    assert len(run.layers) and run.meta["num_classes"] == 3


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*LeafSpec", "ignore:.*does not have many workers", "ignore:.*GPU available")
@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_real_lightning_first_loss_is_ln_c_whatever_the_accumulation(tmp_path, accumulate):
    L = pytest.importorskip("lightning.pytorch")
    from babysit.hooks.lightning import BabysitCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _fresh10()

        def training_step(self, b, i):
            return F.cross_entropy(self.net(b[0]), b[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_data10(128)), batch_size=16)
    trainer = L.Trainer(max_steps=2, accumulate_grad_batches=accumulate, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, accelerator="cpu",
                        callbacks=[BabysitCallback(tmp_path / "run", watch=False)])
    trainer.fit(Module(), loader)
    run = load_run(tmp_path / "run")
    assert list(run.steps["step"]) == [1, 2]
    assert run.steps["loss"].iloc[0] == pytest.approx(LN10, abs=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_real_hf_first_loss_is_ln_c_whatever_the_accumulation(tmp_path, accumulate):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from babysit.hooks.huggingface import BabysitCallback

    x, y = _data10(128)
    ds = [{"x": x[i], "labels": y[i]} for i in range(len(x))]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=2, per_device_train_batch_size=16, learning_rate=0.01,
        gradient_accumulation_steps=accumulate, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
        disable_tqdm=True, optim="sgd", lr_scheduler_type="constant")
    trainer = transformers.Trainer(model=HFNet(_fresh10()), args=args, train_dataset=ds,
                                   callbacks=[BabysitCallback(tmp_path / "run", num_classes=10, watch=False)])
    trainer.train()
    run = load_run(tmp_path / "run")
    assert list(run.steps["step"]) == [1, 2]
    assert run.steps["loss"].iloc[0] == pytest.approx(LN10, abs=0.05)
