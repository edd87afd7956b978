"""The catalogue: every rule, in the order they run, and which findings explain which.

The ids are a public contract (findings.jsonl, --json output, thresholds, dashboards key on them). Rules run
in list order on each update; a cause rule that weighs other findings (lr_too_high reads dead_units) comes
after them. To add a rule: import it, append it to RULES, and name it in CAUSES where it explains a symptom.

    python -m babysit.rules.catalogue --markdown           # the rules table of docs/rules.md
    python -m babysit.rules.catalogue --write docs/rules.md  # refresh the generated tables there
"""

from __future__ import annotations

from babysit.rules.accuracy import ChanceAccuracy, Overfitting, Underfitting
from babysit.rules.bugs import (
    DoubleSoftmax,
    EvalModeTraining,
    FrozenParameters,
    LossMismatch,
    MissingZeroGrad,
    OutputActivation,
    SkippedOptimizerSteps,
)
from babysit.rules.causes import LowCapacity, LrTooHigh, RegularizationTooStrong
from babysit.rules.data import BadLabels, SingleBatch, UnnormalizedInput
from babysit.rules.heal import Healed
from babysit.rules.layers import (
    DeadUnits,
    ExplodingGradients,
    SaturatedActivations,
    StalledWeights,
    UpdateRatio,
    VanishingGradients,
)
from babysit.rules.loss import FlatLoss, InitLossMismatch, LossExplosion, NoisyLoss, NonfiniteLoss
from babysit.rules.process import StalledRun, TestSetReuse
from babysit.rules.weights import NoisyWeights

__all__ = ["RULES", "CAUSES", "CAUSE_ORDER", "RULE_IDS", "markdown"]

RULES = [
    NonfiniteLoss,
    LossExplosion,
    FlatLoss,
    InitLossMismatch,
    Overfitting,
    Underfitting,
    ChanceAccuracy,
    NoisyLoss,
    NoisyWeights,
    UpdateRatio,
    DeadUnits,
    SaturatedActivations,
    VanishingGradients,
    ExplodingGradients,
    StalledWeights,
    LrTooHigh,
    RegularizationTooStrong,
    LowCapacity,
    DoubleSoftmax,
    LossMismatch,
    MissingZeroGrad,
    EvalModeTraining,
    OutputActivation,
    FrozenParameters,
    SkippedOptimizerSteps,
    UnnormalizedInput,  # after the rules whose findings make it a warning (saturation, dead units, flat loss)
    BadLabels,
    SingleBatch,
    StalledRun,
    TestSetReuse,
    Healed,  # heal events of on_critical="heal" (rules/heal.py)
]
RULE_IDS = [r.id for r in RULES]

# symptom -> the findings that explain it, most fundamental first. When one is present (rules/causes.py
# `explains` agrees) the symptom names it and leads with its fix. Ids of rules that are not in RULES (another
# module's bug checks) are simply never present.
_BUGS = ["frozen_parameters", "skipped_optimizer_steps", "missing_zero_grad", "double_softmax", "loss_mismatch",
         "output_activation", "eval_mode_training"]
_DEAD_NET = ["nonfinite_loss", "stalled_weights", "dead_units", "saturated_activations", "vanishing_gradients"]
_DATA = ["bad_labels", "unnormalized_input"]
_REG = ["regularization_too_strong"]  # weights crushed to zero: silent ReLUs, vanishing gradients, a high ratio
CAUSES: dict[str, list[str]] = {
    "flat_loss": [*_BUGS, *_REG, "lr_too_high", *_DEAD_NET, "low_capacity", "update_ratio"],
    "chance_accuracy": [*_BUGS, *_REG, "lr_too_high", *_DEAD_NET, "loss_explosion", *_DATA, "low_capacity",
                        "flat_loss"],
    "underfitting": ["chance_accuracy", *_BUGS, *_REG, "lr_too_high", *_DEAD_NET, "loss_explosion", *_DATA,
                     "low_capacity", "flat_loss", "update_ratio"],
    "init_loss_mismatch": ["double_softmax", "loss_mismatch", *_DATA],
    "dead_units": [*_REG, "lr_too_high"],
    "overfitting": ["single_batch"],  # the net memorized the one batch it was shown
    "saturated_activations": ["unnormalized_input"],
    "vanishing_gradients": [*_REG, "dead_units", "saturated_activations"],
    # a linear model at chance heads for zero weights: its ratio is high because the weights vanish
    "update_ratio": ["frozen_parameters", "skipped_optimizer_steps", *_REG, "stalled_weights", "dead_units",
                     "vanishing_gradients", "saturated_activations", "low_capacity"],
    "stalled_weights": ["frozen_parameters", "skipped_optimizer_steps"],
    "noisy_loss": ["nonfinite_loss", "loss_explosion", "lr_too_high", "bad_labels"],
    # bad_labels: data sorted by class, raw-scale regression targets (causes.explains)
    "loss_explosion": ["missing_zero_grad", "bad_labels"],
    "exploding_gradients": ["missing_zero_grad"],
    "lr_too_high": ["missing_zero_grad"],  # summed gradients act as an lr that grows every step
}

