#!/usr/bin/env bash
# The GPU measurements of issue 17, as one command for a lent GPU machine (about 8 minutes on an
# H200). Prepare the wheels here first (benchmarks/gpu_wheels.sh), then run it there with
# `carry: [".whl"]`; every result lands in $OUT (default: benchmarks/results/gpu/).
#   bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
status=0
run() {  # one measurement; a failure is reported and the others still run
    echo "== $*" | tee -a "$OUT/session.log"
    "$@" 2>&1 | tail -40 >> "$OUT/session.log" || { echo "FAILED: $*" | tee -a "$OUT/session.log"; status=1; }
}
run python3 benchmarks/cuda_check.py --output "$OUT/cuda_check.md"
run python3 benchmarks/speed_check.py --device cuda --only vanilla pcgrad mgda_ub jd_upgrad mtl_io ga --output "$OUT/speed_check.md"
run python3 benchmarks/bench_host_syncs.py --output "$OUT/host_syncs.md"
run python3 benchmarks/bench_strategies.py --device cuda --width 1.0 --size 256 --batch 8 --repeats 10 --warmup 3 \
    --threads 8 --only vanilla pcgrad mgda mgda_ub jd_upgrad jd_imtl_g jd_cagrad jd_dualproj mtl_io ga \
    --output "$OUT/strategies.md"
run python3 benchmarks/bench_throughput.py --device cuda --workers 0 4 8 --threads 8 --data-dir /tmp/medmtl_data \
    --output "$OUT/throughput.md"
run python3 benchmarks/bench_sweep_concurrency.py --device cuda --k 1 2 4 --full --output "$OUT/sweep_concurrency.md"
exit $status
