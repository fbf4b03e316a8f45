// Code histogram, deterministic per-code sums and the usage summary.
#include <cmath>

#include "device_utils.cuh"

namespace wvq::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void histogram_kernel(const int64_t* indices, int64_t n, int64_t* counts) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const unsigned active = __ballot_sync(0xffffffffu, i < n);
  if (i < n) count_code(counts, indices[i], active);
}

// Block (code, column block): thread d sums column d of the code's rows in row order.
template <typename T>
__global__ void code_sums_kernel(const int64_t* row_order, const int64_t* code_starts,
                                 const T* x, int64_t dim, float* sums) {
  const int64_t code = blockIdx.x;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= dim) return;
  double total = 0.0;
  for (int64_t p = code_starts[code]; p < code_starts[code + 1]; ++p) {
    total += to_double(x[row_order[p] * dim + d]);
  }
  sums[code * dim + d] = static_cast<float>(total);
}

__global__ void usage_kernel(const int64_t* counts, int64_t num_codes, float* utilization,
                             float* perplexity) {
  __shared__ double scratch[kThreads];
  double tokens = 0.0, used = 0.0;
  for (int64_t k = threadIdx.x; k < num_codes; k += kThreads) {
    tokens += static_cast<double>(counts[k]);
    used += counts[k] > 0 ? 1.0 : 0.0;
  }
  tokens = block_sum<kThreads>(tokens, scratch);
  used = block_sum<kThreads>(used, scratch);
  double entropy = 0.0;  // 0 log 0 = 0: empty codes add nothing; no tokens at all gives 1
  for (int64_t k = threadIdx.x; k < num_codes; k += kThreads) {
    if (counts[k] > 0) {
      const double p = static_cast<double>(counts[k]) / tokens;
      entropy -= p * log(p);
    }
  }
  entropy = block_sum<kThreads>(entropy, scratch);
  if (threadIdx.x == 0) {
    *utilization = static_cast<float>(used / static_cast<double>(num_codes));
    *perplexity = static_cast<float>(exp(entropy));
  }
}

}  // namespace
}  // namespace wvq::cuda

using namespace wvq::cuda;

extern "C" cudaError_t wvq_code_histogram(const int64_t* indices, int64_t n, int64_t* counts,
                                          cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  histogram_kernel<<<ceil_div(n, kThreads), kThreads, 0, stream>>>(indices, n, counts);
  return cudaGetLastError();
}

extern "C" cudaError_t wvq_code_sums(const int64_t* row_order, const int64_t* code_starts,
                                     const void* x, int dtype, int64_t num_codes, int64_t dim,
                                     float* sums, cudaStream_t stream) {
  return with_input_type(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const dim3 grid(num_codes, ceil_div(dim, kThreads));
    code_sums_kernel<T><<<grid, kThreads, 0, stream>>>(row_order, code_starts,
                                                       static_cast<const T*>(x), dim, sums);
    return cudaGetLastError();
  });
}

extern "C" cudaError_t wvq_usage(const int64_t* counts, int64_t num_codes, float* utilization,
                                 float* perplexity, cudaStream_t stream) {
  usage_kernel<<<1, kThreads, 0, stream>>>(counts, num_codes, utilization, perplexity);
  return cudaGetLastError();
}
