// CUDA kernels for the wvq ops (schemas in ops.cpp): checks, device guard, current stream, and
// the hand-off from tensors to the torch-free launchers of csrc/cuda. Built only against a CUDA
// build of torch, as the separate object wvq_kernels._C_cuda.
#include <Python.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>

#include "cuda/launchers.h"

extern "C" PyObject* PyInit__C_cuda(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

namespace wvq::cuda_ops {
namespace {

// Checked before the device guard is built, which needs a CUDA device. A second tensor is then
// checked to be on the same device (so CUDA too), which also catches a CPU tensor mixed in.
void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "wvq: ", name, " must be a CUDA tensor, got ", t.device());
}

// Floating inputs as a contiguous tensor of a dtype the kernels read natively.
at::Tensor float_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, "wvq: ", name, " must be 2-D, got ", t.dim(), " dimensions");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "wvq: ", name, " must be floating point");
  return t.contiguous();
}

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kWvqFloat32;
    case at::kHalf: return kWvqFloat16;
    case at::kBFloat16: return kWvqBFloat16;
    case at::kDouble: return kWvqFloat64;
    default: TORCH_CHECK(false, "wvq: unsupported dtype ", t.scalar_type());
  }
}

int metric_code(const std::string& metric) {
  if (metric == "l2") return kWvqL2;
  if (metric == "cosine") return kWvqCosine;
  TORCH_CHECK(metric == "dot", "wvq::assign: metric must be l2, cosine or dot, got ", metric);
  return kWvqDot;
}

// tf32x3 runs on the exact fp32 path: it is at least as accurate as three tf32 products.
int precision_code(const std::string& precision) {
  if (precision == "ieee" || precision == "tf32x3") return kWvqIeee;
  if (precision == "tf32") return kWvqTf32;
  TORCH_CHECK(precision == "bf16", "wvq::assign: precision must be ieee, tf32, tf32x3 or bf16, got ",
              precision);
  return kWvqBf16;
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* names,
                       const char* op) {
  TORCH_CHECK(a.device() == b.device(), "wvq::", op, ": ", names, " on different devices (",
              a.device(), " and ", b.device(), ")");
}

// D = 0 is rejected: the kernels would launch empty grids or divide by D.
void check_rows_and_codebook(const at::Tensor& x, const at::Tensor& codebook, const char* op) {
  TORCH_CHECK(codebook.size(0) > 0 && codebook.size(1) == x.size(1), "wvq::", op,
              ": expected codebook (K, D) with K >= 1 and D = x.size(1)");
  TORCH_CHECK(x.size(1) > 0, "wvq::", op, ": D must be at least 1, got 0");
}

// max |t| as a float32 0-dim device tensor (no host sync, no |t| temporary), from which the
// assignment kernels take their input scales.
at::Tensor largest_magnitude(const at::Tensor& t) {
  const auto [low, high] = at::aminmax(t);
  return at::maximum(-low, high).to(at::kFloat);
}

