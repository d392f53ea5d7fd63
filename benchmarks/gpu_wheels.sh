#!/usr/bin/env bash
# Wheels of the Python packages the lent GPU machine lacks (its image has torch, lightning, timm,
# scikit-learn, opencv, ... but not these), for its Python 3.12 on x86-64, at the versions installed
# here, into .whl/ (ignored by git). Run here, once, before benchmarks/gpu_session.sh travels there
# with `carry: [".whl"]`. About 16 MB. cvxpy's solvers are only those the strategies call (ECOS for
# Nash-MTL, CLARABEL for CAGrad's host solver) and qdldl, which cvxpy imports: SCS (43 MB), OSQP,
# HiGHS and sparsediffpy are left out so that the working tree stays under the device's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
packages="hydra-core omegaconf antlr4-python3-runtime hydra-joblib-launcher torchjd quadprog qpsolvers cvxpy clarabel ecos qdldl openpyxl et-xmlfile
albumentations albucore pydantic pydantic-core annotated-types typing-inspection stringzilla simsimd"
mkdir -p .whl
for package in $packages; do
    version=$(python3 -m pip show "$package" | awk '/^Version:/ {print $2}')
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d .whl "$package==$version" 2>/dev/null ||
        python3 -m pip wheel -q --no-deps -w .whl "$package==$version"  # pure Python, published as sources only
done
du -sh .whl
