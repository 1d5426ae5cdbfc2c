#!/usr/bin/env bash
# The one prepared GPU check, for a machine with a GPU but perhaps no network and none of the project's packages:
#   - every script's update at the papers' sizes (4 x 512, batch 256; DriftQL N = 32, QAM 10 critics and h = 5) in
#     eager fp32, bf16, compiled (on CUDA: CUDA graphs, as --compile runs) and compiled + bf16: steps/s, the first
#     compiled step's seconds, peak device memory and operator calls per step (about one kernel launch each);
#   - each script's whole training loop (main) for 2,000 steps with one evaluation, which shows host syncs;
#   - the official JAX updates, where JAX is installed and OFFICIAL_<AGENT>=<checkout> names a checkout
#     (OFFICIAL_FQL, OFFICIAL_DRIFTQL with OFFICIAL_FQL for its utils/, OFFICIAL_DEFLOW, OFFICIAL_DFP).
# One table, written to OUT/gpu.md with the machine, commit, command and load average. The whole run stays under
# about 8 minutes (BENCH_TIMEOUT seconds for the PyTorch part, default 420). On a machine without the project's
# packages, put their wheels (pure Python: tyro, gymnasium, ...) in .whl/ and they are installed to /tmp/site first.
#   bash benchmarks/gpu.sh OUT                 # on the GPU machine
#   bash benchmarks/gpu.sh OUT --device cpu --steps 2 --act-calls 2 --loop-steps 20 --hidden 32   # a dry run here
set -uo pipefail
out=${1:-benchmarks}
shift || true
cd "$(dirname "$0")/.."
mkdir -p "$out"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
device=cuda
case " $* " in *" --device "*) device="";; esac
timeout "${BENCH_TIMEOUT:-420}" python3 benchmark.py ${device:+--device $device} --steps 50 --act-calls 100 \
    --loop-steps 2000 --out "$out/gpu.md" "$@"
status=$?
if python3 -c "import jax" 2>/dev/null; then
    {
        echo
        echo "Official JAX updates (benchmarks/official_jax.py, same sizes):"
        [ -n "${OFFICIAL_FQL:-}" ] && timeout 120 python3 benchmarks/official_jax.py "$OFFICIAL_FQL" --agent fql
        [ -n "${OFFICIAL_DRIFTQL:-}" ] && timeout 120 python3 benchmarks/official_jax.py "$OFFICIAL_DRIFTQL" \
            --agent driftql --utils "${OFFICIAL_FQL:-$OFFICIAL_DRIFTQL}"
        [ -n "${OFFICIAL_DEFLOW:-}" ] && timeout 120 python3 benchmarks/official_jax.py "$OFFICIAL_DEFLOW" --agent deflow
        [ -n "${OFFICIAL_DFP:-}" ] && timeout 120 python3 benchmarks/official_jax.py "$OFFICIAL_DFP" --agent drift \
            --sequence --set horizon_length=1 "drift_temps=(0.05,)" online_n_samples=16 online_pos_samples=8 q_bon=1 \
            eval_bon=1
    } 2>&1 | grep -v "^$" | sed 's/^official/- official/' >> "$out/gpu.md"
fi
cat "$out/gpu.md"
exit $status
