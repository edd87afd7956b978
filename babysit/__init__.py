"""babysit: a training babysitter for PyTorch.

    import babysit

    with babysit.Run("runs/exp1", num_classes=10) as run:
        run.watch(model, optimizer)
        for x, y in loader:
            ...
            run.step(loss=loss)

The parts live in subpackages: `babysit.hooks` (recording), `babysit.rules` (diagnosis), `babysit.monitor`
(reader, CLI, dashboard, watcher, report) and `babysit.trainer` (the reference trainer).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Run", "StopTraining", "__version__"]

__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    # Lazy: the reader, rules, watcher and dashboard never import torch; only the hooks need it.
    if name in ("Run", "StopTraining"):
        from babysit import hooks

        return getattr(hooks, name)
    raise AttributeError(f"module 'babysit' has no attribute {name!r}")
