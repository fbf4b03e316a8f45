// NSVQ's dense soft-assignment statistics without an N x K buffer, in two passes over the
// distances d_ik = sum_d (x_id - e_kd)^2 (the flash-attention pattern), as on the CPU
// (csrc/cpu/soft_assign.cpp) and in Triton:
//
// 1. scan_kernel: a block owns kTileRows rows and one segment of the codebook (split-K when
//    there are too few row tiles to fill the GPU) and streams the segment in tiles of
//    kTileCodes codes, keeping per row the running minimum, its first index and the online
//    log-sum-exp Z = sum_k exp(-(d_k - min) / tau), rescaled whenever the minimum drops.
//    finish_scan_kernel merges the segments of each row in segment order and writes the
//    indices, the distances and bias = log(lam K) - log Z;
// 2. accumulate_kernel: a block owns kTileCodes codes, one segment of the rows and one block of
//    kColumns columns; it recomputes the distances tile by tile, turns them into weights
//    w = exp(min(0, bias - (d - min) / tau)) (min(1, lam K softmax), 1 for the winner), and
//    sums w, w x and w d: float32 over a tile, then into float64 registers. Each block writes
//    its own float64 partials, which reduce_sums_kernel and loss_kernel add in segment order.
//
// No float atomics anywhere and every split depends only on (N, K, D), so the results are
// the same bits on every run and every GPU. Distances are sums of squared differences, not
// |x|^2 + |e|^2 - 2 x.e: the weights depend on (d - min) / tau, where the expanded form's
// cancellation error, divided by a small tau, would dominate. Both passes compute them with
// the same function, in the same order, so they see the same values.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common/packed_key.h"
#include "device_utils.cuh"

