// Nearest-code assignment on the CPU without an N x K buffer.
//
// Every score is bias_k + sum_u row_u * code_ku, with the operands prepared so that one
// micro-kernel covers all metrics: l2 uses rows -2x and bias |c|^2, cosine rows -x/|x| and
// codes c/|c|, dot rows -x. The codebook is packed into chunks of `chunk_codes` codes
// (unit-major, padded with +inf-bias codes), one pass of at most kPassBytes at a time, so the
// packed copy stays bounded whatever K (a whole K = 2^20, D = 64 codebook would add 256 MiB);
// rows are encoded per block inside the parallel loop. Within a pass, work is split into
// (row block, code segment) tasks: code segments exist only when there are too few rows to keep
// every thread busy. Segments and passes are merged in code order with a strict '<', so ties go
// to the smallest index and results never depend on the thread count. Within a task, code
// blocks sized for L2 are the outer loop and row tiles sized for registers the inner one.
//
// assign_topk runs the same scan keeping a sorted list of k (score, index) candidates per row
// instead of one minimum (the micro-kernel's other epilogue, scan_impl.h); lists of segments
// and passes merge in code order, ties to the earlier, so the k codes do not depend on the
// thread count either. Its reported distances then order the k codes.
//
// sample_codes runs the same scan of one code per row with a third epilogue (scan_epilogues.h):
// each score divided by T plus Gumbel noise keyed by (seed, row, code), one exact draw from
// softmax(-d / T) per row.
//
// Inputs whose largest magnitude lies outside [2^-32, 2^32] are scaled by a power of two first
// (common/input_scale.h; exact, and it preserves the order of the scores): otherwise |c|^2 overflows to inf above
// ~1.8e19 and every score becomes inf or NaN, and bf16 dot products (vdpbf16ps treats subnormal
// inputs as zero) lose subnormal inputs entirely. Reported distances come from the unscaled
// inputs.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "common/counter_hash.h"
#include "common/packed_key.h"
#include "common/input_scale.h"
#include "cpu_ops.h"
#include "microkernel.h"
#include "parallel.h"

