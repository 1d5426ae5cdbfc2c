#!/usr/bin/env bash
# The one prepared GPU check, for a machine with a GPU but perhaps no network and none of the project's packages:
#   - every script's update at the papers' sizes (4 x 512, batch 256; DriftQL N = 32, QAM 10 critics and h = 5) in
#     eager fp32, bf16, compiled with CUDA graphs (what --compile runs on CUDA), compiled + bf16 and compiled without
#     CUDA graphs: steps/s, the first compiled step's seconds, compiled graphs and graph breaks, peak device memory
#     and operator calls per step (about one kernel launch each);
#   - each script's whole training loop (main) for 2,000 steps with one evaluation, which shows host syncs;
#   - the official JAX updates, where jax, flax, optax and ml_collections import and a checkout is named by
#     OFFICIAL_<AGENT>=<path> or lies in .official/<agent> (fql, driftql with fql's utils/, deflow, dfp).
# One table, written to OUT/gpu.md with the machine, commit, command and load average, rewritten after every script
# so that a run cut short keeps what it measured. The whole run stays under about 8 minutes (BENCH_TIMEOUT seconds
# for the PyTorch part, default 330, then at most 40 s per official agent).
# It needs torch and numpy. What else benchmark.py imports (tyro, gymnasium, tensorboard, tqdm and their pure-Python
# dependencies) is unpacked from the wheels in .whl/ when it is missing; fetch them where there is network with
#   bash benchmarks/gpu.sh --wheels            # pip download into .whl/ (git-ignored: bring it along)
#   bash benchmarks/gpu.sh OUT                 # on the GPU machine
#   bash benchmarks/gpu.sh OUT --device cpu --steps 2 --act-calls 2 --loop-steps 20 --hidden 32   # a dry run here
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS="tyro docstring-parser typeguard gymnasium cloudpickle farama-notifications tensorboard protobuf absl-py tqdm"
if [ "${1:-}" = "--wheels" ]; then
    exec python3 -m pip download -q --no-deps -d .whl $WHEELS
fi
out=${1:-benchmarks}
shift || true
mkdir -p "$out"
need="import numpy, tyro, gymnasium, tqdm, torch.utils.tensorboard"
if ! python3 -c "$need" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then  # unpacking a wheel installs a pure-Python package; no pip needed
        for w in .whl/*.whl; do python3 -m zipfile -e "$w" /tmp/gpu-site || exit 1; done
        export PYTHONPATH=/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}
    fi
    python3 -c "$need" || { echo "error: benchmark.py's packages are missing: run 'bash benchmarks/gpu.sh --wheels'" \
        "where there is network and bring .whl/ along" >&2; exit 1; }
fi
device=cuda
case " $* " in *" --device "*) device="";; esac
timeout "${BENCH_TIMEOUT:-330}" python3 benchmark.py ${device:+--device $device} --steps 50 --act-calls 100 \
    --loop-steps 2000 --modes eager bf16 compile compile-bf16 compile-nocg --out "$out/gpu.md" "$@"
status=$?
[ $status -eq 124 ] && echo "- cut short at ${BENCH_TIMEOUT:-330} s: the rows above are the scripts it finished" >> "$out/gpu.md"
official() { local dir="${1:-}"; [ -n "$dir" ] || dir=".official/$2"; [ -d "$dir/agents" ] && echo "$dir"; }
fql=$(official "${OFFICIAL_FQL:-}" fql); driftql=$(official "${OFFICIAL_DRIFTQL:-}" driftql)
deflow=$(official "${OFFICIAL_DEFLOW:-}" deflow); dfp=$(official "${OFFICIAL_DFP:-}" dfp)
if ! python3 -c "import jax, flax, optax, ml_collections" 2>/dev/null; then
    echo "- official JAX not timed: jax, flax, optax or ml_collections does not import here" >> "$out/gpu.md"
elif [ -z "$fql$driftql$deflow$dfp" ]; then
    echo "- official JAX not timed: no checkout in OFFICIAL_<AGENT> or .official/<agent>" >> "$out/gpu.md"
else
    {
        echo
        echo "Official JAX updates (benchmarks/official_jax.py, same sizes):"
        [ -n "$fql" ] && timeout 40 python3 benchmarks/official_jax.py "$fql" --agent fql
        [ -n "$driftql" ] && timeout 40 python3 benchmarks/official_jax.py "$driftql" --agent driftql \
            --utils "${fql:-$driftql}"
        [ -n "$deflow" ] && timeout 40 python3 benchmarks/official_jax.py "$deflow" --agent deflow
        [ -n "$dfp" ] && timeout 40 python3 benchmarks/official_jax.py "$dfp" --agent drift --sequence \
            --set horizon_length=1 "drift_temps=(0.05,)" online_n_samples=16 online_pos_samples=8 q_bon=1 eval_bon=1
    } 2>&1 | grep -v "^$" | grep -v "^ " | sed 's/^official/- official/' >> "$out/gpu.md"
fi
cat "$out/gpu.md"
exit $status
