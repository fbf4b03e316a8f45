// The counter-based random numbers of sample_codes: one 32-bit word per (seed, row, code), a pure
// function of those three integers, so that a draw depends neither on tiling, backend nor thread
// count. wvq_kernels/_counter_hash.py computes the same words in PyTorch (the reference) and
// wvq_kernels/triton/sample_codes.py in Triton; tests/test_sample_codes.py checks they agree.
//
// The mixing function is the "lowbias32" integer hash (C. Wellons, hash-prospector), a
// bijection of 32-bit words, also used by wvq_kernels/nn/counter_random.py. A row's two keys
// enter a code's word once before and once after a hash, so that two rows' words are not one
// permutation of the other (as h(code ^ key_row) alone would make them).
#pragma once

#include <cstdint>

#include "hd.h"

namespace wvq {

inline constexpr uint32_t kHashMultiplier1 = 0x7feb352du;
inline constexpr uint32_t kHashMultiplier2 = 0x846ca68bu;
inline constexpr uint32_t kRowSalt = 0x68e31da4u;
inline constexpr uint32_t kSecondKeySalt = 0x9e3779b9u;

// W is uint32_t or a GCC vector of uint32_t (the CPU kernels hash a vector of codes at once).
template <class W>
WVQ_HD W lowbias32(W w) {
  w ^= w >> 16;
  w *= kHashMultiplier1;
  w ^= w >> 15;
  w *= kHashMultiplier2;
  w ^= w >> 16;
  return w;
}

struct RowKeys {
  uint32_t first, second;
};

WVQ_HD uint32_t seed_key(uint64_t seed) {
  return lowbias32<uint32_t>(static_cast<uint32_t>(seed) ^
                             lowbias32<uint32_t>(static_cast<uint32_t>(seed >> 32)));
}

WVQ_HD RowKeys row_keys(uint32_t seed_word, uint64_t row) {
  const uint32_t first = lowbias32<uint32_t>(
      lowbias32<uint32_t>(static_cast<uint32_t>(row) ^ seed_word) ^
      static_cast<uint32_t>(row >> 32) ^ kRowSalt);
  return {first, lowbias32<uint32_t>(first ^ seed_word ^ kSecondKeySalt)};
}

// The random word of code `code` in the row with keys (first, second).
template <class W>
WVQ_HD W code_word(W code, uint32_t first, uint32_t second) {
  return lowbias32<W>(lowbias32<W>(code ^ first) + second);
}

}  // namespace wvq