namespace wvq::cpu {
namespace {

enum class Metric { kL2, kCosine, kDot };

Metric parse_metric(const std::string& name) {
  if (name == "l2") return Metric::kL2;
  if (name == "cosine") return Metric::kCosine;
  TORCH_CHECK(name == "dot", "wvq::assign: metric must be l2, cosine or dot, got ", name);
  return Metric::kDot;
}

// How a vector becomes micro-kernel operands: fp32 values, bf16-rounded values held in fp32
// (CPUs without vdpbf16ps), or bf16 pairs packed into 32-bit units. The sum of squares (the l2
// bias) comes from the values the kernel sees, or with `exact_squares` from the fp32 values
// before bf16 rounding (the screened ieee scan). More units than `unit_block` are padded with
// zeros to a multiple of it.
struct Encoding {
  int64_t dim;
  bool round_to_bf16;
  bool bf16_pairs;
  bool exact_squares = false;
  int64_t unit_block = 1;
  int64_t value_units() const { return bf16_pairs ? (dim + 1) / 2 : dim; }
  int64_t units() const {
    const int64_t raw = value_units();
    return raw > unit_block ? (raw + unit_block - 1) / unit_block * unit_block : raw;
  }
};

uint16_t bf16_bits(float value) {  // round to nearest even; inputs are finite
  uint32_t bits = std::bit_cast<uint32_t>(value);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float bf16_value(uint16_t half) { return std::bit_cast<float>(static_cast<uint32_t>(half) << 16); }

// encode_lanes' bf16 pairs. The lane loop has no branch, so that it vectorises: exact or
// rounded squares is a template argument, and an odd D's last pair reads its first value twice
// and masks the copy to +0 as its second.
template <bool kExactSquares>
void encode_pairs(const float* __restrict v, int64_t lanes, int64_t stride,
                  const double* __restrict scale, const Encoding& e, float* __restrict out,
                  double* __restrict squares, double* __restrict rounding_squares) {
  for (int64_t u = 0; u < e.value_units(); ++u) {
    const bool has_second = 2 * u + 1 < e.dim;
    const float* first_values = v + 2 * u * stride;
    const float* second_values = has_second ? first_values + stride : first_values;
    const uint32_t second_mask = has_second ? ~0u : 0u;
    for (int64_t l = 0; l < lanes; ++l) {
      const float first = static_cast<float>(scale[l] * first_values[l]);
      const float second = std::bit_cast<float>(
          std::bit_cast<uint32_t>(static_cast<float>(scale[l] * second_values[l])) & second_mask);
      const uint16_t lo = bf16_bits(first), hi = bf16_bits(second);
      const double first_error = double(bf16_value(lo)) - first;
      const double second_error = double(bf16_value(hi)) - second;
      rounding_squares[l] += first_error * first_error + second_error * second_error;
      if constexpr (kExactSquares) {
        squares[l] += double(first) * first + double(second) * second;
      } else {
        squares[l] += double(bf16_value(lo)) * bf16_value(lo) +
                      double(bf16_value(hi)) * bf16_value(hi);
      }
      out[u * stride + l] =
          std::bit_cast<float>(static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16));
    }
  }
}

// Writes scale * v as operands for `lanes` vectors side by side: value d of lane l is read from
// v[d * stride + l] and unit u written to out[u * stride + l] (padding units are left as they
// are: zero). squares[l] receives the sum of squares of the values the kernel will see (the l2
// bias must come from exactly those values), or of the fp32 values with e.exact_squares; with
// bf16 pairs, rounding_squares[l] gains the squared norm of the bf16 rounding error (bf16 pairs
// minus fp32 values). Each lane's arithmetic is the same, in the same order, as a single
// vector's (lanes = 1): the packed codebook, encoded a chunk at a time, and the re-ranking of
// screened candidates, one code at a time, see the same values. Many lanes run independent
// chains of double additions side by side, where one vector's sum is a chain of dependent ones
// (at D = 64 that chain made packing the codebook cost more than scanning it for a few rows).
void encode_lanes(const float* __restrict v, int64_t lanes, int64_t stride,
                  const double* __restrict scale, const Encoding& e, float* __restrict out,
                  double* __restrict squares, double* __restrict rounding_squares) {
  std::fill_n(squares, lanes, 0.0);
  if (e.bf16_pairs) {
    const auto pairs = e.exact_squares ? encode_pairs<true> : encode_pairs<false>;
    pairs(v, lanes, stride, scale, e, out, squares, rounding_squares);
    return;
  }
  for (int64_t d = 0; d < e.dim; ++d) {
    for (int64_t l = 0; l < lanes; ++l) {
      const float value = static_cast<float>(scale[l] * v[d * stride + l]);
      out[d * stride + l] = e.round_to_bf16 ? bf16_value(bf16_bits(value)) : value;
      squares[l] += double(out[d * stride + l]) * out[d * stride + l];
    }
  }
}

// One vector's operands (encode_lanes with one lane); returns its sum of squares.
double encode(const float* v, double scale, const Encoding& e, float* out,
              double* rounding_squares = nullptr) {
  double squares, unused_rounding_squares = 0.0;
  encode_lanes(v, 1, 1, &scale, e, out, &squares,
               rounding_squares != nullptr ? rounding_squares : &unused_rounding_squares);
  return squares;
}

// sqrt(squares) rounded up to a float, with room for the roundings of squares and of the root.
float norm_above(double squares) { return float_above(std::sqrt(squares) * (1.0 + 0x1p-30)); }

double norm_of(const float* v, int64_t dim) {
  double squares = 0.0;
  for (int64_t d = 0; d < dim; ++d) squares += double(v[d]) * v[d];
  return std::sqrt(squares);
}

// Zero vectors stay zero under cosine normalisation.
double cosine_scale(const float* v, int64_t dim) {
  const double norm = norm_of(v, dim);
  return norm > 0.0 ? 1.0 / norm : 0.0;
}

template <typename scalar_t>
void to_float(const scalar_t* src, int64_t dim, float* dst) {
  for (int64_t d = 0; d < dim; ++d) dst[d] = static_cast<float>(src[d]);
}

struct PackedCodes {
  at::Tensor values;  // num_chunks x units x chunk_codes
  at::Tensor bias;    // num_chunks x chunk_codes
  int64_t num_chunks;
  // With e.exact_squares (the screened scan): per code |c| and the norm of its bf16 rounding
  // error, rounded up, laid out like the bias, and the largest of each and of the bias.
  at::Tensor norms, errors;
  double max_norm = 0.0, max_error = 0.0, max_bias = 0.0;
};

// What scales a code before encoding: the inputs' power of two, or for cosine its own 1 / |c|.
double code_scale_of(const float* code, int64_t dim, Metric metric, double scale) {
  return metric == Metric::kCosine ? cosine_scale(code, dim) : scale;
}

float code_bias(Metric metric, double squares) {
  return metric == Metric::kL2 ? static_cast<float>(squares) : 0.0f;
}

// A code's operands (as encode) and its bias, as pack_codes computes them for every code: the
// exact re-ranking of screened candidates must see the packed values. `squares` receives
// encode's sum of squares.
template <typename scalar_t>
float code_operands(const scalar_t* code, double scale, Metric metric, const Encoding& e,
                    float* scratch, float* out, double* squares) {
  to_float(code, e.dim, scratch);
  *squares = encode(scratch, code_scale_of(scratch, e.dim, metric, scale), e, out);
  return code_bias(metric, *squares);
}

// Packs codes [first, first + num_codes) of the codebook, each multiplied by `scale`, a chunk at
// a time: its codes transposed to lanes and encoded side by side (encode_lanes).
template <typename scalar_t>
PackedCodes pack_codes(const scalar_t* codebook, int64_t first, int64_t num_codes, double scale,
                       Metric metric, const Encoding& e, int chunk_codes) {
  const int64_t units = e.units(), dim = e.dim;
  const int64_t num_chunks = (num_codes + chunk_codes - 1) / chunk_codes;
  at::Tensor values = at::zeros({num_chunks, units, chunk_codes}, at::kFloat);
  at::Tensor bias = at::full({num_chunks, chunk_codes}, std::numeric_limits<float>::infinity(),
                             at::kFloat);
  at::Tensor norms = at::zeros({e.exact_squares ? num_chunks : 0, chunk_codes}, at::kFloat);
  at::Tensor errors = at::zeros(norms.sizes(), at::kFloat);
  const scalar_t* src = codebook + first * dim;
  float* packed = values.data_ptr<float>();
  float* bias_out = bias.data_ptr<float>();
  float* norms_out = norms.data_ptr<float>();
  float* errors_out = errors.data_ptr<float>();
  parallel_for(0, num_chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> lane_values(dim * chunk_codes), code(dim);
    std::vector<double> scales(chunk_codes), squares(chunk_codes), rounding_squares(chunk_codes);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t first_code = chunk * chunk_codes;
      const int64_t lanes = std::min<int64_t>(chunk_codes, num_codes - first_code);
      for (int64_t l = 0; l < lanes; ++l) {
        to_float(src + (first_code + l) * dim, dim, code.data());
        scales[l] = code_scale_of(code.data(), dim, metric, scale);
        for (int64_t d = 0; d < dim; ++d) lane_values[d * chunk_codes + l] = code[d];
      }
      std::fill(rounding_squares.begin(), rounding_squares.end(), 0.0);
      encode_lanes(lane_values.data(), lanes, chunk_codes, scales.data(), e,
                   packed + chunk * units * chunk_codes, squares.data(), rounding_squares.data());
      for (int64_t l = 0; l < lanes; ++l) {
        const int64_t k = first_code + l;
        bias_out[k] = code_bias(metric, squares[l]);
        if (e.exact_squares) {
          norms_out[k] = norm_above(squares[l]);
          errors_out[k] = norm_above(rounding_squares[l]);
        }
      }
    }
  });
  PackedCodes packed_codes{values, bias, num_chunks, norms, errors};
  if (e.exact_squares) {
    packed_codes.max_norm = *std::max_element(norms_out, norms_out + num_codes);
    packed_codes.max_error = *std::max_element(errors_out, errors_out + num_codes);
    packed_codes.max_bias = *std::max_element(bias_out, bias_out + num_codes);
  }
  return packed_codes;
}

