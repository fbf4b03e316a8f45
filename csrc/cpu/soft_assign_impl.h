// The soft-assignment kernels, written once and instantiated per ISA by isa_*.cpp, which define
// `Isa` (vector type V, its lane-integer type Bits, width, load/store/min/any_less) before
// including this file. V is a GCC vector type (or float for the scalar ISA), so the arithmetic
// below uses plain operators and compiles to the ISA's instructions.
//
// Distances use the difference form sum_d (x_d - e_d)^2 rather than |x|^2 + |e|^2 - 2 x.e: the
// weights depend on (d_ik - d_i,min) / tau, and with the expanded form the cancellation error
// (~u (|x|^2 + |e|^2)) divided by a small tau would dominate them; the difference form errs by
// ~u d_ik. Both passes compute every distance with the same code, so they see the same values.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "soft_assign_kernels.h"

namespace wvq::cpu::WVQ_ISA_NAMESPACE {
namespace soft {

using V = Isa::V;
using Bits = Isa::Bits;
constexpr int kWidth = Isa::kWidth;
constexpr float kInf = std::numeric_limits<float>::infinity();
// e^y for y < -104 is below half the smallest subnormal float: it rounds to exactly 0. A vector
// whose exponents all lie below this is skipped (not an approximation).
constexpr float kUnderflow = 104.0f;
// Softmax terms and weights are carried multiplied by 2^26 (exact, a power of two): then e^y
// for every y >= -104 is a normal float, and so are the loss terms w d for distances above 1/4
// (smaller distances with y < -87 need tau < 0.003). Arithmetic on subnormals, which cost a
// third of the run time at tau = 0.1 (measured), is thus avoided; the float64 sums are scaled
// back. Scaled loss terms would overflow for distances above 2^97 (|x - e| above ~4e14), so a
// vector holding a distance above kBigDistance adds its terms times 2^-64 to a second sum
// (kept below 2^90 per term, like the first); its small terms may then lose bits below 2^-126
// of that scale, ~2^-88 absolute each, nothing next to the big term beside them.
constexpr int kScaleBits = 26;
constexpr float kScale = 67108864.0f;
constexpr float kUnscale = 1.0f / kScale;
constexpr float kBigDistance = 0x1p64f;
constexpr float kBigUnscale = 0x1p-64f;

static V splat(float value) { return V{} + value; }

static V lane_ids() {
  alignas(64) float ids[kWidth];
  for (int lane = 0; lane < kWidth; ++lane) ids[lane] = static_cast<float>(lane);
  return Isa::load(ids);
}

// True when some lane of the exponent y is above -kUnderflow, i.e. e^y is not 0 everywhere.
static bool any_nonzero_exp(V y) { return Isa::any_less(-y, kUnderflow); }

// e^y * kScale for y <= 0 within ~2 ulp, and exactly 0 where e^y rounds to 0 in float32:
// y = n ln2 + r with |r| <= ln2/2 (ln2 split in two so that n ln2 is exact), e^r by its
// degree-7 Taylor polynomial (truncation below 1e-8 relative), times 2^(n + kScaleBits), a
// normal float for every y >= -kUnderflow.
static V scaled_exp(V y) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2High = 0.693145751953125f;  // 9 trailing zero bits: n * kLn2High is exact
  constexpr float kLn2Low = 1.42860682030941723e-6f;
  constexpr float kRoundingShift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const V clamped = y < -kUnderflow ? splat(-kUnderflow) : y;
  const V shifted = clamped * kLog2e + kRoundingShift;
  const V n = shifted - kRoundingShift;
  const V r = (clamped - n * kLn2High) - n * kLn2Low;
  V p = splat(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const Bits exponent = std::bit_cast<Bits>(shifted) - std::bit_cast<Bits>(splat(kRoundingShift));
  const V scaled = p * std::bit_cast<V>((exponent + (127 + kScaleBits)) << 23);
  return y < -kUnderflow ? V{} : scaled;
}

static float horizontal_min(V v) {
  alignas(64) float lanes[kWidth];
  Isa::store(lanes, v);
  float low = lanes[0];
  for (int lane = 1; lane < kWidth; ++lane) low = lanes[lane] < low ? lanes[lane] : low;
  return low;
}

static double horizontal_sum(V v) {
  alignas(64) float lanes[kWidth];
  Isa::store(lanes, v);
  double total = 0.0;
  for (int lane = 0; lane < kWidth; ++lane) total += lanes[lane];
  return total;
}

// Adds the lanes of v, scaled by kScale, to out[0 .. kWidth).
static void add_unscaled(double* out, V v) {
  alignas(64) float lanes[kWidth];
  Isa::store(lanes, v);
  for (int lane = 0; lane < kWidth; ++lane) out[lane] += double(lanes[lane]) * kUnscale;
}

// Distances of MR rows to the NR * kWidth codes at `codes` (a slice of a packed chunk),
// accumulated in registers over all dimensions.
template <int MR, int NR>
static void distance_tile(const float* const* rows, int64_t dim, const float* codes,
                          const float* pad, float* out, int64_t out_stride) {
  V acc[MR][NR];
#pragma GCC unroll 16
  for (int j = 0; j < NR; ++j) {
    const V start = Isa::load(pad + j * kWidth);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) acc[r][j] = start;
  }
  for (int64_t d = 0; d < dim; ++d) {
    V code[NR];
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) code[j] = Isa::load(codes + d * kSoftChunkCodes + j * kWidth);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const float value = rows[r][d];
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j) {
        const V difference = code[j] - value;
        acc[r][j] += difference * difference;
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) Isa::store(out + r * out_stride + j * kWidth, acc[r][j]);
  }
}

