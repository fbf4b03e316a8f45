// Interface between the ISA-independent assignment driver (assign.cpp) and the register-tiled
// micro-kernels compiled once per ISA level (isa_*.cpp). Everything the micro-kernel sees is a
// stream of 32-bit units: one fp32 value per dimension, or one pair of bf16 values per two
// dimensions for the vdpbf16ps path, so one driver serves both precisions.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace wvq::cpu {

// The screened scan's per-row state (exact ieee assignment from bf16 scores; assign.cpp states and
// proves the bound). Row r of the tile is at [r], its candidates at [r * capacity, ...).
struct ScreenRows {
  const float* code_norms;   // per packed code, laid out like the bias: |c| rounded up...
  const float* code_errors;  // ...and the norm of its bf16 rounding error |c' - c|
  double bias_factor;        // the bound per unit of bias
  double slack;              // the bound's absolute term (underflow, flushed subnormals)
  const double* norm_factor;   // per row: the bound per unit of |c|...
  const double* error_factor;  // ...and per unit of |c' - c|
  const double* row_margin;  // per row: the largest bound of any code of the pass
  double* upper;             // per row: min over the codes seen of score + bound
  float* threshold;          // per row: a score at or above it cannot matter
  int64_t* candidates;       // per row: codes whose score - bound was <= upper when seen...
  double* candidate_low;     // ...and that score - bound
  int32_t* counts;           // per row: candidates held; capacity + 1 once some were lost
  int32_t capacity;
};

// The smallest float above `value`: a float below it is at most `value`. Static: each ISA's
// translation unit compiles its own copy (as drop_stale).
static inline float float_above(double value) {
  const float rounded = static_cast<float>(value);
  if (static_cast<double>(rounded) > value) return rounded;
  return std::nextafter(rounded, std::numeric_limits<float>::infinity());
}

// Drops the candidates whose score - bound exceeds `upper`; returns how many remain.
static inline int32_t drop_stale(int64_t* codes, double* lows, int32_t count, double upper) {
  int32_t kept = 0;
  for (int32_t i = 0; i < count; ++i) {
    if (lows[i] <= upper) {
      codes[kept] = codes[i];
      lows[kept++] = lows[i];
    }
  }
  return kept;
}

struct ScanArgs {
  const float* rows;        // tile_rows rows, row_stride units apart (-2x, -x_hat or -x)
  int64_t row_stride;
  const float* codes;       // packed chunks: chunk c holds units x chunk_codes, unit-major
  const float* bias;        // chunk_codes additive terms per chunk (|c|^2, 0, +inf padding)
  int64_t units;            // 32-bit units per row and per code
  int64_t num_chunks;
  int64_t first_code;       // global index of the first code of the first chunk
  // Per row, a list of the `list_length` best (score, index) pairs so far, sorted by score then
  // index, row r's at [r * list_length, (r + 1) * list_length): the running minimum and its
  // index when list_length is 1 (scan, sample), the top-k candidates otherwise (scan_topk).
  float* best;
  int64_t* best_index;
  int64_t list_length;
  // sample_codes only: 1 / T in score units, and per row its two counter keys (row_keys()).
  float inv_temperature;
  const uint32_t* row_keys;
  const ScreenRows* screen;  // the screened scan only
};

using ScanFn = void (*)(const ScanArgs&);

struct MicroKernel {
  const char* name;      // "avx512-fp32", ...
  int tile_rows;         // rows per call of scan
  int chunk_codes;       // codes per packed chunk
  ScanFn scan;           // nearest code (list_length 1; assign)
  ScanFn scan_topk;      // the list_length nearest codes (assign(..., k))
  ScanFn sample;         // running minima of score / T + Gumbel noise (sample_codes)
  ScanFn screen;         // the candidates of exact ieee assignment (ScreenRows)
  int unit_block;        // units per dot-product block: more units are padded to a multiple
};

// Kernels per ISA level; the bf16 entry exists only where vdpbf16ps does.
const MicroKernel& avx512_fp32_kernel();
const MicroKernel& avx512_bf16_kernel();
const MicroKernel& avx2_fp32_kernel();
const MicroKernel& scalar_fp32_kernel();
const MicroKernel& amx_bf16_kernel();
// The tile unit's peak loop: steps x 4 tdpbf16ps of 16 x 16 x 32 (isa_amx.cpp; AMX only).
float amx_peak_round(int64_t steps);

enum class IsaLevel { kScalar, kAvx2, kAvx512, kAvx512Bf16, kAmx };

IsaLevel detect_isa();           // run-time CPU feature check, cached
const char* isa_name(IsaLevel level);
const MicroKernel& fp32_kernel();    // best fp32 kernel for this CPU
const MicroKernel* bf16_kernel();    // nullptr when the CPU has no bf16 dot product
// The bf16 kernel that screens ieee assignment of K codes of D dimensions where that is faster
// than fp32 FMA (AMX, K D large enough), or nullptr; WVQ_ASSIGN_SCREEN=0 turns screening off,
// =1 screens with any bf16 kernel at every size.
const MicroKernel* screening_kernel(int64_t num_codes, int64_t dim);

}  // namespace wvq::cpu