// `scale` is the power of two applied to every row (1 for cosine, which normalises).
double row_scale(Metric metric, const float* row, int64_t dim, double scale) {
  switch (metric) {
    case Metric::kL2: return -2.0 * scale;  // exact in fp32 and bf16: rounding commutes with it
    case Metric::kCosine: return -cosine_scale(row, dim);
    default: return -scale;
  }
}

template <typename scalar_t>
double max_magnitude(const scalar_t* data, int64_t count) {
  constexpr int64_t kSlices = 64;
  std::vector<double> slice_max(kSlices, 0.0);
  const int64_t slice = (count + kSlices - 1) / kSlices;
  parallel_for(0, kSlices, 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      // On the bit patterns of |value|, whose integer order is the order of the magnitudes: a
      // signed integer maximum written as a select vectorises on the baseline ISA where a float
      // one would not without -ffast-math (one chain of dependent maxss ran ~8x slower), and
      // NaN (above infinity's pattern) is skipped as std::max skipped it.
      constexpr int32_t kInfinity = 0x7f800000;
      int32_t most = 0;
      const int64_t end_i = std::min(count, (s + 1) * slice);
      for (int64_t i = s * slice; i < end_i; ++i) {
        int32_t bits = std::bit_cast<int32_t>(static_cast<float>(data[i])) & 0x7fffffff;
        bits = bits > kInfinity ? 0 : bits;
        most = bits > most ? bits : most;
      }
      slice_max[s] = std::bit_cast<float>(most);
    }
  });
  return *std::max_element(slice_max.begin(), slice_max.end());
}

struct Scales {
  double rows, codes;
};

// l2 needs one scale for both sides (|c|^2 - 2 x.c must keep its order); dot may scale each
// side alone; cosine normalises instead.
template <typename scalar_t>
Scales input_scales(Metric metric, const at::Tensor& x, const at::Tensor& codebook) {
  if (metric == Metric::kCosine) return {1.0, 1.0};
  // Maxima of float-representable values: exact as floats.
  const auto rows = static_cast<float>(max_magnitude(x.data_ptr<scalar_t>(), x.numel()));
  const auto codes =
      static_cast<float>(max_magnitude(codebook.data_ptr<scalar_t>(), codebook.numel()));
  if (metric == Metric::kDot) return {power_of_two_scale(rows), power_of_two_scale(codes)};
  const double both = power_of_two_scale(std::max(rows, codes));
  return {both, both};
}

// The distance reported for the chosen code, from the unrounded inputs, in double.
template <typename scalar_t>
float chosen_distance(Metric metric, const scalar_t* x, const scalar_t* code, int64_t dim) {
  double squares = 0.0, dot = 0.0, x_norm = 0.0, code_norm = 0.0;
  for (int64_t d = 0; d < dim; ++d) {
    const double a = static_cast<float>(x[d]), b = static_cast<float>(code[d]);
    squares += (a - b) * (a - b);
    dot += a * b;
    x_norm += a * a;
    code_norm += b * b;
  }
  if (metric == Metric::kL2) return static_cast<float>(squares);
  if (metric == Metric::kDot) return static_cast<float>(-dot);
  const double denominator = std::sqrt(x_norm) * std::sqrt(code_norm);
  const double cosine = denominator > 0.0 ? dot / denominator : 0.0;
  return static_cast<float>(std::max(0.0, 1.0 - cosine));
}

struct Plan {
  int64_t row_block;          // rows per task, a multiple of the tile height
  int64_t num_row_blocks;
  int64_t segments;           // code segments per row block (split-K for few rows)
  int64_t chunks_per_segment;
  int64_t block_chunks;       // chunks per L2-resident code block
};

Plan make_plan(int64_t num_rows, int64_t num_chunks, int64_t units, const MicroKernel& kernel,
               int threads) {
  constexpr int64_t kCodeBlockBytes = 256 * 1024;  // a quarter of this CPU's 1 MiB L2
  constexpr int64_t kMaxRowBlock = 384;
  const int64_t tile = kernel.tile_rows;
  const int64_t tasks_wanted = 4 * static_cast<int64_t>(threads);
  int64_t row_block = (num_rows + tasks_wanted - 1) / tasks_wanted;
  row_block = std::clamp((row_block + tile - 1) / tile * tile, tile, kMaxRowBlock / tile * tile);
  const int64_t num_row_blocks = (num_rows + row_block - 1) / row_block;
  const int64_t segments =
      std::clamp((tasks_wanted + num_row_blocks - 1) / num_row_blocks, int64_t{1}, num_chunks);
  const int64_t chunks_per_segment = (num_chunks + segments - 1) / segments;
  const int64_t chunk_bytes = units * kernel.chunk_codes * int64_t{4};
  const int64_t block_chunks = std::max<int64_t>(1, kCodeBlockBytes / chunk_bytes);
  return {row_block, num_row_blocks, (num_chunks + chunks_per_segment - 1) / chunks_per_segment,
          chunks_per_segment, block_chunks};
}

// Candidate lists of the screened scan (ScreenRows) for a number of rows: a task's block, the
// segments of a pass (segment s of row i at s * num_rows + i), or every row over every pass.
struct ScreenLists {
  static constexpr int32_t kCapacity = 16;
  std::vector<double> upper;
  std::vector<int32_t> count;
  std::vector<int64_t> code;
  std::vector<double> low;
  explicit ScreenLists(int64_t rows)
      : upper(rows, std::numeric_limits<double>::infinity()),
        count(rows, 0),
        code(rows * kCapacity),
        low(rows * kCapacity) {}
  bool lost(int64_t row) const { return count[row] > kCapacity; }
  // Row `to` takes in row `from` of `other`: the smaller upper end, and the candidates of both
  // that it leaves.
  void fold(int64_t to, const ScreenLists& other, int64_t from) {
    upper[to] = std::min(upper[to], other.upper[from]);
    if (other.lost(from)) count[to] = kCapacity + 1;
    if (lost(to)) return;
    int32_t held = drop_stale(&code[to * kCapacity], &low[to * kCapacity], count[to], upper[to]);
    for (int32_t i = 0; i < other.count[from]; ++i) {
      if (!(other.low[from * kCapacity + i] <= upper[to])) continue;
      if (held == kCapacity) {
        held = kCapacity + 1;
        break;
      }
      code[to * kCapacity + held] = other.code[from * kCapacity + i];
      low[to * kCapacity + held++] = other.low[from * kCapacity + i];
    }
    count[to] = held;
  }
};

