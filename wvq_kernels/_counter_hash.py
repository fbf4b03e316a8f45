"""The counter-based hash shared by the library's random numbers, in int64 tensor arithmetic
(pure tensor ops: any device, no host sync, traceable by torch.compile).

- ``hash32``: the "lowbias32" integer hash (C. Wellons, hash-prospector), a bijection of 32-bit
  words, used by wvq_kernels/nn/counter_random.py for the modules' random streams;
- ``gumbel_noise``: sample_codes' noise per (seed, row, code), the same words and the same
  float32 formula as csrc/common/counter_hash.h and csrc/cpu/scan_epilogues.h (the C++ kernels)
  and wvq_kernels/triton/sample_codes.py. See scan_epilogues.h for why the noise is log E with
  E = -log1p(-W) rather than the textbook -log(-log U).
"""

import torch
from torch import Tensor

MASK16 = 0xFFFF
MASK32 = 0xFFFFFFFF
HASH_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)
ROW_SALT, SECOND_KEY_SALT = 0x68E31DA4, 0x9E3779B9


def multiply32(words: Tensor | int, constant: int) -> Tensor | int:
    """(words * constant) mod 2^32 for words in [0, 2^32), in int64 without overflow: the high
    half of each word contributes only the low 16 bits of its product."""
    low = (words & MASK16) * constant
    high = (((words >> 16) * constant) & MASK16) << 16
    return (low + high) & MASK32


def hash32(words: Tensor | int) -> Tensor | int:
    words = words ^ (words >> 16)
    words = multiply32(words, HASH_MULTIPLIERS[0])
    words = words ^ (words >> 15)
    words = multiply32(words, HASH_MULTIPLIERS[1])
    return words ^ (words >> 16)


def seed_key(seed: Tensor | int) -> Tensor | int:
    """The 32-bit key of an int64 seed (also the key of counter_random's streams); a Python
    int gives a Python int (its shifts are arithmetic, as int64 tensors' are)."""
    return hash32((seed & MASK32) ^ hash32((seed >> 32) & MASK32))


def row_keys(seed_word: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """The two 32-bit keys of each int64 row index (csrc/common/counter_hash.h row_keys)."""
    first = hash32(hash32((rows & MASK32) ^ seed_word) ^ ((rows >> 32) & MASK32) ^ ROW_SALT)
    return first, hash32(first ^ seed_word ^ SECOND_KEY_SALT)


def code_words(first: Tensor, second: Tensor, codes: Tensor) -> Tensor:
    """Random words of ``codes`` (K,) for rows with keys ``first``, ``second`` (N,): (N, K)."""
    return hash32((hash32(codes[None, :] ^ first[:, None]) + second[:, None]) & MASK32)


def gumbel_noise(words: Tensor) -> Tensor:
    """log E, E standard exponential, from 32-bit words, in float32: -G for a Gumbel G."""
    w = ((words >> 1).to(torch.float32) + 0.5) * 2.0**-31
    u = 1.0 - w
    exponential = torch.where(u == 1.0, w, (-torch.log(u) * w) / (1.0 - u))
    return torch.log(exponential)