namespace wvq::cuda {
namespace {

constexpr int kThreads = 128;  // four warps
constexpr int kElementThreads = 256;  // one thread per row or output entry
constexpr int kTileRows = 64;
constexpr int kTileCodes = 64;
constexpr int kChunkDim = 32;  // dimensions staged in shared memory at a time
// One extra column: the four row groups of a warp read rows 4 apart, 4 * 33 words apart, which
// fall in different banks.
constexpr int kStagePitch = kChunkDim + 1;
// Weights are read as float4: rows stay 16-byte aligned.
constexpr int kWeightPitch = kTileCodes + 4;
// Distance micro-tile: each thread owns kRowsPerThread consecutive rows and kCodesPerThread
// codes kCodeLanes apart; the kCodeLanes threads that share rows are adjacent lanes of a warp.
constexpr int kRowsPerThread = 4;
constexpr int kCodesPerThread = 8;
constexpr int kCodeLanes = kTileCodes / kCodesPerThread;
constexpr int kRowGroups = kThreads / kCodeLanes;
static_assert(kRowGroups * kRowsPerThread == kTileRows, "micro-tiles must cover the tile");
static_assert(kTileRows == kTileCodes, "stage_tile stages rows and codes alike");

// Work splits (functions of N, K and D only). About two waves of blocks on an H100.
constexpr int64_t kTargetBlocks = 1024;
// A scan segment spans at least this many code tiles, an accumulate segment this many rows,
// so that each block's fixed costs (partials, row states, staging) stay small.
constexpr int64_t kMinScanSegmentTiles = 8;
constexpr int64_t kMinSegmentRows = 8 * kTileRows;
// Three accumulate blocks per SM leave 170 registers per thread for the float64 sums; without
// a minimum ptxas aims at four (128 registers) and the 32-column kernel spills on sm_90.
constexpr int kAccumulateBlocksPerSm = 3;
// Caps the accumulate partials (segments x K x (D + 1) doubles) at 32 MiB.
constexpr int64_t kMaxPartials = int64_t{1} << 22;

struct StageTiles {
  float rows[kTileRows][kStagePitch];
  float codes[kTileCodes][kStagePitch];
};

struct __align__(16) AccumulateTiles {
  StageTiles stage;
  union {
    float weights[kTileRows][kWeightPitch];
    double scratch[kRowGroups][kTileCodes];  // the block's final reduction
  };
};

using Distances = float[kRowsPerThread][kCodesPerThread];

__device__ __forceinline__ int row_group() { return threadIdx.x / kCodeLanes; }
__device__ __forceinline__ int code_lane() { return threadIdx.x % kCodeLanes; }

// Columns [d0, d0 + len) of the tile's rows first .. first + kTileRows of `source` (row-major,
// dim wide) into `tile` as float32; rows at or past `end` are zeros.
template <typename T>
__device__ void stage_tile(const T* source, int64_t first, int64_t end, int64_t dim, int64_t d0,
                           int len, float (*tile)[kStagePitch]) {
  for (int e = threadIdx.x; e < kTileRows * len; e += kThreads) {
    const int r = e / len, d = e % len;
    const int64_t row = first + r;
    tile[r][d] = row < end ? to_float(source[row * dim + d0 + d]) : 0.0f;
  }
}

// Rows (or codes) first .. first + kTileRows of a tile, valid below `end`. `stage` is false
// when the tile already sits in shared memory (the whole dimension fits one chunk).
template <typename T>
struct TileSource {
  const T* data;
  int64_t first, end;
  bool stage;
};

// Adds dimensions [0, len) of the staged chunk to the thread's squared differences.
__device__ void add_squared_differences(const StageTiles& tiles, int len, Distances& acc) {
  const int row0 = row_group() * kRowsPerThread, lane = code_lane();
#pragma unroll 4
  for (int d = 0; d < len; ++d) {
    float a[kRowsPerThread], b[kCodesPerThread];
    for (int i = 0; i < kRowsPerThread; ++i) a[i] = tiles.rows[row0 + i][d];
    for (int j = 0; j < kCodesPerThread; ++j) b[j] = tiles.codes[lane + j * kCodeLanes][d];
    for (int i = 0; i < kRowsPerThread; ++i) {
      for (int j = 0; j < kCodesPerThread; ++j) {
        const float difference = a[i] - b[j];
        acc[i][j] = fmaf(difference, difference, acc[i][j]);
      }
    }
  }
}

// The thread's micro-tile of distances between a row tile and a code tile, summed over d in
// increasing order; +inf for codes at or past codes.end.
template <typename T>
__device__ void tile_distances(const TileSource<T>& rows, const TileSource<T>& codes,
                               int64_t dim, StageTiles& tiles, Distances& out) {
  for (int i = 0; i < kRowsPerThread; ++i)
    for (int j = 0; j < kCodesPerThread; ++j) out[i][j] = 0.0f;
  for (int64_t d0 = 0; d0 < dim; d0 += kChunkDim) {
    const int len = static_cast<int>(min(static_cast<int64_t>(kChunkDim), dim - d0));
    __syncthreads();  // every thread is done with the previous chunk (or tile)
    if (rows.stage) stage_tile(rows.data, rows.first, rows.end, dim, d0, len, tiles.rows);
    if (codes.stage) stage_tile(codes.data, codes.first, codes.end, dim, d0, len, tiles.codes);
    __syncthreads();
    add_squared_differences(tiles, len, out);
  }
  for (int j = 0; j < kCodesPerThread; ++j) {
    if (codes.first + code_lane() + j * kCodeLanes >= codes.end) {
      for (int i = 0; i < kRowsPerThread; ++i) out[i][j] = INFINITY;
    }
  }
}

// ---- pass 1: per row, the nearest code and the online log-sum-exp ----

// The running state of one row over the codes seen so far: the minimum distance, its first
// index and sum = sum_k exp(-(d_k - best) / tau) (float64, like the CPU's running sum).
struct RowState {
  double sum;
  float best;
  int index;
};

__device__ __forceinline__ RowState empty_state() { return {0.0, INFINITY, 0}; }

// Folds another state into `into`: the better minimum (ties to the smaller index) wins and
// the loser's sum is rescaled to it. A state that saw no code (best = +inf) adds nothing.
__device__ void merge_state(RowState& into, RowState other, float inv_tau) {
  if (better_candidate(other.best, other.index, into.best, into.index)) {
    const RowState swapped = into;
    into = other;
    other = swapped;
  }
  if (other.best < INFINITY) {
    into.sum += other.sum * exp((static_cast<double>(into.best) - other.best) * inv_tau);
  }
}

// Folds one tile's distances of a row (this thread's codes, first_code + j * kCodeLanes, in
// increasing order) into its state. A lower minimum rescales the running sum (strict "<": an
// equal later minimum keeps the earlier, smaller index); the tile's terms are added in float32
// relative to the new minimum, then to the float64 sum.
__device__ void fold_tile(RowState& state, const float (&distances)[kCodesPerThread],
                          int64_t first_code, float inv_tau) {
  float low = distances[0];
  int at = 0;
  for (int j = 1; j < kCodesPerThread; ++j) {
    if (distances[j] < low) {
      low = distances[j];
      at = j;
    }
  }
  if (low < state.best) {
    // On the first tile best is +inf and the sum 0: exp(-inf) = 0 keeps it 0.
    state.sum *= exp((static_cast<double>(low) - state.best) * inv_tau);
    state.best = low;
    state.index = static_cast<int>(first_code + at * kCodeLanes);
  }
  if (state.best < INFINITY) {
    float terms = 0.0f;
    for (int j = 0; j < kCodesPerThread; ++j) {
      terms += expf((state.best - distances[j]) * inv_tau);
    }
    state.sum += terms;
  }
}

__device__ RowState shuffle_xor(const RowState& state, int offset) {
  return {__shfl_xor_sync(0xffffffffu, state.sum, offset),
          __shfl_xor_sync(0xffffffffu, state.best, offset),
          __shfl_xor_sync(0xffffffffu, state.index, offset)};
}

// Block (row tile, code segment): the segment's state of each row, into partials[segment][row].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    scan_kernel(const T* x, const T* codebook, int64_t num_rows, int64_t num_codes, int64_t dim,
                int64_t codes_per_segment, float inv_tau, RowState* partials) {
  __shared__ StageTiles tiles;
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * kTileRows;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * codes_per_segment;
  const int64_t end = min(num_codes, begin + codes_per_segment);
  RowState states[kRowsPerThread];
  for (int i = 0; i < kRowsPerThread; ++i) states[i] = empty_state();
  for (int64_t first_code = begin; first_code < end; first_code += kTileCodes) {
    // The row tile stays staged across code tiles when one chunk holds every dimension.
    const TileSource<T> rows{x, first_row, num_rows, dim > kChunkDim || first_code == begin};
    Distances distances;
    tile_distances(rows, TileSource<T>{codebook, first_code, end, true}, dim, tiles, distances);
    for (int i = 0; i < kRowsPerThread; ++i) {
      fold_tile(states[i], distances[i], first_code + code_lane(), inv_tau);
    }
  }
  for (int i = 0; i < kRowsPerThread; ++i) {
    for (int offset = kCodeLanes / 2; offset > 0; offset /= 2) {
      merge_state(states[i], shuffle_xor(states[i], offset), inv_tau);
    }
    const int64_t row = first_row + row_group() * kRowsPerThread + i;
    if (code_lane() == 0 && row < num_rows) partials[blockIdx.y * num_rows + row] = states[i];
  }
}

// One thread per row: merges the segments in order; bias = log(lam K) - log Z in float64.
__global__ void finish_scan_kernel(const RowState* partials, int64_t segments, int64_t num_rows,
                                   float inv_tau, double log_scale, int64_t* indices,
                                   float* distances, float* bias) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= num_rows) return;
  RowState state = partials[row];
  for (int64_t s = 1; s < segments; ++s) {
    merge_state(state, partials[s * num_rows + row], inv_tau);
  }
  indices[row] = state.index;
  distances[row] = state.best;
  bias[row] = static_cast<float>(log_scale - log(state.sum));
}