// Per-segment lists (see ScanArgs) for every row: segment s of row i lives at
// [(s * num_rows + i) * list_length, ...); and where the screened scan's candidates go: the
// lists of every row when a pass has one segment (its rows' only task may fold them in), else
// one list per segment and row.
struct Partials {
  std::vector<float> best;
  std::vector<int64_t> index;
  ScreenLists* screen = nullptr;
  int64_t screen_rows_per_segment = 0;  // 0: `screen` holds every row's lists
};

// sample_codes' Gumbel noise: 1 / T in score units and the key of the seed.
struct Sampling {
  float inv_temperature;
  uint32_t seed_word;
};

// Screened ieee assignment. The fp32 kernel's score of code k for a row is
//   S_k = fl(... fl(fl(b_k + r_1 c_1) + r_2 c_2) ... + r_D c_D)   (one FMA per dimension)
// with r the row's fp32 operands (-2x for l2), c the code's and b_k its fp32 bias (|c|^2 for l2,
// 0 otherwise). The screened score T_k starts from the same b_k and adds, in fp32, the products
// of the bf16 roundings r' = r + dr, c' = c + dc (vdpbf16ps or AMX tdpbf16ps: two products per
// pair of dimensions, at most two roundings each). By Cauchy-Schwarz on each term of
// r'c' - rc = dr c + r dc + dr dc, with the norms of the actual rounding errors |dr| and |dc|
// (about half their worst case u |r|, u = 2^-8, on most data):
//   |sum r'c' - sum rc| <= |dr| |c| + |r| |dc| + |dr| |dc|
//   |S_k - (b_k + sum rc)| <= g(D, 2^-24) (b_k + |r| |c|)          (D roundings)
//   |T_k - (b_k + sum r'c')| <= g(D + 2, 2^-23) (b_k + (|r| + |dr|) (|c| + |dc|))
// where g(n, v) = n v / (1 - n v); 2^-23 rather than 2^-24 leaves room for a tile unit that
// rounds each step less carefully than to nearest. Subnormal operands (read as zero by both bf16
// instructions) and flushed results change each term by less than 2^-126 |other factor| <=
// 2^-91, since input_scale.h keeps every operand below 2^34: at most (D + 2) 2^-88 in all. So
//   |S_k - T_k| <= B_k = N |c_k| + E |dc_k| + G b_k + slack,  G = g(D, 2^-24) + g(D + 2, 2^-23),
//   N = |dr| + g(D, 2^-24) |r| + g(D + 2, 2^-23) (|r| + |dr|),  E = (1 + g(D + 2, 2^-23)) (|r| + |dr|)
// (RowFactors), all taken 2^-10 larger to cover the double arithmetic that evaluates the bounds;
// the norms are rounded up. If k* is the exact choice, T_k* - B_k* <= S_k* <= S_j <= T_j + B_j
// for every j: k* is among the codes with T_k - B_k <= U = min_j (T_j + B_j), which the epilogue
// keeps (ScreenEpilogue; a code with T_j at or above U + max_j B_j is neither such a code nor
// lowers U), and so is every code that ties with k*. Re-ranking them with the fp32 kernel's own
// arithmetic (rerank) then gives its answer bit for bit.
struct RowFactors {
  double norm, error;  // N and E
};

struct ScreenBound {
  double exact_growth;     // g(D, 2^-24)
  double screened_growth;  // g(D + 2, 2^-23)
  double bias_factor;      // G
  double slack;

  static constexpr double kMargin = 1.0 + 0x1p-10;

  RowFactors row(double norm, double error) const {
    const double both = norm + error;
    return {(error + exact_growth * norm + screened_growth * both) * kMargin,
            (1.0 + screened_growth) * both * kMargin};
  }
};

double rounding_growth(int64_t roundings, double unit) {
  const double n_unit = static_cast<double>(roundings) * unit;
  return n_unit / (1.0 - n_unit);
}

ScreenBound screen_bound(int64_t dim) {
  const double exact = rounding_growth(dim, 0x1p-24);
  const double screened = rounding_growth(dim + 2, 0x1p-23);
  return {exact, screened, (exact + screened) * ScreenBound::kMargin,
          static_cast<double>(dim + 2) * 0x1p-88};
}

// What every task of one call shares: how rows become operands, and the kernel.
struct Problem {
  Metric metric;
  Encoding e;
  const MicroKernel& kernel;
  double row_scale;          // the power of two of input_scales
  int64_t list_length;       // codes kept per row: 1 for assign and sampling, k for the top-k
  const Sampling* sampling;  // nullptr: the nearest codes (assign, assign_topk)
  const ScreenBound* screen = nullptr;  // the screened scan's candidates instead
};

// The counter keys of rows [first_row, first_row + count), two per row; none without sampling.
std::vector<uint32_t> sampling_keys(const Problem& p, int64_t first_row, int64_t count) {
  if (p.sampling == nullptr) return {};
  std::vector<uint32_t> keys(2 * count);
  for (int64_t r = 0; r < count; ++r) {
    const RowKeys row = row_keys(p.sampling->seed_word, static_cast<uint64_t>(first_row + r));
    keys[2 * r] = row.first;
    keys[2 * r + 1] = row.second;
  }
  return keys;
}

