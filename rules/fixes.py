"""The fix catalogue: every fix a rule can propose, by id, with its text and the evidence that rules it out.

Rules name fixes by id (`fix = ("lower_lr", "clip_gradients")`), optionally with a note for this run
(`("raise_lr", "3-10x, from 0.001")`). A finding carries both the ids (`fix_ids`) and the texts (`fix`).
`contradicted_by` lists facts about the run (rules/causes.py `run_facts`) under which the fix would send the
user the wrong way; the engine drops such fixes from every finding ("raise the lr" after the loss rose).

    python -m babysit.rules.fixes    # the catalogue as a markdown table
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Fix", "FIXES", "fix_text", "resolve_fixes", "FACTS"]

# Facts the engine derives from the run (rules/causes.py run_facts): what they mean, for the docs.
FACTS = {
    "loss_rose": "the loss rose above its start or back up to chance level after being lower (lr_too_high, "
                 "loss_explosion)",
    "ratio_high": "updates are ~100x the healthy update/weight ratio of 1e-3 (lr far too high)",
    "frozen": "most parameters do not train (meta model.frozen, or a frozen_parameters finding)",
    "integer_inputs": "the inputs are integer ids (an embedding model): there is nothing to normalize",
    "dead_at_init": "units were dead from the first step (bias/weight init, not the lr)",
}


@dataclass(frozen=True)
class Fix:
    id: str
    text: str
    contradicted_by: tuple[str, ...] = ()
    # a symptom's generic remedy: dropped from a symptom once a cause explains it (the cause's fix leads)
    generic: bool = False


_ALL = [
    # --- learning rate
    Fix("lower_lr", "lower the learning rate"),
    Fix("lower_lr_10x", "lower the learning rate 10x: a loss that rises or goes NaN is the sign of a "
        "learning rate that is too high"),
    Fix("raise_lr", "raise the learning rate", ("loss_rose", "ratio_high"), generic=True),
    Fix("train_longer", "train longer, or with a higher learning rate", ("loss_rose", "ratio_high", "frozen"),
        generic=True),
    Fix("warmup_or_clip", "add a learning-rate warmup or gradient clipping"),
    Fix("decay_lr", "decay the learning rate (step, 0.97/epoch, 1/t) or use momentum"),
    Fix("scale_lr_to_ratio", "scale the learning rate toward an update/weight ratio of ~1e-3"),
    Fix("stop_run", "stop this run: a loss above 3x the original will not come back; quit early"),
    Fix("check_lr_zero", "check the learning rate is not 0 (schedulers, param groups)"),
    # --- gradients and numerics
    Fix("clip_gradients", "clip gradients: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)"),
    Fix("check_data_finite", "check the inputs and labels for NaN/inf (torch.isfinite(x).all() on a batch)"),
    Fix("guard_loss_math", "guard log() and division in a custom loss (log(x + eps), no division by zero)"),
    Fix("check_gradients_reach", "check that gradients reach the weights (see update_ratio, stalled_weights, "
        "dead_units)"),
    # --- init and architecture
    Fix("scale_init_down", "scale the initial weights down (PyTorch's default init, or std ~0.01 on the last layer)"),
    Fix("bias_init_he", "initialize biases at 0 or slightly positive (0.01) and use He (kaiming) init"),
    Fix("leaky_relu_or_bn", "use LeakyReLU/ELU, or add batch normalization before the ReLU"),
    Fix("xavier_init", "smaller initial weights: Xavier/Glorot init for tanh/sigmoid"),
    Fix("use_relu_or_bn", "use ReLU (or add batch normalization before the nonlinearity)"),
    Fix("use_relu", "use ReLU (or LeakyReLU) instead of sigmoid/tanh in hidden layers"),
    Fix("he_xavier_init", "He (kaiming) init for ReLU, Xavier for tanh"),
    Fix("add_normalization", "add normalization (batch norm / layer norm) between layers"),
    Fix("residual_or_shallower", "add residual connections; use a shallower network"),
    Fix("deep_plateau", "for a deep net: He init, normalization layers, or Adam (a long plateau at ln(C))"),
    Fix("more_capacity", "more capacity: a bigger model, or a hidden layer with a nonlinearity (a linear model "
        "separates only linearly separable classes)", ("frozen",), generic=True),
    Fix("smaller_model", "a smaller model"),
    # --- data
    Fix("normalize_inputs", "normalize the inputs (subtract the training split's mean, divide by its std)",
        ("integer_inputs",)),
    Fix("check_labels", "check the labels: are they aligned with the inputs (same shuffle/permutation)?",
        ("ratio_high", "loss_rose")),
    Fix("check_pipeline", "check the data pipeline: look at a batch of inputs with their labels"),
    Fix("check_val_preprocessing", "check that val preprocessing matches train (normalization, channel order)"),
    Fix("check_label_indices", "check the labels are class indices 0..C-1 and num_classes matches the data"),
    Fix("check_num_classes", "check num_classes matches the data"),
    Fix("check_label_leak", "if the net is not pretrained, check that labels do not leak into the inputs"),
    Fix("logits_to_loss", "pass raw logits to cross_entropy (no softmax or log_softmax before it)"),
    Fix("call_model_train", "call model.train() at the start of every training epoch (after any validation pass "
        "that called model.eval())"),
    Fix("advance_the_loader", "iterate over the data inside the loop (for xb, yb in loader:), not one batch fetched "
        "once; if the training set really is this one batch, get more data"),
    Fix("call_zero_grad", "call optimizer.zero_grad() on every iteration, before loss.backward(): without it each "
        "backward adds to the gradients of every step before"),
    Fix("log_softmax_before_nll", "apply log_softmax before nll_loss (or pass the raw logits to cross_entropy, "
        "which does both)"),
    Fix("classification_loss", "for classes, give the model C outputs and use cross_entropy on the class indices "
        "(accuracy from argmax), not a regression loss on the index or on softmax outputs, nor a binary loss"),
    Fix("bce_targets_01", "give binary cross-entropy targets in [0, 1] (0/1 labels or probabilities); for more "
        "than two classes use C outputs and cross_entropy on the class indices"),
    Fix("match_target_shape", "give the loss predictions and targets of the same shape (out.squeeze(1) for a "
        "1-output head, or y.unsqueeze(1)): mismatched shapes broadcast to every prediction against every target"),
    Fix("remove_output_activation", "remove the activation after the last layer: cross_entropy needs raw logits "
        "(a ReLU clips them at 0, a sigmoid or tanh squashes them into a narrow range)"),
    Fix("more_data", "more training data or data augmentation (random crops, flips)"),
    Fix("bigger_batch", "increase the batch size (the curve's width shrinks about as 1/sqrt(batch size))"),
    # --- regularization
    Fix("lower_reg", "lower the regularization (weight decay / L2 strength, dropout)"),
    Fix("regularize", "add regularization: weight decay / L2 (try 10x), dropout"),
    Fix("early_stopping", "early stopping: keep the checkpoint with the best val metric"),
    # --- optimizer wiring
    Fix("check_optimizer_params", "check the optimizer's parameter list: build it from model.parameters() after "
        "the whole model exists (not a stale or partial list)"),
    Fix("check_requires_grad", "check requires_grad and that nothing detaches the layer or re-creates it after "
        "the optimizer was built"),
    Fix("step_every_iteration", "call optimizer.step() (and zero_grad) on every iteration; with gradient "
        "accumulation, step every k micro-batches and zero the gradients only after stepping"),
    Fix("declare_accumulation", "if this is gradient accumulation, say so: Run(config={'grad_accum': k}) (and divide "
        "the loss by k)"),
    Fix("shuffle_data", "shuffle the training data every epoch (DataLoader(shuffle=True)): sorted by class, each "
        "stretch of steps sees one class and the net forgets the rest"),
    Fix("rebalance_classes", "rebalance: a weighted sampler or class weights in the loss (weight=1/frequency), and "
        "judge by per-class recall, not accuracy"),
    Fix("standardize_targets", "standardize the regression targets (subtract the training mean, divide by the std; "
        "undo it for predictions)"),
    Fix("noisy_weights_regularize", "stronger regularization (weight decay / L2): 'noisy weights: "
        "regularization not strong enough'"),
    Fix("noisy_weights_wait", "train longer (the filters have not formed yet)", ("loss_rose", "ratio_high")),
    # --- process and evaluation
    Fix("read_error", "read the error and the training log; fix it and resume from the last checkpoint"),
    Fix("check_process", "check the training process: is it alive (ps, nvidia-smi), is it blocked on I/O or a lock?"),
    Fix("check_dataloader", "check the data loader (num_workers deadlocks, a network filesystem that hangs)"),
    Fix("check_ranks", "with torch.distributed: check every rank is alive (a dead rank blocks the collectives of "
        "the others)"),
    Fix("val_for_decisions", "choose hyperparameters and checkpoints on the validation split only"),
    Fix("test_once", "evaluate on the test split once, at the very end, and report that number"),
    Fix("fresh_test_split", "if the test set was already used for decisions, hold out a fresh test split"),
    Fix("none_needed", "none needed"),
    Fix("see_healed", "none needed now: the run healed itself; see the `healed` finding for what to change in the "
        "config so the next run does not need it"),
    Fix("none_needed_slow_start", "none needed; to start faster: He init, normalization layers, or a higher "
        "learning rate"),
]
FIXES: dict[str, Fix] = {f.id: f for f in _ALL}


def fix_text(fix_id: str, note: str | None = None) -> str:
    """The text of a fix, with a run-specific note in parentheses ('raise the learning rate (3-10x, from 1e-05)')."""
    text = FIXES[fix_id].text
    return f"{text} ({note})" if note else text


def _slug(text: str) -> str:
    return "text:" + "_".join(re.findall(r"[a-z0-9]+", text.lower())[:4])


def resolve_fixes(entries) -> tuple[list[str], list[str]]:
    """(ids, texts) from a rule's fix entries: an id, (id, note), or -- for rules not yet on the catalogue -- a text.

    A text that is not a known id keeps working (its id is 'text:<first words>'), so a rule written before the
    catalogue existed still reports its fixes.
    """
    ids, texts = [], []
    for e in entries or ():
        fid, note = (e[0], e[1]) if isinstance(e, tuple) else (e, None)
        if isinstance(fid, str) and fid in FIXES:
            ids.append(fid)
            texts.append(fix_text(fid, note))
        else:
            ids.append(_slug(str(fid)))
            texts.append(str(fid) if note is None else f"{fid} ({note})")
    return ids, texts


def markdown() -> str:
    lines = ["| fix id | text | not proposed when |", "|---|---|---|"]
    for f in _ALL:
        when = [*f.contradicted_by, *(["a cause explains the symptom"] if f.generic else [])]
        lines.append(f"| `{f.id}` | {f.text} | {', '.join(when) or '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(markdown())
