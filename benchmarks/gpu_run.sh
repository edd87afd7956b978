#!/usr/bin/env bash
# The device check in one call (the lent CUDA machine has torch, pandas and scikit-learn but not this package):
# make `babysit` importable from the checkout without pip, then run benchmarks.gpu_check, output into $OUT.
set -u
site=$(mktemp -d)
mkdir -p "$site/babysit"
for f in babysit/*.py; do ln -sf "$PWD/$f" "$site/babysit/"; done
for d in hooks rules monitor trainer; do ln -sfn "$PWD/$d" "$site/babysit/$d"; done
ln -sfn "$PWD/benchmarks" "$site/benchmarks"
out=${OUT:-/tmp}
cd "$site" || exit 1  # python -m puts the current folder first: the checkout's own babysit/ would win
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu_check.txt"
python3 -c "import babysit.hooks.run, babysit.trainer.train, babysit; print('babysit from', babysit.__file__)"
python3 -m benchmarks.gpu_check "$@" 2>&1 | tee -a "$out/gpu_check.txt"