// Distances of `rows` rows from row0 (rounded up to MR; rows past last_row repeat it) to the
// codes of `chunks` chunks from first_chunk, into out (kSoftBlockCodes floats per row).
template <int MR, int NR>
static void block_distances(const float* x, int64_t row0, int64_t rows, int64_t last_row,
                            const PackedCodebook& codes, int64_t first_chunk, int64_t chunks,
                            float* out) {
  constexpr int64_t kTileCodes = NR * kWidth;
  static_assert(kSoftChunkCodes % kTileCodes == 0 && kSoftRowTile % MR == 0);
  for (int64_t r0 = 0; r0 < rows; r0 += MR) {
    const float* row_pointers[MR];
    for (int r = 0; r < MR; ++r) {
      row_pointers[r] = x + std::min(row0 + r0 + r, last_row) * codes.dim;
    }
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t chunk = first_chunk + c;
      for (int64_t t = 0; t < kSoftChunkCodes; t += kTileCodes) {
        distance_tile<MR, NR>(row_pointers, codes.dim,
                              codes.values + chunk * codes.dim * kSoftChunkCodes + t,
                              codes.pad + chunk * kSoftChunkCodes + t,
                              out + r0 * kSoftBlockCodes + c * kSoftChunkCodes + t,
                              kSoftBlockCodes);
      }
    }
  }
}

// ---- pass 1: per row, the nearest code and the online log-sum-exp over all codes ----

struct RowState {
  float best = kInf;
  int64_t index = 0;
  double sum = 0.0;  // Z = sum_k exp(-(d_k - best) / tau) over the codes seen so far (unscaled)
  double spread = 0.0;  // soft_assign_entropy: S = sum_k exp(-(d_k - best) / tau) (d_k - best)
  // soft_assign_entropy_backward: W = sum_k exp(-(d_k - best) / tau) (c_k - best_weight), with
  // best_weight the weight c of the best code so far. Relative to it, r - c_best = W / Z keeps
  // its bits where the best code holds nearly all the mass (W / Z - c_best would cancel them).
  double weighted = 0.0;
  float best_weight = 0.0f;
};

