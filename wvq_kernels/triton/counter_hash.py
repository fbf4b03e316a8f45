"""sample_codes' Gumbel noise in Triton: the words of csrc/common/counter_hash.h (lowbias32,
(seed, row, code) keys) and the float32 formula of csrc/cpu/scan_epilogues.h, in the same order,
so that every backend draws the same codes (wvq_kernels/_counter_hash.py is the PyTorch copy the
tests compare against)."""

import triton
import triton.language as tl

from wvq_kernels import _counter_hash


def signed_word(word: int) -> int:
    """A 32-bit word as the int32 with the same bits: one kernel signature for every seed."""
    return word - (1 << 32) if word >= 1 << 31 else word


@triton.jit
def _lowbias32(words):
    words ^= words >> 16
    words *= tl.full([], _counter_hash.HASH_MULTIPLIERS[0], tl.uint32)
    words ^= words >> 15
    words *= tl.full([], _counter_hash.HASH_MULTIPLIERS[1], tl.uint32)
    return words ^ (words >> 16)


@triton.jit
def row_keys(seed_word, rows):
    """The two uint32 keys of each (int32, non-negative) global row index."""
    seed = seed_word.to(tl.uint32, bitcast=True)
    first = _lowbias32(_lowbias32(rows.to(tl.uint32) ^ seed) ^ _counter_hash.ROW_SALT)
    second = _lowbias32(first ^ seed ^ tl.full([], _counter_hash.SECOND_KEY_SALT, tl.uint32))
    return first, second


@triton.jit
def gumbel_noise(first, second, codes):
    """(rows, codes) tile of log E, E exponential: the negated Gumbel noise of sample_codes."""
    words = _lowbias32(_lowbias32(codes.to(tl.uint32)[None, :] ^ first[:, None]) + second[:, None])
    w = ((words >> 1).to(tl.int32).to(tl.float32) + 0.5) * 4.656612873077393e-10  # 2^-31
    u = 1.0 - w
    exponential = tl.where(u == 1.0, w, (-tl.log(u) * w) / (1.0 - u))
    return tl.log(exponential)
