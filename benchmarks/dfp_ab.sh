#!/usr/bin/env bash
# DFP's eager fp32 update before the batched critic (75e8ad9, the per-member loop) and now, timed by each version's
# own benchmark.py, the two interleaved run by run (A B A B ...) so that a drift in the machine's speed hits both.
#   git worktree add /tmp/pre 75e8ad9 && bash benchmarks/dfp_ab.sh /tmp/pre 4
# Prints one table row per run, prefixed "pre <i>" or "now <i>"; the training steps/s are the column "train steps/s"
# in pre's table and "fp32 eager steps/s" in now's.
set -euo pipefail
pre=${1:?the checkout of 75e8ad9}; reps=${2:-4}
now=$(cd "$(dirname "$0")/.." && pwd)
export OMP_NUM_THREADS=1
for i in $(seq "$reps"); do
  (cd "$pre" && python benchmark.py --algos dfp --device cpu --steps 10 --act-calls 2 --threads 1 2>&1 \
     | grep -E "^\| *dfp" | sed "s/^/pre $i /")
  (cd "$now" && python benchmark.py --algos dfp --modes eager --device cpu --steps 10 --act-calls 2 --threads 1 2>&1 \
     | grep -E "^\| *dfp" | sed "s/^/now $i /")
done