// The micro-kernel entry of a problem: Gumbel-perturbed minimum, top-k list or nearest code.
ScanFn scan_for(const Problem& p) {
  if (p.screen != nullptr) return p.kernel.screen;
  if (p.sampling != nullptr) return p.kernel.sample;
  return p.list_length == 1 ? p.kernel.scan : p.kernel.scan_topk;
}

// A task's screened state (ScreenRows) for its block of rows.
struct ScreenBlock {
  ScreenLists lists;
  std::vector<double> norm_factor, error_factor, row_margin;
  std::vector<float> threshold;

  // Per row of the block: the sum of squares of its fp32 operands and of their bf16 rounding
  // errors (zero for rows past the block's count).
  ScreenBlock(const ScreenBound& bound, const PackedCodes& codes,
              const std::vector<double>& squares, const std::vector<double>& rounding_squares)
      : lists(squares.size()),
        norm_factor(squares.size()),
        error_factor(squares.size()),
        row_margin(squares.size()),
        threshold(squares.size(), std::numeric_limits<float>::infinity()) {
    for (size_t r = 0; r < squares.size(); ++r) {
      const RowFactors factors = bound.row(norm_above(squares[r]), norm_above(rounding_squares[r]));
      norm_factor[r] = factors.norm;
      error_factor[r] = factors.error;
      row_margin[r] = factors.norm * codes.max_norm + factors.error * codes.max_error +
                      bound.bias_factor * codes.max_bias + bound.slack;
    }
  }

  // The state of rows [t, ...) for chunks from `chunk` on.
  ScreenRows tile(const ScreenBound& bound, const PackedCodes& codes, int64_t chunk,
                  int chunk_codes, int64_t t) {
    constexpr int32_t capacity = ScreenLists::kCapacity;
    return {codes.norms.data_ptr<float>() + chunk * chunk_codes,
            codes.errors.data_ptr<float>() + chunk * chunk_codes,
            bound.bias_factor,
            bound.slack,
            norm_factor.data() + t,
            error_factor.data() + t,
            row_margin.data() + t,
            lists.upper.data() + t,
            threshold.data() + t,
            lists.code.data() + t * capacity,
            lists.low.data() + t * capacity,
            lists.count.data() + t,
            capacity};
  }
};

// Scans the codes of one pass (packed from code `first_code` on) for one block of rows.
template <typename scalar_t>
void scan_task(const scalar_t* x, int64_t num_rows, int64_t block, int64_t segment,
               const Problem& p, const PackedCodes& codes, int64_t first_code, const Plan& plan,
               Partials& partials) {
  const int64_t units = p.e.units(), chunk_codes = p.kernel.chunk_codes, dim = p.e.dim;
  const int64_t first_row = block * plan.row_block;
  const int64_t count = std::min(plan.row_block, num_rows - first_row);
  // Rows past `count` stay zero: the last tile may extend beyond the block's rows.
  std::vector<float> rows(plan.row_block * units), scratch(dim);
  std::vector<double> squares(plan.row_block), rounding_squares(plan.row_block);
  for (int64_t r = 0; r < count; ++r) {
    to_float(x + (first_row + r) * dim, dim, scratch.data());
    squares[r] = encode(scratch.data(), row_scale(p.metric, scratch.data(), dim, p.row_scale), p.e,
                        rows.data() + r * units, &rounding_squares[r]);
  }
  std::optional<ScreenBlock> screen;
  if (p.screen != nullptr) {
    screen.emplace(*p.screen, codes, squares, rounding_squares);
    // Rows past `count` take no candidates.
    std::fill(screen->threshold.begin() + count, screen->threshold.end(),
              -std::numeric_limits<float>::infinity());
  }
  const int64_t first_chunk = segment * plan.chunks_per_segment;
  const int64_t end_chunk = std::min(codes.num_chunks, first_chunk + plan.chunks_per_segment);
  const int64_t k = p.list_length;
  // Keys for every row of the block, those past `count` included: the last tile reads them.
  const std::vector<uint32_t> keys = sampling_keys(p, first_row, plan.row_block);
  const float inv_temperature = p.sampling != nullptr ? p.sampling->inv_temperature : 0.0f;
  // Entries no code has beaten yet keep an infinite score and a valid index.
  std::vector<float> best(plan.row_block * k, std::numeric_limits<float>::infinity());
  std::vector<int64_t> best_index(plan.row_block * k, first_code + first_chunk * chunk_codes);
  const float* packed = codes.values.data_ptr<float>();
  const float* bias = codes.bias.data_ptr<float>();
  const ScanFn scan = scan_for(p);
  for (int64_t chunk = first_chunk; chunk < end_chunk; chunk += plan.block_chunks) {
    const int64_t chunks = std::min(plan.block_chunks, end_chunk - chunk);
    for (int64_t t = 0; t < count; t += p.kernel.tile_rows) {
      ScreenRows tile_screen;
      if (screen) tile_screen = screen->tile(*p.screen, codes, chunk, chunk_codes, t);
      const ScanArgs args{rows.data() + t * units, units, packed + chunk * units * chunk_codes,
                          bias + chunk * chunk_codes, units, chunks,
                          first_code + chunk * chunk_codes, best.data() + t * k,
                          best_index.data() + t * k, k, inv_temperature,
                          p.sampling != nullptr ? keys.data() + 2 * t : nullptr,
                          screen ? &tile_screen : nullptr};
      scan(args);
    }
  }
  const int64_t offset = (segment * num_rows + first_row) * k;
  std::copy_n(best.begin(), count * k, partials.best.begin() + offset);
  std::copy_n(best_index.begin(), count * k, partials.index.begin() + offset);
  if (screen) {
    const int64_t to = segment * partials.screen_rows_per_segment + first_row;
    for (int64_t r = 0; r < count; ++r) partials.screen->fold(to + r, screen->lists, r);
  }
}

