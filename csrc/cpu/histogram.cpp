// Code-usage statistics: histogram, per-code sums and the utilization/perplexity summary.
// code_sums is deterministic whatever the thread count: each code's rows are summed in row order
// in double, and only the split of the codes among the threads depends on it.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <vector>

#include "cpu_ops.h"
#include "parallel.h"

namespace wvq::cpu {
namespace {

void check_indices(const at::Tensor& indices, int64_t num_codes) {
  TORCH_CHECK(indices.scalar_type() == at::kLong, "wvq: indices must be int64");
  TORCH_CHECK(num_codes > 0, "wvq: num_codes must be positive");
  const int64_t* data = indices.data_ptr<int64_t>();
  for (int64_t i = 0; i < indices.numel(); ++i) {
    TORCH_CHECK(data[i] >= 0 && data[i] < num_codes, "wvq: index ", data[i], " at position ", i,
                " is outside [0, ", num_codes, ")");
  }
}

// The rows are split into one contiguous slice per thread and each slice is counted into its
// own histogram (the first into the output), which keeps a collapsed codebook (every row on one
// code) from contending on one counter. At most threads - 1 extra histograms exist at a time,
// whatever N: the scratch is bounded by 8 K bytes per thread. Counts are integers, so the
// result does not depend on the split; the merge still runs in slice order.
at::Tensor count_codes(const int64_t* codes, int64_t n, int64_t num_codes) {
  at::Tensor counts = at::zeros({num_codes}, at::kLong);
  int64_t* out = counts.data_ptr<int64_t>();
  constexpr int64_t kGrain = 1 << 16;
  const int64_t slices = detail::threads_for(n, kGrain);
  const int64_t slice_rows = (n + slices - 1) / slices;
  std::vector<std::vector<int64_t>> partial(slices - 1);
  parallel_tasks(slices, [&](int64_t slice) {
    int64_t* histogram = out;
    if (slice > 0) {
      partial[slice - 1].assign(num_codes, 0);
      histogram = partial[slice - 1].data();
    }
    const int64_t last = std::min(n, (slice + 1) * slice_rows);
    for (int64_t i = slice * slice_rows; i < last; ++i) ++histogram[codes[i]];
  });
  parallel_for(0, num_codes, kGrain, [&](int64_t begin, int64_t end) {
    for (const auto& piece : partial)
      for (int64_t k = begin; k < end; ++k) out[k] += piece[k];
  });
  return counts;
}

// Each task owns a range of codes and scans all the indices, adding the rows of its codes in
// row order into float64 totals that it rounds once at the end. No row-sized scratch (a sort
// index would cost 8 N bytes) and at most kRangeBytes of totals per thread, whatever N and K;
// the ranges only decide which thread sums a code, never the order of its terms.
template <typename scalar_t>
void sum_rows_by_code(const int64_t* codes, const scalar_t* rows, int64_t n, int64_t dim,
                      int64_t num_codes, float* sums) {
  constexpr int64_t kRangeBytes = 4 << 20;
  const int64_t threads = detail::threads_for(n * dim, 1 << 15);
  const int64_t by_size = (num_codes * dim * int64_t{8} + kRangeBytes - 1) / kRangeBytes;
  const int64_t ranges = std::min(num_codes, std::max(threads, by_size));
  const int64_t range_codes = (num_codes + ranges - 1) / ranges;
  parallel_tasks(ranges, [&](int64_t range) {
    const int64_t first = range * range_codes;
    const int64_t width = std::min(range_codes, num_codes - first);
    std::vector<double> total(width * dim, 0.0);
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t slot = static_cast<uint64_t>(codes[i] - first);
      if (slot >= static_cast<uint64_t>(width)) continue;
      const scalar_t* row = rows + i * dim;
      double* out = total.data() + slot * dim;
      for (int64_t d = 0; d < dim; ++d) out[d] += static_cast<double>(row[d]);
    }
    float* out = sums + first * dim;
    for (int64_t e = 0; e < width * dim; ++e) out[e] = static_cast<float>(total[e]);
  });
}

}  // namespace

at::Tensor code_histogram(const at::Tensor& indices_in, int64_t num_codes) {
  const at::Tensor indices = indices_in.contiguous();
  check_indices(indices, num_codes);
  return count_codes(indices.data_ptr<int64_t>(), indices.numel(), num_codes);
}

std::tuple<at::Tensor, at::Tensor> code_sums(const at::Tensor& indices_in, const at::Tensor& x_in,
                                             int64_t num_codes) {
  TORCH_CHECK(x_in.dim() == 2 && indices_in.dim() == 1 && indices_in.size(0) == x_in.size(0),
              "wvq::code_sums: expected indices (N,) and x (N, D)");
  TORCH_CHECK(at::isFloatingType(x_in.scalar_type()), "wvq::code_sums: x must be floating point");
  TORCH_CHECK(x_in.size(1) > 0, "wvq::code_sums: D must be at least 1, got 0");
  const at::Tensor indices = indices_in.contiguous(), x = x_in.contiguous();
  check_indices(indices, num_codes);
  const int64_t n = x.size(0), dim = x.size(1);
  const int64_t* codes = indices.data_ptr<int64_t>();
  at::Tensor counts = count_codes(codes, n, num_codes);
  at::Tensor sums = at::zeros({num_codes, dim}, at::kFloat);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "wvq_code_sums", [&] {
    sum_rows_by_code(codes, x.data_ptr<scalar_t>(), n, dim, num_codes, sums.data_ptr<float>());
  });
  return {counts, sums};
}

std::tuple<at::Tensor, at::Tensor> usage(const at::Tensor& counts_in) {
  TORCH_CHECK(counts_in.dim() == 1 && counts_in.size(0) > 0, "wvq::usage: counts must be (K,)");
  const at::Tensor counts = counts_in.to(at::kDouble).contiguous();
  const double* c = counts.data_ptr<double>();
  const int64_t num_codes = counts.size(0);
  double total = 0.0, used = 0.0;
  for (int64_t k = 0; k < num_codes; ++k) {
    total += c[k];
    used += c[k] > 0 ? 1.0 : 0.0;
  }
  double entropy = 0.0;  // 0 log 0 = 0: empty codes add nothing; no tokens at all gives 1
  for (int64_t k = 0; k < num_codes; ++k) {
    if (c[k] > 0) entropy -= (c[k] / total) * std::log(c[k] / total);
  }
  at::Tensor utilization = at::empty({}, at::kFloat).fill_(used / num_codes);
  at::Tensor perplexity = at::empty({}, at::kFloat).fill_(std::exp(entropy));
  return {utilization, perplexity};
}

}  // namespace wvq::cpu
