// Host unit tests for csrc/common: the packed (score, index) key and the Chan merge.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "common/assign_layout.h"
#include "common/chan_merge.h"
#include "common/input_scale.h"
#include "common/packed_key.h"
#include "common/pair_moments.h"

static int failures = 0;

#define EXPECT(condition)                                                  \
  do {                                                                     \
    if (!(condition)) {                                                    \
      std::printf("%s:%d: expected %s\n", __FILE__, __LINE__, #condition); \
      ++failures;                                                          \
    }                                                                      \
  } while (0)

static void packed_key_orders_like_scores_then_indices() {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> ascending = {-inf, -1e30f, -2.5f, -1e-30f, 0.0f, 1e-30f, 1.0f, 3e38f, inf};
  for (size_t i = 0; i + 1 < ascending.size(); ++i) {
    EXPECT(wvq::pack_score_index(ascending[i], 7) < wvq::pack_score_index(ascending[i + 1], 0));
  }
  EXPECT(wvq::pack_score_index(2.0f, 3) < wvq::pack_score_index(2.0f, 4));
  // -0 == +0 as floats, so the index must decide between them.
  EXPECT(wvq::pack_score_index(0.0f, 1) < wvq::pack_score_index(-0.0f, 9));
  EXPECT(wvq::pack_score_index(-0.0f, 1) < wvq::pack_score_index(0.0f, 9));
}

static void packed_key_round_trips() {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 100.0f);
  for (int i = 0; i < 10000; ++i) {
    const float score = normal(rng);
    const uint32_t index = rng();
    const uint64_t key = wvq::pack_score_index(score, index);
    EXPECT(wvq::unpack_score(key) == score);
    EXPECT(wvq::unpack_index(key) == index);
  }
}

static void tie_break_prefers_smaller_score_then_index() {
  EXPECT(wvq::better_candidate(1.0f, 5, 2.0f, 0));
  EXPECT(wvq::better_candidate(1.0f, 2, 1.0f, 3));
  EXPECT(!wvq::better_candidate(1.0f, 3, 1.0f, 3));
  EXPECT(!wvq::better_candidate(1.0f, 4, 1.0f, 3));
  EXPECT(!wvq::better_candidate(2.0f, 0, 1.0f, 9));
}

struct Stats {
  int64_t count = 0;
  std::vector<double> mean, m2;
};

// Two-pass float64 statistics of rows [begin, end): the ground truth for the merge.
static Stats direct_stats(const std::vector<double>& x, int64_t dim, int64_t begin, int64_t end) {
  Stats s{end - begin, std::vector<double>(dim, 0.0), std::vector<double>(dim * dim, 0.0)};
  for (int64_t r = begin; r < end; ++r)
    for (int64_t d = 0; d < dim; ++d) s.mean[d] += x[r * dim + d] / double(s.count);
  for (int64_t r = begin; r < end; ++r)
    for (int64_t i = 0; i < dim; ++i)
      for (int64_t j = 0; j < dim; ++j)
        s.m2[i * dim + j] += (x[r * dim + i] - s.mean[i]) * (x[r * dim + j] - s.mean[j]);
  return s;
}

static void chan_merge_of_splits_equals_whole() {
  const int64_t rows = 300, dim = 5;
  std::mt19937 rng(2);
  std::normal_distribution<double> normal(1e4, 1e-2);  // large common offset
  std::vector<double> x(rows * dim);
  for (double& v : x) v = normal(rng);
  const Stats whole = direct_stats(x, dim, 0, rows);
  for (int64_t split : {0, 1, 137, 299, 300}) {
    Stats merged = direct_stats(x, dim, 0, split);
    if (split == 0) merged = {0, std::vector<double>(dim, 0.0), std::vector<double>(dim * dim, 0.0)};
    const Stats right = direct_stats(x, dim, split, rows);
    wvq::chan_merge(merged.count, merged.mean.data(), merged.m2.data(), right.count,
                    right.mean.data(), right.m2.data(), dim);
    EXPECT(merged.count == rows);
    for (int64_t d = 0; d < dim; ++d) EXPECT(std::abs(merged.mean[d] - whole.mean[d]) < 1e-9);
    for (int64_t i = 0; i < dim * dim; ++i)
      EXPECT(std::abs(merged.m2[i] - whole.m2[i]) <= 1e-9 * std::abs(whole.m2[i]) + 1e-12);
  }
}