static float block_min(const float* values, int64_t count) {
  V low = splat(kInf);
  for (int64_t t = 0; t < count; t += kWidth) {
    const V v = Isa::load(values + t);
    low = v < low ? v : low;
  }
  return horizontal_min(low);
}

static int64_t first_index_of(const float* values, int64_t count, float target) {
  for (int64_t t = 0; t < count; ++t) {
    if (values[t] == target) return t;
  }
  return 0;  // unreachable for finite inputs: target is one of the values
}

// Adds the block's terms of Z (and, for kEntropy, of S; for kExpected, of W with the block's
// code weights) to the row's state.
template <bool kEntropy, bool kExpected>
static void add_exp_sums(const float* values, int64_t count, float inv_tau,
                         const float* code_weights, RowState& state) {
  V total{}, spread{}, weighted{};
  for (int64_t t = 0; t < count; t += kWidth) {
    const V difference = Isa::load(values + t) - state.best;
    const V y = -difference * inv_tau;
    if (!any_nonzero_exp(y)) continue;
    const V term = scaled_exp(y);
    total += term;
    // Zero terms take zero differences: no 0 * inf from padded codes.
    if constexpr (kEntropy) spread += term > 0.0f ? term * difference : V{};
    if constexpr (kExpected) {
      weighted += term * (Isa::load(code_weights + t) - state.best_weight);
    }
  }
  state.sum += horizontal_sum(total) * kUnscale;
  if constexpr (kEntropy) state.spread += horizontal_sum(spread) * kUnscale;
  if constexpr (kExpected) state.weighted += horizontal_sum(weighted) * kUnscale;
}

// Folds one block of distances into the row's state: a lower minimum rescales the running sums
// (strict "<": an equal later minimum keeps the earlier, smaller index). S measures distances
// from the minimum, so it also gains (old - new minimum) Z before the rescaling; W measures
// weights from the best code's, so it gains (old - new best weight) Z.
template <bool kEntropy, bool kExpected>
static void fold_block(const float* values, int64_t count, int64_t first_code, float inv_tau,
                       const float* code_weights, RowState& state) {
  const float low = block_min(values, count);
  if (low < state.best) {
    const double shift = double(state.best) - double(low);
    const double rescale = std::exp(-shift * inv_tau);
    if constexpr (kEntropy) {
      state.spread = state.sum > 0.0 ? (state.spread + shift * state.sum) * rescale : 0.0;
    }
    const int64_t index = first_index_of(values, count, low);
    if constexpr (kExpected) {
      const float weight = code_weights[index];
      state.weighted = state.sum > 0.0
                           ? (state.weighted + (double(state.best_weight) - weight) * state.sum) *
                                 rescale
                           : 0.0;
      state.best_weight = weight;
    }
    state.sum *= rescale;
    state.index = first_code + index;
    state.best = low;
  }
  if (state.best < kInf) {
    add_exp_sums<kEntropy, kExpected>(values, count, inv_tau, code_weights, state);
  }
}

