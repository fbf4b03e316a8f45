// Interface between the ISA-independent soft-assignment driver (soft_assign.cpp) and its
// per-ISA kernels (soft_assign_impl.h, instantiated by isa_*.cpp).
//
// The codebook is packed once into chunks of kSoftChunkCodes codes, dimension-major within a
// chunk (a chunk holds dim x kSoftChunkCodes floats), padded with zero codes whose `pad` entry
// is +inf, so that every padded distance is +inf. Rows are float32, dim floats apart.
#pragma once

#include <cstdint>

namespace wvq::cpu {

inline constexpr int64_t kSoftChunkCodes = 64;
// Codes per block: pass 1 folds a block into its online log-sum-exp at once, pass 2 gives each
// task one block.
inline constexpr int64_t kSoftBlockChunks = 4;
inline constexpr int64_t kSoftBlockCodes = kSoftBlockChunks * kSoftChunkCodes;
// Rows per pass-2 tile: a tile of weights (32 x 256 floats) stays in L1.
inline constexpr int64_t kSoftRowTile = 32;

struct PackedCodebook {
  const float* values;  // num_chunks x dim x kSoftChunkCodes
  const float* pad;     // num_chunks x kSoftChunkCodes: 0 for a code, +inf for padding
  int64_t dim;
  int64_t num_chunks;
};

// Pass 1, rows [row_begin, row_end): per row the nearest code and the softmax normaliser.
struct SoftScanArgs {
  const float* x;
  PackedCodebook codes;
  int64_t row_begin, row_end;
  float inv_tau;
  double log_scale;     // log(lam * K); -inf when lam = 0
  float* best;          // min_k d_ik
  int64_t* best_index;  // first k reaching it
  float* bias;          // log_scale - log sum_k exp(-(d_ik - best_i) / tau)
  float* entropy;       // soft_assign_entropy only: the entropy of softmax_k(-d_ik / tau)
};

// Pass 2, one block of codes over rows [row_begin, row_end), given pass 1's per-row results.
// Accumulates into the block's zeroed float64 sums.
struct SoftAccumulateArgs {
  const float* x;
  PackedCodebook codes;
  int64_t first_chunk, num_chunks;  // num_chunks <= kSoftBlockChunks
  int64_t row_begin, row_end;
  float inv_tau;
  const float* best;
  const int64_t* best_index;
  const float* bias;
  double* weight_sums;    // kSoftBlockCodes
  double* weighted_sums;  // dim x kSoftBlockCodes (dimension-major)
  double* loss;           // sum of w_ik d_ik over the block
};

struct SoftAssignKernels {
  const char* name;
  void (*scan_rows)(const SoftScanArgs&);
  void (*accumulate_codes)(const SoftAccumulateArgs&);
  // soft_assign_entropy: the scan also stores each row's entropy; the accumulation sums the
  // softmax probabilities alone (no winner weight of 1, no weighted rows, no loss).
  void (*scan_rows_entropy)(const SoftScanArgs&);
  void (*accumulate_probabilities)(const SoftAccumulateArgs&);
};

const SoftAssignKernels& avx512_soft_assign_kernels();
const SoftAssignKernels& avx2_soft_assign_kernels();
const SoftAssignKernels& scalar_soft_assign_kernels();
const SoftAssignKernels& soft_assign_kernels();  // the widest this CPU supports

}  // namespace wvq::cpu
