// The assignment micro-kernel, written once and instantiated per ISA by isa_*.cpp, which define
// `Isa` (vector type and a handful of operations) and `Dot` (fp32 FMA or bf16 pair dot product)
// before including this file. A tile of MR rows x (NR vectors of codes) is accumulated in
// registers over all dimensions; the epilogue reduces the NR score vectors of a row to one,
// compares it with the row's threshold (its running minimum, or the k-th best score of its
// top-k list) and only when some score beats it (a handful of times per row over a whole
// codebook) stores the scores and updates the row. Scanning codes in increasing order with a
// strict "<" keeps ties on the smallest index, at every rank of a top-k list.
#pragma once

#include "microkernel.h"

namespace wvq::cpu::WVQ_ISA_NAMESPACE {

// The nearest code: one running (minimum, index) per row.
struct NearestCode {
  static float threshold(const ScanArgs& a, int r) { return a.best[r]; }

  template <int NR>
  static void update(const typename Isa::V (&scores)[NR], int64_t first_code, const ScanArgs& a,
                     int r) {
    alignas(64) float values[NR * Isa::kWidth];
    for (int j = 0; j < NR; ++j) Isa::store(values + j * Isa::kWidth, scores[j]);
    float* best = a.best + r;
    for (int t = 0; t < NR * Isa::kWidth; ++t) {
      if (values[t] < *best) {
        *best = values[t];
        a.best_index[r] = first_code + t;
      }
    }
  }
};

// The k nearest codes: a sorted list of k (score, index) pairs per row; a score enters only
// when it beats the list's last (the threshold), and goes after equal scores already there,
// whose indices are smaller.
struct NearestCodes {
  static float threshold(const ScanArgs& a, int r) {
    return a.best[(r + 1) * a.list_length - 1];
  }

  template <int NR>
  static void update(const typename Isa::V (&scores)[NR], int64_t first_code, const ScanArgs& a,
                     int r) {
    alignas(64) float values[NR * Isa::kWidth];
    for (int j = 0; j < NR; ++j) Isa::store(values + j * Isa::kWidth, scores[j]);
    const int64_t k = a.list_length;
    float* best = a.best + r * k;
    int64_t* best_index = a.best_index + r * k;
    for (int t = 0; t < NR * Isa::kWidth; ++t) {
      if (!(values[t] < best[k - 1])) continue;
      int64_t slot = k - 1;
      for (; slot > 0 && best[slot - 1] > values[t]; --slot) {
        best[slot] = best[slot - 1];
        best_index[slot] = best_index[slot - 1];
      }
      best[slot] = values[t];
      best_index[slot] = first_code + t;
    }
  }
};

template <class Dot, int MR, int NR, class Selection>
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
      if (Isa::any_less(low, Selection::threshold(a, r))) {
        Selection::template update<NR>(acc[r], a.first_code + c * kChunk, a, r);
      }
    }
  }
}

template <class Dot, int MR, int NR>
static const MicroKernel& make_kernel(const char* name) {
  static const MicroKernel kernel{name, MR, NR * Isa::kWidth, &scan<Dot, MR, NR, NearestCode>,
                                  &scan<Dot, MR, NR, NearestCodes>};
  return kernel;
}

}  // namespace wvq::cpu::WVQ_ISA_NAMESPACE