// ---- pass 2: one block of codes accumulates its weights over a segment of the rows ----

struct AccumulateArgs {
  int64_t num_rows, num_codes, dim, rows_per_segment;
  float inv_tau;
  const float* best;  // pass 1's per-row results
  const int64_t* winner;
  const float* bias;
  double* weight_partials;    // segments x K
  double* weighted_partials;  // segments x K x D
  double* loss_partials;      // segments x code tiles: sum of w d
};

// The weighted sums' layout: thread t owns column t % kColumns of the block's column block and
// kCodes consecutive codes; the kColumns lanes of a column group read the same weights.
template <int kColumns>
struct WeightedLayout {
  static constexpr int kGroups = kThreads / kColumns;
  static constexpr int kCodes = kTileCodes / kGroups;
  static_assert(kColumns <= kChunkDim && kCodes % 4 == 0, "float4 weights within a staged chunk");
  __device__ static int column() { return threadIdx.x % kColumns; }
  __device__ static int first_code() { return (threadIdx.x / kColumns) * kCodes; }
};

// The thread's float64 sums over its segment.
template <int kColumns>
struct BlockSums {
  double weighted[WeightedLayout<kColumns>::kCodes];  // its (code, column) entries
  double weight[kCodesPerThread];                     // its micro-tile codes, its rows only
  double loss;                                        // its micro-tile's sum of w d
};

