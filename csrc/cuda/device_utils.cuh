// Helpers shared by the .cu files: input element types, the warp-aggregated histogram and a
// deterministic block sum.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "launchers.h"

namespace wvq::cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(double v) { return static_cast<float>(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ double to_double(T v) {
  return static_cast<double>(to_float(v));
}
template <>
__device__ __forceinline__ double to_double(double v) {
  return v;
}

// Calls fn(T{}) with T the C++ type of a WvqDtype, so that one launcher serves every input type.
template <typename Fn>
cudaError_t with_input_type(int dtype, Fn&& fn) {
  switch (dtype) {
    case kWvqFloat32: return fn(float{});
    case kWvqFloat16: return fn(__half{});
    case kWvqBFloat16: return fn(__nv_bfloat16{});
    case kWvqFloat64: return fn(double{});
    default: return cudaErrorInvalidValue;
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One atomic per distinct code in the warp rather than one per lane: when the codebook has
// collapsed and every row picks the same code, 32 increments become one. `active` is the mask
// of lanes that hold a code; every lane in it must call this.
__device__ __forceinline__ void count_code(int64_t* counts, int64_t code, unsigned active) {
  const unsigned peers = __match_any_sync(active, static_cast<unsigned long long>(code));
  const int leader = __ffs(peers) - 1;
  if ((threadIdx.x & 31) == static_cast<unsigned>(leader)) {
    atomicAdd(reinterpret_cast<unsigned long long*>(counts + code),
              static_cast<unsigned long long>(__popc(peers)));
  }
}

// Fixed-shape tree sum over a block of kThreads threads (a power of two), so that the result is
// the same on every run. Every thread must call it; scratch holds kThreads doubles.
template <int kThreads>
__device__ double block_sum(double value, double* scratch) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
    __syncthreads();
  }
  const double total = scratch[0];
  __syncthreads();
  return total;
}

}  // namespace wvq::cuda
