"""Uniform reservoir sample of a stream of feature rows (Vitter's algorithm R, vectorised)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .counter_random import CounterRandom

__all__ = ["FeatureReservoir"]


class FeatureReservoir(nn.Module):
    """``size`` rows drawn uniformly without replacement from every row pushed since the last
    ``clear()``: the pool that dead codes are refilled from.

    Row t of the stream (0-based) fills slot t while the reservoir is not full; after that it
    replaces slot r, r uniform in [0, t], when r < size. A chunk is processed at once: when
    several of its rows pick the same slot, the last one wins, as in the sequential algorithm.
    The stream length is a tensor and the random draws are counter-based (``CounterRandom``),
    so pushing never syncs with the host and the sample is the same on every device for the
    same seed. ``push(chunk, random, keep)`` with a 0-dim bool ``keep`` that is false changes
    nothing, neither the rows nor the stream length nor ``random``'s offset (the quantizer
    passes "the batch is finite").
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size <= 0:
            raise ValueError(f"reservoir_size: expected a positive size, got {size}")
        self.size = size
        self.register_buffer("rows", torch.zeros(size, dim))
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64))

    @property
    def filled(self) -> Tensor:
        return self.seen.clamp_max(self.size)

    def clear(self) -> None:
        self.seen.zero_()

    @torch.no_grad()
    def push(self, chunk: Tensor, random: CounterRandom, keep: Tensor | None = None) -> None:
        chunk = chunk.detach().reshape(-1, self.rows.shape[1]).to(self.rows.dtype)
        count = chunk.shape[0]
        if count == 0:
            return
        device = self.rows.device
        keep = torch.ones((), dtype=torch.bool, device=device) if keep is None else keep
        offset = random.offset.clone()
        stream_index = self.seen + torch.arange(count, device=device)
        drawn = (random.uniform(count) * (stream_index + 1)).long()
        slot = torch.where(stream_index < self.size, stream_index, drawn)
        # The last row of the chunk that picked each slot (-1: none); max is order-independent,
        # so the result is deterministic on every device.
        position = torch.arange(count, device=device)
        winner = torch.full((self.size + 1,), -1, dtype=torch.int64, device=device)
        winner.scatter_reduce_(0, slot.clamp_max(self.size), position, "amax")
        winner = winner[: self.size]
        written = chunk[winner.clamp_min(0)]
        self.rows.copy_(torch.where(((winner >= 0) & keep)[:, None], written, self.rows))
        self.seen.add_(count * keep)
        random.offset.copy_(torch.where(keep, random.offset, offset))

    def draw_distinct(self, count: int, random: CounterRandom) -> Tensor:
        """``count`` rows: a random permutation of the filled slots, repeated cyclically when
        ``count`` exceeds them (zeros while empty). Distinct rows for the first ``filled``
        draws, so refilled codes do not start as exact duplicates of each other."""
        keys = random.uniform(self.size)
        slots = torch.arange(self.size, device=self.rows.device)
        # Unfilled slots sort last, so the first `filled` entries permute the filled ones.
        order = torch.argsort(torch.where(slots < self.filled, keys, 2.0))
        picks = torch.arange(count, device=self.rows.device) % self.filled.clamp_min(1)
        return self.rows[order[picks]]
