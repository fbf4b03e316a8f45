// Interface between the ISA-independent assignment driver (assign.cpp) and the register-tiled
// micro-kernels compiled once per ISA level (isa_*.cpp). Everything the micro-kernel sees is a
// stream of 32-bit units: one fp32 value per dimension, or one pair of bf16 values per two
// dimensions for the vdpbf16ps path, so one driver serves both precisions.
#pragma once

#include <cstdint>

namespace wvq::cpu {

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
};

using ScanFn = void (*)(const ScanArgs&);

struct MicroKernel {
  const char* name;      // "avx512-fp32", ...
  int tile_rows;         // rows per call of scan
  int chunk_codes;       // codes per packed chunk
  ScanFn scan;           // nearest code (list_length 1; assign)
  ScanFn scan_topk;      // the list_length nearest codes (assign(..., k))
  ScanFn sample;         // running minima of score / T + Gumbel noise (sample_codes)
};

// Kernels per ISA level; the bf16 entry exists only where vdpbf16ps does.
const MicroKernel& avx512_fp32_kernel();
const MicroKernel& avx512_bf16_kernel();
const MicroKernel& avx2_fp32_kernel();
const MicroKernel& scalar_fp32_kernel();

enum class IsaLevel { kScalar, kAvx2, kAvx512, kAvx512Bf16 };

IsaLevel detect_isa();           // run-time CPU feature check, cached
const char* isa_name(IsaLevel level);
const MicroKernel& fp32_kernel();    // best fp32 kernel for this CPU
const MicroKernel* bf16_kernel();    // nullptr when the CPU has no bf16 dot product

}  // namespace wvq::cpu
