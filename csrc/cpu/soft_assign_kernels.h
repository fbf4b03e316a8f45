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
  // soft_assign_entropy_backward only: code weights c_k (num_chunks x kSoftChunkCodes, 0 for
  // padding) and per row r_i - c_best(i) = sum_k p_ik (c_k - c_best(i)), best(i) = best_index[i];
  // `entropy` then receives H_i - log Z_i = sum_k p_ik (d_ik - best_i) / tau.
  const float* code_weights = nullptr;
  float* expected = nullptr;
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

// soft_assign_entropy_backward's pass 2: rows [row_begin, row_end) against the codes of chunks
// [first_chunk, end_chunk) (first_chunk a multiple of kSoftBlockChunks). With G_ik = dL/dd_ik =
// (p_ik / tau) (g_i (log p_ik + H_i) - c_k + r_i) it adds sum_k G_ik (x_i - e_k) to row_sums and
// sum_i G_ik (x_i - e_k) to code_sums, both float64. The row terms are pass 1's (SoftScanArgs).
struct SoftGradientArgs {
  const float* x;
  PackedCodebook codes;
  int64_t row_begin, row_end;
  int64_t first_chunk, end_chunk;
  float inv_tau;
  const float* best;          // pass 1's m_i
  const int64_t* best_index;  // best(i)
  const float* bias;          // -log Z_i
  const float* excess;        // H_i - log Z_i
  const float* expected;      // r_i - c_best(i)
  const float* row_weights;   // g_i = dL/dH_i
  const float* code_weights;  // c_k, as in SoftScanArgs
  double* row_sums;           // N x dim, row i at i * dim
  double* code_sums;          // num_chunks x dim x kSoftChunkCodes, as the packed codes
};

struct SoftAssignKernels {
  const char* name;
  void (*scan_rows)(const SoftScanArgs&);
  void (*accumulate_codes)(const SoftAccumulateArgs&);
  // soft_assign_entropy: the scan also stores each row's entropy; the accumulation sums the
  // softmax probabilities alone (no winner weight of 1, no weighted rows, no loss).
  void (*scan_rows_entropy)(const SoftScanArgs&);
  void (*accumulate_probabilities)(const SoftAccumulateArgs&);
  // soft_assign_entropy_backward: the entropy scan that also stores r_i, then the gradients.
  void (*scan_rows_gradient)(const SoftScanArgs&);
  void (*accumulate_gradients)(const SoftGradientArgs&);
};

const SoftAssignKernels& avx512_soft_assign_kernels();
const SoftAssignKernels& avx2_soft_assign_kernels();
const SoftAssignKernels& scalar_soft_assign_kernels();
const SoftAssignKernels& soft_assign_kernels();  // the widest this CPU supports

}  // namespace wvq::cpu