// Mixed inputs: both promoted, since the kernels read one element type.
void promote_to_common_type(at::Tensor& x, at::Tensor& codebook) {
  if (codebook.scalar_type() == x.scalar_type()) return;
  const auto common = c10::promoteTypes(x.scalar_type(), codebook.scalar_type());
  x = x.to(common);
  codebook = codebook.to(common);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> assign(const at::Tensor& x_in,
                                                      const at::Tensor& codebook_in,
                                                      const std::string& metric,
                                                      const std::string& precision,
                                                      bool histogram) {
  check_cuda(x_in, "x");
  check_same_device(x_in, codebook_in, "x and codebook", "assign");
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = float_rows(x_in, "x"), codebook = float_rows(codebook_in, "codebook");
  check_rows_and_codebook(x, codebook, "assign");
  promote_to_common_type(x, codebook);
  const int64_t n = x.size(0), k = codebook.size(0), d = x.size(1);
  const int mode = precision_code(precision);
  at::Tensor indices = at::empty({n}, x.options().dtype(at::kLong));
  at::Tensor distances = at::empty({n}, x.options().dtype(at::kFloat));
  at::Tensor counts = at::zeros({histogram ? k : 0}, x.options().dtype(at::kLong));
  if (n == 0) return {indices, distances, counts};
  at::Tensor work = workspace(wvq_assign_workspace_bytes(n, k, d, mode), x);
  const at::Tensor largest = at::stack({largest_magnitude(x), largest_magnitude(codebook)});
  C10_CUDA_CHECK(wvq_assign(x.data_ptr(), codebook.data_ptr(), dtype_code(x), n, k, d,
                            metric_code(metric), mode, largest.data_ptr<float>(),
                            work.data_ptr(), indices.data_ptr<int64_t>(),
                            distances.data_ptr<float>(),
                            histogram ? counts.data_ptr<int64_t>() : nullptr, current_stream()));
  return {indices, distances, counts};
}

// The range check of the values lives in wvq_kernels/ops.py: here it would need a host sync.
// The kernels skip indices outside [0, num_codes) instead, so a direct call cannot write out of
// bounds (such rows are counted and summed nowhere).
at::Tensor checked_indices(const at::Tensor& indices, int64_t num_codes) {
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.dim() == 1,
              "wvq: indices must be int64 (N,)");
  TORCH_CHECK(num_codes > 0, "wvq: num_codes must be positive");
  return indices.contiguous();
}

at::Tensor code_histogram(const at::Tensor& indices_in, int64_t num_codes) {
  check_cuda(indices_in, "indices");
  const c10::cuda::CUDAGuard guard(indices_in.device());
  const at::Tensor indices = checked_indices(indices_in, num_codes);
  at::Tensor counts = at::zeros({num_codes}, indices.options());
  C10_CUDA_CHECK(wvq_code_histogram(indices.data_ptr<int64_t>(), indices.numel(), num_codes,
                                    counts.data_ptr<int64_t>(), current_stream()));
  return counts;
}

std::tuple<at::Tensor, at::Tensor> code_sums(const at::Tensor& indices_in, const at::Tensor& x_in,
                                             int64_t num_codes) {
  check_cuda(x_in, "x");
  check_same_device(indices_in, x_in, "indices and x", "code_sums");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = float_rows(x_in, "x");
  const at::Tensor indices = checked_indices(indices_in, num_codes);
  TORCH_CHECK(indices.size(0) == x.size(0), "wvq::code_sums: expected indices (N,) and x (N, D)");
  const int64_t n = x.size(0), d = x.size(1);
  TORCH_CHECK(d > 0, "wvq::code_sums: D must be at least 1, got 0");
  // A stable sort lists each code's rows in row order: the fixed summation order.
  // (An explicit optional: a plain `true` would bind to the overload's `dim` argument.)
  const auto [sorted_codes, row_order] =
      at::sort(indices, std::optional<bool>(true), /*dim=*/0, /*descending=*/false);
  // Where each code's rows begin in the sorted order; out-of-range indices fall outside every
  // code's stretch, and the counts are the stretches' lengths (no atomics).
  const at::Tensor code_starts =
      at::searchsorted(sorted_codes, at::arange(num_codes + 1, indices.options()));
  at::Tensor counts = at::sub(code_starts.slice(0, 1), code_starts.slice(0, 0, num_codes));
  at::Tensor sums = at::empty({num_codes, d}, x.options().dtype(at::kFloat));
  at::Tensor work = workspace(wvq_code_sums_workspace_bytes(n, d), x);
  C10_CUDA_CHECK(wvq_code_sums(sorted_codes.data_ptr<int64_t>(), row_order.data_ptr<int64_t>(),
                               code_starts.data_ptr<int64_t>(), x.data_ptr(), dtype_code(x), n,
                               num_codes, d, work.data_ptr(), sums.data_ptr<float>(),
                               current_stream()));
  return {counts, sums};
}

