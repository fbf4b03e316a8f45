#!/usr/bin/env bash
# CUDA CI without a GPU (called from .ci/run):
#  1. CMake + nvcc build of every csrc/cuda/*.cu for sm_80 and sm_90 with -Xptxas -v; the
#     per-kernel table (registers, smem, spills) fails on any spill or smem over the arch limit;
#  2. the PTX of the assignment kernels must hold tensor-core mma instructions (tf32 and bf16);
#  3. the host unit tests of csrc/common (ctest);
#  4. a venv with the CUDA torch pinned in pyproject.toml ([tool.wvq], a CUDA 13.0 build) builds
#     wvq_kernels._C_cuda, loads it, and every wvq op must have a CUDA kernel registered.
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
NVCC="$CUDA_HOME/bin/nvcc"
BUILD=build/cuda-ci
CUDA_VENV=.venv-cuda
# The sources' one C++ standard, set in CMakeLists.txt.
CXX_STANDARD=$(sed -n 's/^set(WVQ_CXX_STANDARD \([0-9]\+\))$/\1/p' CMakeLists.txt)
[ -n "$CXX_STANDARD" ] || { echo "cuda_ci: no set(WVQ_CXX_STANDARD N) in CMakeLists.txt"; exit 1; }
mkdir -p build
started=$SECONDS

step() { echo "== cuda_ci: $* ($((SECONDS - started)) s)"; }

step "cmake build of csrc/cuda for sm_80 and sm_90"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_CUDA_COMPILER="$NVCC" \
  -DCMAKE_CUDA_ARCHITECTURES="80-real;90" > "$BUILD.configure.log"
# A clean build, so that ptxas reports every kernel (an incremental build prints nothing).
cmake --build "$BUILD" --target clean > /dev/null
nice -n 10 cmake --build "$BUILD" -v > "$BUILD.log" 2>&1 || { cat "$BUILD.log"; exit 1; }
python3 scripts/ptxas_table.py < "$BUILD.log"

step "tensor-core instructions in the assignment PTX"
for arch in 80 90; do
  ptx="$BUILD/assign.sm_$arch.ptx"
  nice -n 10 "$NVCC" -std=c++"$CXX_STANDARD" -O3 -Icsrc -arch="sm_$arch" --ptx \
    csrc/cuda/assign.cu -o "$ptx"
  for shape in "m16n16k8.f32.tf32.tf32.f32" "m16n16k16.f32.bf16.bf16.f32"; do
    count=$(grep -c "mma.sync.aligned.row.col.$shape" "$ptx" || true)
    echo "sm_$arch  mma.sync ...$shape: $count"
    [ "$count" -gt 0 ] || { echo "FAIL: no $shape mma in sm_$arch PTX"; exit 1; }
  done
done

step "host unit tests"
ctest --test-dir "$BUILD" --output-on-failure

step "CUDA torch venv: build and register _C_cuda"
[ -x "$CUDA_VENV/bin/python" ] || python3.11 -m venv "$CUDA_VENV"
requirements=$(python3 scripts/pins.py cuda)
mapfile -t cuda_requirements <<< "$requirements"
# A no-op once the pins are met; the first time it installs the multi-GB CUDA torch.
nice -n 10 "$CUDA_VENV/bin/pip" install -q "${cuda_requirements[@]}" numpy 2>&1 \
  | { grep -v "^WARNING: Location 'file:" || true; }
# A separate build dir: the CPU venv's in-place wvq_kernels/_C (CPU torch) stays untouched.
WVQ_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0+PTX" MAX_JOBS=2 nice -n 10 \
  "$CUDA_VENV/bin/python" setup.py -q build_ext --build-lib build/cuda-lib \
  --build-temp build/cuda-temp > build/cuda-ext.log 2>&1 || { tail -50 build/cuda-ext.log; exit 1; }
"$CUDA_VENV/bin/python" scripts/check_cuda_registration.py build/cuda-lib/wvq_kernels
# +PTX: GPUs newer than sm_90 JIT the kernels from the embedded compute_90 PTX.
cuobjdump="$CUDA_HOME/bin/cuobjdump"  # not in every toolkit install; triton bundles one
[ -x "$cuobjdump" ] || cuobjdump=$("$CUDA_VENV/bin/python" -c \
  "import os, triton.backends.nvidia as n; print(os.path.dirname(n.__file__) + '/bin/cuobjdump')")
ptx=$("$cuobjdump" --list-ptx build/cuda-lib/wvq_kernels/_C_cuda*.so)
echo "$ptx" | grep -c "sm_90" | sed 's/^/_C_cuda: PTX files for compute_90: /'
echo "$ptx" | grep -q "sm_90" || { echo "FAIL: no compute_90 PTX in _C_cuda"; exit 1; }
step "done"
