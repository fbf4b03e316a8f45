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

from wvq_kernels._counter_hash import row_keys, seed_key

__all__ = ["CounterRandom"]


def counter_uniform(seed: Tensor, offsets: Tensor) -> Tensor:
    """float64 uniforms in [0, 1) with 53 random bits, one per int64 offset (>= 0), keyed by
    the int64 ``seed``: the same (seed, offset) always gives the same number. The two words per
    number are an offset's keys in the scheme sample_codes keys its rows with."""
    first, second = row_keys(seed_key(seed), offsets)
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