// Merges a later list (b) into an earlier one (a), both sorted by score then index, keeping the
// k best: on equal scores a's entries, whose indices are smaller, come first. For k = 1 this is
// the strict "<" of a running minimum.
void merge_list(float* a_best, int64_t* a_index, const float* b_best, const int64_t* b_index,
                int64_t k, float* scratch_best, int64_t* scratch_index) {
  int64_t from_a = 0, from_b = 0;
  for (int64_t slot = 0; slot < k; ++slot) {
    const bool take_b = b_best[from_b] < a_best[from_a];
    scratch_best[slot] = take_b ? b_best[from_b] : a_best[from_a];
    scratch_index[slot] = take_b ? b_index[from_b++] : a_index[from_a++];
  }
  std::copy_n(scratch_best, k, a_best);
  std::copy_n(scratch_index, k, a_index);
}

// Folds one pass's segments, in order, into the running lists: the earlier segment or pass,
// holding smaller indices, wins ties.
void merge_segments(int64_t num_rows, int64_t segments, int64_t k, const Partials& partials,
                    float* best, int64_t* index) {
  parallel_for(0, num_rows, 1024, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch_best(k);
    std::vector<int64_t> scratch_index(k);
    for (int64_t s = 0; s < segments; ++s) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t from = (s * num_rows + i) * k;
        merge_list(best + i * k, index + i * k, partials.best.data() + from,
                   partials.index.data() + from, k, scratch_best.data(), scratch_index.data());
      }
    }
  });
}

// Codes per pass: a whole number of chunks whose operands take at most kPassBytes.
int64_t codes_per_pass(const Encoding& e, int chunk_codes) {
  constexpr int64_t kPassBytes = 16 << 20;
  const int64_t chunk_bytes = e.units() * chunk_codes * int64_t{4};
  return std::max<int64_t>(1, kPassBytes / chunk_bytes) * chunk_codes;
}

// The lists of every row (num_rows x list_length) over every pass, left in indices (and best,
// the scores).
// With p.screen, `screened` receives the candidates of every row instead.
template <typename scalar_t>
void scan_codebook(const scalar_t* x, int64_t num_rows, const scalar_t* codebook,
                   int64_t num_codes, const Problem& p, double code_scale, int threads,
                   float* best, int64_t* indices, ScreenLists* screened = nullptr) {
  const int64_t k = p.list_length;
  std::fill_n(best, num_rows * k, std::numeric_limits<float>::infinity());
  std::fill_n(indices, num_rows * k, int64_t{0});
  const int64_t pass_codes = codes_per_pass(p.e, p.kernel.chunk_codes);
  for (int64_t first = 0; first < num_codes; first += pass_codes) {
    const PackedCodes codes =
        pack_codes(codebook, first, std::min(pass_codes, num_codes - first), code_scale, p.metric,
                   p.e, p.kernel.chunk_codes);
    const Plan plan = make_plan(num_rows, codes.num_chunks, p.e.units(), p.kernel, threads);
    Partials partials{std::vector<float>(plan.segments * num_rows * k),
                      std::vector<int64_t>(plan.segments * num_rows * k)};
    std::optional<ScreenLists> segment_lists;
    if (p.screen != nullptr && plan.segments > 1) {
      segment_lists.emplace(plan.segments * num_rows);
      partials.screen = &*segment_lists;
      partials.screen_rows_per_segment = num_rows;
    } else {
      partials.screen = screened;
    }
    parallel_tasks(plan.num_row_blocks * plan.segments, [&](int64_t task) {
      scan_task(x, num_rows, task / plan.segments, task % plan.segments, p, codes, first, plan,
                partials);
    });
    if (p.screen == nullptr) {
      merge_segments(num_rows, plan.segments, k, partials, best, indices);
    } else if (segment_lists) {
      parallel_for(0, num_rows, 1024, [&](int64_t begin, int64_t end) {
        for (int64_t s = 0; s < plan.segments; ++s)
          for (int64_t i = begin; i < end; ++i) screened->fold(i, *segment_lists, s * num_rows + i);
      });
    }
  }
}

// The exact choice among each row's screened candidates: the scores the fp32 kernel computes
// (the same operands, the bias first, then one fused multiply-add per dimension in order), ties
// to the smallest index. Returns the rows that lost candidates, to be scanned again.
template <typename scalar_t>
std::vector<int64_t> rerank(const scalar_t* x, int64_t num_rows, const scalar_t* codebook,
                            const Problem& exact, double code_scale, const ScreenLists& lists,
                            int64_t* indices) {
  const int64_t dim = exact.e.dim;
  std::vector<char> lost(num_rows, 0);
  parallel_for(0, num_rows, 256, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(dim), row(dim), code(dim);
    for (int64_t i = begin; i < end; ++i) {
      if (lists.lost(i)) {
        lost[i] = 1;
        continue;
      }
      to_float(x + i * dim, dim, scratch.data());
      encode(scratch.data(), row_scale(exact.metric, scratch.data(), dim, exact.row_scale),
             exact.e, row.data());
      float best = std::numeric_limits<float>::infinity();
      int64_t best_index = -1;
      for (int32_t c = 0; c < lists.count[i]; ++c) {
        if (!(lists.low[i * ScreenLists::kCapacity + c] <= lists.upper[i])) continue;
        const int64_t k = lists.code[i * ScreenLists::kCapacity + c];
        double squares;
        float score = code_operands(codebook + k * dim, code_scale, exact.metric, exact.e,
                                    scratch.data(), code.data(), &squares);
        for (int64_t d = 0; d < dim; ++d) score = std::fma(row[d], code[d], score);
        if (better_candidate(score, k, best, best_index)) {
          best = score;
          best_index = k;
        }
      }
      // No candidate survives where the screen saw no finite score (a non-finite row): the
      // plain kernel rescans such rows, so they get its answer, as unscreened.
      if (best_index < 0)
        lost[i] = 1;
      else
        indices[i] = best_index;
    }
  });
  std::vector<int64_t> rows;
  for (int64_t i = 0; i < num_rows; ++i)
    if (lost[i]) rows.push_back(i);
  return rows;
}