std::tuple<at::Tensor, at::Tensor> usage(const at::Tensor& counts_in) {
  check_cuda(counts_in, "counts");
  const c10::cuda::CUDAGuard guard(counts_in.device());
  TORCH_CHECK(counts_in.dim() == 1 && counts_in.size(0) > 0, "wvq::usage: counts must be (K,)");
  const at::Tensor counts = counts_in.to(at::kLong).contiguous();
  at::Tensor utilization = at::empty({}, counts.options().dtype(at::kFloat));
  at::Tensor perplexity = at::empty({}, counts.options().dtype(at::kFloat));
  C10_CUDA_CHECK(wvq_usage(counts.data_ptr<int64_t>(), counts.size(0),
                           utilization.data_ptr<float>(), perplexity.data_ptr<float>(),
                           current_stream()));
  return {utilization, perplexity};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> moments(const at::Tensor& x_in) {
  check_cuda(x_in, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = float_rows(x_in, "x");
  const int64_t n = x.size(0), d = x.size(1);
  TORCH_CHECK(d > 0, "wvq::moments: D must be at least 1, got 0");
  at::Tensor count = at::full({}, n, x.options().dtype(at::kLong));
  at::Tensor mean = at::zeros({d}, x.options().dtype(at::kDouble));
  at::Tensor cov = at::zeros({d, d}, x.options().dtype(at::kDouble));
  if (n == 0) return {count, mean, cov};  // as the CPU op: zeros
  at::Tensor work = workspace(wvq_moments_workspace_bytes(n, d), x);
  C10_CUDA_CHECK(wvq_moments(x.data_ptr(), dtype_code(x), n, d, work.data_ptr(),
                             mean.data_ptr<double>(), cov.data_ptr<double>(), current_stream()));
  return {count, mean, cov};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> soft_assign_stats(
    const at::Tensor& x_in, const at::Tensor& codebook_in, double tau, double lam) {
  check_cuda(x_in, "x");
  check_same_device(x_in, codebook_in, "x and codebook", "soft_assign_stats");
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = float_rows(x_in, "x"), codebook = float_rows(codebook_in, "codebook");
  check_rows_and_codebook(x, codebook, "soft_assign_stats");
  // The kernels keep code indices in 32 bits.
  TORCH_CHECK(codebook.size(0) <= std::numeric_limits<int32_t>::max(),
              "wvq::soft_assign_stats: at most 2^31 - 1 codes, got ", codebook.size(0));
  TORCH_CHECK(std::isfinite(tau) && tau > 0.0, "wvq::soft_assign_stats: tau must be positive");
  TORCH_CHECK(std::isfinite(lam) && lam >= 0.0, "wvq::soft_assign_stats: lam must be >= 0");
  promote_to_common_type(x, codebook);
  const int64_t n = x.size(0), k = codebook.size(0), d = x.size(1);
  const auto floats = x.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({}, floats);
  at::Tensor weight_sums = at::empty({k}, floats);
  at::Tensor weighted_sums = at::empty({k, d}, floats);
  at::Tensor indices = at::empty({n}, x.options().dtype(at::kLong));
  at::Tensor distances = at::empty({n}, floats);
  at::Tensor work = workspace(wvq_soft_assign_workspace_bytes(n, k, d), x);
  C10_CUDA_CHECK(wvq_soft_assign_stats(
      x.data_ptr(), codebook.data_ptr(), dtype_code(x), n, k, d, tau, lam, work.data_ptr(),
      loss.data_ptr<float>(), weight_sums.data_ptr<float>(), weighted_sums.data_ptr<float>(),
      indices.data_ptr<int64_t>(), distances.data_ptr<float>(), current_stream()));
  return {loss, weight_sums, weighted_sums, indices, distances};
}

}  // namespace
}  // namespace wvq::cuda_ops

TORCH_LIBRARY_IMPL(wvq, CUDA, m) {
  m.impl("assign", &wvq::cuda_ops::assign);
  m.impl("code_histogram", &wvq::cuda_ops::code_histogram);
  m.impl("code_sums", &wvq::cuda_ops::code_sums);
  m.impl("usage", &wvq::cuda_ops::usage);
  m.impl("moments", &wvq::cuda_ops::moments);
  m.impl("soft_assign_stats", &wvq::cuda_ops::soft_assign_stats);
}
