// Where the CUDA assignment kernel (csrc/cuda/assign.cu) keeps each element of its packed
// codebook. The codebook is padded to whole tiles of kTileCodes codes and to padded_dim
// dimensions, and cut into chunks of kChunkDim dimensions (the last one narrower when
// padded_dim is not a multiple of kChunkDim). Every (tile, chunk) block is one contiguous run of
// kTileCodes * width elements, in the order the kernel's shared-memory copy wants it:
// dimension-major ([d][code], the SIMT path) or code-major ([code][d], the tensor-core path).
// The kernel streams those runs with 16-byte loads; the pack kernel writes them through
// packed_code_offset. Host-testable, hence here rather than in the .cu file.
#pragma once

#include <cstdint>

#include "hd.h"

namespace wvq {

template <int kTileCodes, int kChunkDim, bool kDimMajor>
struct AssignLayout {
  // Width of chunk `chunk`: kChunkDim, or what is left of padded_dim.
  WVQ_HD static int chunk_width(int64_t padded_dim, int64_t chunk) {
    const int64_t left = padded_dim - chunk * kChunkDim;
    return static_cast<int>(left < kChunkDim ? left : kChunkDim);
  }

  // First element of the (tile, chunk) run.
  WVQ_HD static int64_t chunk_begin(int64_t tile, int64_t chunk, int64_t padded_dim) {
    return (tile * padded_dim + chunk * kChunkDim) * kTileCodes;
  }

  WVQ_HD static int64_t packed_code_offset(int64_t code, int64_t d, int64_t padded_dim) {
    const int64_t chunk = d / kChunkDim;
    const int64_t c = code % kTileCodes, dd = d % kChunkDim;
    const int64_t within =
        kDimMajor ? dd * kTileCodes + c : c * chunk_width(padded_dim, chunk) + dd;
    return chunk_begin(code / kTileCodes, chunk, padded_dim) + within;
  }
};

}  // namespace wvq