// Turns the thread's distances into weights, in place, and adds their sums and the loss
// terms (zero weights skip their distance, which is +inf for padded codes) to `sums`.
template <int kColumns>
__device__ void weigh_tile(const AccumulateArgs& a, int64_t first_row, int64_t row_end,
                           int64_t first_code, Distances& values, BlockSums<kColumns>& sums) {
  float loss = 0.0f;
  float weight[kCodesPerThread] = {};
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int64_t row = first_row + row_group() * kRowsPerThread + i;
    const bool valid = row < row_end;  // rows past the segment weigh nothing
    const float best = valid ? a.best[row] : 0.0f;
    const float bias = valid ? a.bias[row] : -INFINITY;
    const int64_t winner = valid ? a.winner[row] : -1;
    for (int j = 0; j < kCodesPerThread; ++j) {
      const float distance = values[i][j];
      const int64_t code = first_code + code_lane() + j * kCodeLanes;
      const float w = code == winner
                          ? 1.0f
                          : expf(fminf(bias - (distance - best) * a.inv_tau, 0.0f));
      loss += w > 0.0f ? w * distance : 0.0f;
      weight[j] += w;
      values[i][j] = w;
    }
  }
  sums.loss += loss;
  for (int j = 0; j < kCodesPerThread; ++j) sums.weight[j] += weight[j];
}

__device__ void store_weights(const Distances& weights, AccumulateTiles& tiles) {
  const int row0 = row_group() * kRowsPerThread;
  for (int i = 0; i < kRowsPerThread; ++i)
    for (int j = 0; j < kCodesPerThread; ++j)
      tiles.weights[row0 + i][code_lane() + j * kCodeLanes] = weights[i][j];
}

// sum_r w_rc x_rd over the tile's rows for the thread's entries: float32, then float64.
template <int kColumns>
__device__ void add_weighted_rows(const AccumulateTiles& tiles, BlockSums<kColumns>& sums) {
  using Layout = WeightedLayout<kColumns>;
  const int column = Layout::column(), code0 = Layout::first_code();
  float part[Layout::kCodes] = {};
#pragma unroll 4
  for (int r = 0; r < kTileRows; ++r) {
    const float value = tiles.stage.rows[r][column];
    for (int q = 0; q < Layout::kCodes; q += 4) {
      const float4 w = *reinterpret_cast<const float4*>(&tiles.weights[r][code0 + q]);
      part[q] = fmaf(w.x, value, part[q]);
      part[q + 1] = fmaf(w.y, value, part[q + 1]);
      part[q + 2] = fmaf(w.z, value, part[q + 2]);
      part[q + 3] = fmaf(w.w, value, part[q + 3]);
    }
  }
  for (int m = 0; m < Layout::kCodes; ++m) sums.weighted[m] += part[m];
}