// Pass 1. kEntropy also stores each row's entropy H = S / (tau Z) + log Z; kExpected (the
// backward's scan) stores H - log Z = S / (tau Z) there instead, and r - c_best = W / Z.
template <int MR, int NR, bool kEntropy, bool kExpected = false>
static void scan_rows(const SoftScanArgs& a) {
  alignas(64) float distances[MR * kSoftBlockCodes];
  for (int64_t row0 = a.row_begin; row0 < a.row_end; row0 += MR) {
    const int64_t rows = std::min<int64_t>(MR, a.row_end - row0);
    RowState states[MR];
    for (int64_t chunk = 0; chunk < a.codes.num_chunks; chunk += kSoftBlockChunks) {
      const int64_t chunks = std::min(kSoftBlockChunks, a.codes.num_chunks - chunk);
      block_distances<MR, NR>(a.x, row0, MR, a.row_end - 1, a.codes, chunk, chunks, distances);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t first_code = chunk * kSoftChunkCodes;
        const float* weights = kExpected ? a.code_weights + first_code : nullptr;
        fold_block<kEntropy, kExpected>(distances + r * kSoftBlockCodes, chunks * kSoftChunkCodes,
                                        first_code, a.inv_tau, weights, states[r]);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      a.best[row0 + r] = states[r].best;
      a.best_index[row0 + r] = states[r].index;
      const double log_sum = std::log(states[r].sum);
      a.bias[row0 + r] = static_cast<float>(a.log_scale - log_sum);
      if constexpr (kEntropy) {
        const double mean_excess = states[r].spread * a.inv_tau / states[r].sum;
        a.entropy[row0 + r] = static_cast<float>(kExpected ? mean_excess : mean_excess + log_sum);
      }
      if constexpr (kExpected) {
        a.expected[row0 + r] = static_cast<float>(states[r].weighted / states[r].sum);
      }
    }
  }
}

// ---- pass 2: one block of codes accumulates its weights over all rows ----

// Overwrites a row's distances with its weights times kScale, w = exp(min(0, bias - (d - best)
// / tau)): min(1, lam K softmax) with the softmax normaliser folded into the exponent, and 1 for
// the winner (at offset `winner` into the block, possibly outside it). live[j] tells whether
// vector j may hold a nonzero weight; `lanes` holds 0, 1, ..., kWidth - 1. Adds the lanes of
// sum w d times kScale to `loss`, or times kScale * kBigUnscale to `big_loss` for vectors with a
// distance above kBigDistance, without the 0 * inf of padded codes.
// kProbabilities (soft_assign_entropy) keeps the softmax as it is: no winner weight of 1, no
// loss.
template <bool kProbabilities>
static void weigh_row(float* values, bool* live, int64_t vectors, float best, float bias,
                      int64_t winner, float inv_tau, V lanes, V& loss, V& big_loss) {
  for (int64_t j = 0; j < vectors; ++j) {
    float* slot = values + j * kWidth;
    const V distance = Isa::load(slot);
    V y = bias - (distance - best) * inv_tau;
    y = y < 0.0f ? y : V{};
    const int64_t winner_lane = winner - j * kWidth;
    const bool has_winner = !kProbabilities && winner_lane >= 0 && winner_lane < kWidth;
    live[j] = has_winner || any_nonzero_exp(y);
    if (!live[j]) {
      Isa::store(slot, V{});
      continue;
    }
    V weight = scaled_exp(y);
    if constexpr (kProbabilities) {
      Isa::store(slot, weight);
      continue;
    }
    weight = lanes == static_cast<float>(winner_lane) ? splat(kScale) : weight;
    if (Isa::any_less(-distance, -kBigDistance)) {
      big_loss += weight > 0.0f ? weight * (distance * kBigUnscale) : V{};
    } else {
      loss += weight > 0.0f ? weight * distance : V{};
    }
    Isa::store(slot, weight);
  }
}

// Adds the weights of vector j times dimensions d0 .. d0 + G of the live rows to the block's
// float64 weighted sums, with G accumulators held in registers over the rows.
template <int G>
static void add_weighted_dims(const float* weights, const int64_t* live_rows, int64_t count,
                              const float* const* rows, int64_t d0, int64_t j,
                              double* weighted_sums) {
  V acc[G] = {};
  for (int64_t t = 0; t < count; ++t) {
    const int64_t r = live_rows[t];
    const V w = Isa::load(weights + r * kSoftBlockCodes + j * kWidth);
#pragma GCC unroll 4
    for (int q = 0; q < G; ++q) acc[q] += w * rows[r][d0 + q];
  }
  for (int q = 0; q < G; ++q) {
    add_unscaled(weighted_sums + (d0 + q) * kSoftBlockCodes + j * kWidth, acc[q]);
  }
}

