// Mean and covariance in float64 as parallel reductions. The rows are cut into chunks whose
// number depends only on (n, dim). Per chunk, one kernel takes the column means; a second forms
// the chunk's centred scatter matrix sum_r (x_r - mean)(x_r - mean)^T as a tiled product of the
// centred chunk with itself: a block owns one kTile x kTile tile of the upper triangle for one
// chunk, stages kSlab rows at a time in shared memory and keeps a kPerThread^2 register tile per
// thread. Centring on the chunk's own mean keeps a large common offset out of every product.
// A last kernel merges the chunks entry by entry with the Chan formula, in chunk order. No step
// depends on scheduling, so the results are reproducible bit for bit on every GPU.
#include <algorithm>

#include "common/pair_moments.h"
#include "device_utils.cuh"

namespace wvq::cuda {
namespace {

constexpr int kTile = 64;
constexpr int kSlab = 16;
constexpr int kTileEdgeThreads = 16;  // a kTileEdgeThreads^2 block covers the tile
constexpr int kTileThreads = kTileEdgeThreads * kTileEdgeThreads;
constexpr int kPerThread = kTile / kTileEdgeThreads;
constexpr int kMeanColumns = 32;  // one warp reads 32 consecutive columns of a row
constexpr int kMeanLanes = 8;     // rows of a chunk are dealt round-robin to 8 warps
constexpr int kMergeThreads = 256;

constexpr int64_t kMinChunkRows = 512;
constexpr int64_t kMaxChunks = 256;
// Caps the partial scatter matrices at 2^22 doubles (32 MiB) unless one chunk alone needs more.
constexpr int64_t kMaxPartials = int64_t{1} << 22;

struct Plan {
  int64_t chunks, chunk_rows, tiles;
};

// Every chunk holds at least one row: chunk_rows is rounded up, then the count recomputed.
Plan make_plan(int64_t n, int64_t dim) {
  const int64_t by_memory = std::max<int64_t>(1, kMaxPartials / (dim * dim));
  const int64_t wanted = std::min({ceil_div(n, kMinChunkRows), kMaxChunks, by_memory});
  const int64_t chunk_rows = ceil_div(n, std::max<int64_t>(1, wanted));
  return {ceil_div(n, chunk_rows), chunk_rows, ceil_div(dim, kTile)};
}

__device__ int64_t chunk_begin(int64_t chunk, int64_t chunk_rows) { return chunk * chunk_rows; }
__device__ int64_t chunk_end(int64_t chunk, int64_t chunk_rows, int64_t n) {
  return min(n, (chunk + 1) * chunk_rows);
}

// Block (chunk, column group): warp w sums rows w, w + kMeanLanes, ... of the chunk in order,
// then the warps' sums are added in warp order.
template <typename T>
__global__ void __launch_bounds__(kMeanColumns * kMeanLanes)
    chunk_means_kernel(const T* x, int64_t n, int64_t dim, int64_t chunk_rows, double* means) {
  __shared__ double lane_sums[kMeanLanes][kMeanColumns];
  const int column_lane = threadIdx.x % kMeanColumns, row_lane = threadIdx.x / kMeanColumns;
  const int64_t chunk = blockIdx.x;
  const int64_t column = static_cast<int64_t>(blockIdx.y) * kMeanColumns + column_lane;
  const int64_t begin = chunk_begin(chunk, chunk_rows), end = chunk_end(chunk, chunk_rows, n);
  double sum = 0.0;
  if (column < dim) {
    for (int64_t r = begin + row_lane; r < end; r += kMeanLanes) {
      sum += to_double(x[r * dim + column]);
    }
  }
  lane_sums[row_lane][column_lane] = sum;
  __syncthreads();
  if (row_lane != 0 || column >= dim) return;
  double total = 0.0;
  for (int lane = 0; lane < kMeanLanes; ++lane) total += lane_sums[lane][column_lane];
  means[chunk * dim + column] = total / static_cast<double>(end - begin);
}

// The tile pair (tile_i, tile_j), tile_i <= tile_j, of upper-triangle tile number `index`.
__device__ void upper_tile(int64_t index, int64_t tiles, int64_t& tile_i, int64_t& tile_j) {
  tile_i = 0;
  while (index >= tiles - tile_i) index -= tiles - tile_i++;
  tile_j = tile_i + index;
}

// Stages kSlab rows of columns [first, first + kTile) of the chunk, centred on the chunk's means;
// rows past the chunk's end and columns past dim read as 0, so they add nothing.
template <typename T>
__device__ void stage_slab(const T* x, int64_t row, int64_t end, int64_t first, int64_t dim,
                           const double* centre, double (*slab)[kTile]) {
  for (int e = threadIdx.x; e < kSlab * kTile; e += kTileThreads) {
    const int r = e / kTile, c = e % kTile;
    const int64_t column = first + c;
    const bool inside = row + r < end && column < dim;
    slab[r][c] = inside ? to_double(x[(row + r) * dim + column]) - centre[c] : 0.0;
  }
}

// Block (upper tile, chunk): the tile's entries of the chunk's centred scatter matrix, written to
// the chunk's dim x dim slice of `partials` (entries below the diagonal of a diagonal tile too).
template <typename T>
__global__ void __launch_bounds__(kTileThreads)
    chunk_scatter_kernel(const T* x, int64_t n, int64_t dim, int64_t chunk_rows, int64_t tiles,
                         const double* means, double* partials) {
  __shared__ double slab_i[kSlab][kTile];
  __shared__ double slab_j[kSlab][kTile];
  __shared__ double centre_i[kTile];
  __shared__ double centre_j[kTile];
  int64_t tile_i, tile_j;
  upper_tile(blockIdx.x, tiles, tile_i, tile_j);
  const int64_t chunk = blockIdx.y;
  const int64_t first_i = tile_i * kTile, first_j = tile_j * kTile;
  const double* chunk_mean = means + chunk * dim;
  for (int c = threadIdx.x; c < kTile; c += kTileThreads) {
    centre_i[c] = first_i + c < dim ? chunk_mean[first_i + c] : 0.0;
    centre_j[c] = first_j + c < dim ? chunk_mean[first_j + c] : 0.0;
  }
  __syncthreads();
  const int tx = threadIdx.x % kTileEdgeThreads, ty = threadIdx.x / kTileEdgeThreads;
  double acc[kPerThread][kPerThread] = {};
  const int64_t end = chunk_end(chunk, chunk_rows, n);
  for (int64_t row = chunk_begin(chunk, chunk_rows); row < end; row += kSlab) {
    stage_slab(x, row, end, first_i, dim, centre_i, slab_i);
    stage_slab(x, row, end, first_j, dim, centre_j, slab_j);
    __syncthreads();
#pragma unroll 4
    for (int r = 0; r < kSlab; ++r) {
      double a[kPerThread], b[kPerThread];
#pragma unroll
      for (int p = 0; p < kPerThread; ++p) {
        a[p] = slab_i[r][ty + p * kTileEdgeThreads];
        b[p] = slab_j[r][tx + p * kTileEdgeThreads];
      }
#pragma unroll
      for (int p = 0; p < kPerThread; ++p)
#pragma unroll
        for (int q = 0; q < kPerThread; ++q) acc[p][q] = fma(a[p], b[q], acc[p][q]);
    }
    __syncthreads();
  }
  double* out = partials + chunk * dim * dim;
#pragma unroll
  for (int p = 0; p < kPerThread; ++p) {
    const int64_t i = first_i + ty + p * kTileEdgeThreads;
#pragma unroll
    for (int q = 0; q < kPerThread; ++q) {
      const int64_t j = first_j + tx + q * kTileEdgeThreads;
      if (i < dim && j < dim) out[i * dim + j] = acc[p][q];
    }
  }
}

// Thread per upper-triangle entry (i, j): the chunks' (count, mean_i, mean_j, comoment) merged
// in chunk order.
__global__ void merge_chunks_kernel(const double* means, const double* partials, int64_t n,
                                    int64_t dim, int64_t chunks, int64_t chunk_rows,
                                    double* mean, double* cov) {
  const int64_t entry = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t i = entry / dim, j = entry % dim;
  if (i >= dim || j < i) return;
  PairMoments total{0, 0.0, 0.0, 0.0};
  for (int64_t g = 0; g < chunks; ++g) {
    const int64_t count = chunk_end(g, chunk_rows, n) - chunk_begin(g, chunk_rows);
    chan_merge_pair(total, PairMoments{count, means[g * dim + i], means[g * dim + j],
                                       partials[g * dim * dim + entry]});
  }
  const double value = total.comoment / static_cast<double>(total.count);
  cov[i * dim + j] = value;
  cov[j * dim + i] = value;
  if (i == j) mean[i] = total.mean_i;
}

}  // namespace
}  // namespace wvq::cuda