// screened_scan for one batch of rows.
template <typename scalar_t>
void screened_batch(const scalar_t* x, int64_t num_rows, const scalar_t* codebook,
                    int64_t num_codes, const Problem& exact, const MicroKernel& kernel,
                    double code_scale, int threads, float* best, int64_t* indices) {
  const ScreenBound bound = screen_bound(exact.e.dim);
  const Encoding e{exact.e.dim, false, true, true, kernel.unit_block};
  const Problem p{exact.metric, e, kernel, exact.row_scale, 1, nullptr, &bound};
  ScreenLists lists(num_rows);
  scan_codebook(x, num_rows, codebook, num_codes, p, code_scale, threads, best, indices, &lists);
  const std::vector<int64_t> lost = rerank(x, num_rows, codebook, exact, code_scale, lists, indices);
  if (lost.empty()) return;
  const int64_t dim = exact.e.dim, count = static_cast<int64_t>(lost.size());
  std::vector<scalar_t> rows(count * dim);
  for (int64_t r = 0; r < count; ++r) std::copy_n(x + lost[r] * dim, dim, rows.begin() + r * dim);
  std::vector<float> rows_best(count);
  std::vector<int64_t> rows_index(count);
  scan_codebook(rows.data(), count, codebook, num_codes, exact, code_scale, threads,
                rows_best.data(), rows_index.data());
  for (int64_t r = 0; r < count; ++r) indices[lost[r]] = rows_index[r];
}

// The exact ieee choice of every row through the screened scan of `kernel`: candidates, their
// exact re-ranking, and a plain fp32 scan of the rows whose candidates overflowed (clustered
// data, many codes tied). Rows go through in batches, so that the candidate lists (268 bytes a
// row) stay within ~8.4 MiB however many rows a call has; each batch packs the codebook again,
// a few percent of its scan.
template <typename scalar_t>
void screened_scan(const scalar_t* x, int64_t num_rows, const scalar_t* codebook,
                   int64_t num_codes, const Problem& exact, const MicroKernel& kernel,
                   double code_scale, int threads, float* best, int64_t* indices) {
  constexpr int64_t kBatchRows = int64_t{1} << 15;
  const int64_t dim = exact.e.dim;
  for (int64_t first = 0; first < num_rows; first += kBatchRows) {
    screened_batch(x + first * dim, std::min(kBatchRows, num_rows - first), codebook, num_codes,
                   exact, kernel, code_scale, threads, best + first, indices + first);
  }
}

// Reports the distance of each chosen code and counts it, in one pass over the rows.
template <typename scalar_t>
void finalize(const scalar_t* x, const scalar_t* codebook, int64_t num_rows, int64_t dim,
              Metric metric, const int64_t* indices, float* distances, int64_t* counts) {
  parallel_for(0, num_rows, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      distances[i] = chosen_distance(metric, x + i * dim, codebook + indices[i] * dim, dim);
      if (counts != nullptr) __atomic_fetch_add(counts + indices[i], 1, __ATOMIC_RELAXED);
    }
  });
}

// Reports the distances of each row's k codes, ordered by those distances (ties to the
// smallest index, so that the order holds on the values a caller sees, whatever rounding
// separated near-equal scores), and counts each row's first code.
template <typename scalar_t>
void finalize_topk(const scalar_t* x, const scalar_t* codebook, int64_t num_rows, int64_t dim,
                   int64_t k, Metric metric, int64_t* indices, float* distances,
                   int64_t* counts) {
  parallel_for(0, num_rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* row_distances = distances + i * k;
      int64_t* row_indices = indices + i * k;
      for (int64_t j = 0; j < k; ++j) {
        const float distance =
            chosen_distance(metric, x + i * dim, codebook + row_indices[j] * dim, dim);
        const int64_t index = row_indices[j];
        int64_t slot = j;
        for (; slot > 0 && (row_distances[slot - 1] > distance ||
                            (row_distances[slot - 1] == distance && row_indices[slot - 1] > index));
             --slot) {
          row_distances[slot] = row_distances[slot - 1];
          row_indices[slot] = row_indices[slot - 1];
        }
        row_distances[slot] = distance;
        row_indices[slot] = index;
      }
      if (counts != nullptr) __atomic_fetch_add(counts + row_indices[0], 1, __ATOMIC_RELAXED);
    }
  });
}

// What assign, assign_topk and sample_codes share: checked inputs in their common dtype,
// contiguous, and the micro-kernel and operand encoding of the precision.
struct Inputs {
  at::Tensor x, codebook;
  Metric metric;
  const MicroKernel& kernel;
  Encoding encoding;
  const MicroKernel* screen;  // ieee: the bf16 kernel that screens its nearest codes, if any
};

Inputs prepare_inputs(const at::Tensor& x_in, const at::Tensor& codebook_in,
                      const std::string& metric_name, const std::string& precision) {
  TORCH_CHECK(x_in.dim() == 2 && codebook_in.dim() == 2, "wvq::assign: x and codebook must be 2-D");
  TORCH_CHECK(x_in.size(1) == codebook_in.size(1), "wvq::assign: dimension mismatch");
  TORCH_CHECK(codebook_in.size(0) > 0, "wvq::assign: empty codebook");
  TORCH_CHECK(x_in.size(1) > 0, "wvq::assign: D must be at least 1, got 0");
  TORCH_CHECK(precision == "ieee" || precision == "bf16",
              "wvq::assign: precision must be ieee or bf16, got ", precision);
  const Metric metric = parse_metric(metric_name);
  const at::ScalarType dtype = c10::promoteTypes(x_in.scalar_type(), codebook_in.scalar_type());
  TORCH_CHECK(at::isFloatingType(dtype), "wvq::assign: inputs must be floating point");
  const MicroKernel* bf16 = precision == "bf16" ? bf16_kernel() : nullptr;
  const MicroKernel& kernel = bf16 != nullptr ? *bf16 : fp32_kernel();
  const Encoding encoding{x_in.size(1), precision == "bf16" && bf16 == nullptr, bf16 != nullptr,
                          false, kernel.unit_block};
  return {x_in.to(dtype).contiguous(),
          codebook_in.to(dtype).contiguous(),
          metric,
          kernel,
          encoding,
          precision == "ieee" ? screening_kernel(codebook_in.size(0), x_in.size(1)) : nullptr};
}

