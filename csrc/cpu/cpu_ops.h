// CPU implementations of the wvq ops, registered in csrc/ops.cpp. Argument checks here only
// guard memory safety; user-facing validation lives in wvq_kernels/ops.py.
#pragma once

#include <string>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace wvq::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> assign(const at::Tensor& x,
                                                      const at::Tensor& codebook,
                                                      const std::string& metric,
                                                      const std::string& precision,
                                                      bool histogram);

// The k nearest codes of every row, sorted: (indices (N, k), distances (N, k), counts).
std::tuple<at::Tensor, at::Tensor, at::Tensor> assign_topk(const at::Tensor& x,
                                                           const at::Tensor& codebook, int64_t k,
                                                           const std::string& metric,
                                                           const std::string& precision,
                                                           bool histogram);

at::Tensor code_histogram(const at::Tensor& indices, int64_t num_codes);

std::tuple<at::Tensor, at::Tensor> code_sums(const at::Tensor& indices, const at::Tensor& x,
                                             int64_t num_codes);

std::tuple<at::Tensor, at::Tensor> usage(const at::Tensor& counts);

std::tuple<at::Tensor, at::Tensor, at::Tensor> moments(const at::Tensor& x);

// NSVQ's dense loss statistics: (loss, weight_sums, weighted_sums, indices, distances).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> soft_assign_stats(
    const at::Tensor& x, const at::Tensor& codebook, double tau, double lam);

// One draw per row from softmax(-d / temperature) by Gumbel-max in the assign scan:
// (indices, distances of the drawn codes). temperature = 0 is assign.
std::tuple<at::Tensor, at::Tensor> sample_codes(const at::Tensor& x, const at::Tensor& codebook,
                                                double temperature, int64_t seed,
                                                const std::string& metric,
                                                const std::string& precision);

// Entropy terms of softmax_k(-||x_i - e_k||^2 / tau): (per-row entropies (N,), the mean of the
// rows' softmax (K,)).
std::tuple<at::Tensor, at::Tensor> soft_assign_entropy(const at::Tensor& x,
                                                       const at::Tensor& codebook, double tau);

// soft_assign_entropy's gradients (dL/dx, dL/dcodebook) given dL/dH_i (N,) and dL/dp-bar_k (K,),
// in the inputs' dtypes; the probabilities recomputed, nothing of size N x K.
std::tuple<at::Tensor, at::Tensor> soft_assign_entropy_backward(const at::Tensor& x,
                                                                const at::Tensor& codebook,
                                                                double tau,
                                                                const at::Tensor& grad_entropy,
                                                                const at::Tensor& grad_mean);

std::string cpu_isa();

}  // namespace wvq::cpu
