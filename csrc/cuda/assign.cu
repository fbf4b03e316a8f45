// Nearest-code assignment without an N x K buffer.
//
// Every score is bias_k + sum_d row_d * code_kd, with operands prepared so that one kernel
// covers all metrics: l2 uses rows -2x and bias |c|^2, cosine rows -x/|x| and codes c/|c|,
// dot rows -x. The codebook is packed once (padded to whole tiles, bf16 for the bf16 path) by
// pack_codebook_kernel; rows are scaled and rounded while they are staged in shared memory.
//
// A block owns kTileRows rows and one segment of the codebook (split-K: several segments per
// row block when there are too few row blocks to fill the GPU). For each tile of kTileCodes
// codes it computes the score tile with TileMath<precision> (tensor cores via WMMA, which
// lowers to mma.sync, or exact fp32 FMA), then scans it into a running (min, argmin) per row
// held in registers. Each segment's winner enters a per-row packed 64-bit key with atomicMin,
// which keeps the smallest score and, on ties, the smallest index, whatever order segments
// finish in. finish_kernel decodes the keys, recomputes the distance from the unrounded inputs
// and adds the chosen codes to the histogram with warp-aggregated atomics.
#include <mma.h>

#include <algorithm>
#include <cfloat>
#include <type_traits>

#include "common/packed_key.h"
#include "device_utils.cuh"

namespace wvq::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kThreads = 128;  // four warps
constexpr int kTileRows = 64;
constexpr int kTileCodes = 64;
constexpr int kChunkDim = 32;  // dimensions staged in shared memory at a time
// Row padding of the staged tiles; keeps WMMA pointers 32-byte aligned and spreads banks.
constexpr int kOperandPad = 8;
constexpr int kScorePad = 4;
constexpr int kScanThreadsPerRow = kThreads / kTileRows;
constexpr int kScanCodesPerThread = kTileCodes / kScanThreadsPerRow;

template <int precision>
using Operand = std::conditional_t<precision == kWvqBf16, __nv_bfloat16, float>;

__device__ __forceinline__ void store_operand(float value, float& out) { out = value; }
__device__ __forceinline__ void store_operand(float value, __nv_bfloat16& out) {
  out = __float2bfloat16_rn(value);
}
__device__ __forceinline__ float operand_value(float v) { return v; }
__device__ __forceinline__ float operand_value(__nv_bfloat16 v) { return __bfloat162float(v); }

template <int precision>
struct SharedTiles {
  Operand<precision> rows[kTileRows][kChunkDim + kOperandPad];
  Operand<precision> codes[kTileCodes][kChunkDim + kOperandPad];
  float scores[kTileRows][kTileCodes + kScorePad];
  float row_scale[kTileRows];
};

// Exact fp32: each thread owns a 4 x 8 block of the score tile (rows 4*ty.., codes tx + 8*j).
struct SimtMath {
  static constexpr int kRows = 4, kCodes = 8, kCodeLanes = kTileCodes / kCodes;
  float acc[kRows][kCodes];

