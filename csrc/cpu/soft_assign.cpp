// NSVQ's dense soft-assignment statistics on the CPU, without an N x K buffer (the
// flash-attention pattern), in two passes over the distances d_ik = sum_d (x_id - e_kd)^2:
//
// 1. parallel over row blocks: per row the running minimum, its first index and the online
//    log-sum-exp Z_i = sum_k exp(-(d_ik - min_i) / tau), folded in one block of codes at a time;
// 2. parallel over code blocks: each task owns one block of codes, recomputes its distances to
//    the rows, turns them into weights w_ik = min(1, lam K exp(-(d_ik - min_i) / tau) / Z_i)
//    (1 for the winner) and sums w, w x and w d in float64.
//
// Nothing depends on the thread count: rows are split into a fixed number of segments only
// when there are too few code blocks to share out, chosen from N and K alone, and every
// partial (per segment and per block) is added in a fixed order.
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_ops.h"
#include "parallel.h"
#include "soft_assign_kernels.h"

namespace wvq::cpu {
namespace {

constexpr int64_t kScanRowsPerTask = 64;
// Below kFixedSplitTasks code blocks pass 2 also splits the rows, into segments of at least
// kMinSegmentRows rows, so that small codebooks still keep several threads busy.
constexpr int64_t kMinSegmentRows = 2048;

struct PackedCodes {
  at::Tensor values;  // num_chunks x dim x kSoftChunkCodes
  at::Tensor pad;     // num_chunks x kSoftChunkCodes
  PackedCodebook view;
};

PackedCodes pack_codes(const at::Tensor& codebook) {
  const int64_t num_codes = codebook.size(0), dim = codebook.size(1);
  const int64_t num_chunks = (num_codes + kSoftChunkCodes - 1) / kSoftChunkCodes;
  at::Tensor values = at::zeros({num_chunks, dim, kSoftChunkCodes}, at::kFloat);
  at::Tensor pad = at::full({num_chunks, kSoftChunkCodes}, std::numeric_limits<float>::infinity(),
                            at::kFloat);
  const float* src = codebook.data_ptr<float>();
  float* packed = values.data_ptr<float>();
  float* pad_out = pad.data_ptr<float>();
  for (int64_t k = 0; k < num_codes; ++k) {
    const int64_t chunk = k / kSoftChunkCodes, lane = k % kSoftChunkCodes;
    for (int64_t d = 0; d < dim; ++d) {
      packed[(chunk * dim + d) * kSoftChunkCodes + lane] = src[k * dim + d];
    }
    pad_out[k] = 0.0f;
  }
  return {values, pad, {packed, pad_out, dim, num_chunks}};
}

struct RowResults {
  at::Tensor best;        // float32 (N,): the distances output
  at::Tensor best_index;  // int64 (N,): the indices output
  at::Tensor bias;        // float32 (N,): log(lam K) - log Z_i
};

// Pass 1; with `entropy` (N floats), soft_assign_entropy's variant, which also stores each row's
// entropy; with `expected` too, its backward's (SoftScanArgs says what each holds then).
RowResults scan(const SoftAssignKernels& kernels, const float* x, int64_t num_rows,
                const PackedCodebook& codes, float inv_tau, double log_scale,
                float* entropy = nullptr, const float* code_weights = nullptr,
                float* expected = nullptr) {
  RowResults rows{at::empty({num_rows}, at::kFloat), at::empty({num_rows}, at::kLong),
                  at::empty({num_rows}, at::kFloat)};
  float* best = rows.best.data_ptr<float>();
  int64_t* best_index = rows.best_index.data_ptr<int64_t>();
  float* bias = rows.bias.data_ptr<float>();
  parallel_tasks((num_rows + kScanRowsPerTask - 1) / kScanRowsPerTask, [&](int64_t task) {
    const int64_t begin = task * kScanRowsPerTask;
    const int64_t end = std::min(num_rows, begin + kScanRowsPerTask);
    const auto scan_rows = expected != nullptr  ? kernels.scan_rows_gradient
                           : entropy != nullptr ? kernels.scan_rows_entropy
                                                : kernels.scan_rows;
    scan_rows({x, codes, begin, end, inv_tau, log_scale, best, best_index, bias, entropy,
               code_weights, expected});
  });
  return rows;
}

// Pass 2 runs one task per (row segment, code block); segments exist only for small codebooks.
struct Plan {
  int64_t num_blocks;
  int64_t segments;
  int64_t rows_per_segment;
  int64_t tasks() const { return segments * num_blocks; }
};

Plan make_plan(int64_t num_rows, int64_t num_chunks) {
  const int64_t num_blocks = (num_chunks + kSoftBlockChunks - 1) / kSoftBlockChunks;
  const int64_t wanted = (kFixedSplitTasks + num_blocks - 1) / num_blocks;
  const int64_t most = std::max<int64_t>(1, num_rows / kMinSegmentRows);
  const int64_t segments = std::min(wanted, most);
  const int64_t rows_per_segment = (num_rows + segments - 1) / segments;
  return {num_blocks, (num_rows + rows_per_segment - 1) / rows_per_segment, rows_per_segment};
}

// One task's float64 sums, laid out as kSoftBlockCodes weight sums, dim x kSoftBlockCodes
// weighted sums (dimension-major, as the kernel adds them) and the loss.
struct BlockSums {
  std::vector<double> values;
  explicit BlockSums(int64_t dim) : values((dim + 1) * kSoftBlockCodes + 1, 0.0) {}
  static int64_t weight_at(int64_t code) { return code; }
  static int64_t weighted_at(int64_t d, int64_t code) { return (d + 1) * kSoftBlockCodes + code; }
  double* data() { return values.data(); }
  double& loss() { return values.back(); }
};

// Pass 2; `probabilities` is soft_assign_entropy's variant, which sums the softmax alone.
std::vector<BlockSums> accumulate(const SoftAssignKernels& kernels, const float* x,
                                  int64_t num_rows, const PackedCodebook& codes, float inv_tau,
                                  const RowResults& rows, const Plan& plan,
                                  bool probabilities = false) {
  std::vector<BlockSums> sums(plan.tasks(), BlockSums(codes.dim));
  const float* best = rows.best.data_ptr<float>();
  const int64_t* best_index = rows.best_index.data_ptr<int64_t>();
  const float* bias = rows.bias.data_ptr<float>();
  parallel_tasks(plan.tasks(), [&](int64_t task) {
    const int64_t first_chunk = (task % plan.num_blocks) * kSoftBlockChunks;
    const int64_t chunks = std::min(kSoftBlockChunks, codes.num_chunks - first_chunk);
    const int64_t row_begin = (task / plan.num_blocks) * plan.rows_per_segment;
    const int64_t row_end = std::min(num_rows, row_begin + plan.rows_per_segment);
    BlockSums& out = sums[task];
    const auto accumulate_codes =
        probabilities ? kernels.accumulate_probabilities : kernels.accumulate_codes;
    accumulate_codes({x, codes, first_chunk, chunks, row_begin, row_end, inv_tau, best,
                              best_index, bias, out.data() + BlockSums::weight_at(0),
                              out.data() + BlockSums::weighted_at(0, 0), &out.loss()});
  });
  return sums;
}

// The sums of one code block at `offset`, added over the segments in order.
double segment_total(const std::vector<BlockSums>& sums, const Plan& plan, int64_t block,
                     int64_t offset) {
  double total = 0.0;
  for (int64_t segment = 0; segment < plan.segments; ++segment) {
    total += sums[segment * plan.num_blocks + block].values[offset];
  }
  return total;
}

// The float32 outputs: loss (divided by N D), weight sums (K,) and weighted sums (K, D).
std::tuple<at::Tensor, at::Tensor, at::Tensor> reduce(const std::vector<BlockSums>& sums,
                                                      const Plan& plan, int64_t num_rows,
                                                      int64_t num_codes, int64_t dim) {
  at::Tensor weight_sums = at::empty({num_codes}, at::kFloat);
  at::Tensor weighted_sums = at::empty({num_codes, dim}, at::kFloat);
  float* weight_out = weight_sums.data_ptr<float>();
  float* weighted_out = weighted_sums.data_ptr<float>();
  for (int64_t block = 0; block < plan.num_blocks; ++block) {
    const int64_t first_code = block * kSoftBlockCodes;
    for (int64_t c = 0; c < std::min(kSoftBlockCodes, num_codes - first_code); ++c) {
      weight_out[first_code + c] =
          static_cast<float>(segment_total(sums, plan, block, BlockSums::weight_at(c)));
      for (int64_t d = 0; d < dim; ++d) {
        weighted_out[(first_code + c) * dim + d] =
            static_cast<float>(segment_total(sums, plan, block, BlockSums::weighted_at(d, c)));
      }
    }
  }
  double loss = 0.0;
  for (const BlockSums& task : sums) loss += task.values.back();
  at::Tensor loss_out = at::full({}, loss / (double(num_rows) * dim), at::kFloat);
  return {loss_out, weight_sums, weighted_sums};
}

// soft_assign_entropy's p-bar: the summed probabilities of every code over N.
at::Tensor mean_probabilities(const std::vector<BlockSums>& sums, const Plan& plan,
                              int64_t num_rows, int64_t num_codes) {
  at::Tensor mean = at::empty({num_codes}, at::kFloat);
  float* out = mean.data_ptr<float>();
  for (int64_t block = 0; block < plan.num_blocks; ++block) {
    const int64_t first_code = block * kSoftBlockCodes;
    for (int64_t c = 0; c < std::min(kSoftBlockCodes, num_codes - first_code); ++c) {
      const double total = segment_total(sums, plan, block, BlockSums::weight_at(c));
      out[first_code + c] = static_cast<float>(total / double(num_rows));
    }
  }
  return mean;
}

void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& codebook, double tau) {
  TORCH_CHECK(x.dim() == 2 && codebook.dim() == 2, op, ": x and codebook must be 2-D");
  TORCH_CHECK(x.size(1) == codebook.size(1), op, ": dimension mismatch");
  TORCH_CHECK(codebook.size(0) > 0, op, ": empty codebook");
  TORCH_CHECK(x.size(1) > 0, op, ": D must be at least 1, got 0");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()) && at::isFloatingType(codebook.scalar_type()),
              op, ": inputs must be floating point");
  TORCH_CHECK(std::isfinite(tau) && tau > 0.0, op, ": tau must be positive");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> no_rows(
    int64_t num_codes, int64_t dim) {
  return {at::zeros({}, at::kFloat), at::zeros({num_codes}, at::kFloat),
          at::zeros({num_codes, dim}, at::kFloat), at::empty({0}, at::kLong),
          at::empty({0}, at::kFloat)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> soft_assign_stats(
    const at::Tensor& x_in, const at::Tensor& codebook_in, double tau, double lam) {
  check_inputs("wvq::soft_assign_stats", x_in, codebook_in, tau);
  TORCH_CHECK(std::isfinite(lam) && lam >= 0.0, "wvq::soft_assign_stats: lam must be >= 0");
  // Kernels work on float32 rows; float32 inputs are used in place.
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const at::Tensor codebook = codebook_in.to(at::kFloat).contiguous();
  const int64_t num_rows = x.size(0), dim = x.size(1), num_codes = codebook.size(0);

  if (num_rows == 0) return no_rows(num_codes, dim);

  const SoftAssignKernels& kernels = soft_assign_kernels();
  const PackedCodes codes = pack_codes(codebook);
  const float inv_tau = static_cast<float>(1.0 / tau);
  const double log_scale = std::log(lam * double(num_codes));  // -inf for lam = 0
  const RowResults rows =
      scan(kernels, x.data_ptr<float>(), num_rows, codes.view, inv_tau, log_scale);
  const Plan plan = make_plan(num_rows, codes.view.num_chunks);
  const std::vector<BlockSums> sums = accumulate(kernels, x.data_ptr<float>(), num_rows,
                                                 codes.view, inv_tau, rows, plan);
  auto [loss, weight_sums, weighted_sums] = reduce(sums, plan, num_rows, num_codes, dim);
  return {loss, weight_sums, weighted_sums, rows.best_index, rows.best};
}

// ---- soft_assign_entropy (issue 16): the same two passes, probabilities instead of weights ----

std::tuple<at::Tensor, at::Tensor> soft_assign_entropy(const at::Tensor& x_in,
                                                       const at::Tensor& codebook_in, double tau) {
  check_inputs("wvq::soft_assign_entropy", x_in, codebook_in, tau);
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const at::Tensor codebook = codebook_in.to(at::kFloat).contiguous();
  const int64_t num_rows = x.size(0), num_codes = codebook.size(0);
  // float64 inputs get float64 outputs (computed in float32), as the reference's.
  const at::ScalarType out_type =
      x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (num_rows == 0) return {at::empty({0}, out_type), at::zeros({num_codes}, out_type)};

  const SoftAssignKernels& kernels = soft_assign_kernels();
  const PackedCodes codes = pack_codes(codebook);
  const float inv_tau = static_cast<float>(1.0 / tau);
  at::Tensor entropy = at::empty({num_rows}, at::kFloat);
  // log_scale = 0: the bias is -log Z, and pass 2's weights are the softmax probabilities.
  const RowResults rows = scan(kernels, x.data_ptr<float>(), num_rows, codes.view, inv_tau, 0.0,
                               entropy.data_ptr<float>());
  const Plan plan = make_plan(num_rows, codes.view.num_chunks);
  const std::vector<BlockSums> sums = accumulate(kernels, x.data_ptr<float>(), num_rows,
                                                 codes.view, inv_tau, rows, plan, true);
  const at::Tensor mean = mean_probabilities(sums, plan, num_rows, num_codes);
  return {entropy.to(out_type), mean.to(out_type)};
}

// ---- soft_assign_entropy_backward: G_ik recomputed in two passes ----

namespace {

// The backward's partial sums live in float64 buffers of two kinds: one per row segment for the
// code gradients (K x D each), one per code range for the row gradients (N x D each). Each task
// owns one (segment, range) pair, so it alone writes its rows of the one and its codes of the
// other; the buffers are then added in a fixed order. The split depends on N, K and D only (not
// on the thread count), which keeps the result bitwise the same for every thread count, and
// each kind of buffer stays within kPartialBudget bytes unless one buffer alone exceeds it
// (then there is one of that kind: K x D or N x D float64, twice a float32 gradient).
constexpr int64_t kPartialBudget = int64_t{16} << 20;
constexpr int64_t kMinGradientSegmentRows = 256;

struct GradientPlan {
  int64_t segments, rows_per_segment;
  int64_t ranges, chunks_per_range;
  int64_t tasks() const { return segments * ranges; }
};

int64_t clamp_count(int64_t wanted, int64_t most) {
  return std::max<int64_t>(1, std::min(wanted, most));
}

GradientPlan make_gradient_plan(int64_t num_rows, int64_t num_chunks, int64_t dim) {
  const int64_t code_bytes = num_chunks * kSoftChunkCodes * dim * int64_t{sizeof(double)};
  const int64_t row_bytes = num_rows * dim * int64_t{sizeof(double)};
  const int64_t segments = clamp_count(
      std::min(num_rows / kMinGradientSegmentRows, kPartialBudget / code_bytes), kFixedSplitTasks);
  const int64_t num_blocks = (num_chunks + kSoftBlockChunks - 1) / kSoftBlockChunks;
  const int64_t ranges = clamp_count(
      std::min((kFixedSplitTasks + segments - 1) / segments, kPartialBudget / row_bytes),
      num_blocks);
  const int64_t rows_per_segment = (num_rows + segments - 1) / segments;
  const int64_t chunks_per_range = (num_blocks + ranges - 1) / ranges * kSoftBlockChunks;
  return {(num_rows + rows_per_segment - 1) / rows_per_segment, rows_per_segment,
          (num_chunks + chunks_per_range - 1) / chunks_per_range, chunks_per_range};
}

// c_k = (dL/dp-bar_k) / N as float32, padded with zeros to whole chunks.
at::Tensor padded_code_weights(const at::Tensor& grad_mean, int64_t num_rows, int64_t num_chunks) {
  at::Tensor weights = at::zeros({num_chunks * kSoftChunkCodes}, at::kFloat);
  weights.narrow(0, 0, grad_mean.numel())
      .copy_(grad_mean.reshape(-1).to(at::kDouble).div(double(num_rows)));
  return weights;
}

// factor * sum over the partial buffers, added in order, as `like`'s dtype: rows of `count`
// entries, entry e of partial p at partials[p * stride + where(e)].
template <class Where>
at::Tensor reduce_partials(const at::Tensor& partials, int64_t count, int64_t stride,
                           double factor, const Where& where, const at::Tensor& like) {
  at::Tensor total = at::empty({count}, at::kDouble);
  const double* in = partials.data_ptr<double>();
  double* out = total.data_ptr<double>();
  const int64_t num_partials = partials.size(0);
  parallel_for(0, count, 4096, [&](int64_t first, int64_t last) {
    for (int64_t e = first; e < last; ++e) {
      double sum = 0.0;
      for (int64_t p = 0; p < num_partials; ++p) sum += in[p * stride + where(e)];
      out[e] = factor * sum;
    }
  });
  return total.view(like.sizes()).to(like.scalar_type());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> soft_assign_entropy_backward(const at::Tensor& x_in,
                                                                const at::Tensor& codebook_in,
                                                                double tau,
                                                                const at::Tensor& grad_entropy,
                                                                const at::Tensor& grad_mean) {
  check_inputs("wvq::soft_assign_entropy_backward", x_in, codebook_in, tau);
  const int64_t num_rows = x_in.size(0), dim = x_in.size(1), num_codes = codebook_in.size(0);
  TORCH_CHECK(grad_entropy.numel() == num_rows && grad_mean.numel() == num_codes,
              "wvq::soft_assign_entropy_backward: gradients must have N and K entries");
  if (num_rows == 0) return {at::zeros_like(x_in), at::zeros_like(codebook_in)};
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const at::Tensor codebook = codebook_in.to(at::kFloat).contiguous();
  const at::Tensor row_weights = grad_entropy.reshape(-1).to(at::kFloat).contiguous();

  const SoftAssignKernels& kernels = soft_assign_kernels();
  const PackedCodes codes = pack_codes(codebook);
  const int64_t num_chunks = codes.view.num_chunks;
  const at::Tensor code_weights = padded_code_weights(grad_mean, num_rows, num_chunks);
  const float inv_tau = static_cast<float>(1.0 / tau);
  at::Tensor excess = at::empty({num_rows}, at::kFloat);
  at::Tensor expected = at::empty({num_rows}, at::kFloat);
  const RowResults rows =
      scan(kernels, x.data_ptr<float>(), num_rows, codes.view, inv_tau, 0.0,
           excess.data_ptr<float>(), code_weights.data_ptr<float>(), expected.data_ptr<float>());

  const GradientPlan plan = make_gradient_plan(num_rows, num_chunks, dim);
  const int64_t code_stride = num_chunks * kSoftChunkCodes * dim;
  at::Tensor code_sums = at::zeros({plan.segments, code_stride}, at::kDouble);
  at::Tensor row_sums = at::zeros({plan.ranges, num_rows * dim}, at::kDouble);
  parallel_tasks(plan.tasks(), [&](int64_t task) {
    const int64_t segment = task / plan.ranges, range = task % plan.ranges;
    const int64_t row_begin = segment * plan.rows_per_segment;
    const int64_t first_chunk = range * plan.chunks_per_range;
    kernels.accumulate_gradients(
        {x.data_ptr<float>(), codes.view, row_begin,
         std::min(num_rows, row_begin + plan.rows_per_segment), first_chunk,
         std::min(num_chunks, first_chunk + plan.chunks_per_range), inv_tau,
         rows.best.data_ptr<float>(), rows.best_index.data_ptr<int64_t>(),
         rows.bias.data_ptr<float>(), excess.data_ptr<float>(), expected.data_ptr<float>(),
         row_weights.data_ptr<float>(), code_weights.data_ptr<float>(),
         row_sums.data_ptr<double>() + range * num_rows * dim,
         code_sums.data_ptr<double>() + segment * code_stride});
  });
  // dL/dx_i = 2 sum_k G_ik (x_i - e_k); dL/de_k = -2 sum_i G_ik (x_i - e_k), read back from the
  // packed (chunk, dimension, lane) layout.
  const at::Tensor grad_x = reduce_partials(
      row_sums, num_rows * dim, num_rows * dim, 2.0, [](int64_t e) { return e; }, x_in);
  const at::Tensor grad_codebook = reduce_partials(
      code_sums, num_codes * dim, code_stride, -2.0,
      [dim](int64_t e) {
        const int64_t code = e / dim, d = e % dim;
        return ((code / kSoftChunkCodes) * dim + d) * kSoftChunkCodes + code % kSoftChunkCodes;
      },
      codebook_in);
  return {grad_x, grad_codebook};
}

}  // namespace wvq::cpu
