// The torch-free interface of the CUDA kernels: raw device pointers, sizes and a stream.
// ops_cuda.cpp turns tensors into these calls; the .cu files implement them. Every launcher
// only enqueues work on `stream` and returns the launch status (no host synchronisation).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

extern "C" {

// Element types of floating-point inputs.
enum WvqDtype { kWvqFloat32 = 0, kWvqFloat16 = 1, kWvqBFloat16 = 2, kWvqFloat64 = 3 };
enum WvqMetric { kWvqL2 = 0, kWvqCosine = 1, kWvqDot = 2 };
// kWvqIeee: exact fp32 products on the SIMT units; kWvqTf32 and kWvqBf16: tensor cores.
enum WvqPrecision { kWvqIeee = 0, kWvqTf32 = 1, kWvqBf16 = 2 };

// Assignment: x (num_rows, dim) and codebook (num_codes, dim), both row-major and of `dtype`.
// Writes indices (num_rows) and distances (num_rows); with counts != nullptr (zeroed,
// num_codes) also the histogram of the chosen codes. `largest` (device, two floats) holds the
// largest magnitudes of x and of the codebook, from which the kernels take the power-of-two
// input scales of common/input_scale.h. `workspace` holds wvq_assign_workspace_bytes(...)
// bytes: the packed codebook and one 64-bit key per row.
size_t wvq_assign_workspace_bytes(int64_t num_rows, int64_t num_codes, int64_t dim,
                                  int precision);
cudaError_t wvq_assign(const void* x, const void* codebook, int dtype, int64_t num_rows,
                       int64_t num_codes, int64_t dim, int metric, int precision,
                       const float* largest, void* workspace, int64_t* indices,
                       float* distances, int64_t* counts, cudaStream_t stream);

// Adds the occurrences of each code in indices[0, n) to counts (num_codes, zeroed by caller).
// Indices outside [0, num_codes) are skipped, so that no call writes out of bounds.
cudaError_t wvq_code_histogram(const int64_t* indices, int64_t n, int64_t num_codes,
                               int64_t* counts, cudaStream_t stream);

// Per-code sums of the rows of x (n, dim), row-major, written to sums (num_codes, dim; codes
// without rows get zeros). sorted_codes (n) is a stable sort of the indices and row_order (n)
// the rows in that order; code_starts (num_codes + 1) holds, for each code k, the first position
// in sorted_codes whose value is >= k (so out-of-range indices, which sort first or last, are
// skipped). The sorted order is cut into pieces of a size that depends only on dim; each piece
// is summed in row order in float64 and a code's pieces are added in a fixed order, so the
// result does not depend on scheduling and a hot code is summed in parallel.
// `workspace` holds wvq_code_sums_workspace_bytes(n, dim) bytes (at most 16 (n + dim)).
size_t wvq_code_sums_workspace_bytes(int64_t n, int64_t dim);
cudaError_t wvq_code_sums(const int64_t* sorted_codes, const int64_t* row_order,
                          const int64_t* code_starts, const void* x, int dtype, int64_t n,
                          int64_t num_codes, int64_t dim, void* workspace, float* sums,
                          cudaStream_t stream);

// utilization = nonzero / num_codes and perplexity = exp(-sum p log p) of a histogram,
// written to two device floats.
cudaError_t wvq_usage(const int64_t* counts, int64_t num_codes, float* utilization,
                      float* perplexity, cudaStream_t stream);

// Mean (dim) and population covariance (dim, dim) in float64 of x (n, dim), row-major, of
// `dtype`; n >= 1 and dim >= 1 (else cudaErrorInvalidValue). Chunks of rows are reduced as
// centred tiled products and merged in a fixed order: results do not depend on scheduling.
// `workspace` holds wvq_moments_workspace_bytes(n, dim) bytes: at most 256 chunks' partials of
// 8 dim (dim + 1) bytes, and about 32 MiB unless one chunk alone needs more.
size_t wvq_moments_workspace_bytes(int64_t n, int64_t dim);
cudaError_t wvq_moments(const void* x, int dtype, int64_t n, int64_t dim, void* workspace,
                        double* mean, double* cov, cudaStream_t stream);

// NSVQ's dense soft-assignment statistics of x (num_rows, dim) against codebook (num_codes, dim),
// both row-major and of `dtype`, num_codes < 2^31: loss (one float), weight_sums (num_codes),
// weighted_sums (num_codes, dim), indices and distances (num_rows); the semantics of
// docs/op-contract.md. `workspace` holds wvq_soft_assign_workspace_bytes(...) bytes (O(N + K D)).
// num_rows = 0 zeroes the sums and the loss.
size_t wvq_soft_assign_workspace_bytes(int64_t num_rows, int64_t num_codes, int64_t dim);
cudaError_t wvq_soft_assign_stats(const void* x, const void* codebook, int dtype,
                                  int64_t num_rows, int64_t num_codes, int64_t dim, double tau,
                                  double lam, void* workspace, float* loss, float* weight_sums,
                                  float* weighted_sums, int64_t* indices, float* distances,
                                  cudaStream_t stream);

}  // extern "C"
