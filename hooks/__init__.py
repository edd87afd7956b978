"""Hooks any PyTorch training loop calls to stream its vital signs into a run directory.

    with hooks.Run("runs/exp1", num_classes=10) as run:
        run.watch(model, optimizer)
        ...
        run.step(loss=loss)
"""

from babysit.hooks.run import Run, StopTraining

__all__ = ["Run", "StopTraining"]
