#!/usr/bin/env bash
# CUDA kernels executed on the host (no GPU needed): builds the emulation library from the .cu
# files of CSRC (default: this checkout's csrc) with scripts/cuda_emu_build.py and runs
# tests/test_cuda_emulation.py against it. With --trial, also the mutation trial
# (scripts/cuda_emu_trial.py): a removed barrier or a wrong index in a copy of the kernels must
# make those tests fail. With --asan, the kernels and the emulator are built with
# AddressSanitizer (into build/cuda-emu-asan) and out-of-bounds accesses to global memory fail.
#
#   bash scripts/cuda_emu.sh [--trial] [--asan] [CSRC] [-- PYTEST_ARGS...]
#
# Environment: PYTHON (default .venv/bin/python), WVQ_EMU_BUILD (build folder, default
# build/cuda-emu), WVQ_EMU_SCHEDULE (forward|reverse|alternate|random:SEED),
# WVQ_EMU_TRACE=1 (one line per launch), WVQ_EMU_TIMEOUT (seconds per launch, default 300).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
trial=0
preload=()
capture=()
while [ $# -gt 0 ]; do
  case "$1" in
    --trial) trial=1 ;;
    --asan)
      export WVQ_EMU_ASAN=1 WVQ_EMU_BUILD="${WVQ_EMU_BUILD:-build/cuda-emu-asan}"
      export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
      # libasan first; libstdc++ before the extensions that throw C++ exceptions (triton).
      libraries="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)"
      preload=(env "LD_PRELOAD=$libraries")
      # Python-level capture only: sanitizer reports go to fd 2 and must not be swallowed.
      capture=(--capture=sys)
      ;;
    *) break ;;
  esac
  shift
done
csrc="$PWD/csrc"
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  csrc="$(cd "$1" && pwd)"
  shift
fi
[ "${1:-}" = "--" ] && shift
export WVQ_EMU_CSRC="$csrc"
export WVQ_EMU_BUILD="${WVQ_EMU_BUILD:-build/cuda-emu}"
echo "== cuda_emu: kernels of $csrc"
nice -n 10 "$PYTHON" scripts/cuda_emu_build.py --csrc "$csrc" --out "$WVQ_EMU_BUILD"
nice -n 10 "${preload[@]}" "$PYTHON" -m pytest -q "${capture[@]}" tests/test_cuda_emulation.py "$@"
if [ "$trial" = 1 ]; then
  echo "== cuda_emu: mutation trial"
  # The trial's pytest runs load no sanitizer runtime: its builds go without.
  WVQ_EMU_ASAN= nice -n 10 "$PYTHON" scripts/cuda_emu_trial.py --csrc "$csrc"
fi
