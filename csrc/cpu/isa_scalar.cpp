// Portable micro-kernel and soft-assignment kernels for CPUs with neither AVX2 nor AVX-512 (and
// the reference point the vector kernels are tested against through the public op).
#include <cstdint>

#define WVQ_ISA_NAMESPACE scalar

namespace wvq::cpu::scalar {

struct Isa {
  using V = float;
  static constexpr int kWidth = 1;
  using Bits = int32_t;
  static V load(const float* p) { return *p; }
  static V broadcast(const float* p) { return *p; }
  static void store(float* p, V v) { *p = v; }
  static V min(V a, V b) { return b < a ? b : a; }
  static uint32_t less_mask(V v, float bound) { return v < bound ? 1u : 0u; }
  static bool any_less(V v, float bound) { return v < bound; }
};

struct Fp32Dot {
  static float step(float acc, float row, float code) { return acc + row * code; }
};

}  // namespace wvq::cpu::scalar

#include "scan_impl.h"
#include "soft_assign_impl.h"

namespace wvq::cpu {

const MicroKernel& scalar_fp32_kernel() {
  return scalar::make_kernel<scalar::Fp32Dot, 4, 4>("scalar-fp32");
}

const SoftAssignKernels& scalar_soft_assign_kernels() {
  return scalar::make_soft_assign_kernels<2, 8>("scalar");
}

}  // namespace wvq::cpu
