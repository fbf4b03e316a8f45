// AMX micro-kernel: bf16 pair dot products on the tile unit (tdpbf16ps; measured here about
// sixteen times the fp32 FMA throughput of a core), with the AVX-512 epilogues of
// scan_epilogues.h. The tile instructions are inline assembly (tile_load); dispatch.cpp calls
// into this translation unit only after checking the CPU and obtaining the kernel's permission
// to use the tile registers.
//
// A call covers 16 rows (one A tile) against chunks of 32 codes (two B tiles of 16 codes,
// unit-major pairs: exactly the packed layout, whose rows are units); two C tiles start from the
// codes' bias (a tile load with stride 0 repeats it on every row), accumulate every unit block
// of 16 pairs, and are stored so that each row's 32 scores reach the epilogue as two vectors.
// Rows of more than 16 units are padded to a multiple of 16 (unit_block) so one tile shape
// serves every block. Measured at D = 8: a chunk's epilogue waits for its tile stores, so two
// chunks in flight (one computing, one in the epilogue) run about 3x faster than one.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#define WVQ_ISA_NAMESPACE amx

namespace wvq::cpu::amx {

struct Isa {
  using V = __m512;
  static constexpr int kWidth = 16;
  typedef int32_t Bits __attribute__((vector_size(64)));  // the lanes' bit patterns
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static uint32_t less_mask(V v, float bound) {  // bit i: lane i < bound
    return _mm512_cmp_ps_mask(v, _mm512_set1_ps(bound), _CMP_LT_OQ);
  }
  static bool any_less(V v, float bound) { return less_mask(v, bound) != 0; }
};

}  // namespace wvq::cpu::amx

#include "scan_epilogues.h"

