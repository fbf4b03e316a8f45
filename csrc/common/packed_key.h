// A 64-bit key that orders (score, index) pairs the way assignment needs: smaller score first,
// then smaller index. One unsigned min over such keys merges partial argmins from code
// segments (split-K) deterministically, with ties going to the smallest index, whatever order
// the partial results arrive in.
#pragma once

#include <cstdint>
#include <cstring>

#include "hd.h"

namespace wvq {

// Maps float bits to unsigned bits with the same order (NaN aside): negative values are
// bit-inverted, non-negative ones get the sign bit set.
WVQ_HD uint32_t ordered_bits(float value) {
  uint32_t bits;
#if defined(__CUDA_ARCH__)
  bits = __float_as_uint(value);
#else
  std::memcpy(&bits, &value, sizeof bits);
#endif
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

WVQ_HD float float_from_ordered_bits(uint32_t ordered) {
  uint32_t bits = (ordered & 0x80000000u) ? (ordered & 0x7fffffffu) : ~ordered;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
#endif
}

// Codebooks have fewer than 2^32 codes, so the index fits in the low half. -0 is folded into
// +0 so that the key orders exactly like the float comparison the CPU kernels use.
WVQ_HD uint64_t pack_score_index(float score, uint32_t index) {
  if (score == 0.0f) score = 0.0f;
  return (static_cast<uint64_t>(ordered_bits(score)) << 32) | index;
}

WVQ_HD float unpack_score(uint64_t key) {
  return float_from_ordered_bits(static_cast<uint32_t>(key >> 32));
}

WVQ_HD uint32_t unpack_index(uint64_t key) { return static_cast<uint32_t>(key); }

// The tie rule every backend follows: a candidate replaces the incumbent only when its score is
// strictly smaller, or equal with a smaller index.
WVQ_HD bool better_candidate(float score, int64_t index, float best_score, int64_t best_index) {
  return score < best_score || (score == best_score && index < best_index);
}

}  // namespace wvq
