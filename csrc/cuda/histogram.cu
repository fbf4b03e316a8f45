// Code histogram, deterministic per-code sums and the usage summary. Indices outside
// [0, num_codes) are skipped (counted and summed nowhere): the public API rejects them before
// launching, and a direct call with bad indices must still not write out of bounds.
#include <algorithm>
#include <cmath>

#include "device_utils.cuh"

namespace wvq::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kPieceThreads = 128;  // columns per piece_sums block
constexpr int kMergeColumns = 32;   // one warp per 32 consecutive columns
constexpr int kMergeLanes = 8;      // a code's pieces are dealt round-robin to 8 warps
constexpr int64_t kMinPieceRows = 256;

// Rows per piece of the sorted order: at least dim, so that the head and tail partials
// (2 * pieces * dim doubles) stay within 2 (n + dim) doubles whatever the code sizes.
int64_t piece_rows(int64_t dim) { return std::max(kMinPieceRows, dim); }

__device__ bool in_range(int64_t code, int64_t num_codes) { return code >= 0 && code < num_codes; }

__global__ void histogram_kernel(const int64_t* indices, int64_t n, int64_t num_codes,
                                 int64_t* counts) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t code = i < n ? indices[i] : -1;
  const bool valid = in_range(code, num_codes);
  const unsigned active = __ballot_sync(0xffffffffu, valid);
  if (valid) count_code(counts, code, active);
}

// Block (piece, column block): thread d walks the piece's stretch of the sorted order and sums
// column d of each run of equal codes in row order. A run that is a whole code is final and goes
// to sums; a run that continues a code from the previous piece goes to head[piece], one that
// continues into the next piece to tail[piece] (a piece inside one code: head).
template <typename T>
__global__ void piece_sums_kernel(const int64_t* codes, const int64_t* row_order,
                                  const int64_t* code_starts, const T* x, int64_t n,
                                  int64_t num_codes, int64_t dim, int64_t rows_per_piece,
                                  float* sums, double* head, double* tail) {
  const int64_t piece = blockIdx.x;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= dim) return;
  const int64_t begin = piece * rows_per_piece, end = min(n, begin + rows_per_piece);
  for (int64_t p = begin; p < end;) {
    const int64_t code = codes[p];
    const int64_t run_begin = p;
    double total = 0.0;
    for (; p < end && codes[p] == code; ++p) total += to_double(x[row_order[p] * dim + d]);
    if (!in_range(code, num_codes)) continue;
    if (run_begin == begin && code_starts[code] < begin) {
      head[piece * dim + d] = total;
    } else if (p == end && code_starts[code + 1] > end) {
      tail[piece * dim + d] = total;
    } else {
      sums[code * dim + d] = static_cast<float>(total);
    }
  }
}

// Block (piece, column group): finishes the code that starts in this piece and runs past its
// end, if any. Its partials, tail[first] then head[first + 1 .. last], are dealt round-robin to
// the warps, each adds its share in order, and the warps' sums are added in warp order.
__global__ void __launch_bounds__(kMergeColumns * kMergeLanes)
    merge_pieces_kernel(const int64_t* codes, const int64_t* code_starts, int64_t n,
                        int64_t num_codes, int64_t dim, int64_t rows_per_piece,
                        const double* head, const double* tail, float* sums) {
  __shared__ double lane_sums[kMergeLanes][kMergeColumns];
  const int64_t first = blockIdx.x;
  const int64_t begin = first * rows_per_piece, end = min(n, begin + rows_per_piece);
  const int64_t code = codes[end - 1];
  if (!in_range(code, num_codes) || code_starts[code] < begin || code_starts[code + 1] <= end)
    return;
  const int64_t last = (code_starts[code + 1] - 1) / rows_per_piece;
  const int column_lane = threadIdx.x % kMergeColumns, lane = threadIdx.x / kMergeColumns;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * kMergeColumns + column_lane;
  double sum = 0.0;
  if (d < dim) {
    for (int64_t piece = first + lane; piece <= last; piece += kMergeLanes) {
      sum += piece == first ? tail[piece * dim + d] : head[piece * dim + d];
    }
  }
  lane_sums[lane][column_lane] = sum;
  __syncthreads();
  if (lane != 0 || d >= dim) return;
  double total = 0.0;
  for (int l = 0; l < kMergeLanes; ++l) total += lane_sums[l][column_lane];
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

extern "C" cudaError_t wvq_code_histogram(const int64_t* indices, int64_t n, int64_t num_codes,
                                          int64_t* counts, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  histogram_kernel<<<ceil_div(n, kThreads), kThreads, 0, stream>>>(indices, n, num_codes, counts);
  return cudaGetLastError();
}

extern "C" size_t wvq_code_sums_workspace_bytes(int64_t n, int64_t dim) {
  if (n < 1 || dim < 1) return 0;
  return 2 * sizeof(double) * ceil_div(n, piece_rows(dim)) * dim;
}

extern "C" cudaError_t wvq_code_sums(const int64_t* sorted_codes, const int64_t* row_order,
                                     const int64_t* code_starts, const void* x, int dtype,
                                     int64_t n, int64_t num_codes, int64_t dim, void* workspace,
                                     float* sums, cudaStream_t stream) {
  if (num_codes * dim == 0) return cudaSuccess;
  // Codes without rows are written by no kernel below.
  const cudaError_t zeroed = cudaMemsetAsync(sums, 0, sizeof(float) * num_codes * dim, stream);
  if (zeroed != cudaSuccess || n == 0) return zeroed;
  const int64_t rows_per_piece = piece_rows(dim), pieces = ceil_div(n, rows_per_piece);
  auto* head = static_cast<double*>(workspace);
  double* tail = head + pieces * dim;
  const cudaError_t status = with_input_type(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const dim3 grid(pieces, ceil_div(dim, kPieceThreads));
    piece_sums_kernel<T><<<grid, kPieceThreads, 0, stream>>>(
        sorted_codes, row_order, code_starts, static_cast<const T*>(x), n, num_codes, dim,
        rows_per_piece, sums, head, tail);
    return cudaGetLastError();
  });
  if (status != cudaSuccess) return status;
  const dim3 grid(pieces, ceil_div(dim, kMergeColumns));
  merge_pieces_kernel<<<grid, kMergeColumns * kMergeLanes, 0, stream>>>(
      sorted_codes, code_starts, n, num_codes, dim, rows_per_piece, head, tail, sums);
  return cudaGetLastError();
}

extern "C" cudaError_t wvq_usage(const int64_t* counts, int64_t num_codes, float* utilization,
                                 float* perplexity, cudaStream_t stream) {
  usage_kernel<<<1, kThreads, 0, stream>>>(counts, num_codes, utilization, perplexity);
  return cudaGetLastError();
}