namespace wvq::cpu::amx {

constexpr int kTile = 16;          // rows of a tile, and codes (fp32 lanes) of a C tile row
constexpr int kChunk = 2 * kTile;  // codes per chunk
constexpr int kUnitBlock = 16;     // pairs in a 64-byte tile row

// The 64-byte operand of ldtilecfg (palette 1): tiles 0-3 accumulate, 4 holds rows, 5-7 codes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Loads the tile shapes of `block_units` unless the thread has them already: ldtilecfg costs
// hundreds of nanoseconds (it clears the tiles), sttilecfg and a compare a few, and a call of the
// scan may cover as few as one chunk per row. The tiles are never released, so the next call
// on the thread finds its configuration in place (the kernel saves the tile state of a thread
// that holds one on a context switch: 8 KiB).
static void configure(int block_units) {
  TileConfig config;
  for (int t = 0; t < 4; ++t) {
    config.bytes_per_row[t] = 4 * kTile;
    config.rows[t] = kTile;
  }
  config.bytes_per_row[4] = static_cast<uint16_t>(4 * block_units);
  config.rows[4] = kTile;
  for (int t = 5; t < 8; ++t) {
    config.bytes_per_row[t] = 4 * kTile;
    config.rows[t] = static_cast<uint8_t>(block_units);
  }
  TileConfig current;
  __asm__ volatile("sttilecfg %0" : "=m"(current));
  if (std::memcmp(&current, &config, sizeof config) == 0) return;
  // Not _tile_loadconfig: GCC 12 declares it as reading 8 bytes, and drops the other stores.
  __asm__ volatile("ldtilecfg %0" ::"m"(config));
}

// Tile instructions on tiles numbered by template arguments (the intrinsics are macros that need
// literal numbers). Tiles are invisible to the compiler: the memory clobber keeps the loads and
// stores in order with the code around them.
template <int Tile>
static void tile_load(const float* base, int64_t stride_bytes) {
  __asm__ volatile("tileloadd (%0,%1,1), %%tmm%c2" ::"r"(base), "r"(stride_bytes), "i"(Tile)
                   : "memory");
}

template <int Tile>
static void tile_store(float* base, int64_t stride_bytes) {
  __asm__ volatile("tilestored %%tmm%c2, (%0,%1,1)" ::"r"(base), "r"(stride_bytes), "i"(Tile)
                   : "memory");
}

// Acc += Rows x Codes over bf16 pairs.
template <int Acc, int Rows, int Codes>
static void tile_dot() {
  __asm__ volatile("tdpbf16ps %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(Acc), "i"(Rows), "i"(Codes));
}

// The call's 16 rows, one block of units, into tile 4.
static void load_rows(const ScanArgs& a, int64_t first_unit) {
  tile_load<4>(a.rows + first_unit, 4 * a.row_stride);
}

// Chunks alternate between two sets of tiles, so that the tile unit computes one chunk while the
// epilogue reads the other's scores: Acc* accumulate, Code* hold its codes. (Tile 5 serves both
// sets; the unit orders its uses.)
template <int Acc0, int Acc1, int Code0, int Code1>
struct ChunkTiles {
  static void start(const ScanArgs& a, int64_t c, int64_t blocks) {
    const float* bias = a.bias + c * kChunk;
    tile_load<Acc0>(bias, 0);  // stride 0: the bias on every row
    tile_load<Acc1>(bias + kTile, 0);
    const float* chunk = a.codes + c * a.units * kChunk;
    for (int64_t b = 0; b < blocks; ++b) {
      if (blocks > 1) load_rows(a, b * kUnitBlock);
      const float* codes = chunk + b * kUnitBlock * kChunk;
      tile_load<Code0>(codes, 4 * kChunk);
      tile_load<Code1>(codes + kTile, 4 * kChunk);
      tile_dot<Acc0, 4, Code0>();
      tile_dot<Acc1, 4, Code1>();
    }
  }

  template <class Epilogue>
  static void finish(const ScanArgs& a, int64_t c) {
    alignas(64) float scores[2][kTile][kTile];
    tile_store<Acc0>(scores[0][0], 4 * kTile);
    tile_store<Acc1>(scores[1][0], 4 * kTile);
    for (int r = 0; r < kTile; ++r) {
      const Isa::V row_scores[2] = {Isa::load(scores[0][r]), Isa::load(scores[1][r])};
      Epilogue::apply(row_scores, a, r, a.first_code + c * kChunk);
    }
  }
};
using EvenChunk = ChunkTiles<0, 1, 5, 6>;
using OddChunk = ChunkTiles<2, 3, 7, 5>;

template <class Epilogue>
static void scan(const ScanArgs& a) {
  const int64_t units = a.units;
  const int block_units = static_cast<int>(units < kUnitBlock ? units : kUnitBlock);
  const int64_t blocks = (units + kUnitBlock - 1) / kUnitBlock;
  const int64_t n = a.num_chunks;
  configure(block_units);
  if (blocks == 1) load_rows(a, 0);  // the same for every chunk
  EvenChunk::start(a, 0, blocks);
  for (int64_t c = 1; c < n; c += 2) {
    OddChunk::start(a, c, blocks);
    EvenChunk::finish<Epilogue>(a, c - 1);
    if (c + 1 < n) EvenChunk::start(a, c + 1, blocks);
    OddChunk::finish<Epilogue>(a, c);
  }
  if (n % 2 == 1) EvenChunk::finish<Epilogue>(a, n - 1);
}

// The peak benchmark's loop (peak.cpp): `steps` x 4 tdpbf16ps of full 16 x 16 x 32 tiles into
// four accumulators, so that the tile unit never waits for one; every pair is 2^-8 (0x3B80), so
// each instruction adds 32 x 2^-16 to an accumulator, which stays finite. Returns one
// accumulator's first value, so that nothing is dead.
static float peak_round(int64_t steps) {
  alignas(64) static const uint16_t kSmall[kTile * 2 * kUnitBlock] = {
#define WVQ_SMALL8 0x3B80, 0x3B80, 0x3B80, 0x3B80, 0x3B80, 0x3B80, 0x3B80, 0x3B80
#define WVQ_SMALL64 WVQ_SMALL8, WVQ_SMALL8, WVQ_SMALL8, WVQ_SMALL8, WVQ_SMALL8, WVQ_SMALL8, \
                    WVQ_SMALL8, WVQ_SMALL8
      WVQ_SMALL64, WVQ_SMALL64, WVQ_SMALL64, WVQ_SMALL64, WVQ_SMALL64, WVQ_SMALL64, WVQ_SMALL64,
      WVQ_SMALL64};
#undef WVQ_SMALL64
#undef WVQ_SMALL8
  alignas(64) static const float kZeros[kTile] = {};
  configure(kUnitBlock);
  const auto* small = reinterpret_cast<const float*>(kSmall);
  tile_load<4>(small, 4 * kUnitBlock);
  tile_load<5>(small, 4 * kTile);
  tile_load<0>(kZeros, 0);
  tile_load<1>(kZeros, 0);
  tile_load<2>(kZeros, 0);
  tile_load<3>(kZeros, 0);
  for (int64_t step = 0; step < steps; ++step) {
    tile_dot<0, 4, 5>();
    tile_dot<1, 4, 5>();
    tile_dot<2, 4, 5>();
    tile_dot<3, 4, 5>();
  }
  alignas(64) float out[kTile][kTile];
  tile_store<0>(out[0], 4 * kTile);
  return out[0][0];
}

}  // namespace wvq::cpu::amx

namespace wvq::cpu {

float amx_peak_round(int64_t steps) { return amx::peak_round(steps); }

const MicroKernel& amx_bf16_kernel() {
  static const MicroKernel kernel{"amx-bf16",
                                  amx::kTile,
                                  amx::kChunk,
                                  &amx::scan<amx::NearestEpilogue>,
                                  &amx::scan<amx::NearestCodesEpilogue>,
                                  &amx::scan<amx::GumbelEpilogue>,
                                  &amx::scan<amx::ScreenEpilogue>,
                                  amx::kUnitBlock};
  return kernel;
}

}  // namespace wvq::cpu
