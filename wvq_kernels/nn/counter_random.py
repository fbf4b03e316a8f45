"""Counter-based random numbers for the modules' state updates (dead-code refills, the feature
reservoir): each draw is a hash of (seed, position in the stream).

A ``torch.Generator`` cannot be called inside a compiled graph, and its draws differ between
devices. Here the state is two int64 buffers and every number is pure tensor arithmetic, so a
module's forward traces whole under ``torch.compile(fullgraph=True)``, draws the same numbers
on every device and every rank that holds the same state, and resumes exactly from a
state_dict.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["CounterRandom"]

_MASK16 = 0xFFFF
_MASK32 = 0xFFFFFFFF
# Multipliers of the "lowbias32" integer hash (C. Wellons, hash-prospector), a bijection of
# 32-bit words with low bias.
_HASH_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)
# Odd constants that separate the two words drawn per number.
_SALT_HIGH, _SALT_SECOND = 0x68E31DA4, 0x9E3779B9


def _multiply32(words: Tensor, constant: int) -> Tensor:
    """(words * constant) mod 2^32 for words in [0, 2^32), in int64 without overflow: the high
    half of each word contributes only the low 16 bits of its product."""
    low = (words & _MASK16) * constant
    high = (((words >> 16) * constant) & _MASK16) << 16
    return (low + high) & _MASK32


def _hash32(words: Tensor) -> Tensor:
    words = words ^ (words >> 16)
    words = _multiply32(words, _HASH_MULTIPLIERS[0])
    words = words ^ (words >> 15)
    words = _multiply32(words, _HASH_MULTIPLIERS[1])
    return words ^ (words >> 16)


def counter_uniform(seed: Tensor, offsets: Tensor) -> Tensor:
    """float64 uniforms in [0, 1) with 53 random bits, one per int64 offset (>= 0), keyed by
    the int64 ``seed``: the same (seed, offset) always gives the same number."""
    key = _hash32((seed & _MASK32) ^ _hash32((seed >> 32) & _MASK32))
    first = _hash32(_hash32((offsets & _MASK32) ^ key) ^ ((offsets >> 32) & _MASK32) ^ _SALT_HIGH)
    second = _hash32(first ^ key ^ _SALT_SECOND)
    bits = (first >> 5) * (1 << 26) + (second >> 6)
    return bits.to(torch.float64) * 2.0**-53


class CounterRandom(nn.Module):
    """A stream of uniforms: ``seed`` and ``offset`` (the numbers drawn so far) are buffers, so
    they move with the module, live in its state_dict and cost no host sync to advance."""

    def __init__(self, seed: int):
        super().__init__()
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.int64))
        self.register_buffer("offset", torch.zeros((), dtype=torch.int64))

    def manual_seed(self, seed: int) -> CounterRandom:
        """Restart the stream from ``seed``, as ``torch.Generator.manual_seed``."""
        self.seed.fill_(seed)
        self.offset.zero_()
        return self

    def uniform(self, count: int) -> Tensor:
        """The next ``count`` numbers of the stream, float64 in [0, 1), on the buffers' device."""
        offsets = self.offset + torch.arange(count, device=self.offset.device)
        self.offset.add_(count)
        return counter_uniform(self.seed, offsets)