// The block's weight sums (its row groups added in order) and loss (a fixed tree) into the
// segment's partials. Called by every thread of the blocks of the first column block.
template <int kColumns>
__device__ void store_weight_and_loss(const AccumulateArgs& a, int64_t segment,
                                      int64_t first_code, const BlockSums<kColumns>& sums,
                                      AccumulateTiles& tiles) {
  __syncthreads();  // the weights are no longer read: their space becomes the scratch
  for (int j = 0; j < kCodesPerThread; ++j) {
    tiles.scratch[row_group()][code_lane() + j * kCodeLanes] = sums.weight[j];
  }
  __syncthreads();
  const int64_t code = first_code + threadIdx.x;
  if (threadIdx.x < kTileCodes && code < a.num_codes) {
    double total = 0.0;
    for (int g = 0; g < kRowGroups; ++g) total += tiles.scratch[g][threadIdx.x];
    a.weight_partials[segment * a.num_codes + code] = total;
  }
  __syncthreads();
  const double loss = block_sum<kThreads>(sums.loss, &tiles.scratch[0][0]);
  if (threadIdx.x == 0) a.loss_partials[segment * gridDim.x + blockIdx.x] = loss;
}

// Block (code tile, row segment, column block).
template <typename T, int kColumns>
__global__ void __launch_bounds__(kThreads, kAccumulateBlocksPerSm)
    accumulate_kernel(const T* x, const T* codebook, AccumulateArgs a) {
  using Layout = WeightedLayout<kColumns>;
  __shared__ AccumulateTiles tiles;
  const int64_t first_code = static_cast<int64_t>(blockIdx.x) * kTileCodes;
  const int64_t segment = blockIdx.y;
  const int64_t row_begin = segment * a.rows_per_segment;
  const int64_t row_end = min(a.num_rows, row_begin + a.rows_per_segment);
  const int64_t column0 = static_cast<int64_t>(blockIdx.z) * kColumns;
  const bool one_chunk = a.dim <= kChunkDim;
  BlockSums<kColumns> sums{};
  for (int64_t first_row = row_begin; first_row < row_end; first_row += kTileRows) {
    // The code tile stays staged across row tiles when one chunk holds every dimension.
    const TileSource<T> codes{codebook, first_code, a.num_codes,
                              !one_chunk || first_row == row_begin};
    const TileSource<T> rows{x, first_row, row_end, true};
    Distances values;
    tile_distances(rows, codes, a.dim, tiles.stage, values);
    weigh_tile(a, first_row, row_end, first_code, values, sums);
    store_weights(values, tiles);  // the last read of the previous weights preceded a barrier
    __syncthreads();
    if (!one_chunk) {  // else the staged chunk already holds the rows' every column
      const int len = static_cast<int>(min(static_cast<int64_t>(kColumns), a.dim - column0));
      stage_tile(x, first_row, row_end, a.dim, column0, len, tiles.stage.rows);
      __syncthreads();
    }
    add_weighted_rows(tiles, sums);
  }
  const int64_t column = column0 + Layout::column();
  for (int m = 0; m < Layout::kCodes; ++m) {
    const int64_t code = first_code + Layout::first_code() + m;
    if (code < a.num_codes && column < a.dim) {
      a.weighted_partials[(segment * a.num_codes + code) * a.dim + column] = sums.weighted[m];
    }
  }
  if (blockIdx.z == 0) store_weight_and_loss(a, segment, first_code, sums, tiles);
}

__device__ double sum_segments(const double* first, int64_t segments, int64_t stride) {
  double total = 0.0;
  for (int64_t s = 0; s < segments; ++s) total += first[s * stride];
  return total;
}

// One thread per output entry: weighted sums (K x D), then weight sums (K).
__global__ void reduce_sums_kernel(const double* weight_partials, const double* weighted_partials,
                                   int64_t segments, int64_t num_codes, int64_t dim,
                                   float* weight_sums, float* weighted_sums) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t entries = num_codes * dim;
  if (e < entries) {
    weighted_sums[e] = static_cast<float>(sum_segments(weighted_partials + e, segments, entries));
  } else if (e < entries + num_codes) {
    const int64_t code = e - entries;
    weight_sums[code] =
        static_cast<float>(sum_segments(weight_partials + code, segments, num_codes));
  }
}