// sample_codes' request: one draw per row at this temperature and seed.
struct SampleRequest {
  double temperature;  // > 0
  int64_t seed;
};

// 1 / T in the kernel's score units: l2 scores are s^2 (|c|^2 - 2 x.c) = s^2 (d - |x|^2), dot
// scores s_rows s_codes d, cosine scores d - 1; the per-row constants do not move the argmin.
double inverse_temperature(Metric metric, const Scales& scales, double temperature) {
  if (metric == Metric::kCosine) return 1.0 / temperature;
  return 1.0 / (temperature * scales.rows * scales.codes);
}

// The Gumbel noise of a request in the kernel's score units; none for a temperature so small
// that 1 / T overflows, which is T = 0: the nearest code.
std::optional<Sampling> sampling_for(const SampleRequest& sample, Metric metric,
                                     const Scales& scales) {
  const auto inv = static_cast<float>(inverse_temperature(metric, scales, sample.temperature));
  if (!std::isfinite(inv)) return std::nullopt;
  return Sampling{inv, seed_key(static_cast<uint64_t>(sample.seed))};
}

// Scans the codebook keeping `list_length` codes per row (or one drawn code per row when
// `sample` is not null; list_length 1) into `chosen` and `scores`, then calls
// finish(x, codebook) on the typed data.
template <class Finish>
void scan_then(const Inputs& in, int64_t list_length, const SampleRequest* sample,
               int64_t* chosen, float* scores, const Finish& finish) {
  const int threads = at::get_num_threads();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.x.scalar_type(), "wvq_assign_cpu",
                                  [&] {
    const Scales scales = input_scales<scalar_t>(in.metric, in.x, in.codebook);
    std::optional<Sampling> sampling;
    if (sample != nullptr) sampling = sampling_for(*sample, in.metric, scales);
    const Problem problem{in.metric, in.encoding, in.kernel, scales.rows, list_length,
                          sampling ? &*sampling : nullptr};
    const scalar_t* x_data = in.x.data_ptr<scalar_t>();
    const scalar_t* codes = in.codebook.data_ptr<scalar_t>();
    if (in.screen != nullptr && list_length == 1 && sample == nullptr) {
      screened_scan(x_data, in.x.size(0), codes, in.codebook.size(0), problem, *in.screen,
                    scales.codes, threads, scores, chosen);
    } else {
      scan_codebook(x_data, in.x.size(0), codes, in.codebook.size(0), problem, scales.codes,
                    threads, scores, chosen);
    }
    finish(x_data, codes);
  });
}

// One code per row, its distance and the counts: the nearest (assign), or drawn by Gumbel-max
// when `sample` is not null (sample_codes).
std::tuple<at::Tensor, at::Tensor, at::Tensor> one_code_per_row(const Inputs& in, bool histogram,
                                                                const SampleRequest* sample) {
  const int64_t num_rows = in.x.size(0), dim = in.x.size(1), num_codes = in.codebook.size(0);
  at::Tensor indices = at::empty({num_rows}, at::kLong);
  at::Tensor distances = at::empty({num_rows}, at::kFloat);
  at::Tensor counts = at::zeros({histogram ? num_codes : 0}, at::kLong);
  if (num_rows == 0) return {indices, distances, counts};
  int64_t* chosen = indices.data_ptr<int64_t>();
  // The scores are scratch: distances receives them, then the reported distances.
  float* scores = distances.data_ptr<float>();
  scan_then(in, 1, sample, chosen, scores, [&](const auto* x, const auto* codes) {
    finalize(x, codes, num_rows, dim, in.metric, chosen, scores,
             histogram ? counts.data_ptr<int64_t>() : nullptr);
  });
  return {indices, distances, counts};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> assign(const at::Tensor& x,
                                                      const at::Tensor& codebook,
                                                      const std::string& metric,
                                                      const std::string& precision,
                                                      bool histogram) {
  return one_code_per_row(prepare_inputs(x, codebook, metric, precision), histogram, nullptr);
}

std::tuple<at::Tensor, at::Tensor> sample_codes(const at::Tensor& x, const at::Tensor& codebook,
                                                double temperature, int64_t seed,
                                                const std::string& metric,
                                                const std::string& precision) {
  TORCH_CHECK(std::isfinite(temperature) && temperature >= 0.0,
              "wvq::sample_codes: temperature must be a finite number >= 0, got ", temperature);
  const SampleRequest sample{temperature, seed};
  auto [indices, distances, counts] =
      one_code_per_row(prepare_inputs(x, codebook, metric, precision), false,
                       temperature > 0.0 ? &sample : nullptr);
  return {indices, distances};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> assign_topk(const at::Tensor& x_in,
                                                           const at::Tensor& codebook_in,
                                                           int64_t k,
                                                           const std::string& metric_name,
                                                           const std::string& precision,
                                                           bool histogram) {
  const Inputs in = prepare_inputs(x_in, codebook_in, metric_name, precision);
  const int64_t num_rows = in.x.size(0), dim = in.x.size(1), num_codes = in.codebook.size(0);
  TORCH_CHECK(k >= 1 && k <= num_codes, "wvq::assign_topk: k must lie in [1, K = ", num_codes,
              "], got ", k);
  at::Tensor indices = at::empty({num_rows, k}, at::kLong);
  at::Tensor distances = at::empty({num_rows, k}, at::kFloat);
  at::Tensor counts = at::zeros({histogram ? num_codes : 0}, at::kLong);
  if (num_rows == 0) return {indices, distances, counts};
  int64_t* chosen = indices.data_ptr<int64_t>();
  float* scores = distances.data_ptr<float>();  // scratch, as in assign
  scan_then(in, k, nullptr, chosen, scores, [&](const auto* x, const auto* codes) {
    finalize_topk(x, codes, num_rows, dim, k, in.metric, chosen, scores,
                  histogram ? counts.data_ptr<int64_t>() : nullptr);
  });
  return {indices, distances, counts};
}

std::string cpu_isa() { return isa_name(detect_isa()); }

}  // namespace wvq::cpu