// Sums vector j of the tile's weights, and the weights times each dimension of the rows, into
// the block's float64 sums, over the rows whose weights there are live (listed first, so that
// the sums run without a branch per row).
template <bool kProbabilities>
static void accumulate_vector(const float* weights, const bool* live, int64_t vectors,
                              const float* const* rows, int64_t num_rows, int64_t dim, int64_t j,
                              double* weight_sums, double* weighted_sums) {
  int64_t live_rows[kSoftRowTile];
  int64_t count = 0;
  for (int64_t r = 0; r < num_rows; ++r) {
    live_rows[count] = r;
    count += live[r * vectors + j];
  }
  if (count == 0) return;
  V total{};
  for (int64_t t = 0; t < count; ++t) {
    total += Isa::load(weights + live_rows[t] * kSoftBlockCodes + j * kWidth);
  }
  add_unscaled(weight_sums + j * kWidth, total);
  if constexpr (kProbabilities) return;
  int64_t d0 = 0;
  for (; d0 + 4 <= dim; d0 += 4) {
    add_weighted_dims<4>(weights, live_rows, count, rows, d0, j, weighted_sums);
  }
  for (; d0 < dim; ++d0) {
    add_weighted_dims<1>(weights, live_rows, count, rows, d0, j, weighted_sums);
  }
}

// Pass 2. kProbabilities sums the softmax probabilities alone (soft_assign_entropy's p-bar).
template <int MR, int NR, bool kProbabilities>
static void accumulate_codes(const SoftAccumulateArgs& a) {
  alignas(64) float weights[kSoftRowTile * kSoftBlockCodes];
  constexpr int64_t kMaxVectors = kSoftBlockCodes / kWidth;
  bool live[kSoftRowTile * kMaxVectors];
  const int64_t vectors = a.num_chunks * kSoftChunkCodes / kWidth;
  const int64_t first_code = a.first_chunk * kSoftChunkCodes;
  const int64_t dim = a.codes.dim;
  const V lanes = lane_ids();
  double loss = 0.0;
  for (int64_t row0 = a.row_begin; row0 < a.row_end; row0 += kSoftRowTile) {
    const int64_t rows = std::min(kSoftRowTile, a.row_end - row0);
    block_distances<MR, NR>(a.x, row0, rows, a.row_end - 1, a.codes, a.first_chunk,
                            a.num_chunks, weights);
    V tile_loss{}, big_tile_loss{};
    const float* row_pointers[kSoftRowTile];
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t row = row0 + r;
      row_pointers[r] = a.x + row * dim;
      weigh_row<kProbabilities>(weights + r * kSoftBlockCodes, live + r * vectors, vectors, a.best[row],
                a.bias[row], a.best_index[row] - first_code, a.inv_tau, lanes, tile_loss,
                big_tile_loss);
    }
    loss += (horizontal_sum(tile_loss) + horizontal_sum(big_tile_loss) / kBigUnscale) * kUnscale;
    for (int64_t j = 0; j < vectors; ++j) {
      accumulate_vector<kProbabilities>(weights, live, vectors, row_pointers, rows, dim, j,
                                        a.weight_sums, a.weighted_sums);
    }
  }
  *a.loss += loss;
}


// ---- soft_assign_entropy_backward, pass 2: per pair G_ik, then both gradients' sums ----

constexpr int64_t kVectorsPerChunk = kSoftChunkCodes / kWidth;

// The offset of code vector j of a block (dimension 0) from the block's first packed chunk.
static int64_t vector_offset(int64_t j, int64_t dim) {
  return (j / kVectorsPerChunk) * dim * kSoftChunkCodes + (j % kVectorsPerChunk) * kWidth;
}

// Per row, pass 1's results as pair_gradients takes them.
struct RowGradientTerms {
  float best;          // m
  float bias;          // -log Z
  float excess;        // H - log Z = sum_k p_k (d_k - m) / tau
  float expected;      // r - c_best = sum_k p_k (c_k - c_best)
  float best_weight;   // c_best
  float row_weight;    // g
};