__global__ void loss_kernel(const double* partials, int64_t count, double scale, float* loss) {
  __shared__ double scratch[kThreads];
  double total = 0.0;
  for (int64_t p = threadIdx.x; p < count; p += kThreads) total += partials[p];
  total = block_sum<kThreads>(total, scratch);
  if (threadIdx.x == 0) *loss = static_cast<float>(total * scale);
}

// ---- host side: the splits, the workspace and the launches ----

// Columns per accumulate block: the narrowest that holds D (or 32), so that small D wastes no
// weighted-sum work.
int columns_for(int64_t dim) { return dim <= 8 ? 8 : (dim <= 16 ? 16 : kChunkDim); }

struct Plan {
  int64_t code_tiles;
  int64_t scan_segments, codes_per_scan_segment;
  int columns;
  int64_t column_blocks;
  int64_t segments, rows_per_segment;
};

Plan make_plan(int64_t num_rows, int64_t num_codes, int64_t dim) {
  Plan plan{};
  plan.code_tiles = ceil_div(num_codes, kTileCodes);
  const int64_t row_tiles = ceil_div(num_rows, kTileRows);
  const int64_t scan_split = std::max<int64_t>(
      1, std::min(ceil_div(kTargetBlocks, row_tiles), plan.code_tiles / kMinScanSegmentTiles));
  plan.codes_per_scan_segment = ceil_div(plan.code_tiles, scan_split) * kTileCodes;
  plan.scan_segments = ceil_div(num_codes, plan.codes_per_scan_segment);
  plan.columns = columns_for(dim);
  plan.column_blocks = ceil_div(dim, plan.columns);
  const int64_t by_blocks = ceil_div(kTargetBlocks, plan.code_tiles * plan.column_blocks);
  const int64_t by_rows = num_rows / kMinSegmentRows;
  const int64_t by_memory = kMaxPartials / (num_codes * (dim + 1));
  const int64_t split = std::max<int64_t>(1, std::min({by_blocks, by_rows, by_memory}));
  plan.rows_per_segment = ceil_div(ceil_div(num_rows, split), kTileRows) * kTileRows;
  plan.segments = ceil_div(num_rows, plan.rows_per_segment);
  return plan;
}

struct Workspace {
  RowState* states;  // scan segments x N
  float* bias;       // N
  double* weight_partials;
  double* weighted_partials;
  double* loss_partials;
  size_t bytes;  // the whole workspace
};

size_t aligned(size_t bytes) { return (bytes + 255) / 256 * 256; }

// The workspace's pieces in order, each 256-byte aligned; with base = nullptr only the size.
Workspace carve(void* base, const Plan& plan, int64_t num_rows, int64_t num_codes, int64_t dim) {
  char* at = static_cast<char*>(base);
  size_t offset = 0;
  auto take = [&](size_t size) {
    char* piece = at == nullptr ? nullptr : at + offset;
    offset += aligned(size);
    return piece;
  };
  auto take_doubles = [&](int64_t count) {
    return reinterpret_cast<double*>(take(sizeof(double) * count));
  };
  Workspace work;
  work.states =
      reinterpret_cast<RowState*>(take(sizeof(RowState) * plan.scan_segments * num_rows));
  work.bias = reinterpret_cast<float*>(take(sizeof(float) * num_rows));
  work.weight_partials = take_doubles(plan.segments * num_codes);
  work.weighted_partials = take_doubles(plan.segments * num_codes * dim);
  work.loss_partials = take_doubles(plan.segments * plan.code_tiles);
  work.bytes = offset;
  return work;
}

