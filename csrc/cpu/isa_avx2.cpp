// AVX2 + FMA micro-kernel and soft-assignment kernels for CPUs without AVX-512. Only this
// translation unit is compiled for AVX2; dispatch.cpp calls into it only after checking the CPU.
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include <cstdint>

#define WVQ_ISA_NAMESPACE avx2

namespace wvq::cpu::avx2 {

struct Isa {
  using V = __m256;
  static constexpr int kWidth = 8;
  typedef int32_t Bits __attribute__((vector_size(32)));  // the lanes' bit patterns
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static uint32_t less_mask(V v, float bound) {  // bit i: lane i < bound
    return static_cast<uint32_t>(
        _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(bound), _CMP_LT_OQ)));
  }
  static bool any_less(V v, float bound) { return less_mask(v, bound) != 0; }
};

struct Fp32Dot {
  static __m256 step(__m256 acc, __m256 row, __m256 code) {
    return _mm256_fmadd_ps(row, code, acc);
  }
};

}  // namespace wvq::cpu::avx2

#include "scan_impl.h"
#include "soft_assign_impl.h"

namespace wvq::cpu {

// 4 rows x 3 vectors = 12 accumulators + 3 code vectors + a broadcast fit the 16 registers.
const MicroKernel& avx2_fp32_kernel() {
  return avx2::make_kernel<avx2::Fp32Dot, 4, 3>("avx2-fp32");
}

// 2 rows x 4 vectors = 8 accumulators + 4 code vectors + temporaries fit the 16 registers.
const SoftAssignKernels& avx2_soft_assign_kernels() {
  return avx2::make_soft_assign_kernels<2, 4>("avx2");
}

}  // namespace wvq::cpu
