// The assignment micro-kernel, written once and instantiated per ISA by isa_*.cpp, which define
// `Isa` (vector type and a handful of operations) and `Dot` (fp32 FMA or bf16 pair dot product)
// before including this file. A tile of MR rows x (NR vectors of codes) is accumulated in
// registers over all dimensions; the epilogue reduces the NR score vectors of a row to one,
// compares it with the row's running minimum and only when some score beats it (a handful of
// times per row over a whole codebook) stores the scores and finds the index. Scanning codes in
// increasing order with a strict "<" keeps ties on the smallest index.
#pragma once

#include "microkernel.h"

namespace wvq::cpu::WVQ_ISA_NAMESPACE {

template <int NR>
static void update_row_minimum(const typename Isa::V (&scores)[NR], int64_t first_code,
                               float* best, int64_t* best_index) {
  alignas(64) float values[NR * Isa::kWidth];
  for (int j = 0; j < NR; ++j) Isa::store(values + j * Isa::kWidth, scores[j]);
  for (int t = 0; t < NR * Isa::kWidth; ++t) {
    if (values[t] < *best) {
      *best = values[t];
      *best_index = first_code + t;
    }
  }
}

template <class Dot, int MR, int NR>
static void scan(const ScanArgs& a) {
  using V = typename Isa::V;
  constexpr int kChunk = NR * Isa::kWidth;
  const int64_t units = a.units;
  for (int64_t c = 0; c < a.num_chunks; ++c) {
    const float* chunk = a.codes + c * units * kChunk;
    const float* bias = a.bias + c * kChunk;
    V acc[MR][NR];
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) {
      const V b = Isa::load(bias + j * Isa::kWidth);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) acc[r][j] = b;
    }
    for (int64_t u = 0; u < units; ++u) {
      V code[NR];
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j) code[j] = Isa::load(chunk + u * kChunk + j * Isa::kWidth);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const V row = Isa::broadcast(a.rows + r * a.row_stride + u);
#pragma GCC unroll 16
        for (int j = 0; j < NR; ++j) acc[r][j] = Dot::step(acc[r][j], row, code[j]);
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      V low = acc[r][0];
#pragma GCC unroll 16
      for (int j = 1; j < NR; ++j) low = Isa::min(low, acc[r][j]);
      if (Isa::any_less(low, a.best[r])) {
        update_row_minimum<NR>(acc[r], a.first_code + c * kChunk, a.best + r,
                                   a.best_index + r);
      }
    }
  }
}

template <class Dot, int MR, int NR>
static const MicroKernel& make_kernel(const char* name) {
  static const MicroKernel kernel{name, MR, NR * Isa::kWidth, &scan<Dot, MR, NR>};
  return kernel;
}

}  // namespace wvq::cpu::WVQ_ISA_NAMESPACE
