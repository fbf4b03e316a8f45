// AVX-512 micro-kernels: fp32 FMA and bf16 pair dot products (vdpbf16ps), and the soft-assignment
// kernels. This translation unit alone is compiled for AVX-512; dispatch.cpp calls into it only
// after checking the CPU.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")
#include <immintrin.h>

#include <cstdint>

#define WVQ_ISA_NAMESPACE avx512

namespace wvq::cpu::avx512 {

struct Isa {
  using V = __m512;
  static constexpr int kWidth = 16;
  typedef int32_t Bits __attribute__((vector_size(64)));  // the lanes' bit patterns
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static uint32_t less_mask(V v, float bound) {  // bit i: lane i < bound
    return _mm512_cmp_ps_mask(v, _mm512_set1_ps(bound), _CMP_LT_OQ);
  }
  static bool any_less(V v, float bound) { return less_mask(v, bound) != 0; }
};

struct Fp32Dot {
  static __m512 step(__m512 acc, __m512 row, __m512 code) {
    return _mm512_fmadd_ps(row, code, acc);
  }
};

// Each 32-bit lane holds two bf16 values (dimensions 2u and 2u+1); the instruction adds both
// products to the fp32 accumulator, so one step covers two dimensions.
struct Bf16PairDot {
  static __m512 step(__m512 acc, __m512 row, __m512 code) {
    return _mm512_dpbf16_ps(acc, (__m512bh)row, (__m512bh)code);
  }
};

}  // namespace wvq::cpu::avx512

#include "scan_impl.h"
#include "soft_assign_impl.h"

namespace wvq::cpu {

// The tile of both scan kernels (fp32 and bf16 pairs use the same registers): 6 rows x 4 vectors
// = 24 accumulators + 4 code vectors + a broadcast fit the 32 registers.
constexpr int kScanRows = 6;
constexpr int kScanVectors = 4;

const MicroKernel& avx512_fp32_kernel() {
  return avx512::make_kernel<avx512::Fp32Dot, kScanRows, kScanVectors>("avx512-fp32");
}

const MicroKernel& avx512_bf16_kernel() {
  return avx512::make_kernel<avx512::Bf16PairDot, kScanRows, kScanVectors>("avx512-bf16");
}

// 4 rows x 4 vectors of distances = 16 accumulators + 4 code vectors.
const SoftAssignKernels& avx512_soft_assign_kernels() {
  return avx512::make_soft_assign_kernels<4, 4>("avx512");
}

}  // namespace wvq::cpu
