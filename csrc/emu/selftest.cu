// Kernels that check the emulator itself (tests/test_cuda_emulation.py): warp primitives and
// block reductions against their definitions, conversions and WMMA against torch, and kernels
// that break CUDA's rules on purpose, which the emulator must report or expose.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

namespace {

constexpr int kPrimitives = 12;

// Block of 64 threads (two warps); thread t writes kPrimitives results to out[t * kPrimitives].
__global__ void warp_primitives_kernel(int* out) {
  const int t = threadIdx.x, lane = t % 32;
  int* mine = out + t * kPrimitives;
  mine[0] = __shfl_sync(0xffffffffu, t * 10, 3);
  mine[1] = __shfl_up_sync(0xffffffffu, t, 2, 8);
  mine[2] = __shfl_down_sync(0xffffffffu, t, 3, 16);
  mine[3] = __shfl_xor_sync(0xffffffffu, t, 5);
  mine[4] = static_cast<int>(__ballot_sync(0xffffffffu, t % 3 == 0));
  const auto quad = static_cast<unsigned long long>(lane / 4);
  mine[5] = static_cast<int>(__match_any_sync(0xffffffffu, quad));
  mine[6] = __reduce_add_sync(0xffffffffu, t);
  mine[7] = __syncthreads_count(t % 5 == 0);
  mine[8] = __any_sync(0xffffffffu, t == 40) + 2 * __all_sync(0xffffffffu, lane < 31);
  mine[9] = __shfl_sync(0xffffffffu, t, lane + 1, 4);  // wraps within groups of 4
  // Half-warp groups with their own masks, at the same time.
  const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  mine[10] = __shfl_xor_sync(half, t, 1);
  mine[11] = __syncthreads_or(t == 63) + 2 * __syncthreads_and(t < 63);
}

// Float conversions: out holds, per input, half bits, bf16 bits (round to nearest even) and
// tf32 bits (round to nearest, ties away), then the float values of the half and bf16 back.
__global__ void conversions_kernel(const float* in, int n, uint32_t* bits, float* back) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const __half h = __float2half_rn(in[i]);
  const __nv_bfloat16 b = __float2bfloat16_rn(in[i]);
  bits[3 * i] = __half_as_ushort(h);
  bits[3 * i + 1] = __bfloat16_as_ushort(b);
  bits[3 * i + 2] = __float_as_uint(nvcuda::wmma::__float_to_tf32(in[i]));
  back[2 * i] = __half2float(h);
  back[2 * i + 1] = __bfloat162float(b);
}

// One warp: d = a b + c for a 16 x K row-major tile a, a K x 16 column-major tile b (one column
// per row of `b`), c and d 16 x 16 row-major; operands as given, no explicit tf32 rounding.
template <typename T, int K>
__global__ void wmma_kernel(const float* a, const float* b, const float* c, float* d) {
  namespace wmma = nvcuda::wmma;
  using Element = std::conditional_t<std::is_same_v<T, float>, wmma::precision::tf32, T>;
  __shared__ T tile_a[16 * K];
  __shared__ T tile_b[16 * K];
  for (int e = threadIdx.x; e < 16 * K; e += 32) {
    tile_a[e] = static_cast<T>(a[e]);
    tile_b[e] = static_cast<T>(b[e]);
  }
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, K, Element, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, K, Element, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, K, float> fc;
  wmma::load_matrix_sync(fa, tile_a, K);
  wmma::load_matrix_sync(fb, tile_b, K);
  wmma::load_matrix_sync(fc, c, 16, wmma::mem_row_major);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(d, fc, 16, wmma::mem_row_major);
}

// Each thread publishes its index in shared memory and reads its right neighbour's; without
// the barrier the read races with the neighbour's write.
__global__ void neighbour_kernel(int* out, int barrier) {
  __shared__ int published[128];
  published[threadIdx.x] = static_cast<int>(threadIdx.x);
  if (barrier) __syncthreads();
  out[threadIdx.x] = published[(threadIdx.x + 1) % blockDim.x];
}

// Broken on purpose: the kind selects which rule is broken.
__global__ void broken_kernel(int* out, int kind) {
  const int lane = threadIdx.x % 32;
  switch (kind) {
    case 0:  // half the block at __syncthreads, the other half at a full-warp __syncwarp
      if (lane < 16) {
        __syncthreads();
      } else {
        __syncwarp();
      }
      break;
    case 1:  // a shuffle from a lane outside the mask
      if (lane < 16) out[lane] = __shfl_sync(0x0000ffffu, lane, 20);
      break;
    case 2:  // a full mask after half the warp has exited
      if (lane >= 16) return;
      out[lane] = __shfl_xor_sync(0xffffffffu, lane, 1);
      break;
    default: __trap();
  }
}

}  // namespace

extern "C" {

cudaError_t wvq_emu_test_warp_primitives(int* out) {
  warp_primitives_kernel<<<1, 64>>>(out);
  return cudaGetLastError();
}

cudaError_t wvq_emu_test_conversions(const float* in, int n, uint32_t* bits, float* back) {
  conversions_kernel<<<(n + 127) / 128, 128>>>(in, n, bits, back);
  return cudaGetLastError();
}

// precision: 1 tf32 (K = 8), 2 bf16 (K = 16), 3 half (K = 16).
cudaError_t wvq_emu_test_wmma(int precision, const float* a, const float* b, const float* c,
                              float* d) {
  switch (precision) {
    case 1: wmma_kernel<float, 8><<<1, 32>>>(a, b, c, d); break;
    case 2: wmma_kernel<__nv_bfloat16, 16><<<1, 32>>>(a, b, c, d); break;
    case 3: wmma_kernel<__half, 16><<<1, 32>>>(a, b, c, d); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t wvq_emu_test_neighbour(int* out, int threads, int barrier) {
  neighbour_kernel<<<1, threads>>>(out, barrier);
  return cudaGetLastError();
}

cudaError_t wvq_emu_test_broken(int* out, int kind) {
  broken_kernel<<<1, 64>>>(out, kind);
  return cudaGetLastError();
}

}  // extern "C"
