#!/usr/bin/env bash
# The GPU measurements of issue 17 for a lent GPU machine. Prepare the wheels here first
# (benchmarks/gpu_wheels.sh), then run there with `carry: [".whl"]`:
#   bash benchmarks/gpu_session.sh 1      # correctness: CUDA = CPU for every strategy, host round trips, speed options
#   bash benchmarks/gpu_session.sh 2      # speed: strategy timings, speed options, throughput, sweep concurrency
#   bash benchmarks/gpu_session.sh all    # both, in that order (one machine start: a 15-minute lease fits it)
# BUDGET (seconds, default 560) bounds the whole command: each step runs under its own limit or what
# is left of BUDGET, whichever is smaller, so the command ends inside one device call (10 minutes).
# ONLY (strategy names) narrows part 1 to cuda_check and host round trips of those strategies (a
# rerun after a fix). A failed or timed-out step is logged while the others still run. Results land in $RESULTS (default
# benchmarks/results/gpu/); with ARCHIVE set, they are also packed into that tar.gz after every step
# (the device returns at most 8 files, and a command killed at its limit still returns the archive).
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:?say which part: 1, 2 or all}
RESULTS=${RESULTS:-benchmarks/results/gpu}
BUDGET=${BUDGET:-560}
ARCHIVE=${ARCHIVE:-}
deadline=$((SECONDS + BUDGET))
mkdir -p "$RESULTS"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c "import torch; print('torch', torch.__version__)"; } > "$RESULTS/gpu.txt" 2>&1
log="$RESULTS/session_$part.log"
status=0
run() {  # run SECONDS COMMAND...: one measurement under its own time limit (or what is left of BUDGET)
    local limit=$1 left=$((deadline - SECONDS)) start=$SECONDS
    shift
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 15 ]; then
        echo "SKIPPED (budget spent): $*" | tee -a "$log"
        status=1
        return
    fi
    echo "== [${limit}s] $*" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log" || { echo "FAILED or timed out: $*" | tee -a "$log"; status=1; }
    echo "   ($((SECONDS - start)) s)" | tee -a "$log"
    [ -n "$ARCHIVE" ] && tar -czf "$ARCHIVE" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
}
# rows in one process: a child process per row spent about 30 s starting on the H200 machine
full="--device cuda --in-process --width 1.0 --size 256 --batch 8 --repeats 10 --warmup 3 --threads 8"
if [ "$part" = 1 ] || [ "$part" = all ]; then
    only=${ONLY:+--only $ONLY}
    run 120 python3 benchmarks/cuda_check.py $only --output "$RESULTS/cuda_check.md"
    run 90 python3 benchmarks/bench_host_syncs.py $only --output "$RESULTS/host_syncs.md"
    [ -z "${ONLY:-}" ] && run 100 python3 benchmarks/speed_check.py --device cuda --only vanilla pcgrad mgda_ub jd_upgrad \
        --output "$RESULTS/speed_check.md"
fi
if [ "$part" = 2 ] || [ "$part" = all ]; then
    # each strategy named brings its variant rows (batched, host solver, Gramian, representation, torchjd)
    run 90 python3 benchmarks/bench_strategies.py $full --only vanilla pcgrad mgda_ub jd_upgrad mtl_io \
        --output "$RESULTS/strategies.md"
    run 70 python3 benchmarks/bench_throughput.py --device cuda --datasets refuge --workers 0 4 8 --threads 8 \
        --steps 30 --repeats 2 --data-dir /tmp/medmtl_data --output "$RESULTS/throughput.md"
    for speed in "--speed channels_last" "--bf16" "--speed channels_last --bf16"; do
        name=$(echo "$speed" | tr -d ' -')
        run 40 python3 benchmarks/bench_strategies.py $full --only vanilla $speed --output "$RESULTS/speed_$name.md"
    done
    # speed.compile is refused for the strategies that reuse one forward (docs/performance.md): vanilla only
    run 60 python3 benchmarks/bench_strategies.py $full --only vanilla --speed compile --output "$RESULTS/speed_compile.md"
    run 120 python3 benchmarks/bench_sweep_concurrency.py --device cuda --k 1 2 4 --epochs 1 --full \
        --output "$RESULTS/sweep_concurrency.md"
fi
exit $status
