#!/usr/bin/env bash
# GPU first run: on the first machine with a CUDA GPU, in under 10 minutes (sized for an H200
# with 16 cores), each step under its own time box:
#   1. build _C and _C_cuda into the CUDA venv, as README "Building the CUDA backend" does
#      (plus --no-deps: the venv already holds the pins, and a GPU box may be offline):
#        WVQ_BUILD_CUDA=1 CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST="8.0;9.0" \
#          $PYTHON -m pip install --no-build-isolation --no-deps -e .             (240 s)
#   2. the `gpu` tests: $PYTHON -m pytest -q -m gpu tests/                         (150 s)
#   3. CUDA vs Triton vs PyTorch (materialised and chunked) for every op at K = 65,536
#      (python -m wvq_kernels.bench.first_run, on the benchmarks' inputs and peers),
#      written with the build and test outcomes to bench-results/gpu-first-run.md, from
#      which `auto`'s per-op routing table is then set                            (180 s)
# Logs go to bench-results/gpu-first-run-{build,tests}.log (bench-results/ is git-ignored).
#
#   bash scripts/gpu_first_run.sh          # PYTHON defaults to .venv-cuda/bin/python
#
# Exit status:
#   0  every step ran and passed; the report is written
#   1  a step failed or ran out of time (the report, if the timing ran, says which)
#   3  no CUDA device (no nvidia-smi, no GPU it lists, or torch sees none): nothing was run
#   4  no Python with a CUDA build of torch at $PYTHON: create .venv-cuda as the README says
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv-cuda/bin/python}
OUT=bench-results
REPORT=$OUT/gpu-first-run.md
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET

if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L 2> /dev/null | grep -q '^GPU'; then
    echo "gpu_first_run: no CUDA device (nvidia-smi finds no GPU); nothing to run" >&2
    exit 3
fi
if ! "$PYTHON" -c "import torch, sys; sys.exit(torch.version.cuda is None)" 2> /dev/null; then
    echo "gpu_first_run: $PYTHON has no CUDA build of torch; create .venv-cuda (README," \
        "\"Building the CUDA backend\") or set PYTHON" >&2
    exit 4
fi
if ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_first_run: no CUDA device visible to torch; nothing to run" >&2
    exit 3
fi
mkdir -p "$OUT"
status=0
notes=()

step() {  # step NAME SECONDS LOG COMMAND...: runs COMMAND under a time box, notes the outcome
    local name=$1 seconds=$2 log=$3 started=$SECONDS
    shift 3
    echo "== $name (at most $seconds s)"
    timeout --kill-after=10 "$seconds" "$@" > "$log" 2>&1
    local rc=$?
    local outcome="passed"
    if ((rc == 124 || rc == 137)); then
        outcome="TIMED OUT after $seconds s"
    elif ((rc != 0)); then
        outcome="FAILED (exit $rc)"
    fi
    ((rc == 0)) || status=1
    local summary
    summary=$(tail -n 1 "$log")
    notes+=(--note "$name: $outcome in $((SECONDS - started)) s; last line: ${summary:0:200} (log $log)")
    echo "   $outcome; $summary"
}

step build 240 "$OUT/gpu-first-run-build.log" \
    env WVQ_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" \
    "$PYTHON" -m pip install --no-build-isolation --no-deps -e .
if "$PYTHON" -c "import pytest" 2> /dev/null; then
    step "gpu tests" 150 "$OUT/gpu-first-run-tests.log" \
        "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests/
else
    status=1
    notes+=(--note "gpu tests: NOT RUN, pytest is not installed in $PYTHON (pip install pytest)")
    echo "== gpu tests: NOT RUN, pytest is not installed in $PYTHON"
fi
echo "== timing (at most 180 s)"
timeout --kill-after=10 180 "$PYTHON" -m wvq_kernels.bench.first_run \
    --out "$REPORT" --budget-s 150 "${notes[@]}" || status=1
echo "gpu_first_run: exit $status; report $REPORT"
exit $status
