#!/usr/bin/env bash
# The GPU measurements of issue 17 for a lent GPU machine, in two parts of at most about 9 minutes
# each (one device command may run 10): part 1 checks correctness, part 2 measures speed.
# Prepare the wheels here first (benchmarks/gpu_wheels.sh), then run there with `carry: [".whl"]`:
#   bash benchmarks/gpu_session.sh 1      # CUDA = CPU for every strategy, speed options, host round trips
#   bash benchmarks/gpu_session.sh 2      # strategy timings, speed options, throughput, sweep concurrency
# Results land in $OUT (default: benchmarks/results/gpu/); each step has its own time limit, and a
# failed or timed-out step is logged while the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:?say which part: 1 or 2}
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
status=0
run() {  # run SECONDS COMMAND...: one measurement under its own time limit
    local limit=$1
    shift
    echo "== $*" | tee -a "$OUT/session_$part.log"
    timeout "$limit" "$@" 2>&1 | tail -40 >> "$OUT/session_$part.log" || { echo "FAILED or timed out: $*" | tee -a "$OUT/session_$part.log"; status=1; }
}
strategies="vanilla pcgrad mgda mgda_ub jd_upgrad jd_imtl_g jd_cagrad jd_dualproj mtl_io ga"
full="--device cuda --width 1.0 --size 256 --batch 8 --repeats 10 --warmup 3 --threads 8"
if [ "$part" = 1 ]; then
    run 200 python3 benchmarks/cuda_check.py --output "$OUT/cuda_check.md"
    run 150 python3 benchmarks/bench_host_syncs.py --output "$OUT/host_syncs.md"
    run 180 python3 benchmarks/speed_check.py --device cuda --only vanilla pcgrad mgda_ub jd_upgrad mtl_io ga \
        --output "$OUT/speed_check.md"
else
    run 200 python3 benchmarks/bench_strategies.py $full --only $strategies --output "$OUT/strategies.md"
    for speed in "--speed channels_last" "--bf16" "--speed channels_last --bf16"; do
        name=$(echo "$speed" | tr -d ' -' )
        run 60 python3 benchmarks/bench_strategies.py $full --only vanilla jd_upgrad $speed --output "$OUT/speed_$name.md"
    done
    # speed.compile is refused for the Jacobian methods (docs/performance.md): vanilla only
    run 90 python3 benchmarks/bench_strategies.py $full --only vanilla --speed compile --output "$OUT/speed_compile.md"
    run 120 python3 benchmarks/bench_throughput.py --device cuda --workers 0 4 8 --threads 8 --steps 30 --repeats 2 \
        --data-dir /tmp/medmtl_data --output "$OUT/throughput.md"
    run 90 python3 benchmarks/bench_sweep_concurrency.py --device cuda --k 1 2 4 --full --output "$OUT/sweep_concurrency.md"
fi
exit $status
