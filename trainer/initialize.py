"""Weight initialization, the lecture's (3): small random numbers, Glorot/Xavier, He/Kaiming; biases zero or a
small positive value for ReLU nets ("so units start active").

    small   W ~ N(0, scale^2), the lecture's `0.001 * np.random.randn(D, H)`: fine for a two-layer net,
            vanishing signals in deeper ones (the hooks' vanishing-gradient rule will say so)
    xavier  N(0, 2 / (fan_in + fan_out))   -- Glorot & Bengio 2010
    he      N(0, 2 / fan_in)               -- He et al. 2015, for ReLU
    default PyTorch's own (Kaiming-uniform with a = sqrt(5), i.e. U(+-1/sqrt(fan_in)))
"""

from __future__ import annotations

from torch import nn

__all__ = ["initialize", "SCHEMES"]

SCHEMES = ("default", "small", "xavier", "he")


def initialize(model: nn.Module, scheme: str = "default", scale: float = 0.001, bias: float | None = None) -> None:
    """Re-initialize every Linear and Conv layer of model in place (norm layers keep weight 1, bias 0)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init {scheme!r}; choose from {', '.join(SCHEMES)}")
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        if scheme == "small":
            nn.init.normal_(module.weight, 0.0, scale)
        elif scheme == "xavier":
            nn.init.xavier_normal_(module.weight)
        elif scheme == "he":
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None and (bias is not None or scheme != "default"):
            nn.init.constant_(module.bias, bias or 0.0)
