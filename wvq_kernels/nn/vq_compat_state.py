"""The codebook state of the ``VectorQuantize`` swap-in beyond its core quantizers' own:
k-means on the first forward, the EMA steps the core quantizer does not take (per-code
weights, accumulation, sampled codes, another Laplace eps, manual refresh) with their dead-code
refills, and the affine codebook statistics (``affine_param``)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .. import _trusted as kernels
from .. import distributed
from ..kmeans import kmeans
from .quantizer import VectorQuantizer, finite_flag

__all__ = ["CodebookState"]

# Floor of the affine standard deviations (the peer's).
AFFINE_VARIANCE_FLOOR = 1e-5


class CodebookState:
    """Methods of ``VectorQuantize`` on its codebook state, kept apart from the layouts,
    estimators and losses. The host module provides ``quantizers`` (one core
    ``VectorQuantizer`` per codebook), ``initted``, ``_pending``, the affine buffers and the
    options they read (``decay``, ``eps``, ``kmeans_iters``, ``sync_codebook``, ...)."""

    @torch.no_grad()
    def _kmeans_init(self, rows: list[Tensor]) -> None:
        """k-means on each codebook's rows of the first forward, training or not (as the peer);
        under torch.distributed on every rank's rows when the codebook and k-means sync."""
        synchronised = self._kmeans_syncs() and distributed.is_distributed()
        # Created by every rank alike (a collective), before any rank may return.
        group = None if self._kmeans_syncs() else _own_rank_group()
        # A rank without rows still takes part in a synchronised fit; alone, it waits for rows.
        if not synchronised and any(r.shape[0] == 0 for r in rows):
            return
        for quantizer, part in zip(self.quantizers, rows):
            features = self._normalize(part.detach().float())
            fitted = kmeans(
                features,
                self.codebook_size,
                self.kmeans_iters,
                # One fixed seed, the core quantizer's: every rank must draw alike.
                seed=0,
                process_group=group,
                backend=self.backend,
            )
            fitted = self._normalize(fitted.to(features.device))
            quantizer.embedding.copy_(fitted)
            if quantizer.ema:
                quantizer.embed_sum.copy_(fitted * quantizer.cluster_size[:, None])
        self.initted.fill_(True)

    def _kmeans_syncs(self) -> bool:
        return self.sync_kmeans and self.sync_codebook is not False

    def _syncs(self) -> bool:
        return self.sync_codebook is not False and distributed.is_distributed()

    @torch.no_grad()
    def _ema_step(self, index: int, features: Tensor, indices: Tensor, weight, accumulate: bool):
        """The peer's EMA step with per-code weights (``ema_update_weight``), accumulation over
        forwards (``accum_ema_update``), its ``eps`` and ``manual_ema_update``, then the
        dead-code refills. A codebook without EMA tracks only its cluster sizes (for those)."""
        quantizer = self.quantizers[index]
        if not quantizer.ema and quantizer.dead_code_threshold <= 0:
            return
        if self.affine_param:
            features = self._affine_features(index, features)
        counts, sums = self._batch_sums(index, features, indices, accumulate)
        if accumulate:
            return
        rate = (1 - self.decay) * self._ema_weight(index, weight, sums, counts)
        finite = finite_flag(sums)
        _lerp_where(finite, quantizer.cluster_size, counts, rate)
        if quantizer.ema:
            _lerp_where(finite, quantizer.embed_sum, sums, rate[:, None])
            if not self.manual_ema_update:
                self._refresh_codebook(quantizer)
        if quantizer.dead_code_threshold > 0:
            self._replace_dead_codes(quantizer, features, finite)

    def _batch_sums(
        self, index: int, features: Tensor, indices: Tensor, accumulate: bool
    ) -> tuple[Tensor, Tensor]:
        """This batch's counts and sums per code (all ranks' when synchronised), plus those
        accumulated since the last step; with ``accumulate`` they are kept for the next one."""
        counts, sums = kernels.code_sums(
            indices, features, self.codebook_size, backend=self.backend
        )
        if self._syncs():
            counts = distributed.all_reduce_histogram(counts)
            sums = distributed.all_reduce_code_sums(sums)
        counts = counts.float()
        if self._pending[index] is not None:
            pending_counts, pending_sums = self._pending[index]
            counts, sums = counts + pending_counts, sums + pending_sums
        self._pending[index] = (counts, sums) if accumulate else None
        return counts, sums

    def _replace_dead_codes(
        self, quantizer: VectorQuantizer, features: Tensor, finite: Tensor
    ) -> None:
        """The core quantizer's rule, on this path: codes whose EMA usage fell below the
        threshold move to rows drawn from its queue of recent features (every rank's when
        synchronised, so that every rank draws the same) and restart as average codes."""
        rows = distributed.all_gather_rows(features) if self._syncs() else features
        quantizer.queue.push(rows, finite)
        threshold = quantizer.dead_code_threshold
        dead = (quantizer.cluster_size < threshold) & (quantizer.queue.filled > 0) & finite
        candidates = quantizer.queue.sample(self.codebook_size, quantizer.generator)
        candidates = candidates.to(quantizer.embedding.dtype)
        quantizer.embedding.copy_(torch.where(dead[:, None], candidates, quantizer.embedding))
        restart = quantizer.cluster_size.mean().clamp_min(threshold)
        quantizer.cluster_size.copy_(torch.where(dead, restart, quantizer.cluster_size))
        if quantizer.ema:
            restarted = quantizer.embedding * quantizer.cluster_size[:, None]
            quantizer.embed_sum.copy_(torch.where(dead[:, None], restarted, quantizer.embed_sum))

    def _ema_weight(self, index: int, weight, sums: Tensor, counts: Tensor) -> Tensor:
        if weight is None:
            return counts.new_ones(self.codebook_size)
        if callable(weight):
            # The peer's callable sees (codebooks, K, d) sums and (codebooks, K) counts.
            weight = weight(sums[None], counts[None])
        weight = torch.as_tensor(weight, dtype=torch.float32, device=counts.device)
        return weight[index] if weight.ndim == 2 else weight.expand(self.codebook_size)

    def _refresh_codebook(self, quantizer: VectorQuantizer) -> None:
        """codes = EMA sums / Laplace-smoothed EMA counts, with this module's ``eps``."""
        sizes = quantizer.cluster_size
        total = sizes.sum()
        smoothed = (sizes + self.eps) / (total + self.codebook_size * self.eps) * total
        quantizer.embedding.copy_(quantizer.embed_sum / smoothed[:, None])

    # affine codebook (affine_param)

    @torch.no_grad()
    def _update_affine(self, index: int, features: Tensor, codes: Tensor) -> None:
        # As the peer: the codebook's statistics in training only, the batch's in every forward.
        if self.training:
            mean, variance = codes.mean(0), codes.var(0, unbiased=False)
            self._decayed("codebook", index, mean, variance, self.affine_param_codebook_decay)
        if self.sync_affine_param and distributed.is_distributed():
            # The mean and (population) variance of every rank's rows, merged exactly.
            stats = distributed.all_gather_moments(kernels.moments(features, backend=self.backend))
            mean, variance = stats.mean.float(), torch.diagonal(stats.cov).float()
            self._decayed("batch", index, mean, variance, self.affine_param_batch_decay)
        elif features.shape[0]:
            mean, variance = features.mean(0), features.var(0, unbiased=False)
            self._decayed("batch", index, mean, variance, self.affine_param_batch_decay)

    def _decayed(self, kind: str, index: int, mean: Tensor, variance: Tensor, decay: float):
        """``old·decay + new·(1 − decay)``, or ``new`` on the first update (as the peer)."""
        needs_init = getattr(self, kind + "_stats_needs_init")
        keep = torch.where(needs_init, 0.0, decay)
        for name, new in (("_mean", mean), ("_variance", variance)):
            old = getattr(self, kind + name)[index]
            old.copy_(torch.lerp(new.reshape(old.shape), old, keep))
        if index == len(self.quantizers) - 1:
            needs_init.fill_(False)

    def _affine_scale(self, index: int) -> Tensor:
        """batch std / codebook std, per dimension."""
        batch = self.batch_variance[index].clamp_min(AFFINE_VARIANCE_FLOOR).sqrt()
        codebook = self.codebook_variance[index].clamp_min(AFFINE_VARIANCE_FLOOR).sqrt()
        return batch / codebook

    def _affine_codes(self, index: int, codes: Tensor) -> Tensor:
        """The codes moved to the batch's mean and scale."""
        scale = self._affine_scale(index)
        return (codes - self.codebook_mean[index]) * scale + self.batch_mean[index]

    def _affine_features(self, index: int, features: Tensor) -> Tensor:
        """Features moved to the codebook's mean and scale, where the EMA sums live."""
        scale = self._affine_scale(index)
        return (features - self.batch_mean[index]) / scale + self.codebook_mean[index]


def _lerp_where(finite: Tensor, state: Tensor, target: Tensor, rate: Tensor) -> None:
    """``state += rate·(target − state)`` in place, unless the batch was not finite."""
    torch.where(finite, torch.lerp(state, target, rate), state, out=state)


def _own_rank_group():
    """None outside torch.distributed; inside, a group of this rank alone, so that k-means
    fits this rank's rows only (``sync_kmeans=False``). Every rank takes part in creating
    every group, as torch.distributed requires."""
    if not distributed.is_distributed():
        return None
    groups = [dist.new_group([rank]) for rank in range(dist.get_world_size())]
    return groups[dist.get_rank()]