# Within a severity, causes are listed before symptoms in this order (sort_findings).
CAUSE_ORDER = ["nonfinite_loss", *_BUGS, *_REG, "lr_too_high", "stalled_weights", "dead_units", "saturated_activations",
               "vanishing_gradients", "exploding_gradients", "loss_explosion", *_DATA, "low_capacity",
               "update_ratio"]


def markdown() -> str:
    """The rules table for docs/rules.md, generated from the catalogue so it cannot drift."""
    from babysit.rules.fixes import FIXES
    from babysit.rules.thresholds import TABLE

    lines = ["| rule | severity up to | needs | thresholds (default: source) | fixes, in order | explained by |",
             "|---|---|---|---|---|---|"]
    for cls in RULES:
        names = sorted(n for n in TABLE if _uses(cls, n))
        th = "<br>".join(f"`{n}`={TABLE[n].value:g}: {TABLE[n].source}" for n in names) or "-"
        fixes = "<br>".join(
            f"`{e[0] if isinstance(e, tuple) else e}`" if (e[0] if isinstance(e, tuple) else e) in FIXES
            else str(e) for e in cls.fix) or "-"
        needs = ", ".join(f"`{n}`" for n in getattr(cls, "needs", ())) or "-"
        causes = ", ".join(f"`{c}`" for c in CAUSES.get(cls.id, ())) or "-"
        doc = " ".join((cls.__doc__ or "").split()).split(". ")[0].rstrip(".")
        name = f"`{cls.id}`: {cls.title}" + (f". {doc}." if doc else "")
        lines.append(f"| {name} | {_max_severity(cls)} | {needs} | {th} | {fixes} | {causes} |")
    return "\n".join(lines)


def _uses(cls: type, name: str) -> bool:
    import inspect

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return False
    import re

    needs = " ".join(getattr(cls, "needs", ())).replace(">=", " ").replace("+", " ").replace("*", " ").split()
    q = re.escape(name)
    # th["name"], th['prefix_' + x], a threshold key handed to sustained(...), or one named in `needs`
    return bool(re.search(rf"""th\[["']{q}["']\]|sustained\([^)]*["']{q}["']""", src)) or name in needs or any(
        name.startswith(p) for p in re.findall(r"""th\[["'](\w+_)["'] \+""", src))


def _max_severity(cls: type) -> str:
    import inspect

    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return "?"
    return "critical" if '"critical"' in src else ("warning" if '"warning"' in src else "info")


def write_docs(path: str) -> None:
    """Replace the generated tables in docs/rules.md (between their begin/end markers) with fresh ones."""
    import re
    from pathlib import Path

    from babysit.rules.fixes import markdown as fixes_markdown

    doc = Path(path).read_text()
    for name, table in (("rules table", markdown()), ("fixes table", fixes_markdown())):
        begin, end = f"<!-- begin generated: {name} -->", f"<!-- end generated: {name} -->"
        doc = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _m, b=begin, e=end, t=table: f"{b}\n{t}\n{e}",
                     doc, flags=re.S)
    Path(path).write_text(doc)


if __name__ == "__main__":  # pragma: no cover
    import sys

    args = sys.argv[1:]
    if "--write" in args:  # python -m babysit.rules.catalogue --write docs/rules.md
        write_docs(args[args.index("--write") + 1])
    elif "--markdown" in args:
        print(markdown())
    else:
        print("\n".join(RULE_IDS))