// Overwrites a row's distances with G times kScale, G = (p / tau) (g (log p + H) - c + r), where
// log p = bias - (d - m) / tau (clamped at 0, as pass 1's terms) and p = e^log p; live[j] tells
// whether vector j may hold a nonzero G. Both brackets are taken in the form that keeps the bits
// of the best code's G where p is near 1: log p + H = excess - (d - m) / tau and c - r =
// (c - c_best) - expected. Where p is 0 so is G (no inf * 0 from padding).
static void pair_gradients(float* values, bool* live, int64_t vectors, const RowGradientTerms& row,
                           const float* code_weights, float inv_tau) {
  for (int64_t j = 0; j < vectors; ++j) {
    float* slot = values + j * kWidth;
    const V scaled_distance = (Isa::load(slot) - row.best) * inv_tau;
    V log_p = row.bias - scaled_distance;
    log_p = log_p < 0.0f ? log_p : V{};
    live[j] = any_nonzero_exp(log_p);
    if (!live[j]) continue;
    const V p = scaled_exp(log_p);
    const V relative_weight = Isa::load(code_weights + j * kWidth) - row.best_weight;
    const V inner =
        row.row_weight * (row.excess - scaled_distance) - (relative_weight - row.expected);
    Isa::store(slot, p > 0.0f ? p * inner * inv_tau : V{});
  }
}

// Adds sum_k G_ik (x_id - e_kd) over the block's live vectors, for d in d0 .. d0 + kDims, to
// the row's float64 sums, with kDims vector accumulators.
template <int kDims>
static void add_row_dims(const float* gradients, const bool* live, int64_t vectors,
                         const float* row, const float* block_codes, int64_t dim, int64_t d0,
                         double* row_sums) {
  V acc[kDims] = {};
  for (int64_t j = 0; j < vectors; ++j) {
    if (!live[j]) continue;
    const V g = Isa::load(gradients + j * kWidth);
    const float* code = block_codes + vector_offset(j, dim) + d0 * kSoftChunkCodes;
#pragma GCC unroll 4
    for (int q = 0; q < kDims; ++q) {
      acc[q] += g * (row[d0 + q] - Isa::load(code + q * kSoftChunkCodes));
    }
  }
  for (int q = 0; q < kDims; ++q) row_sums[d0 + q] += horizontal_sum(acc[q]) * kUnscale;
}

// Adds sum_i G_ik (x_id - e_kd) over the live rows, for d in d0 .. d0 + kDims and the codes of
// one vector, to their float64 sums (`code` and `sums` point at that vector's dimension 0).
template <int kDims>
static void add_code_dims(const float* gradients, const int64_t* live_rows, int64_t count,
                          const float* const* rows, const float* code, int64_t d0,
                          double* sums) {
  V acc[kDims] = {}, codes[kDims];
  for (int q = 0; q < kDims; ++q) codes[q] = Isa::load(code + (d0 + q) * kSoftChunkCodes);
  for (int64_t t = 0; t < count; ++t) {
    const int64_t r = live_rows[t];
    const V g = Isa::load(gradients + r * kSoftBlockCodes);
#pragma GCC unroll 4
    for (int q = 0; q < kDims; ++q) acc[q] += g * (rows[r][d0 + q] - codes[q]);
  }
  for (int q = 0; q < kDims; ++q) add_unscaled(sums + (d0 + q) * kSoftChunkCodes, acc[q]);
}

