"""User loops: standalone training loops written the way different users write them, healthy and buggy.

The fault zoo (benchmarks/faults) builds its runs through one helper loop, so it under-samples how real
users call the hooks. Each case here is one function with its own complete loop: `run.step(loss.item())`,
`run.step(loss=tensor)`, `run.step(loss, lr=...)`, `run.step(loss, acc=...)`; epoch metrics named
`accuracy`, `val_accuracy`, `valid_loss`, `val/loss`; validation every epoch, every 3rd, by steps or never;
`Run` as a context manager or closed by hand; `watch()` with or without the optimizer and `input_shape`.

    python -m benchmarks.userloops [--split tune|holdout|fresh|all] [--only NAME] [--jobs 2] [--check]

Scoring is the zoo's (`benchmarks.faults.evaluate.score`): a faulty case is caught with a supported fix
(an accepted rule at warning or above, and a lead that is not misleading), caught only with a misleading
lead, or missed; on a healthy case any warning or critical is a false alarm (info is fine). The split is
fixed by the hash of each name (registry.py), a third held out of any tuning.
"""
