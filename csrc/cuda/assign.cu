// Nearest-code assignment without an N x K buffer.
//
// Every score is bias_k + sum_d row_d * code_kd, with operands prepared so that one kernel
// covers all metrics: l2 uses rows -2x and bias |c|^2, cosine rows -x/|x| and codes c/|c|,
// dot rows -x. pack_codebook_kernel packs the codebook once (bf16 for the bf16 path), padded to
// whole tiles of kTileCodes codes and to a multiple of kDimStep dimensions (4 on the SIMT path,
// the WMMA k of 8 for tf32 and 16 for bf16), in the chunked layout of common/assign_layout.h.
//
// A block owns kTileRows rows and one segment of the codebook (split-K: several segments per
// row block when there are too few row blocks to fill the GPU). It scales and rounds its rows
// once into shared memory (a window of kWindowDim dimensions: all of D up to 128 in fp32 and 256
// in bf16; only beyond that are the rows restaged window by window) and then streams the
// segment's code tiles through it, kChunkDim dimensions at a time. The code chunks are double
// buffered: while the block multiplies chunk s from one shared buffer, each thread already holds
// its share of chunk s + 1 (two 16-byte loads, plus the next tile's bias) in registers and
// stores it into the other buffer afterwards, so one barrier per chunk suffices and the global
// latency hides behind the math. TileMath<precision> does the math (tensor cores via WMMA, which
// lowers to mma.sync, or exact fp32 FMA in a fixed d order) and, after a tile's last chunk,
// folds the scores into a running (min, argmin) per row held in registers. Each segment's
// winner enters a per-row packed 64-bit key with atomicMin, which keeps the smallest score and,
// on ties, the smallest index, whatever order segments finish in. finish_kernel decodes the
// keys, recomputes the distance from the unrounded inputs (in double, so that norms above
// ~1.8e19 or below ~1e-19 neither overflow nor vanish) and adds the chosen codes to the
// histogram with warp-aggregated atomics.
//
// Inputs whose largest magnitude (`largest`, computed on the device by the caller) lies outside
// [2^-32, 2^32] are multiplied by a power of two as they become operands (common/input_scale.h):
// one scale for both sides under l2, one per side otherwise. Exact, the scores keep their order,
// and |c|^2 cannot overflow nor fp32 norms vanish for cosine.
#include <mma.h>

#include <algorithm>
#include <cfloat>
#include <type_traits>

#include "common/assign_layout.h"
#include "common/input_scale.h"
#include "common/packed_key.h"
#include "device_utils.cuh"

namespace wvq::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kThreads = 128;  // four warps
constexpr int kWarps = kThreads / 32;
constexpr int kTileRows = 64;
constexpr int kTileCodes = 64;
// A staged code chunk is kTileCodes x 64 bytes and the row window kTileRows x 512 bytes, so
// that both buffers of code chunks, the rows and the WMMA score scratch stay under the 48 KiB
// of static shared memory in every variant.
constexpr int kChunkBytes = 64;
constexpr int kWindowBytes = 512;
constexpr int kVector = 16;  // bytes per load of the code stream

template <int precision>
struct Config {
  using Operand = std::conditional_t<precision == kWvqBf16, __nv_bfloat16, float>;
  static constexpr int kDimStep = precision == kWvqIeee ? 4 : (precision == kWvqTf32 ? 8 : 16);
  static constexpr int kChunkDim = kChunkBytes / sizeof(Operand);
  static constexpr int kWindowDim = kWindowBytes / sizeof(Operand);
  static constexpr int kPerVector = kVector / sizeof(Operand);
  // Code-chunk vectors each thread carries from one buffer to the next.
  static constexpr int kVectorsPerThread = kTileCodes * kChunkBytes / kVector / kThreads;
  // The SIMT path reads rows and codes dimension-major, the WMMA path code-major.
  static constexpr bool kDimMajor = precision == kWvqIeee;
  using Layout = AssignLayout<kTileCodes, kChunkDim, kDimMajor>;
  static_assert(kWindowDim % kChunkDim == 0 && kChunkDim % kDimStep == 0);
  static_assert(kVectorsPerThread * kThreads * kVector == kTileCodes * kChunkBytes);
};