using namespace wvq::cuda;

extern "C" size_t wvq_moments_workspace_bytes(int64_t n, int64_t dim) {
  if (n < 1 || dim < 1) return 0;
  const Plan plan = make_plan(n, dim);
  return sizeof(double) * plan.chunks * (dim * dim + dim);
}

extern "C" cudaError_t wvq_moments(const void* x, int dtype, int64_t n, int64_t dim,
                                   void* workspace, double* mean, double* cov,
                                   cudaStream_t stream) {
  if (n < 1 || dim < 1) return cudaErrorInvalidValue;
  const Plan plan = make_plan(n, dim);
  auto* partials = static_cast<double*>(workspace);
  double* means = partials + plan.chunks * dim * dim;
  const cudaError_t status = with_input_type(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const auto* rows = static_cast<const T*>(x);
    const dim3 mean_grid(plan.chunks, ceil_div(dim, kMeanColumns));
    chunk_means_kernel<T><<<mean_grid, kMeanColumns * kMeanLanes, 0, stream>>>(
        rows, n, dim, plan.chunk_rows, means);
    const dim3 tile_grid(plan.tiles * (plan.tiles + 1) / 2, plan.chunks);
    chunk_scatter_kernel<T><<<tile_grid, kTileThreads, 0, stream>>>(
        rows, n, dim, plan.chunk_rows, plan.tiles, means, partials);
    return cudaGetLastError();
  });
  if (status != cudaSuccess) return status;
  merge_chunks_kernel<<<ceil_div(dim * dim, kMergeThreads), kMergeThreads, 0, stream>>>(
      means, partials, n, dim, plan.chunks, plan.chunk_rows, mean, cov);
  return cudaGetLastError();
}
