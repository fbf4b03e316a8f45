// What the assignment micro-kernel (scan_impl.h) does with a row's scores once a chunk of codes
// is accumulated: keep the running minimum (assign), the sorted list of the k best
// (assign(..., k)), or the running minimum of the scores perturbed by Gumbel noise
// (sample_codes). Instantiated per ISA like scan_impl.h, which includes this file after
// isa_*.cpp has defined `Isa`.
//
// Gumbel-max: argmin_j score_j / T - G_j with G_j standard Gumbel is one exact draw from
// softmax(-score / T). Written as G = -log E with E = -log(1 - W) exponential and W uniform in
// (0, 1), the perturbed score is score / T + log E. W is formed so that small W (small E: the
// codes that can win) keeps its resolution: W = (float(word >> 1) + 0.5) 2^-31, exact below
// 2^24, and E = -log1p(-W) = -log(u) W / (1 - u) with u = 1 - W (W where u rounds to 1), so the
// noise stays exact to float rounding however small W is. wvq_kernels/_counter_hash.py and the
// Triton kernel evaluate the same formula in the same order.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common/counter_hash.h"
#include "microkernel.h"

namespace wvq::cpu::WVQ_ISA_NAMESPACE {
namespace epilogue {

using V = Isa::V;
using Bits = Isa::Bits;
constexpr int kWidth = Isa::kWidth;

template <int Width>
struct WordVector {
  typedef uint32_t type __attribute__((vector_size(4 * Width)));
};
template <>
struct WordVector<1> {
  using type = uint32_t;
};
using Words = WordVector<kWidth>::type;

// Two lower bounds of the noise log E let most codes skip the two logarithms, exactly (the
// bounds keep a margin of at least 0.8 over the rounding of score / T + log E while
// |score / T| < 2^22): over every word, E >= -log1p(-2^-32) > 2.3e-10, log E > -22.2, so a
// vector whose scores / T all lie 23 or more above the row's running minimum cannot win; and
// per word, E >= W >= 2^(floor(log2(w >> 1)) - 31) (below).
constexpr float kLowestNoise = -23.0f;
constexpr float kLn2 = 0.693147180559945309f;

static V splat(float value) { return V{} + value; }
constexpr float kInf = std::numeric_limits<float>::infinity();

template <class To, class From>
static To convert(From v) {
  if constexpr (std::is_arithmetic_v<From>) {
    return static_cast<To>(v);
  } else {
    return __builtin_convertvector(v, To);
  }
}

static Words lane_ids() {
  uint32_t ids[kWidth];
  for (int lane = 0; lane < kWidth; ++lane) ids[lane] = static_cast<uint32_t>(lane);
  Words out;
  std::memcpy(&out, ids, sizeof out);
  return out;
}

// Natural logarithm for x >= 0 (log 0 = -inf, log inf = inf) within ~1 ulp: x = m 2^e with
// m in [sqrt(1/2), sqrt(2)), log(m) from the Cephes single-precision minimax polynomial in
// f = m - 1, and e log 2 split in two parts so that it is exact.
static V log_nonnegative(V x) {
  const Bits bits = std::bit_cast<Bits>(x);
  Bits exponent = ((bits >> 23) & 0xff) - 126;
  V m = std::bit_cast<V>((bits & 0x007fffff) | 0x3f000000);  // in [1/2, 1)
  const auto small = m < 0.70710678118654752f;
  exponent = small ? exponent - 1 : exponent;
  const V f = (small ? m + m : m) - 1.0f;
  const V e = convert<V>(exponent);
  const V z = f * f;
  V p = splat(7.0376836292e-2f);
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  V y = p * f * z + e * -2.12194440e-4f - 0.5f * z;
  y = f + y + e * 0.693359375f;
  y = x == 0.0f ? splat(-kInf) : y;
  return x == kInf ? splat(kInf) : y;
}

// log E for the random words of one vector of codes.
static V gumbel_noise(Words words) {
  const V w = (convert<V>(std::bit_cast<Bits>(words >> 1)) + 0.5f) * 0x1p-31f;
  const V u = 1.0f - w;
  const V exponential = u == 1.0f ? w : (-log_nonnegative(u) * w) / (1.0f - u);
  return log_nonnegative(exponential);
}

// log E >= (floor(log2(w >> 1)) - 31) ln 2 for each word; the float exponent of w >> 1 may be
// floor(log2) + 1 where the conversion rounds up, hence one ln 2 more (and w >> 1 = 0 gives
// -159 ln 2, no bound at all).
static V noise_lower_bound(Words words) {
  const V halves = convert<V>(std::bit_cast<Bits>(words >> 1));
  const Bits exponent = (std::bit_cast<Bits>(halves) >> 23) - (127 + 32);
  return convert<V>(exponent) * kLn2;
}

template <int NR>
static void store_scores(const V (&scores)[NR], float* values) {
  for (int j = 0; j < NR; ++j) Isa::store(values + j * kWidth, scores[j]);
}

// The running minimum over the chunk's scores in code order with a strict "<" (ties keep the
// smaller index; NaN never wins), visiting only the lanes that beat it: per vector, the first
// lane below the minimum becomes it, and the lanes after it are compared again with the new
// value. A row's first chunk, where every lane beats +inf, takes a few records per vector
// instead of one scalar comparison per score, which dominated the scan at K ~ 1,000.
template <int NR>
static void update_row_minimum(const V (&scores)[NR], int64_t first_code, float* best,
                               int64_t* best_index) {
  float minimum = *best;
  int64_t index = *best_index;
  for (int j = 0; j < NR; ++j) {
    uint32_t below = Isa::less_mask(scores[j], minimum);
    if (below == 0) continue;
    alignas(64) float values[kWidth];
    Isa::store(values, scores[j]);
    while (below != 0) {
      const int lane = std::countr_zero(below);
      minimum = values[lane];
      index = first_code + j * kWidth + lane;
      below = Isa::less_mask(scores[j], minimum) & ~((2u << lane) - 1u);
    }
  }
  *best = minimum;
  *best_index = index;
}

template <int NR>
static V lowest(const V (&scores)[NR]) {
  V low = scores[0];
#pragma GCC unroll 16
  for (int j = 1; j < NR; ++j) low = Isa::min(low, scores[j]);
  return low;
}

static void add_candidate(const ScreenRows& s, int row, int64_t code, double low) {
  int32_t& count = s.counts[row];
  if (count > s.capacity) return;
  int64_t* codes = s.candidates + row * s.capacity;
  double* lows = s.candidate_low + row * s.capacity;
  if (count == s.capacity) count = drop_stale(codes, lows, count, s.upper[row]);
  if (count == s.capacity) {
    count = s.capacity + 1;  // lost: the row is scanned again exactly
    return;
  }
  codes[count] = code;
  lows[count++] = low;
}

// One screened score whose vector passed the row's threshold: a candidate while its interval
// [score - bound, score + bound] reaches below the best upper end seen, which it may lower.
static void screen_code(const ScreenRows& s, int row, int64_t code, double score, double bias,
                        double norm, double error) {
  const double bound =
      s.norm_factor[row] * norm + s.error_factor[row] * error + s.bias_factor * bias + s.slack;
  if (score - bound <= s.upper[row]) add_candidate(s, row, code, score - bound);
  if (score + bound < s.upper[row]) {
    s.upper[row] = score + bound;
    s.threshold[row] = float_above(s.upper[row] + s.row_margin[row]);
  }
}

}  // namespace epilogue

// assign: the running minimum of the scores. Only when some score beats it (a handful of times
// per row over a whole codebook) are the scores stored and the index found.
struct NearestEpilogue {
  template <int NR>
  static void apply(const Isa::V (&scores)[NR], const ScanArgs& a, int row, int64_t first_code) {
    if (Isa::any_less(epilogue::lowest(scores), a.best[row])) {
      epilogue::update_row_minimum<NR>(scores, first_code, a.best + row, a.best_index + row);
    }
  }
};

// assign(..., k): per row a list of the list_length best (score, index) pairs, sorted by score
// then index. A score enters only when it beats the list's last (the threshold), and goes after
// equal scores already there, whose indices are smaller.
struct NearestCodesEpilogue {
  template <int NR>
  static void apply(const Isa::V (&scores)[NR], const ScanArgs& a, int row, int64_t first_code) {
    const int64_t k = a.list_length;
    float* best = a.best + row * k;
    int64_t* best_index = a.best_index + row * k;
    if (!Isa::any_less(epilogue::lowest(scores), best[k - 1])) return;
    alignas(64) float values[NR * epilogue::kWidth];
    epilogue::store_scores<NR>(scores, values);
    for (int t = 0; t < NR * epilogue::kWidth; ++t) {
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

// Screened ieee assign: the codes that may be the exact nearest (ScreenRows). A vector of scores
// all at or above the row's threshold (upper + the largest bound) holds none, nor any that lowers
// upper: the common case costs what NearestEpilogue's does.
struct ScreenEpilogue {
  template <int NR>
  static void apply(const Isa::V (&scores)[NR], const ScanArgs& a, int row, int64_t first_code) {
    if (Isa::any_less(epilogue::lowest(scores), a.screen->threshold[row])) {
      screen_lanes<NR>(scores, a, row, first_code);
    }
  }

  // Out of line: inlined, the compiler stores every vector of scores before the test above.
  template <int NR>
  [[gnu::noinline]] static void screen_lanes(const Isa::V (&scores)[NR], const ScanArgs& a,
                                             int row, int64_t first_code) {
    const ScreenRows& s = *a.screen;
    alignas(64) float values[NR * epilogue::kWidth];
    epilogue::store_scores<NR>(scores, values);
    const int64_t lane = first_code - a.first_code;  // of the first score, in bias and norms
    const auto screen = [&](int t) {
      epilogue::screen_code(s, row, first_code + t, values[t], a.bias[lane + t],
                            s.code_norms[lane + t], s.code_errors[lane + t]);
    };
    // The lowest score first: its upper end lowers U and the threshold before the other lanes
    // are tested, so that a row's first chunk, where every lane is below the +inf threshold,
    // screens a few codes instead of all of them. Any code's upper end bounds the exact
    // minimum, so the order in which lanes lower U changes no candidate that survives it.
    float lowest = s.threshold[row];
    int64_t lowest_lane = -1;
    epilogue::update_row_minimum<NR>(scores, 0, &lowest, &lowest_lane);
    if (lowest_lane < 0) return;
    screen(static_cast<int>(lowest_lane));
    // The threshold only falls while lanes are screened: lanes below its value now hold them all.
    const float threshold = s.threshold[row];
    for (int j = 0; j < NR; ++j) {
      for (uint32_t lanes = Isa::less_mask(scores[j], threshold); lanes != 0; lanes &= lanes - 1) {
        const int t = j * epilogue::kWidth + std::countr_zero(lanes);
        if (t != lowest_lane) screen(t);
      }
    }
  }
};

// sample_codes: the running minimum of score / T + log E(seed, row, code).
struct GumbelEpilogue {
  template <int NR>
  static void apply(const Isa::V (&scores)[NR], const ScanArgs& a, int row, int64_t first_code) {
    using namespace epilogue;
    const V low = lowest(scores) * a.inv_temperature;
    if (!Isa::any_less(low + kLowestNoise, a.best[row])) return;
    const uint32_t first_key = a.row_keys[2 * row], second_key = a.row_keys[2 * row + 1];
    const Words codes = lane_ids() + static_cast<uint32_t>(first_code);
    V perturbed[NR];
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) {
      const Words words =
          code_word<Words>(codes + static_cast<uint32_t>(j * kWidth), first_key, second_key);
      const V scaled = scores[j] * a.inv_temperature;
      const bool may_win = Isa::any_less(scaled + noise_lower_bound(words), a.best[row]);
      perturbed[j] = may_win ? scaled + gumbel_noise(words) : splat(kInf);
    }
    NearestEpilogue::apply<NR>(perturbed, a, row, first_code);
  }
};

}  // namespace wvq::cpu::WVQ_ISA_NAMESPACE