template <int precision>
using Operand = typename Config<precision>::Operand;

__device__ __forceinline__ void store_operand(float value, float& out) { out = value; }
__device__ __forceinline__ void store_operand(float value, __nv_bfloat16& out) {
  out = __float2bfloat16_rn(value);
}
__device__ __forceinline__ float operand_value(float v) { return v; }
__device__ __forceinline__ float operand_value(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ float4 load_vector(const void* p) {
  return *static_cast<const float4*>(p);
}
__device__ __forceinline__ void store_vector(void* p, float4 v) { *static_cast<float4*>(p) = v; }

// SIMT shared memory, dimension-major. A warp is 4 row groups x 8 code lanes; per dimension d
// it reads rows[d][4g .. 4g+3] (one float4 per row group, broadcast to its 8 lanes) and
// codes[d][4l .. 4l+3], codes[d][32+4l .. 32+4l+3] (8 lanes x 16 bytes = 32 consecutive
// words). Each quarter-warp phase of a 16-byte load thus touches distinct banks with no
// padding at all, and the copy of a chunk is a straight, conflict-free run of float4 stores.
struct SimtTiles {
  float rows[Config<kWvqIeee>::kWindowDim][kTileRows];
  float codes[2][Config<kWvqIeee>::kChunkDim][kTileCodes];
  float bias[2][kTileCodes];
  float row_scale[kTileRows];

  __device__ float& row(int r, int d) { return rows[d][r]; }
  __device__ void store_code_vector(int buffer, int vector, int /*width*/, float4 value) {
    store_vector(&codes[buffer][0][0] + vector * 4, value);
  }
};

// WMMA shared memory, code-major (A row-major, B col-major). Rows are padded by 16 bytes so
// that the 8 rows a fragment load touches at once start in different banks.
template <int precision>
struct TensorTiles {
  using C = Config<precision>;
  static constexpr int kPad = kVector / sizeof(Operand<precision>);
  static constexpr int kRowPitch = C::kWindowDim + kPad, kCodePitch = C::kChunkDim + kPad;
  Operand<precision> rows[kTileRows][kRowPitch];
  Operand<precision> codes[2][kTileCodes][kCodePitch];
  float scores[kWarps][16][16];  // one 16 x 16 accumulator tile per warp, for the scan
  float bias[2][kTileCodes];
  float row_scale[kTileRows];

  __device__ Operand<precision>& row(int r, int d) { return rows[r][d]; }
  __device__ void store_code_vector(int buffer, int vector, int width, float4 value) {
    const int e = vector * C::kPerVector;  // width is a multiple of kPerVector
    store_vector(&codes[buffer][e / width][e % width], value);
  }
};

template <int precision>
using SharedTiles = std::conditional_t<precision == kWvqIeee, SimtTiles, TensorTiles<precision>>;

// Where the running minimum of a row lives: the code tile's scores are folded into it after a
// tile's last chunk, and the segment's winner is committed with one packed-key atomicMin.
__device__ __forceinline__ void commit(uint64_t* keys, int64_t row, float score, int64_t code) {
  atomicMin(reinterpret_cast<unsigned long long*>(keys + row),
            static_cast<unsigned long long>(pack_score_index(score, code)));
}

// Merges a candidate from the lane `offset` away (the tie rule of packed_key.h).
__device__ __forceinline__ void merge_lanes(float& score, int64_t& code, int offset) {
  const float other_score = __shfl_xor_sync(0xffffffffu, score, offset);
  const int64_t other_code = __shfl_xor_sync(0xffffffffu, code, offset);
  if (better_candidate(other_score, other_code, score, code)) {
    score = other_score;
    code = other_code;
  }
}

// Exact fp32: thread (g, l) = (tid / 8, tid % 8) owns rows 4g..4g+3 and the codes
// 4l..4l+3, 32+4l..32+4l+3 of a tile, summing over d in increasing order.
struct SimtMath {
  static constexpr int kRows = 4, kCodes = 8, kCodeLanes = 8;
  float acc[kRows][kCodes];
  float best_score[kRows];
  int64_t best_code[kRows];

  __device__ SimtMath(int64_t segment_begin) {
    for (int i = 0; i < kRows; ++i) {
      best_score[i] = FLT_MAX;
      best_code[i] = segment_begin;
    }
  }
  __device__ static int row_group() { return threadIdx.x / kCodeLanes; }
  __device__ static int code_lane() { return threadIdx.x % kCodeLanes; }
  __device__ static int column(int j) { return (j / 4) * 32 + 4 * code_lane() + j % 4; }

  __device__ void zero() {
    for (int i = 0; i < kRows; ++i)
      for (int j = 0; j < kCodes; ++j) acc[i][j] = 0.0f;
  }
  __device__ void accumulate(const SimtTiles& tiles, int buffer, int row_offset, int width) {
    const float* rows = &tiles.rows[row_offset][kRows * row_group()];
    const float* codes = &tiles.codes[buffer][0][4 * code_lane()];
    for (int d = 0; d < width; d += Config<kWvqIeee>::kDimStep) {
#pragma unroll
      for (int q = 0; q < Config<kWvqIeee>::kDimStep; ++q) {
        const float4 a4 = load_vector(rows + (d + q) * kTileRows);
        const float4 b0 = load_vector(codes + (d + q) * kTileCodes);
        const float4 b1 = load_vector(codes + (d + q) * kTileCodes + 32);
        const float a[kRows] = {a4.x, a4.y, a4.z, a4.w};
        const float b[kCodes] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
        for (int i = 0; i < kRows; ++i)
          for (int j = 0; j < kCodes; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
    }
  }
  // Codes in increasing order, so a strict < keeps the smallest index among equal scores.
  __device__ void fold(const SimtTiles& tiles, int buffer, int64_t first_code,
                       int64_t segment_end) {
    for (int j = 0; j < kCodes; ++j) {
      const int64_t code = first_code + column(j);
      const float bias = tiles.bias[buffer][column(j)];
      for (int i = 0; i < kRows; ++i) {
        const float score = acc[i][j] + bias;
        if (code < segment_end && score < best_score[i]) {
          best_score[i] = score;
          best_code[i] = code;
        }
      }
    }
  }
  // The 8 code lanes of a row group are adjacent lanes; after the merge lane i commits row i.
  __device__ void commit_rows(uint64_t* keys, int64_t first_row, int64_t num_rows) {
    for (int i = 0; i < kRows; ++i) {
      for (int offset = kCodeLanes / 2; offset > 0; offset /= 2)
        merge_lanes(best_score[i], best_code[i], offset);
    }
    for (int i = 0; i < kRows; ++i) {
      const int64_t row = first_row + kRows * row_group() + i;
      if (code_lane() == i && row < num_rows) commit(keys, row, best_score[i], best_code[i]);
    }
  }
};

// Tensor cores: warp w owns rows 16w..16w+15 and all kTileCodes codes as 16 x 16 fragments.
// tf32 takes fp32 operands rounded in the fragment; bf16 takes the bf16 tiles directly.
template <int precision>
struct TensorCoreMath {
  using Tiles = TensorTiles<precision>;
  static constexpr int kFragK = Config<precision>::kDimStep;
  using FragElement = std::conditional_t<precision == kWvqBf16, __nv_bfloat16, wmma::precision::tf32>;
  static constexpr int kFragments = kTileCodes / 16;
  wmma::fragment<wmma::accumulator, 16, 16, kFragK, float> acc[kFragments];
  // Lane l scans row l / 2 of the warp's 16 rows, codes 8 (l % 2) .. 8 (l % 2) + 7 of each
  // fragment.
  float best_score = FLT_MAX;
  int64_t best_code;

  __device__ TensorCoreMath(int64_t segment_begin) : best_code(segment_begin) {}
  __device__ static int warp() { return threadIdx.x / 32; }

  __device__ void zero() {
    for (int f = 0; f < kFragments; ++f) wmma::fill_fragment(acc[f], 0.0f);
  }
  __device__ void accumulate(const Tiles& tiles, int buffer, int row_offset, int width) {
    for (int k = 0; k < width; k += kFragK) {
      wmma::fragment<wmma::matrix_a, 16, 16, kFragK, FragElement, wmma::row_major> a;
      wmma::load_matrix_sync(a, &tiles.rows[16 * warp()][row_offset + k], Tiles::kRowPitch);
      round_to_tf32(a);
      for (int f = 0; f < kFragments; ++f) {
        // Codes stored one per row are the column-major 16 x kFragK B operand.
        wmma::fragment<wmma::matrix_b, 16, 16, kFragK, FragElement, wmma::col_major> b;
        wmma::load_matrix_sync(b, &tiles.codes[buffer][16 * f][k], Tiles::kCodePitch);
        round_to_tf32(b);
        wmma::mma_sync(acc[f], a, b, acc[f]);
      }
    }
  }
  // Each fragment goes through the warp's scratch tile. Lane l reads its 8 codes starting at a
  // rotation of l / 4, which puts the 32 lanes' reads in 32 distinct banks (row r of the
  // unpadded tile starts in bank 16 (r % 2)); the visiting order is then not increasing, so
  // the comparison applies the full tie rule.
  __device__ void fold(Tiles& tiles, int buffer, int64_t first_code, int64_t segment_end) {
    const int lane = threadIdx.x % 32, r = lane / 2, half = lane % 2;
    float(&scratch)[16][16] = tiles.scores[warp()];
    for (int f = 0; f < kFragments; ++f) {
      wmma::store_matrix_sync(&scratch[0][0], acc[f], 16, wmma::mem_row_major);
      __syncwarp();
      for (int j = 0; j < 8; ++j) {
        const int c = 8 * half + (j + r / 2) % 8;
        const int64_t code = first_code + 16 * f + c;
        const float score = scratch[r][c] + tiles.bias[buffer][16 * f + c];
        if (code < segment_end && better_candidate(score, code, best_score, best_code)) {
          best_score = score;
          best_code = code;
        }
      }
      __syncwarp();  // the next fragment overwrites the scratch
    }
  }
  __device__ void commit_rows(uint64_t* keys, int64_t first_row, int64_t num_rows) {
    merge_lanes(best_score, best_code, 1);
    const int lane = threadIdx.x % 32;
    const int64_t row = first_row + 16 * warp() + lane / 2;
    if (lane % 2 == 0 && row < num_rows) commit(keys, row, best_score, best_code);
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

// The powers of two of the file comment, for the rows and for the codes.
struct InputScales {
  float rows, codes;
};

__device__ InputScales input_scales(const float* largest, int metric) {
  if (metric == kWvqL2) {
    const float both = power_of_two_scale(fmaxf(largest[0], largest[1]));
    return {both, both};
  }
  return {power_of_two_scale(largest[0]), power_of_two_scale(largest[1])};
}

// The factor each row, once multiplied by its power of two `magnitude` (which keeps the cosine
// norm's squares in range), is multiplied by before it becomes an operand (see the file
// comment). Two factors, not their product: that would overflow for subnormal rows.
template <typename T>
__device__ float row_scale(const T* row, int64_t dim, int metric, float magnitude) {
  if (metric == kWvqL2) return -2.0f;
  if (metric == kWvqDot) return -1.0f;
  float squares = 0.0f;
  for (int64_t d = 0; d < dim; ++d) {
    const float value = to_float(row[d]) * magnitude;
    squares = fmaf(value, value, squares);
  }
  return squares > 0.0f ? -1.0f / sqrtf(squares) : 0.0f;  // zero rows stay zero
}

// One warp per (padded) code: writes its operands and its bias.
template <typename T, int precision>
__global__ void pack_codebook_kernel(const T* codebook, int64_t num_codes, int64_t dim,
                                     int64_t padded_dim, int metric, const float* largest,
                                     Operand<precision>* codes, float* bias) {
  using Layout = typename Config<precision>::Layout;
  const int64_t code = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const bool real = code < num_codes;
  const T* source = codebook + (real ? code : 0) * dim;
  const float magnitude = input_scales(largest, metric).codes;
  float squares = 0.0f;
  if (metric == kWvqCosine && real) {
    for (int64_t d = lane; d < dim; d += 32) {
      const float value = to_float(source[d]) * magnitude;
      squares = fmaf(value, value, squares);
    }
    for (int offset = 16; offset > 0; offset /= 2) squares += __shfl_xor_sync(0xffffffffu, squares, offset);
  }
  const float scale = metric != kWvqCosine ? 1.0f : (squares > 0.0f ? 1.0f / sqrtf(squares) : 0.0f);
  float operand_squares = 0.0f;  // the l2 bias comes from the values the kernel multiplies
  for (int64_t d = lane; d < padded_dim; d += 32) {
    Operand<precision>& out = codes[Layout::packed_code_offset(code, d, padded_dim)];
    store_operand(real && d < dim ? to_float(source[d]) * magnitude * scale : 0.0f, out);
    operand_squares = fmaf(operand_value(out), operand_value(out), operand_squares);
  }
  for (int offset = 16; offset > 0; offset /= 2)
    operand_squares += __shfl_xor_sync(0xffffffffu, operand_squares, offset);
  if (lane == 0) bias[code] = !real ? FLT_MAX : (metric == kWvqL2 ? operand_squares : 0.0f);
}

// Stages dimensions [d0, d0 + width) of the block's rows, scaled and rounded. The thread to
// element map follows the shared layout, so that consecutive lanes store consecutive words.
template <typename T, int precision>
__device__ void stage_rows(const T* x, int64_t num_rows, int64_t dim, int64_t first_row,
                           int64_t d0, int width, float magnitude, SharedTiles<precision>& tiles) {
  for (int e = threadIdx.x; e < kTileRows * width; e += kThreads) {
    const bool dim_major = Config<precision>::kDimMajor;
    const int r = dim_major ? e % kTileRows : e / width, d = dim_major ? e / kTileRows : e % width;
    const int64_t row = first_row + r, column = d0 + d;
    const float value =
        row < num_rows && column < dim ? to_float(x[row * dim + column]) * magnitude : 0.0f;
    store_operand(value * tiles.row_scale[r], tiles.row(r, d));
  }
}

// One thread's share of the next code chunk (and, at a tile's first chunk, of its bias), held
// in registers between its global load and its store into the free shared buffer.
template <int precision>
struct ChunkCarry {
  using C = Config<precision>;
  float4 vectors[C::kVectorsPerThread];
  float4 bias{};  // stored only by the threads that loaded it

  __device__ static int vectors_in(int width) { return kTileCodes * width / C::kPerVector; }
  __device__ static bool carries_bias() { return threadIdx.x < kTileCodes / 4; }

  __device__ void load(const Operand<precision>* chunk, int width, const float* tile_bias) {
    for (int v = 0; v < C::kVectorsPerThread; ++v) {
      const int vector = threadIdx.x + v * kThreads;
      if (vector < vectors_in(width)) vectors[v] = load_vector(chunk + vector * C::kPerVector);
    }
    if (tile_bias != nullptr && carries_bias()) bias = load_vector(tile_bias + 4 * threadIdx.x);
  }
  __device__ void store(SharedTiles<precision>& tiles, int buffer, int width, bool with_bias,
                        int bias_buffer) const {
    for (int v = 0; v < C::kVectorsPerThread; ++v) {
      const int vector = threadIdx.x + v * kThreads;
      if (vector < vectors_in(width)) tiles.store_code_vector(buffer, vector, width, vectors[v]);
    }
    if (with_bias && carries_bias()) store_vector(&tiles.bias[bias_buffer][4 * threadIdx.x], bias);
  }
};

template <typename T, int precision>
__global__ void __launch_bounds__(kThreads)
    assign_kernel(const T* x, int64_t num_rows, int64_t dim, int64_t padded_dim,
                  const Operand<precision>* codes, const float* bias, int64_t num_codes,
                  int64_t codes_per_segment, int metric, const float* largest, uint64_t* keys) {
  using C = Config<precision>;
  constexpr int kChunksPerWindow = C::kWindowDim / C::kChunkDim;
  __shared__ __align__(128) SharedTiles<precision> tiles;
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int64_t segment_begin = static_cast<int64_t>(blockIdx.y) * codes_per_segment;
  const int64_t segment_end = min(num_codes, segment_begin + codes_per_segment);
  const int64_t first_tile = segment_begin / kTileCodes;  // segments hold whole tiles
  const int chunks = static_cast<int>((padded_dim + C::kChunkDim - 1) / C::kChunkDim);
  const int64_t steps = (segment_end - segment_begin + kTileCodes - 1) / kTileCodes * chunks;
  const auto window_width = [&](int chunk) {
    const int64_t left = padded_dim - int64_t{chunk / kChunksPerWindow} * C::kWindowDim;
    return static_cast<int>(min(left, int64_t{C::kWindowDim}));
  };
  const auto chunk_start = [&](int64_t tile, int chunk) {
    return codes + C::Layout::chunk_begin(first_tile + tile, chunk, padded_dim);
  };
  const float magnitude = input_scales(largest, metric).rows;
  for (int r = threadIdx.x; r < kTileRows; r += kThreads) {
    const int64_t row = min(first_row + r, num_rows - 1);
    tiles.row_scale[r] = row_scale(x + row * dim, dim, metric, magnitude);
  }
  ChunkCarry<precision> carry;
  carry.load(chunk_start(0, 0), C::Layout::chunk_width(padded_dim, 0), bias + segment_begin);
  __syncthreads();  // row scales
  stage_rows<T, precision>(x, num_rows, dim, first_row, 0, window_width(0), magnitude, tiles);
  carry.store(tiles, 0, C::Layout::chunk_width(padded_dim, 0), true, 0);
  __syncthreads();

  TileMath<precision> math(segment_begin);
  math.zero();
  int chunk = 0, buffer = 0;
  int64_t tile = 0;
  for (int64_t step = 0; step < steps; ++step) {
    const bool more = step + 1 < steps, tile_ends = chunk + 1 == chunks;
    const int next_chunk = tile_ends ? 0 : chunk + 1;
    const int64_t next_tile = tile + tile_ends;
    const int next_width = C::Layout::chunk_width(padded_dim, next_chunk);
    if (more) {
      carry.load(chunk_start(next_tile, next_chunk), next_width,
                 tile_ends ? bias + segment_begin + next_tile * kTileCodes : nullptr);
    }
    math.accumulate(tiles, buffer, chunk % kChunksPerWindow * C::kChunkDim,
                    C::Layout::chunk_width(padded_dim, chunk));
    if (tile_ends) {
      math.fold(tiles, tile % 2, segment_begin + tile * kTileCodes, segment_end);
      math.zero();
    }
    // The other buffer was last read before the previous barrier.
    if (more) carry.store(tiles, buffer ^ 1, next_width, tile_ends, next_tile % 2);
    __syncthreads();
    if (more && next_chunk / kChunksPerWindow != chunk / kChunksPerWindow) {
      // Only when D exceeds the window: restage the rows for the next chunk.
      stage_rows<T, precision>(x, num_rows, dim, first_row,
                               int64_t{next_chunk / kChunksPerWindow} * C::kWindowDim,
                               window_width(next_chunk), magnitude, tiles);
      __syncthreads();
    }
    chunk = next_chunk;
    tile = next_tile;
    buffer ^= 1;
  }
  math.commit_rows(keys, first_row, num_rows);
}

// The reported distance of the chosen code from the unrounded inputs, accumulated in double
// (one row's worth of work) and rounded once.
template <typename T>
__device__ float chosen_distance(const T* row, const T* code, int64_t dim, int metric) {
  double dot = 0.0, row_squares = 0.0, code_squares = 0.0, l2 = 0.0;
  for (int64_t d = 0; d < dim; ++d) {
    const double a = to_float(row[d]), b = to_float(code[d]);
    dot = fma(a, b, dot);
    row_squares = fma(a, a, row_squares);
    code_squares = fma(b, b, code_squares);
    l2 = fma(a - b, a - b, l2);
  }
  if (metric == kWvqL2) return static_cast<float>(l2);
  if (metric == kWvqDot) return static_cast<float>(-dot);
  const double norms = sqrt(row_squares) * sqrt(code_squares);
  return static_cast<float>(fmax(1.0 - (norms > 0.0 ? dot / norms : 0.0), 0.0));
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
int64_t padded_dim(int64_t dim, int precision) {
  const int step = precision == kWvqIeee  ? Config<kWvqIeee>::kDimStep
                   : precision == kWvqTf32 ? Config<kWvqTf32>::kDimStep
                                           : Config<kWvqBf16>::kDimStep;
  return ceil_div(dim, step) * step;
}

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
                          int64_t dim, int metric, const float* largest, const Workspace& work,
                          int64_t* indices, float* distances, int64_t* counts,
                          cudaStream_t stream) {
  auto* codes = static_cast<Operand<precision>*>(work.codes);
  const int64_t wide_dim = padded_dim(dim, precision), wide_codes = padded_codes(num_codes);
  pack_codebook_kernel<T, precision><<<ceil_div(wide_codes * 32, kThreads), kThreads, 0, stream>>>(
      codebook, num_codes, dim, wide_dim, metric, largest, codes, work.bias);
  cudaMemsetAsync(work.keys, 0xff, sizeof(uint64_t) * num_rows, stream);
  const int64_t per_segment = codes_per_segment(num_rows, num_codes);
  const dim3 grid(ceil_div(num_rows, kTileRows), ceil_div(num_codes, per_segment));
  assign_kernel<T, precision><<<grid, kThreads, 0, stream>>>(
      x, num_rows, dim, wide_dim, codes, work.bias, num_codes, per_segment, metric, largest,
      work.keys);
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
         operand * padded_codes(num_codes) * padded_dim(dim, precision);
}

extern "C" cudaError_t wvq_assign(const void* x, const void* codebook, int dtype,
                                  int64_t num_rows, int64_t num_codes, int64_t dim, int metric,
                                  int precision, const float* largest, void* workspace,
                                  int64_t* indices, float* distances, int64_t* counts,
                                  cudaStream_t stream) {
  if (num_rows == 0) return cudaSuccess;
  const Workspace work = carve(workspace, num_rows, num_codes);
  return with_input_type(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    const auto* rows = static_cast<const T*>(x);
    const auto* codes = static_cast<const T*>(codebook);
    switch (precision) {
      case kWvqIeee:
        return launch_assign<T, kWvqIeee>(rows, codes, num_rows, num_codes, dim, metric, largest,
                                          work, indices, distances, counts, stream);
      case kWvqTf32:
        return launch_assign<T, kWvqTf32>(rows, codes, num_rows, num_codes, dim, metric, largest,
                                          work, indices, distances, counts, stream);
      case kWvqBf16:
        return launch_assign<T, kWvqBf16>(rows, codes, num_rows, num_codes, dim, metric, largest,
                                          work, indices, distances, counts, stream);
      default: return cudaErrorInvalidValue;
    }
  });
}
