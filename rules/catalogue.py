"""The catalogue: every rule, in the order they run, and which findings explain which.

The ids are a public contract (findings.jsonl, --json output, thresholds, dashboards key on them).
"""

from __future__ import annotations

from babysit.rules.accuracy import ChanceAccuracy, Overfitting, Underfitting
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

__all__ = ["RULES", "CAUSES", "RULE_IDS"]

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
    StalledRun,
    TestSetReuse,
]
RULE_IDS = [r.id for r in RULES]

# symptom -> the findings that explain it, most fundamental first. When one is present the symptom says so
# and leads with the cause's fix (a flat loss from dead ReLUs must not advise raising the learning rate).
_DEAD_NET = ["nonfinite_loss", "stalled_weights", "dead_units", "saturated_activations", "vanishing_gradients"]
CAUSES: dict[str, list[str]] = {
    "flat_loss": [*_DEAD_NET, "update_ratio"],
    "chance_accuracy": [*_DEAD_NET, "loss_explosion", "flat_loss"],
    "underfitting": ["chance_accuracy", *_DEAD_NET, "flat_loss", "update_ratio"],
    "vanishing_gradients": ["dead_units", "saturated_activations"],
    "update_ratio": ["stalled_weights", "dead_units", "vanishing_gradients", "saturated_activations"],
    "noisy_loss": ["nonfinite_loss", "loss_explosion"],
}