  __device__ void zero() {
    for (int i = 0; i < kRows; ++i)
      for (int j = 0; j < kCodes; ++j) acc[i][j] = 0.0f;
  }
  __device__ void accumulate(const SharedTiles<kWvqIeee>& tiles) {
    const int row0 = (threadIdx.x / kCodeLanes) * kRows, code0 = threadIdx.x % kCodeLanes;
#pragma unroll 4
    for (int d = 0; d < kChunkDim; ++d) {
      float a[kRows], b[kCodes];
      for (int i = 0; i < kRows; ++i) a[i] = tiles.rows[row0 + i][d];
      for (int j = 0; j < kCodes; ++j) b[j] = tiles.codes[code0 + j * kCodeLanes][d];
      for (int i = 0; i < kRows; ++i)
        for (int j = 0; j < kCodes; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  }
  __device__ void store(SharedTiles<kWvqIeee>& tiles) const {
    const int row0 = (threadIdx.x / kCodeLanes) * kRows, code0 = threadIdx.x % kCodeLanes;
    for (int i = 0; i < kRows; ++i)
      for (int j = 0; j < kCodes; ++j) tiles.scores[row0 + i][code0 + j * kCodeLanes] = acc[i][j];
  }
};

// Tensor cores: warp w owns rows 16w..16w+15 and all kTileCodes codes as 16 x 16 fragments.
// tf32 takes fp32 operands rounded in the fragment; bf16 takes the bf16 tiles directly.
template <int precision>
struct TensorCoreMath {
  static constexpr int kFragK = precision == kWvqBf16 ? 16 : 8;
  using FragElement = std::conditional_t<precision == kWvqBf16, __nv_bfloat16, wmma::precision::tf32>;
  static constexpr int kFragments = kTileCodes / 16;
  static constexpr int kLead = kChunkDim + kOperandPad;
  wmma::fragment<wmma::accumulator, 16, 16, kFragK, float> acc[kFragments];

  __device__ void zero() {
    for (int f = 0; f < kFragments; ++f) wmma::fill_fragment(acc[f], 0.0f);
  }
  __device__ void accumulate(const SharedTiles<precision>& tiles) {
    const int row0 = (threadIdx.x / 32) * 16;
#pragma unroll
    for (int k = 0; k < kChunkDim; k += kFragK) {
      wmma::fragment<wmma::matrix_a, 16, 16, kFragK, FragElement, wmma::row_major> a;
      wmma::load_matrix_sync(a, &tiles.rows[row0][k], kLead);
      round_to_tf32(a);
      for (int f = 0; f < kFragments; ++f) {
        // Codes stored one per row are the column-major 16 x kFragK B operand.
        wmma::fragment<wmma::matrix_b, 16, 16, kFragK, FragElement, wmma::col_major> b;
        wmma::load_matrix_sync(b, &tiles.codes[16 * f][k], kLead);
        round_to_tf32(b);
        wmma::mma_sync(acc[f], a, b, acc[f]);
      }
    }
  }
  __device__ void store(SharedTiles<precision>& tiles) const {
    const int row0 = (threadIdx.x / 32) * 16;
    for (int f = 0; f < kFragments; ++f) {
      wmma::store_matrix_sync(&tiles.scores[row0][16 * f], acc[f], kTileCodes + kScorePad,
                              wmma::mem_row_major);
    }
  }
  template <typename Fragment>
  __device__ static void round_to_tf32(Fragment& fragment) {
    if constexpr (precision == kWvqTf32) {
      for (int e = 0; e < fragment.num_elements; ++e) fragment.x[e] = wmma::__float_to_tf32(fragment.x[e]);
    }
  }
};

template <int precision>
using TileMath = std::conditional_t<precision == kWvqIeee, SimtMath, TensorCoreMath<precision>>;

// The factor each row is multiplied by before it becomes an operand (see the file comment).
template <typename T>
__device__ float row_scale(const T* row, int64_t dim, int metric) {
  if (metric == kWvqL2) return -2.0f;
  if (metric == kWvqDot) return -1.0f;
  float squares = 0.0f;
  for (int64_t d = 0; d < dim; ++d) squares = fmaf(to_float(row[d]), to_float(row[d]), squares);
  return squares > 0.0f ? -1.0f / sqrtf(squares) : 0.0f;  // zero rows stay zero
}

// One warp per (padded) code: writes its operand row and its bias.
template <typename T, int precision>
__global__ void pack_codebook_kernel(const T* codebook, int64_t num_codes, int64_t dim,
                                     int64_t padded_dim, int metric, Operand<precision>* codes,
                                     float* bias) {
  const int64_t code = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const bool real = code < num_codes;
  const T* source = codebook + (real ? code : 0) * dim;
  float squares = 0.0f;
  if (metric == kWvqCosine && real) {
    for (int64_t d = lane; d < dim; d += 32) squares = fmaf(to_float(source[d]), to_float(source[d]), squares);
    for (int offset = 16; offset > 0; offset /= 2) squares += __shfl_xor_sync(0xffffffffu, squares, offset);
  }
  const float scale = metric != kWvqCosine ? 1.0f : (squares > 0.0f ? 1.0f / sqrtf(squares) : 0.0f);
  float operand_squares = 0.0f;  // the l2 bias comes from the values the kernel multiplies
  for (int64_t d = lane; d < padded_dim; d += 32) {
    Operand<precision>& out = codes[code * padded_dim + d];
    store_operand(real && d < dim ? to_float(source[d]) * scale : 0.0f, out);
    operand_squares = fmaf(operand_value(out), operand_value(out), operand_squares);
  }
  for (int offset = 16; offset > 0; offset /= 2)
    operand_squares += __shfl_xor_sync(0xffffffffu, operand_squares, offset);
  if (lane == 0) bias[code] = !real ? FLT_MAX : (metric == kWvqL2 ? operand_squares : 0.0f);
}

template <typename T, int precision>
__device__ void stage_chunk(const T* x, int64_t num_rows, int64_t dim, int64_t padded_dim,
                            int64_t first_row, int64_t first_code, int64_t d0,
                            const Operand<precision>* codes, SharedTiles<precision>& tiles) {
  for (int e = threadIdx.x; e < kTileRows * kChunkDim; e += kThreads) {
    const int r = e / kChunkDim, d = e % kChunkDim;
    const int64_t row = first_row + r, column = d0 + d;
    const float value = row < num_rows && column < dim ? to_float(x[row * dim + column]) : 0.0f;
    store_operand(value * tiles.row_scale[r], tiles.rows[r][d]);
    tiles.codes[r][d] = codes[(first_code + r) * padded_dim + column];
  }
}

template <typename T, int precision>
__global__ void __launch_bounds__(kThreads)
    assign_kernel(const T* x, int64_t num_rows, int64_t dim, int64_t padded_dim,
                  const Operand<precision>* codes, const float* bias, int64_t num_codes,
                  int64_t codes_per_segment, int metric, uint64_t* keys) {
  static_assert(kTileRows == kTileCodes, "stage_chunk stages rows and codes with one loop");
  __shared__ __align__(128) SharedTiles<precision> tiles;
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int64_t segment_begin = static_cast<int64_t>(blockIdx.y) * codes_per_segment;
  const int64_t segment_end = min(num_codes, segment_begin + codes_per_segment);
  for (int r = threadIdx.x; r < kTileRows; r += kThreads) {
    const int64_t row = min(first_row + r, num_rows - 1);
    tiles.row_scale[r] = row_scale(x + row * dim, dim, metric);
  }

  // The scan: kScanThreadsPerRow threads per row, each over its slice of every code tile in
  // increasing code order, so a strict < keeps the smallest index among equal scores.
  const int scan_row = threadIdx.x / kScanThreadsPerRow;
  const int scan_first = (threadIdx.x % kScanThreadsPerRow) * kScanCodesPerThread;
  float best_score = FLT_MAX;
  int64_t best_code = segment_begin;
  TileMath<precision> math;
  for (int64_t first_code = segment_begin; first_code < segment_end; first_code += kTileCodes) {
    math.zero();
    for (int64_t d0 = 0; d0 < padded_dim; d0 += kChunkDim) {
      __syncthreads();  // previous chunk (or the previous tile's scan) is done with the tiles
      stage_chunk<T, precision>(x, num_rows, dim, padded_dim, first_row, first_code, d0, codes, tiles);
      __syncthreads();
      math.accumulate(tiles);
    }
    math.store(tiles);
    __syncthreads();
    for (int c = scan_first; c < scan_first + kScanCodesPerThread; ++c) {
      const int64_t code = first_code + c;
      const float score = tiles.scores[scan_row][c] + bias[code];
      if (code < segment_end && score < best_score) {
        best_score = score;
        best_code = code;
      }
    }
  }
  for (int offset = kScanThreadsPerRow / 2; offset > 0; offset /= 2) {
    const float other_score = __shfl_xor_sync(0xffffffffu, best_score, offset);
    const int64_t other_code = __shfl_xor_sync(0xffffffffu, best_code, offset);
    if (better_candidate(other_score, other_code, best_score, best_code)) {
      best_score = other_score;
      best_code = other_code;
    }
  }
  const int64_t row = first_row + scan_row;
  if (threadIdx.x % kScanThreadsPerRow == 0 && row < num_rows) {
    atomicMin(reinterpret_cast<unsigned long long*>(keys + row),
              static_cast<unsigned long long>(pack_score_index(best_score, best_code)));
  }
}

// The reported distance of the chosen code, in fp32 from the unrounded inputs.
template <typename T>
__device__ float chosen_distance(const T* row, const T* code, int64_t dim, int metric) {
  float dot = 0.0f, row_squares = 0.0f, code_squares = 0.0f, l2 = 0.0f;
  for (int64_t d = 0; d < dim; ++d) {
    const float a = to_float(row[d]), b = to_float(code[d]);
    dot = fmaf(a, b, dot);
    row_squares = fmaf(a, a, row_squares);
    code_squares = fmaf(b, b, code_squares);
    l2 = fmaf(a - b, a - b, l2);
  }
  if (metric == kWvqL2) return l2;
  if (metric == kWvqDot) return -dot;
  const float norms = sqrtf(row_squares) * sqrtf(code_squares);
  return fmaxf(1.0f - (norms > 0.0f ? dot / norms : 0.0f), 0.0f);
}

template <typename T>
__global__ void finish_kernel(const T* x, const T* codebook, int64_t num_rows, int64_t dim,
                              int metric, const uint64_t* keys, int64_t* indices,
                              float* distances, int64_t* counts) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool valid = row < num_rows;
  const unsigned active = __ballot_sync(0xffffffffu, valid);
  if (!valid) return;
  const int64_t code = unpack_index(keys[row]);
  indices[row] = code;
  distances[row] = chosen_distance(x + row * dim, codebook + code * dim, dim, metric);
  if (counts != nullptr) count_code(counts, code, active);
}

struct Workspace {
  uint64_t* keys;
  float* bias;
  void* codes;
};

size_t aligned(size_t bytes) { return (bytes + 255) / 256 * 256; }

int64_t padded_codes(int64_t num_codes) { return ceil_div(num_codes, kTileCodes) * kTileCodes; }
int64_t padded_dim(int64_t dim) { return ceil_div(dim, kChunkDim) * kChunkDim; }

Workspace carve(void* base, int64_t num_rows, int64_t num_codes) {
  char* bytes = static_cast<char*>(base);
  const size_t keys = aligned(sizeof(uint64_t) * num_rows);
  const size_t bias = aligned(sizeof(float) * padded_codes(num_codes));
  return {reinterpret_cast<uint64_t*>(bytes), reinterpret_cast<float*>(bytes + keys), bytes + keys + bias};
}

// Segments per row block: enough blocks for two waves over the SMs, but at least one code
// tile per segment.
int64_t codes_per_segment(int64_t num_rows, int64_t num_codes) {
  int device = 0, sms = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t row_blocks = ceil_div(num_rows, kTileRows), tiles = ceil_div(num_codes, kTileCodes);
  const int64_t segments = std::min(tiles, std::max<int64_t>(1, ceil_div(2 * sms, row_blocks)));
  return ceil_div(tiles, segments) * kTileCodes;
}

template <typename T, int precision>
cudaError_t launch_assign(const T* x, const T* codebook, int64_t num_rows, int64_t num_codes,
                          int64_t dim, int metric, const Workspace& work, int64_t* indices,
                          float* distances, int64_t* counts, cudaStream_t stream) {
  auto* codes = static_cast<Operand<precision>*>(work.codes);
  const int64_t wide_dim = padded_dim(dim), wide_codes = padded_codes(num_codes);
  pack_codebook_kernel<T, precision><<<ceil_div(wide_codes * 32, kThreads), kThreads, 0, stream>>>(
      codebook, num_codes, dim, wide_dim, metric, codes, work.bias);
  cudaMemsetAsync(work.keys, 0xff, sizeof(uint64_t) * num_rows, stream);
  const int64_t per_segment = codes_per_segment(num_rows, num_codes);
  const dim3 grid(ceil_div(num_rows, kTileRows), ceil_div(num_codes, per_segment));
  assign_kernel<T, precision><<<grid, kThreads, 0, stream>>>(
      x, num_rows, dim, wide_dim, codes, work.bias, num_codes, per_segment, metric, work.keys);
  finish_kernel<T><<<ceil_div(num_rows, kThreads), kThreads, 0, stream>>>(
      x, codebook, num_rows, dim, metric, work.keys, indices, distances, counts);
  return cudaGetLastError();
}

}  // namespace
}  // namespace wvq::cuda

