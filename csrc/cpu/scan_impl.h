// The assignment micro-kernel, written once and instantiated per ISA by isa_*.cpp, which define
// `Isa` (vector type and a handful of operations) and `Dot` (fp32 FMA or bf16 pair dot product)
// before including this file. A tile of MR rows x (NR vectors of codes) is accumulated in
// registers over all dimensions; then an epilogue (scan_epilogues.h: the nearest code, the k
// nearest codes, or a Gumbel-perturbed nearest one) folds each row's scores into its running
// minimum or top-k list. Scanning codes in increasing order with a strict "<" keeps ties on the
// smallest index, at every rank of a top-k list.
#pragma once

#include "microkernel.h"
#include "scan_epilogues.h"

namespace wvq::cpu::WVQ_ISA_NAMESPACE {

template <class Dot, class Epilogue, int MR, int NR>
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
    for (int r = 0; r < MR; ++r) Epilogue::apply(acc[r], a, r, a.first_code + c * kChunk);
  }
}

template <class Dot, int MR, int NR>
static const MicroKernel& make_kernel(const char* name) {
  static const MicroKernel kernel{name,
                                  MR,
                                  NR * Isa::kWidth,
                                  &scan<Dot, NearestEpilogue, MR, NR>,
                                  &scan<Dot, NearestCodesEpilogue, MR, NR>,
                                  &scan<Dot, GumbelEpilogue, MR, NR>,
                                  &scan<Dot, ScreenEpilogue, MR, NR>,
                                  1};
  return kernel;
}

}  // namespace wvq::cpu::WVQ_ISA_NAMESPACE
