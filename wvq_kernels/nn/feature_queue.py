"""FIFO queue of recent feature rows whose moments are kept up to date incrementally."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import _trusted as kernels
from ..ops import Moments
from .counter_random import CounterRandom

__all__ = ["FeatureQueue", "remove_moments"]


def _kept(keep: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where the 0-dim bool ``keep`` is true (or absent), else ``old``: a conditional
    update without a host sync."""
    return new if keep is None else torch.where(keep, new, old)


def remove_moments(total: Moments, part: Moments) -> Moments:
    """Moments of ``total``'s rows without ``part``'s (the inverse of ``Moments.merge``):
    with delta = mean_part - mean_rest, Chan's M2_total = M2_rest + M2_part + delta² n_r n_p / n."""
    n_total = total.count.to(torch.float64)
    n_part = part.count.to(torch.float64)
    n_rest = n_total - n_part
    # Clamped so that removing everything gives zeros rather than 0/0.
    rest_divisor = n_rest.clamp_min(1.0)
    mean = (total.mean * n_total - part.mean * n_part) / rest_divisor
    delta = part.mean - mean
    m2 = (
        total.cov * n_total
        - part.cov * n_part
        - torch.outer(delta, delta) * (n_rest * n_part / n_total.clamp_min(1.0))
    )
    return Moments(total.count - part.count, mean, m2 / rest_divisor)


class FeatureQueue(nn.Module):
    """The last ``size`` rows pushed, and their count, mean and population covariance.

    ``push`` writes a chunk over the oldest rows and updates the moments in O(chunk · D²):
    the new chunk is merged in (Chan) and the overwritten rows are removed with the inverse
    merge, so the moments of a 65,536-row queue are never recomputed from scratch. The write
    position and fill level are tensors, so pushing never syncs with the host and never
    changes a Python value that ``torch.compile`` would guard on. ``push(chunk, keep)`` with a
    0-dim bool ``keep`` that is false changes nothing (the quantizer passes "the batch is
    finite"), still without a sync.
    """

    def __init__(self, size: int, dim: int, *, backend: str = "auto"):
        super().__init__()
        if size <= 0:
            raise ValueError(f"feature_queue_size: expected a positive size, got {size}")
        self.size = size
        self.backend = backend
        # Slots that were never written stay zero: push relies on it to discount them.
        self.register_buffer("rows", torch.zeros(size, dim))
        self.register_buffer("position", torch.zeros((), dtype=torch.int64))
        self.register_buffer("filled", torch.zeros((), dtype=torch.int64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("cov", torch.zeros(dim, dim, dtype=torch.float64))

    def moments(self) -> Moments:
        return Moments(self.count, self.mean, self.cov)

    @torch.no_grad()
    def push(self, chunk: Tensor, keep: Tensor | None = None) -> None:
        chunk = chunk.detach().reshape(-1, self.rows.shape[1]).to(self.rows.dtype)
        if chunk.shape[0] == 0:
            return
        if chunk.shape[0] >= self.size:
            self._reset_to(chunk[-self.size :], keep)
            return
        slots = (self.position + torch.arange(chunk.shape[0], device=chunk.device)) % self.size
        evicted = self._moments_of_written(slots)
        kept = remove_moments(self.moments(), evicted)
        updated = kept.merge(kernels.moments(chunk, backend=self.backend))
        self.rows.index_copy_(0, slots, _kept(keep, chunk, self.rows[slots]))
        self._store(updated, keep)
        self.position.copy_(
            _kept(keep, (self.position + chunk.shape[0]) % self.size, self.position)
        )
        self.filled.copy_(
            _kept(keep, (self.filled + chunk.shape[0]).clamp_max(self.size), self.filled)
        )

    def sample(self, count: int, random: CounterRandom) -> Tensor:
        """``count`` rows drawn uniformly (with replacement) from the filled part; zeros while
        the queue is empty."""
        slots = (random.uniform(count) * self.filled).long().clamp_max(self.size - 1)
        return self.rows[slots]

    def _moments_of_written(self, slots: Tensor) -> Moments:
        # Slots at or past the fill level were never written: they hold zeros, which are
        # removed again as a block of zero rows.
        gathered = kernels.moments(self.rows[slots], backend=self.backend)
        unwritten = (slots >= self.filled).sum()
        dim = self.rows.shape[1]
        zeros = Moments(unwritten, self.mean.new_zeros(dim), self.cov.new_zeros(dim, dim))
        return remove_moments(gathered, zeros)

    def _reset_to(self, rows: Tensor, keep: Tensor | None) -> None:
        self.rows.copy_(_kept(keep, rows, self.rows))
        self._store(kernels.moments(rows, backend=self.backend), keep)
        self.position.copy_(_kept(keep, torch.zeros_like(self.position), self.position))
        self.filled.copy_(_kept(keep, torch.full_like(self.filled, self.size), self.filled))

    def _store(self, stats: Moments, keep: Tensor | None) -> None:
        self.count.copy_(_kept(keep, stats.count, self.count))
        self.mean.copy_(_kept(keep, stats.mean, self.mean))
        # Symmetrised so that rounding in the inverse merge cannot make it drift asymmetric.
        self.cov.copy_(_kept(keep, (stats.cov + stats.cov.T) / 2, self.cov))