using namespace wvq::cuda;

extern "C" size_t wvq_assign_workspace_bytes(int64_t num_rows, int64_t num_codes, int64_t dim,
                                             int precision) {
  const size_t operand = precision == kWvqBf16 ? sizeof(__nv_bfloat16) : sizeof(float);
  return aligned(sizeof(uint64_t) * num_rows) + aligned(sizeof(float) * padded_codes(num_codes)) +
         operand * padded_codes(num_codes) * padded_dim(dim);
}

extern "C" cudaError_t wvq_assign(const void* x, const void* codebook, int dtype,
                                  int64_t num_rows, int64_t num_codes, int64_t dim, int metric,
                                  int precision, void* workspace, int64_t* indices,
                                  float* distances, int64_t* counts, cudaStream_t stream) {
  if (num_rows == 0) return cudaSuccess;
  const Workspace work = carve(workspace, num_rows, num_codes);
  return with_input_type(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const auto* rows = static_cast<const T*>(x);
    const auto* codes = static_cast<const T*>(codebook);
    switch (precision) {
      case kWvqIeee:
        return launch_assign<T, kWvqIeee>(rows, codes, num_rows, num_codes, dim, metric, work,
                                          indices, distances, counts, stream);
      case kWvqTf32:
        return launch_assign<T, kWvqTf32>(rows, codes, num_rows, num_codes, dim, metric, work,
                                          indices, distances, counts, stream);
      case kWvqBf16:
        return launch_assign<T, kWvqBf16>(rows, codes, num_rows, num_codes, dim, metric, work,
                                          indices, distances, counts, stream);
      default: return cudaErrorInvalidValue;
    }
  });
}