// Both gradients' sums of one tile of G (rows x vectors of the block at block_codes).
static void add_tile_gradients(const float* gradients, const bool* live, int64_t vectors,
                               const float* const* rows, int64_t num_rows, int64_t dim,
                               const float* block_codes, double* block_sums, double* row_sums) {
  for (int64_t r = 0; r < num_rows; ++r) {
    const float* row_gradients = gradients + r * kSoftBlockCodes;
    const bool* row_live = live + r * vectors;
    double* sums = row_sums + r * dim;
    int64_t d0 = 0;
    for (; d0 + 4 <= dim; d0 += 4) {
      add_row_dims<4>(row_gradients, row_live, vectors, rows[r], block_codes, dim, d0, sums);
    }
    for (; d0 < dim; ++d0) {
      add_row_dims<1>(row_gradients, row_live, vectors, rows[r], block_codes, dim, d0, sums);
    }
  }
  for (int64_t j = 0; j < vectors; ++j) {
    int64_t live_rows[kSoftRowTile];
    int64_t count = 0;
    for (int64_t r = 0; r < num_rows; ++r) {
      live_rows[count] = r;
      count += live[r * vectors + j];
    }
    if (count == 0) continue;
    const float* code = block_codes + vector_offset(j, dim);
    double* sums = block_sums + vector_offset(j, dim);
    const float* vector_gradients = gradients + j * kWidth;
    int64_t d0 = 0;
    for (; d0 + 4 <= dim; d0 += 4) {
      add_code_dims<4>(vector_gradients, live_rows, count, rows, code, d0, sums);
    }
    for (; d0 < dim; ++d0) {
      add_code_dims<1>(vector_gradients, live_rows, count, rows, code, d0, sums);
    }
  }
}

// Pass 2 of the backward: tiles of kSoftRowTile rows against blocks of codes, each tile's G in
// L1, one exp per pair.
template <int MR, int NR>
static void accumulate_gradients(const SoftGradientArgs& a) {
  alignas(64) float gradients[kSoftRowTile * kSoftBlockCodes];
  constexpr int64_t kMaxVectors = kSoftBlockCodes / kWidth;
  bool live[kSoftRowTile * kMaxVectors];
  const int64_t dim = a.codes.dim;
  for (int64_t row0 = a.row_begin; row0 < a.row_end; row0 += kSoftRowTile) {
    const int64_t rows = std::min(kSoftRowTile, a.row_end - row0);
    const float* row_pointers[kSoftRowTile];
    for (int64_t r = 0; r < rows; ++r) row_pointers[r] = a.x + (row0 + r) * dim;
    for (int64_t chunk = a.first_chunk; chunk < a.end_chunk; chunk += kSoftBlockChunks) {
      const int64_t chunks = std::min(kSoftBlockChunks, a.end_chunk - chunk);
      const int64_t vectors = chunks * kVectorsPerChunk;
      block_distances<MR, NR>(a.x, row0, rows, a.row_end - 1, a.codes, chunk, chunks, gradients);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = row0 + r;
        const RowGradientTerms terms{.best = a.best[row],
                                     .bias = a.bias[row],
                                     .excess = a.excess[row],
                                     .expected = a.expected[row],
                                     .best_weight = a.code_weights[a.best_index[row]],
                                     .row_weight = a.row_weights[row]};
        pair_gradients(gradients + r * kSoftBlockCodes, live + r * vectors, vectors, terms,
                       a.code_weights + chunk * kSoftChunkCodes, a.inv_tau);
      }
      const int64_t offset = chunk * dim * kSoftChunkCodes;
      add_tile_gradients(gradients, live, vectors, row_pointers, rows, dim,
                         a.codes.values + offset, a.code_sums + offset, a.row_sums + row0 * dim);
    }
  }
}

}  // namespace soft

template <int MR, int NR>
static const SoftAssignKernels& make_soft_assign_kernels(const char* name) {
  static const SoftAssignKernels kernels{
      name, &soft::scan_rows<MR, NR, false>, &soft::accumulate_codes<MR, NR, false>,
      &soft::scan_rows<MR, NR, true>, &soft::accumulate_codes<MR, NR, true>,
      &soft::scan_rows<MR, NR, true, true>, &soft::accumulate_gradients<MR, NR>};
  return kernels;
}

}  // namespace wvq::cpu::WVQ_ISA_NAMESPACE
