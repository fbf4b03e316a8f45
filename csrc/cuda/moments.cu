// Single-pass mean and covariance in float64. A thread owns one upper-triangle entry (i, j) of
// the covariance and one group of rows: it runs Welford over the group's rows, keeping its own
// copies of mean_i and mean_j. Row groups are then combined entry by entry with the Chan merge,
// in group order. The split into groups depends only on (n, dim), so results are reproducible
// bit for bit on every GPU.
#include <algorithm>

#include "common/pair_moments.h"
#include "device_utils.cuh"

namespace wvq::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kRowsPerGroup = 2048;
constexpr int64_t kMaxGroups = 64;
// Caps the workspace (groups x dim^2 partials) at 2^21 partials, 64 MiB.
constexpr int64_t kMaxPartials = int64_t{1} << 21;

int64_t row_groups(int64_t n, int64_t dim) {
  const int64_t by_rows = ceil_div(n, kRowsPerGroup);
  const int64_t by_memory = std::max<int64_t>(1, kMaxPartials / (dim * dim));
  return std::max<int64_t>(1, std::min({by_rows, kMaxGroups, by_memory}));
}

template <typename T>
__global__ void group_moments_kernel(const T* x, int64_t n, int64_t dim, int64_t rows_per_group,
                                     PairMoments* partials) {
  const int64_t entry = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t i = entry / dim, j = entry % dim;
  if (i >= dim || j < i) return;
  const int64_t group = blockIdx.y;
  const int64_t end = min(n, (group + 1) * rows_per_group);
  PairMoments m{0, 0.0, 0.0, 0.0};
  for (int64_t r = group * rows_per_group; r < end; ++r) {
    welford_add(m, to_double(x[r * dim + i]), to_double(x[r * dim + j]));
  }
  partials[group * dim * dim + entry] = m;
}

__global__ void merge_groups_kernel(const PairMoments* partials, int64_t groups, int64_t dim,
                                    double* mean, double* cov) {
  const int64_t entry = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t i = entry / dim, j = entry % dim;
  if (i >= dim || j < i) return;
  PairMoments total{0, 0.0, 0.0, 0.0};
  for (int64_t g = 0; g < groups; ++g) chan_merge_pair(total, partials[g * dim * dim + entry]);
  const double value = total.comoment / static_cast<double>(total.count);
  cov[i * dim + j] = value;
  cov[j * dim + i] = value;
  if (i == j) mean[i] = total.mean_i;
}

}  // namespace
}  // namespace wvq::cuda

using namespace wvq::cuda;

extern "C" size_t wvq_moments_workspace_bytes(int64_t n, int64_t dim) {
  return sizeof(wvq::PairMoments) * row_groups(n, dim) * dim * dim;
}

extern "C" cudaError_t wvq_moments(const void* x, int dtype, int64_t n, int64_t dim,
                                   void* workspace, double* mean, double* cov,
                                   cudaStream_t stream) {
  const int64_t groups = row_groups(n, dim);
  const int64_t rows_per_group = ceil_div(n, groups);
  const int64_t entry_blocks = ceil_div(dim * dim, kThreads);
  auto* partials = static_cast<wvq::PairMoments*>(workspace);
  const cudaError_t status = with_input_type(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    group_moments_kernel<T><<<dim3(entry_blocks, groups), kThreads, 0, stream>>>(
        static_cast<const T*>(x), n, dim, rows_per_group, partials);
    return cudaGetLastError();
  });
  if (status != cudaSuccess) return status;
  merge_groups_kernel<<<entry_blocks, kThreads, 0, stream>>>(partials, groups, dim, mean, cov);
  return cudaGetLastError();
}