// Calls fn(std::integral_constant<int, C>) for the accumulate kernel's column count C.
template <typename Fn>
cudaError_t with_columns(int columns, Fn&& fn) {
  switch (columns) {
    case 8: return fn(std::integral_constant<int, 8>{});
    case 16: return fn(std::integral_constant<int, 16>{});
    case kChunkDim: return fn(std::integral_constant<int, kChunkDim>{});
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t launch_soft_assign(const T* x, const T* codebook, int64_t num_rows, int64_t num_codes,
                               int64_t dim, float inv_tau, double log_scale, const Plan& plan,
                               const Workspace& work, float* loss, float* weight_sums,
                               float* weighted_sums, int64_t* indices, float* distances,
                               cudaStream_t stream) {
  const dim3 scan_grid(ceil_div(num_rows, kTileRows), plan.scan_segments);
  scan_kernel<T><<<scan_grid, kThreads, 0, stream>>>(x, codebook, num_rows, num_codes, dim,
                                                     plan.codes_per_scan_segment, inv_tau,
                                                     work.states);
  finish_scan_kernel<<<ceil_div(num_rows, kElementThreads), kElementThreads, 0, stream>>>(
      work.states, plan.scan_segments, num_rows, inv_tau, log_scale, indices, distances,
      work.bias);
  AccumulateArgs args{};
  args.num_rows = num_rows;
  args.num_codes = num_codes;
  args.dim = dim;
  args.rows_per_segment = plan.rows_per_segment;
  args.inv_tau = inv_tau;
  args.best = distances;
  args.winner = indices;
  args.bias = work.bias;
  args.weight_partials = work.weight_partials;
  args.weighted_partials = work.weighted_partials;
  args.loss_partials = work.loss_partials;
  const dim3 grid(plan.code_tiles, plan.segments, plan.column_blocks);
  const cudaError_t status = with_columns(plan.columns, [&](auto columns) {
    constexpr int kColumns = decltype(columns)::value;
    accumulate_kernel<T, kColumns><<<grid, kThreads, 0, stream>>>(x, codebook, args);
    return cudaGetLastError();
  });
  if (status != cudaSuccess) return status;
  const int64_t entries = num_codes * (dim + 1);
  reduce_sums_kernel<<<ceil_div(entries, kElementThreads), kElementThreads, 0, stream>>>(
      work.weight_partials, work.weighted_partials, plan.segments, num_codes, dim, weight_sums,
      weighted_sums);
  loss_kernel<<<1, kThreads, 0, stream>>>(work.loss_partials, plan.segments * plan.code_tiles,
                                          1.0 / (static_cast<double>(num_rows) * dim), loss);
  return cudaGetLastError();
}

}  // namespace
}  // namespace wvq::cuda

using namespace wvq::cuda;

extern "C" size_t wvq_soft_assign_workspace_bytes(int64_t num_rows, int64_t num_codes,
                                                  int64_t dim) {
  if (num_rows == 0) return 0;
  return carve(nullptr, make_plan(num_rows, num_codes, dim), num_rows, num_codes, dim).bytes;
}

extern "C" cudaError_t wvq_soft_assign_stats(const void* x, const void* codebook, int dtype,
                                             int64_t num_rows, int64_t num_codes, int64_t dim,
                                             double tau, double lam, void* workspace,
                                             float* loss, float* weight_sums,
                                             float* weighted_sums, int64_t* indices,
                                             float* distances, cudaStream_t stream) {
  if (num_rows == 0) {  // no rows: zero sums and loss, empty indices and distances
    cudaMemsetAsync(loss, 0, sizeof(float), stream);
    cudaMemsetAsync(weight_sums, 0, sizeof(float) * num_codes, stream);
    cudaMemsetAsync(weighted_sums, 0, sizeof(float) * num_codes * dim, stream);
    return cudaGetLastError();
  }
  const Plan plan = make_plan(num_rows, num_codes, dim);
  const Workspace work = carve(workspace, plan, num_rows, num_codes, dim);
  const float inv_tau = static_cast<float>(1.0 / tau);
  const double log_scale = std::log(lam * static_cast<double>(num_codes));  // -inf for lam = 0
  return with_input_type(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    return launch_soft_assign(static_cast<const T*>(x), static_cast<const T*>(codebook),
                              num_rows, num_codes, dim, inv_tau, log_scale, plan, work, loss,
                              weight_sums, weighted_sums, indices, distances, stream);
  });
}