// What a GPU thread does for one covariance entry: Welford over two row ranges, then a Chan
// merge of the two partials, must match the two-pass statistics of the whole.
static void welford_pairs_merged_equal_two_pass() {
  const int64_t rows = 300, dim = 3;
  std::mt19937 rng(3);
  std::normal_distribution<double> normal(1e4, 1e-2);
  std::vector<double> x(rows * dim);
  for (double& v : x) v = normal(rng);
  const Stats whole = direct_stats(x, dim, 0, rows);
  for (int64_t split : {0, 1, 150, 300}) {
    for (int64_t i = 0; i < dim; ++i) {
      for (int64_t j = 0; j < dim; ++j) {
        wvq::PairMoments left{0, 0.0, 0.0, 0.0}, right{0, 0.0, 0.0, 0.0};
        for (int64_t r = 0; r < split; ++r) wvq::welford_add(left, x[r * dim + i], x[r * dim + j]);
        for (int64_t r = split; r < rows; ++r)
          wvq::welford_add(right, x[r * dim + i], x[r * dim + j]);
        wvq::chan_merge_pair(left, right);
        const double expected = whole.m2[i * dim + j];
        // Off-diagonal entries can be near zero: scale the bound by the diagonal.
        const double scale = std::sqrt(whole.m2[i * dim + i] * whole.m2[j * dim + j]);
        EXPECT(left.count == rows);
        EXPECT(std::abs(left.mean_i - whole.mean[i]) < 1e-9);
        EXPECT(std::abs(left.mean_j - whole.mean[j]) < 1e-9);
        EXPECT(std::abs(left.comoment - expected) <= 1e-9 * scale);
      }
    }
  }
}

// The packed codebook of the CUDA assignment: every (code, d) of the padded codebook gets its own
// slot, and each (tile, chunk) run is the contiguous block the kernel copies with 16-byte loads.
template <bool kDimMajor>
static void assign_layout_is_a_bijection_of_contiguous_chunks() {
  constexpr int kTile = 8, kChunk = 16, kStep = 4;
  using Layout = wvq::AssignLayout<kTile, kChunk, kDimMajor>;
  for (int64_t padded_dim : {4, 8, 16, 20, 44, 64}) {
    const int64_t codes = 3 * kTile, chunks = (padded_dim + kChunk - 1) / kChunk;
    std::vector<int> hits(codes * padded_dim, 0);
    for (int64_t code = 0; code < codes; ++code) {
      for (int64_t d = 0; d < padded_dim; ++d) {
        const int64_t offset = Layout::packed_code_offset(code, d, padded_dim);
        const int64_t chunk = d / kChunk, width = Layout::chunk_width(padded_dim, chunk);
        const int64_t begin = Layout::chunk_begin(code / kTile, chunk, padded_dim);
        EXPECT(width % kStep == 0 && width > 0 && width <= kChunk);
        EXPECT(offset >= begin && offset < begin + width * kTile);
        // The element the kernel's shared-memory copy puts at (code, d) of the chunk.
        const int64_t e = offset - begin;
        const int64_t c = kDimMajor ? e % kTile : e / width, dd = kDimMajor ? e / kTile : e % width;
        EXPECT(c == code % kTile && dd == d % kChunk);
        if (offset >= 0 && offset < static_cast<int64_t>(hits.size())) ++hits[offset];
      }
    }
    for (int count : hits) EXPECT(count == 1);
    EXPECT(Layout::chunk_begin(codes / kTile, 0, padded_dim) == codes * padded_dim);
    EXPECT(Layout::chunk_width(padded_dim, chunks - 1) == padded_dim - (chunks - 1) * kChunk);
  }
}

static void input_scale_is_one_in_range_else_a_power_of_two() {
  for (float largest : {0.0f, 1.0f, 3e-10f, 4e9f, std::numeric_limits<float>::infinity(),
                        std::numeric_limits<float>::quiet_NaN()}) {
    EXPECT(wvq::power_of_two_scale(largest) == 1.0f);
  }
  for (float largest : {1e20f, 3.4e38f, 1e-25f, 1e-40f}) {
    const float scale = wvq::power_of_two_scale(largest);
    int exponent = 0;
    EXPECT(std::frexp(scale, &exponent) == 0.5f);  // a power of two
    const float scaled = largest * scale;
    EXPECT(largest < 1e-38f ? scaled > 1e-10f && scaled < 2.0f : scaled >= 1.0f && scaled < 2.0f);
  }
}

int main() {
  packed_key_orders_like_scores_then_indices();
  packed_key_round_trips();
  tie_break_prefers_smaller_score_then_index();
  chan_merge_of_splits_equals_whole();
  welford_pairs_merged_equal_two_pass();
  assign_layout_is_a_bijection_of_contiguous_chunks<true>();
  assign_layout_is_a_bijection_of_contiguous_chunks<false>();
  input_scale_is_one_in_range_else_a_power_of_two();
  std::printf(failures == 0 ? "common host tests passed\n" : "%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
