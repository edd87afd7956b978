"""The Lightning and Hugging Face callbacks drive hooks.Run.

Each is tested twice: against duck-typed fakes that call the hooks in the order the real trainer does
(always runs), and against the real trainer where the package is installed (marked slow).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from babysit.hooks.huggingface import HFHooks, unwrap_optimizer
from babysit.hooks.lightning import LightningHooks, callback_class
from babysit.monitor import runfile
from babysit.monitor.reader import load_run


def _data(n: int = 128, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


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


def _fit_like_lightning(cb, epochs=3, lr=0.1, accumulate=1, nan_at=None, stop_file_at=None, batch=16):
    module = FakeModule()
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    trainer = FakeTrainer(opt)
    x, y = _data()
    cb.setup(trainer, module, "fit")
    cb.on_train_start(trainer, module)
    micro = 0
    for _ in range(epochs):
        for i in range(0, len(x), batch):
            loss = F.cross_entropy(module(x[i : i + batch]), y[i : i + batch])
            if nan_at is not None and trainer.global_step >= nan_at:
                loss = loss * float("nan")
            (loss / accumulate).backward()
            micro += 1
            if micro % accumulate == 0:
                opt.step()
                opt.zero_grad()
                trainer.global_step += 1
            if stop_file_at is not None and trainer.global_step == stop_file_at:
                (cb.run.path / runfile.STOP).write_text('{"reason": "enough"}')
            cb.on_train_batch_end(trainer, module, {"loss": loss.detach()}, None, i)
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
    _fit_like_lightning(LightningHooks(run_dir, watch=False), epochs=1, accumulate=2)
    run = load_run(run_dir)
    assert list(run.steps["step"]) == [1, 2, 3, 4]  # 8 micro-batches, 4 optimizer steps


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


def test_unwrap_optimizer():
    opt = torch.optim.SGD(_model().parameters(), lr=0.1)
    assert unwrap_optimizer(Wrapped(Wrapped(opt))) is opt and unwrap_optimizer(opt) is opt
    assert unwrap_optimizer(None) is None


# --------------------------------------------------------------------------- the real trainers
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*LeafSpec")  # Lightning's own deprecation noise
def test_real_lightning_fit_with_a_planted_fault(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    from babysit.hooks.lightning import BabysitCallback
    from babysit.monitor.importers import load_any
    from babysit.rules import diagnose
    from lightning.pytorch.loggers import CSVLogger

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
