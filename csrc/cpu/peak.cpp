// Peak arithmetic throughput of this CPU, measured rather than assumed: the benchmark report's
// "fraction of peak" divides the assignment's GFLOP/s by it. Every thread runs independent chains
// of fp32 FMAs or of bf16 pair dot products (vdpbf16ps, or tdpbf16ps on AMX tiles) on registers,
// so that neither memory nor instruction latency limits them. Each loop carries its own target
// attribute (the tile loop lives in isa_amx.cpp): the rest of this file, torch's headers
// included, stays at the build's baseline ISA.
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <omp.h>
#include <torch/library.h>

#include <ctime>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "microkernel.h"

namespace wvq::cpu {
namespace {

// Independent accumulators: more than latency x issue width (4-6 cycles x 2 per cycle) of the
// instructions on current cores, so that each one waits for nothing.
constexpr int kChains = 16;
constexpr int kStepsPerRound = 4096;

// The sum of every lane of the accumulators (through memory: no ISA of its own needed).
template <class V>
float lane_sum(const V (&acc)[kChains]) {
  float lanes[kChains * sizeof(V) / sizeof(float)];
  std::memcpy(lanes, acc, sizeof(acc));
  return std::accumulate(std::begin(lanes), std::end(lanes), 0.0f);
}

// One round: kChains x kStepsPerRound instructions; returns a sum so that none is dead code.
// acc * 0.5 + 1 stays near 2: no overflow, no denormals.
__attribute__((target("avx512f"))) float avx512_fma_round() {
  __m512 acc[kChains];
  for (auto& a : acc) a = _mm512_set1_ps(1.0f);
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  for (int step = 0; step < kStepsPerRound; ++step) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], half, one);
  }
  return lane_sum(acc);
}

__attribute__((target("avx2,fma"))) float avx2_fma_round() {
  __m256 acc[kChains];
  for (auto& a : acc) a = _mm256_set1_ps(1.0f);
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  for (int step = 0; step < kStepsPerRound; ++step) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], half, one);
  }
  return lane_sum(acc);
}

// Pairs of 2^-8 (0x3B80 in bf16): each instruction adds 32 x 2^-16, so the accumulators grow
// slowly and stay finite over any run.
__attribute__((target("avx512f,avx512bf16"))) float avx512_bf16_round() {
  __m512 acc[kChains];
  for (auto& a : acc) a = _mm512_setzero_ps();
  const __m512bh small = (__m512bh)_mm512_set1_epi16(0x3B80);
  for (int step = 0; step < kStepsPerRound; ++step) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], small, small);
  }
  return lane_sum(acc);
}

// The tile unit's round: kChains x kStepsPerRound tdpbf16ps like the others' instructions.
float amx_round() { return amx_peak_round(int64_t{kChains} * kStepsPerRound / 4); }

struct Loop {
  float (*round)();
  // 2 per product: 16 fp32 lanes, 8 AVX2 lanes, 32 bf16 pairs; 16 x 16 x 32 for a tile
  double flop_per_instruction;
};

// CPU seconds this thread has run: other processes on the machine do not count, so that the
// peak is that of the cores rather than of a share of them.
double thread_seconds() {
  timespec now;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

// Every thread repeats rounds until it has run `seconds` of CPU time; the sum of the threads'
// rates. One round first, outside the clock, wakes the core to its vector frequency.
double measure(const Loop& loop, double seconds) {
  const int threads = at::get_num_threads();
  std::vector<double> gflops(threads, 0.0);
  volatile float sink = 0.0f;
#pragma omp parallel num_threads(threads)
  {
    float local = loop.round();
    const double start = thread_seconds();
    int64_t rounds = 0;
    double spent = 0.0;
    while (spent < seconds) {
      local += loop.round();
      ++rounds;
      spent = thread_seconds() - start;
    }
    const double instructions = static_cast<double>(rounds) * kChains * kStepsPerRound;
    gflops[omp_get_thread_num()] = instructions * loop.flop_per_instruction / spent / 1e9;
#pragma omp critical
    sink = sink + local;
  }
  return std::accumulate(gflops.begin(), gflops.end(), 0.0);
}

// GFLOP/s of `kind` ("fp32": FMA, "bf16": vdpbf16ps, "amx_bf16": tdpbf16ps) on
// at::get_num_threads() threads, with the widest ISA the kernels use here (WVQ_CPU_ISA
// included); NaN where this CPU has no such loop.
double peak_gflops(const std::string& kind, double seconds) {
  const IsaLevel isa = detect_isa();
  // The levels are ordered: an AMX machine has AVX-512 FMA and vdpbf16ps too.
  const bool avx512 = isa >= IsaLevel::kAvx512;
  if (kind == "fp32" && avx512) return measure({avx512_fma_round, 32.0}, seconds);
  if (kind == "fp32" && isa == IsaLevel::kAvx2) return measure({avx2_fma_round, 16.0}, seconds);
  if (kind == "bf16" && isa >= IsaLevel::kAvx512Bf16) {
    return measure({avx512_bf16_round, 64.0}, seconds);
  }
  if (kind == "amx_bf16" && isa == IsaLevel::kAmx) {
    return measure({amx_round, 2.0 * 16 * 16 * 32}, seconds);
  }
  TORCH_CHECK(kind == "fp32" || kind == "bf16" || kind == "amx_bf16",
              "peak_gflops: kind must be fp32, bf16 or amx_bf16, got ", kind);
  return std::numeric_limits<double>::quiet_NaN();
}

}  // namespace
}  // namespace wvq::cpu

TORCH_LIBRARY_FRAGMENT(wvq, m) {
  m.def("peak_gflops(str kind, float seconds) -> float", &wvq::cpu::peak_gflops);
}
