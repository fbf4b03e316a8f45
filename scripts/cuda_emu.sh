#!/usr/bin/env bash
# CUDA kernels executed on the host (no GPU needed): builds the emulation library from the .cu
# files of CSRC (default: this checkout's csrc) with scripts/cuda_emu_build.py and runs
# tests/test_cuda_emulation.py against it. With --trial, also the mutation trial
# (scripts/cuda_emu_trial.py): a removed barrier or a wrong index in a copy of the kernels must
# make those tests fail.
#
#   bash scripts/cuda_emu.sh [--trial] [CSRC] [-- PYTEST_ARGS...]
#
# Environment: PYTHON (default .venv/bin/python), WVQ_EMU_BUILD (build folder, default
# build/cuda-emu), WVQ_EMU_SCHEDULE (forward|reverse|alternate|random:SEED),
# WVQ_EMU_TRACE=1 (one line per launch), WVQ_EMU_TIMEOUT (seconds per launch, default 300).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
trial=0
if [ "${1:-}" = "--trial" ]; then
  trial=1
  shift
fi
csrc="$PWD/csrc"
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  csrc="$(cd "$1" && pwd)"
  shift
fi
[ "${1:-}" = "--" ] && shift
export WVQ_EMU_CSRC="$csrc"
echo "== cuda_emu: kernels of $csrc"
nice -n 10 "$PYTHON" scripts/cuda_emu_build.py --csrc "$csrc" --out "${WVQ_EMU_BUILD:-build/cuda-emu}"
nice -n 10 "$PYTHON" -m pytest -q tests/test_cuda_emulation.py "$@"
if [ "$trial" = 1 ]; then
  echo "== cuda_emu: mutation trial"
  nice -n 10 "$PYTHON" scripts/cuda_emu_trial.py --csrc "$csrc"
fi
