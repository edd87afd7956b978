"""The fault zoo: real training runs with known faults, and healthy look-alikes, diagnosed and scored.

Every case is a small, seeded PyTorch loop written the way a user writes one (plain PyTorch plus
`babysit.Run`, `run.watch`, `run.step`, `run.epoch`), trained on the CPU in seconds. The faults come from a
taxonomy of real training faults, not from the rule list:

| family    | faults                                                        | sources                           |
|-----------|---------------------------------------------------------------|-----------------------------------|
| optimizer | lr far too high (NaN, explosion, or collapse to a constant    | CS231n (loss curve shapes, lr),   |
|           | predictor at ~ln C without NaN; SGD, momentum, Adam, AdamW),  | AutoTrainer / DeepDiagnosis       |
|           | lr too low, an lr schedule spike, OneCycle peak too high, no  | symptom lists, Humbatova et al.   |
|           | warmup for a Transformer, tiny batches with a high lr         | ("training: hyperparameters")     |
| init      | dead ReLUs (negative bias, a too-large first update), zero    | CS231n (init, dead ReLUs,         |
|           | init, N(0,1) init, tanh/sigmoid saturated by raw inputs,      | saturation), AutoTrainer (dying   |
|           | vanishing gradients (deep sigmoid), exploding (deep, no norm) | ReLU, vanishing, exploding)       |
| data      | unnormalized inputs (0..255, raw tabular), labels shuffled    | CS231n (preprocessing), Humbatova |
|           | apart from inputs, val labels off by one, a class missing,    | et al. ("training data"), Islam   |
|           | val preprocessed differently, unshuffled class-sorted data,   | et al. FSE'19 (data bugs), Zhang  |
|           | 60% label noise, unscaled regression targets                  | et al. ISSTA'18                   |
| code      | softmax/sigmoid before a logits loss, NLL on raw logits,      | UMLAUT structural checks,         |
|           | frozen backbone / params missing from the optimizer / stale   | Humbatova et al. ("model", "API   |
|           | optimizer, optimizer.step() skipped or never called,          | misuse"), Islam et al. FSE'19,    |
|           | zero_grad missing, log(0) in a hand-written loss, 0/0 in a    | Zhang et al. ISSTA'18 (incorrect  |
|           | per-batch normalization, detach in forward, a clip that       | model parameter / API usage,      |
|           | erases the gradient, a summed loss, ReLU on the logits        | unaligned tensors)                |
| model     | a linear model on non-linearly separable data, a 2-unit       | CS231n (under/overfitting,        |
|           | bottleneck, overfitting a tiny train set, noisy first-layer   | weight visualization,             |
|           | weights, weight decay / dropout / L2 far too strong           | regularization strength)          |

Healthy cases (any warning is a false alarm) are grouped as `lookalike` (label smoothing, prior-initialized
bias on imbalanced data, fine-tuning from a checkpoint, warmup spikes, heavy dropout, an intended linear
probe, batch size 1 at a small lr, a dataset with irreducible label noise, 0..1 pixels, token ids, 256
tabular features, a solved problem's flat loss, early stopping, smooth 28x28 weights), `architecture` (MLP,
CNN with and without BatchNorm, ResNet, LSTM, EmbeddingBag, regression, linear models) and `loop`
(gradient accumulation with OneCycle, validation every 3rd epoch, step-only, batch 512, 50 steps, a
hand-written train/eval loop).

Datasets: sklearn digits at 8x8, 16x16 and 28x28, moons/circles/spirals, breast_cancer, wine,
make_classification (up to 256 features), synthetic token sequences and sine waves, make_regression,
diabetes. Run lengths 50 to 5,000 steps, batch sizes 1 to 512, with and without `run.watch(every=N)`.

Adding a case: write a function `name(run_dir) -> dict` in the family's module under cases/, decorated
with `@faulty(family, accept=..., wrong=..., expect=...)` or `@healthy(family, expect=...)` (registry.py),
and check it with `python -m benchmarks.faults --only name --check`.
"""
