// Run-time choice of the kernels: the widest ISA this CPU supports, overridable with
// WVQ_CPU_ISA=scalar|avx2|avx512|amx (to test the narrower paths on a wide machine; avx512 is
// AVX-512 without the tile unit).
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "microkernel.h"
#include "soft_assign_kernels.h"

namespace wvq::cpu {

// AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX bits 24 and 22), and Linux's permission to use the
// tile data (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA), which a process must
// request once before its first tile instruction.
static bool amx_usable() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  if ((edx & (1u << 24)) == 0 || (edx & (1u << 22)) == 0) return false;
  constexpr long kRequestPermission = 0x1023, kTileData = 18;
  return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
}

static IsaLevel hardware_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    if (!__builtin_cpu_supports("avx512bf16")) return IsaLevel::kAvx512;
    return amx_usable() ? IsaLevel::kAmx : IsaLevel::kAvx512Bf16;
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
  if (std::strcmp(requested, "amx") == 0) wanted = IsaLevel::kAmx;
  return wanted < hardware ? wanted : hardware;
}

IsaLevel detect_isa() {
  static const IsaLevel level = apply_override(hardware_isa());
  return level;
}

const char* isa_name(IsaLevel level) {
  switch (level) {
    case IsaLevel::kAmx: return "avx512_amx";
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
    case IsaLevel::kAmx:
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
  if (detect_isa() == IsaLevel::kAmx) return &amx_bf16_kernel();
  return detect_isa() == IsaLevel::kAvx512Bf16 ? &avx512_bf16_kernel() : nullptr;
}

// Read on every call, so that tests can compare screened and plain results in one process.
const MicroKernel* screening_kernel(int64_t num_codes, int64_t dim) {
  const char* setting = std::getenv("WVQ_ASSIGN_SCREEN");
  if (setting != nullptr && std::strcmp(setting, "0") == 0) return nullptr;
  if (setting != nullptr && std::strcmp(setting, "1") == 0) return bf16_kernel();
  // The screen saves scan work per row in proportion to K D and costs a fixed amount per row
  // (its candidate lists and the re-ranking). Measured on AMX at N = 32,768 (screened time /
  // plain): K D = 2^16 0.82-1.16x at D 8-32, K D = 2^17 0.63-0.79x at D 8-64 but 1.03x at
  // D = 256, K = 512; K = 4,096, N = 65,536, D = 8 (k-means' size) took 1.5x plain.
  constexpr int64_t kMinCodeDims = int64_t{1} << 17, kMinCodes = 1024;
  if (num_codes * dim < kMinCodeDims || num_codes < kMinCodes) return nullptr;
  // vdpbf16ps has no more dot-product throughput than fp32 FMA on the CPUs measured so far.
  return detect_isa() == IsaLevel::kAmx ? &amx_bf16_kernel() : nullptr;
}

}  // namespace wvq::cpu
