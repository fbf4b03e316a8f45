// Run-time choice of the kernels: the widest ISA this CPU supports, overridable with
// WVQ_CPU_ISA=scalar|avx2|avx512 (to test the narrower paths on a wide machine).
#include <cstdlib>
#include <cstring>

#include "microkernel.h"
#include "soft_assign_kernels.h"

namespace wvq::cpu {

static IsaLevel hardware_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return __builtin_cpu_supports("avx512bf16") ? IsaLevel::kAvx512Bf16 : IsaLevel::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return IsaLevel::kAvx2;
  return IsaLevel::kScalar;
}

// An override may only lower the level: asking for AVX-512 on an AVX2 CPU keeps AVX2.
static IsaLevel apply_override(IsaLevel hardware) {
  const char* requested = std::getenv("WVQ_CPU_ISA");
  if (requested == nullptr) return hardware;
  IsaLevel wanted = hardware;
  if (std::strcmp(requested, "scalar") == 0) wanted = IsaLevel::kScalar;
  if (std::strcmp(requested, "avx2") == 0) wanted = IsaLevel::kAvx2;
  if (std::strcmp(requested, "avx512") == 0) wanted = IsaLevel::kAvx512Bf16;
  return wanted < hardware ? wanted : hardware;
}

IsaLevel detect_isa() {
  static const IsaLevel level = apply_override(hardware_isa());
  return level;
}

const char* isa_name(IsaLevel level) {
  switch (level) {
    case IsaLevel::kAvx512Bf16: return "avx512_bf16";
    case IsaLevel::kAvx512: return "avx512";
    case IsaLevel::kAvx2: return "avx2";
    default: return "scalar";
  }
}

// The entry of a per-ISA family of kernels that this CPU runs.
template <class Kernels>
static const Kernels& widest(const Kernels& (*avx512)(), const Kernels& (*avx2)(),
                             const Kernels& (*scalar)()) {
  switch (detect_isa()) {
    case IsaLevel::kAvx512Bf16:
    case IsaLevel::kAvx512: return avx512();
    case IsaLevel::kAvx2: return avx2();
    default: return scalar();
  }
}

const MicroKernel& fp32_kernel() {
  return widest(avx512_fp32_kernel, avx2_fp32_kernel, scalar_fp32_kernel);
}

const SoftAssignKernels& soft_assign_kernels() {
  return widest(avx512_soft_assign_kernels, avx2_soft_assign_kernels, scalar_soft_assign_kernels);
}

const MicroKernel* bf16_kernel() {
  return detect_isa() == IsaLevel::kAvx512Bf16 ? &avx512_bf16_kernel() : nullptr;
}

}  // namespace wvq::cpu
