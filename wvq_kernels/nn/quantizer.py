"""VectorQuantizer: vanilla, Wasserstein (W-VQ), EMA and SimVQ codebooks on the fused ops."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _trusted as kernels
from .. import _validation as check
from .. import distributed
from ..kmeans import kmeans
from ..losses import gaussian_w2
from ..ops import Assignment
from .counter_random import CounterRandom, counter_uniform
from .feature_queue import FeatureQueue
from .gather import gather_codes
from .reservoir import FeatureReservoir

__all__ = ["QuantizerOutput", "VectorQuantizer", "finite_flag", "nsvq_tau"]

DISTRIBUTION_LOSSES = (None, "wasserstein")
CODEBOOK_LOSSES = ("nearest", "dense")
METRICS = ("l2", "cosine")
# Reference VQ-VAE path of Wasserstein VQ: codes start near the origin, N(0, 0.01²).
INIT_STD = 0.01
LAPLACE_EPS = 1e-5
KMEANS_ITERS = 10
HALF_DTYPES = (torch.bfloat16, torch.float16)


class QuantizerOutput(NamedTuple):
    """What ``VectorQuantizer.forward`` returns.

    quantized: ``z.shape``; ``z.dtype``, or autocast's dtype under ``torch.autocast``, as a
      linear layer's output; straight-through ``z + sg(z_q - z)`` (after the output projection
      when ``codebook_dim != dim``).
    indices: int64 ``z.shape[:-1]``.
    loss: float32 0-dim; the quantizer's whole loss (add it to the reconstruction loss).
    stats: dict of float32 0-dim tensors on z's device, computed without a host sync:
      ``quantization_error`` (mean over tokens of the squared L2 distance, summed over the
      codebook dimensions), ``utilization`` and ``perplexity`` of this batch,
      ``running_utilization`` (codes used by the forwards since the last ``reset_usage()``,
      training or not), ``wasserstein``
      (W between feature and codebook Gaussians; 0 when not computed), ``commitment`` and
      ``codebook`` (the two loss terms, unweighted), ``skipped_nonfinite`` (training batches
      skipped so far for non-finite features), ``row_entropy`` and ``code_entropy`` (the
      entropy terms; 0 without ``entropy_weight``).
    """

    quantized: Tensor
    indices: Tensor
    loss: Tensor
    stats: dict[str, Tensor]


class VectorQuantizer(nn.Module):
    """Nearest-code quantizer of ``(..., dim)`` features with a ``codebook_size``-code codebook.

    Loss (mean over elements): ``alpha·‖z_q − sg(z)‖² + beta·‖sg(z_q) − z‖² + gamma·W``, the last
    term only with ``distribution_loss="wasserstein"``: W is the closed-form 2-Wasserstein
    distance between the Gaussian of the features (from a FIFO queue of the last
    ``feature_queue_size`` rows, detached, covariance scaled by ``target_cov_scale``) and the
    Gaussian of the codebook, both divided by the detached largest per-dimension feature std.
    ``ema=True`` updates the codebook by exponential moving averages (no codebook term, no
    gradient to the codes); ``linear_reparam=True`` is SimVQ: frozen codes C ~ N(0, 1/d) and a
    learned map, codes = C Wᵀ + b. ``dead_code_threshold > 0`` refills codes whose EMA usage
    (tokens per step, decayed by ``decay``) falls below it with recent features.
    ``kmeans_init`` fits the codebook to the first training batch. ``metric="cosine"``
    quantizes l2-normalised features with l2-normalised codes.

    Beyond the nearest code: ``sample_temperature > 0`` draws each training row's code from
    softmax(−‖z − e‖² / sample_temperature) over all K codes instead (an exact Gumbel-max draw
    inside the fused scan, keyed by the module's counter stream so that it resumes with the
    state; evaluation stays nearest-code; each step reads one number of that stream on the
    host). ``entropy_weight > 0`` adds the LFQ / MAGVIT-2 entropy regulariser
    ``entropy_weight·(H̄(p_i) − diversity_weight·H(p̄))`` of the soft assignments
    p_i = softmax(−d(z_i, ·) / entropy_tau): confident rows, but a batch spread over the codes
    (p̄ over every rank's rows when synchronised), differentiable in the features and a
    learned codebook, no N×K tensor.

    NSVQ: ``codebook_loss="dense"`` replaces the codebook term by the dense non-stationary
    embedding loss, which pulls every code toward nearby features with weights
    min(1, lam·K·softmax(−d/tau)) (1 for the winner; ``tau`` may be changed between steps, as a
    schedule). ``reservoir_size > 0`` keeps a uniform reservoir sample of the features seen since
    the last ``refill_dead_codes(threshold)``, which refills codes whose EMA usage fell below
    ``threshold`` with distinct reservoir rows and returns how many it refilled.

    The codebook is ``codebook_parameters()`` (train it with its own, larger learning rate, as
    the W-VQ reference does; with ``distribution_loss="wasserstein"`` by SGD with momentum, not
    Adam: W moves every code by one affine map, which SGD keeps and Adam's per-coordinate
    scaling breaks, leaving unused codes behind; ``wvq_kernels.vqvae.config.codebook_optimizer``
    has the settings `wvq train` uses); ``reset_usage()`` restarts the running usage counters.

    Non-finite input: a forward whose features (after ``project_in``) hold a NaN or an Inf
    changes no state: codebook, EMA buffers, cluster sizes, usage counters, feature queue,
    reservoir and random stream keep their values (every update is gated on one 0-dim "all
    finite" flag, by ``torch.where`` or by zeroed counts, so there is no host sync), its loss is
    non-finite so the caller sees it (and should skip the optimizer step), and in training the
    int64 buffer ``skipped_nonfinite`` counts it. Training continues as if the batch had never
    been seen. The one exception is ``kmeans_init``: k-means syncs with the host anyway, so a
    non-finite first batch simply leaves the fit to the first finite one.

    Mixed precision: under ``torch.autocast`` (bf16 or fp16) or with half-precision features,
    the assignment runs on features and codes rounded to that dtype (``precision="auto"``: the
    bf16 kernels for bf16), and ``quantized`` comes back in it. Everything else (losses, W,
    k-means, refills) is computed in float32 from the module's own parameters, autocast off, as
    the statistics need it. After ``module.to(torch.bfloat16)`` or ``.half()`` the learned
    parameters (codebook, projections, SimVQ map and its frozen codes) take that dtype, but the
    statistics buffers keep theirs: the EMA ``cluster_size``, ``embed_sum`` and EMA codebook,
    the feature queue and the reservoir stay float32 (and counters int64), so an EMA average or
    a queue's moments do not lose their precision to a cast.

    Many processes (``torch.distributed``): ``sync_stats=None`` (default) synchronises the
    training statistics over ``process_group`` (None: the world group) whenever it has more
    than one member; ``False`` keeps them per process. Synchronised, every training forward
    all-reduces the EMA counts and sums (the histogram exactly, the sums in rank order), so
    ``cluster_size``, ``usage_counts`` and the EMA codebook follow the global batch; feeds the
    feature queue and the reservoir with every rank's rows in rank order (W's feature moments
    and the dead-code refills are the global stream's, drawn alike on every rank); and skips
    the batch on every rank if any rank's is non-finite (the loss is non-finite only on that
    rank). Every rank then holds bitwise the same
    codebook and buffers, up to float summation order those of one process on the concatenated
    batch, provided the learned codebook gets the same (averaged) gradients, as under DDP.
    Every rank must run the same number of training forwards. ``kmeans_init`` fits the union
    of the ranks' first batches whenever torch.distributed is initialised (also with
    ``sync_stats=False``). Evaluation forwards never communicate, so one rank may evaluate
    alone; their ``usage_counts`` and the per-batch ``utilization`` and ``perplexity`` are
    the rank's own.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        codebook_dim: int | None = None,
        distribution_loss: str | None = None,
        gamma: float = 0.5,
        alpha: float = 1.0,
        beta: float = 0.1,
        ema: bool = False,
        decay: float = 0.99,
        linear_reparam: bool = False,
        dead_code_threshold: float = 0,
        feature_queue_size: int = 65536,
        target_cov_scale: float = 1.0,
        metric: str = "l2",
        backend: str = "auto",
        kmeans_init: bool = False,
        codebook_loss: str = "nearest",
        tau: float = 1.0,
        lam: float = 0.01,
        reservoir_size: int = 0,
        sync_stats: bool | None = None,
        process_group=None,
        sample_temperature: float = 0.0,
        entropy_weight: float = 0.0,
        entropy_tau: float = 1.0,
        diversity_weight: float = 1.0,
    ):
        super().__init__()
        dim = check.check_count("dim", dim, 1)
        codebook_size = check.check_count("codebook_size", codebook_size, 1)
        if codebook_dim is not None:
            codebook_dim = check.check_count("codebook_dim", codebook_dim, 1)
        tau = check.check_real("tau", tau, 0.0, inclusive=False)
        sample_temperature = check.check_real(
            "sample_temperature", sample_temperature, 0.0, inclusive=True
        )
        entropy_weight = check.check_real("entropy_weight", entropy_weight, 0.0, inclusive=True)
        entropy_tau = check.check_real("entropy_tau", entropy_tau, 0.0, inclusive=False)
        diversity_weight = check.check_real(
            "diversity_weight", diversity_weight, 0.0, inclusive=True
        )
        if sample_temperature > 0 and codebook_loss == "dense":
            raise ValueError(
                "sample_temperature > 0 with codebook_loss='dense': the dense loss chooses its "
                "codes by its own softmax (tau)"
            )
        _check_options(distribution_loss, metric, ema, linear_reparam, dead_code_threshold)
        _check_nsvq_options(codebook_loss, ema, linear_reparam, reservoir_size)
        codebook_dim = codebook_dim or dim
        self.dim, self.codebook_size, self.codebook_dim = dim, codebook_size, codebook_dim
        self.distribution_loss, self.metric, self.backend = distribution_loss, metric, backend
        self.gamma, self.alpha, self.beta = gamma, alpha, beta
        self.ema, self.decay, self.linear_reparam = ema, decay, linear_reparam
        self.dead_code_threshold, self.target_cov_scale = dead_code_threshold, target_cov_scale
        self.codebook_loss, self.tau, self.lam = codebook_loss, tau, lam
        self.sample_temperature = sample_temperature
        self.entropy_weight, self.entropy_tau = entropy_weight, entropy_tau
        self.diversity_weight = diversity_weight
        self.initialized = not kmeans_init
        self.sync_stats, self.process_group = sync_stats, process_group
        self.project_in = nn.Linear(dim, codebook_dim) if codebook_dim != dim else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if codebook_dim != dim else nn.Identity()
        self._init_codebook()
        # EMA token count per code and step: the EMA codebook's cluster sizes, and the usage
        # that dead-code replacement looks at. Ones, so that unused codes neither divide by ~0
        # nor all count as dead on the first step; zeros with a reservoir, whose refills come at
        # epoch ends, so that a code nobody used in the first epoch already counts as dead.
        initial_usage = 0.0 if reservoir_size and not ema else 1.0
        self.register_buffer("cluster_size", torch.full((codebook_size,), initial_usage))
        self.register_buffer("usage_counts", torch.zeros(codebook_size, dtype=torch.int64))
        self.register_buffer("skipped_nonfinite", torch.zeros((), dtype=torch.int64))
        needs_queue = distribution_loss is not None or dead_code_threshold > 0
        self.queue = (
            FeatureQueue(feature_queue_size, codebook_dim, backend=backend) if needs_queue else None
        )
        self.reservoir = FeatureReservoir(reservoir_size, codebook_dim) if reservoir_size else None
        # Seeded from the global generator, so torch.manual_seed before construction fixes the
        # dead-code draws as it fixes the initial codebook.
        self.generator = CounterRandom(int(torch.randint(2**62, ()).item()))

    def _init_codebook(self) -> None:
        size, dim = self.codebook_size, self.codebook_dim
        if self.linear_reparam:
            self.register_buffer("frozen_codes", torch.randn(size, dim) / math.sqrt(dim))
            # Identity start: the codes begin as the frozen ones.
            self.code_map = nn.Linear(dim, dim)
            nn.init.eye_(self.code_map.weight)
            nn.init.zeros_(self.code_map.bias)
        elif self.ema:
            self.register_buffer("embedding", torch.randn(size, dim) * INIT_STD)
            self.register_buffer("embed_sum", self.embedding.clone())
        else:
            self.embedding = nn.Parameter(torch.randn(size, dim) * INIT_STD)

    def codebook_parameters(self) -> list[nn.Parameter]:
        if self.linear_reparam:
            return list(self.code_map.parameters())
        return [self.embedding] if isinstance(self.embedding, nn.Parameter) else []

    def codes(self) -> Tensor:
        """The codebook (K, codebook_dim), differentiable in the learned parameters."""
        if self.linear_reparam:
            return self.code_map(self.frozen_codes)
        return self.embedding

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """The quantized vectors (``indices.shape + (dim,)``) of code indices: the learned map
        (SimVQ) and the output projection applied, as in ``forward``'s ``quantized``."""
        codes = self._normalize(self.codes().float())[indices]
        return _in_parameter_dtype(self.project_out, codes).to(self._parameter_dtype())

    def reset_usage(self) -> None:
        self.usage_counts.zero_()

    def forward(self, z: Tensor) -> QuantizerOutput:
        if z.shape[-1] != self.dim:
            raise ValueError(f"z: expected last dimension {self.dim}, got {tuple(z.shape)}")
        if not z.is_floating_point():
            raise TypeError(f"z: expected a floating-point dtype, got {z.dtype}")
        # tau may be changed between steps (a schedule), so it is checked here, before the
        # reservoir or any other state is touched.
        if self.codebook_loss == "dense":
            check.check_real("tau", self.tau, 0.0, inclusive=False)
        with torch.autocast(z.device.type, enabled=False):
            out = self._quantize(z, _working_dtype(z))
        return out._replace(quantized=out.quantized.to(_output_dtype(z)))

    def _quantize(self, z: Tensor, working: torch.dtype) -> QuantizerOutput:
        """forward in float32, but the assignment, on features and codes rounded to
        ``working``."""
        features = self._normalize(_in_parameter_dtype(self.project_in, z))
        sync = self.training and self._syncs()
        finite = self._prepare_step(features, self.training, sync)
        codes = self._normalize(self.codes().float())
        result, codebook_term = self._assign(features, codes, working, finite)
        quantized_codes = gather_codes(codes, result.indices, self.backend)
        commitment = F.mse_loss(features, quantized_codes.detach())
        if codebook_term is None:
            codebook_term = self._codebook_term(features, quantized_codes, commitment)
        wasserstein = self._wasserstein(features, codes)
        row_entropy, code_entropy = self._entropies(features, codes, sync)
        loss = self.beta * commitment
        if not self.ema:
            loss = loss + self.alpha * codebook_term
        if self.distribution_loss is not None:
            loss = loss + self.gamma * wasserstein
        if self.entropy_weight > 0:
            loss = loss + self.entropy_weight * (row_entropy - self.diversity_weight * code_entropy)
        self._record_step(features, result, finite, self.training, sync)
        straight_through = features + (quantized_codes - features).detach()
        quantized = _in_parameter_dtype(self.project_out, straight_through)
        stats = self._stats(result, commitment, codebook_term, wasserstein)
        stats.update(row_entropy=row_entropy.detach(), code_entropy=code_entropy.detach())
        return QuantizerOutput(quantized, result.indices, loss.float(), stats)

    def assign_and_update(self, z: Tensor, update: bool) -> Tensor:
        """The indices forward chooses for ``z`` and, with ``update``, its training-state
        updates (EMA step, refills, queue, counters; synchronised as in training), without
        the losses, the output or the statistics: for the ``VectorQuantize`` swap-in, which
        makes its own from the indices."""
        working = _working_dtype(z)
        with torch.autocast(z.device.type, enabled=False):
            features = self._normalize(_in_parameter_dtype(self.project_in, z))
            sync = update and self._syncs()
            finite = self._prepare_step(features, update, sync)
            codes = self._normalize(self.codes().float())
            result, _ = self._assign(features, codes, working, finite)
            self._record_step(features, result, finite, update, sync)
        return result.indices

    def _prepare_step(self, features: Tensor, training: bool, sync: bool) -> Tensor:
        """The 0-dim "all finite" flag (never read on the host: every state update is gated
        on it); in training, k-means on the first batch and the feature stream fed."""
        finite = self._all_finite(finite_flag(features), sync)
        # k-means validates (and so syncs on) its input anyway; a non-finite first batch leaves
        # the fit to the first finite one.
        if training and not self.initialized and bool(finite):
            self._kmeans_init(features)
        if training:
            self._push_stream(features, finite, sync)
        return finite

    def _record_step(
        self, features: Tensor, result: Assignment, finite: Tensor, training: bool, sync: bool
    ) -> None:
        counts = self._global(distributed.all_reduce_histogram, result.counts, sync)
        # A skipped batch counts no token.
        counts = counts * finite
        # Counted in eval mode too: reset_usage() then an evaluation pass gives its utilization.
        self.usage_counts.add_(counts)
        if training:
            self._update_codebook_state(features, result.indices, counts, finite, sync)
            self.skipped_nonfinite.add_(~finite)

    def _syncs(self) -> bool:
        return self.sync_stats is not False and distributed.is_distributed(self.process_group)

    def _global(self, collective, value: Tensor, sync: bool) -> Tensor:
        """``collective(value)`` over the quantizer's group when this forward synchronises."""
        return collective(value, self.process_group) if sync else value

    def _all_finite(self, finite: Tensor, sync: bool) -> Tensor:
        if not sync:
            return finite
        # One rank's non-finite batch must stop every rank's update, or their states part. The
        # flag is summed as a count of non-finite ranks, never read on the host.
        bad = distributed.all_reduce_histogram((~finite).long().reshape(1), self.process_group)
        return bad[0] == 0

    def _push_stream(self, features: Tensor, finite: Tensor, sync: bool) -> None:
        """Feeds the queue and the reservoir; synchronised, with every rank's rows in rank
        order, so both hold the global stream and draw the same refills on every rank."""
        if self.queue is None and self.reservoir is None:
            return
        rows = features.detach().reshape(-1, self.codebook_dim)
        rows = self._global(distributed.all_gather_rows, rows, sync)
        if self.queue is not None:
            self.queue.push(rows, finite)
        if self.reservoir is not None:
            self.reservoir.push(rows, self.generator, finite)

    def _assign(
        self, features: Tensor, codes: Tensor, working: torch.dtype, finite: Tensor
    ) -> tuple[Assignment, Tensor | None]:
        """The nearest codes (in training with ``sample_temperature``, drawn ones), with their
        histogram, and, for the dense loss, its unweighted codebook term (None otherwise); the
        kernels see features and codes rounded to ``working``."""
        # The trusted path: no finiteness check, which would sync with the host every step
        # (a non-finite z shows anyway, as a non-finite loss).
        rows = features.detach().to(working)
        if self.codebook_loss == "dense":
            # The dense loss is differentiable in the codes; the rounding passes the gradient
            # back to the float32 codes.
            dense = kernels.soft_assign_stats(
                rows, codes.to(working), tau=self.tau, lam=self.lam, backend=self.backend
            )
            counts = kernels.code_histogram(dense.indices, self.codebook_size, backend=self.backend)
            return Assignment(dense.indices, dense.distances, counts), dense.loss
        if self.training and self.sample_temperature > 0:
            return self._sample(rows, codes.detach().to(working), finite), None
        result = kernels.assign(
            rows, codes.detach().to(working), histogram=True, backend=self.backend
        )
        return result, None

    def _sample(self, rows: Tensor, codes: Tensor, finite: Tensor) -> Assignment:
        """One draw per row from softmax(-||z - e||^2 / sample_temperature) (Gumbel-max in the
        fused scan, no N x K tensor), with its histogram.

        The kernel's randomness is keyed by (seed, row, code); the seed is the next number of
        the module's counter stream, so draws follow the state (and resume with it), and a
        skipped non-finite batch does not advance it. Reading that number is the one host
        read of a sampling step. Every rank holds the same stream, so each rank's rank number
        goes into its seed: ranks' rows get independent draws."""
        draw = counter_uniform(self.generator.seed, self.generator.offset)
        self.generator.offset.add_(finite.long())
        seed = int(draw * 2**53) + (distributed.rank(self.process_group) << 53)
        sample = kernels.sample_codes(
            rows, codes, self.sample_temperature, seed=seed, backend=self.backend
        )
        counts = kernels.code_histogram(sample.indices, self.codebook_size, backend=self.backend)
        return Assignment(sample.indices, sample.distances, counts)

    def _entropies(self, features: Tensor, codes: Tensor, sync: bool) -> tuple[Tensor, Tensor]:
        """With ``entropy_weight``: the mean entropy of the rows' soft assignments
        softmax(-d / entropy_tau) and the entropy of their batch average (over every rank's
        rows when synchronised), differentiable in the features and a learned codebook; zeros
        otherwise."""
        if self.entropy_weight == 0:
            zero = features.new_zeros(())
            return zero, zero
        if not codes.requires_grad:
            # An EMA codebook moves in place later in this forward; the backward needs these.
            codes = codes.clone()
        terms = kernels.soft_assign_entropy(
            features, codes, tau=self.entropy_tau, metric=self.metric, backend=self.backend
        )
        if not sync:
            return terms.row_entropy, terms.code_entropy
        # p-bar of the global batch: the ranks' averages weighted by their rows.
        local_rows = features.new_tensor([features.numel() // self.codebook_dim], dtype=torch.int64)
        total_rows = distributed.all_reduce_histogram(local_rows, self.process_group)
        weighted = terms.code_distribution * local_rows
        average = distributed.all_reduce_sum(weighted, self.process_group) / total_rows
        return terms.row_entropy, kernels.distribution_entropy(average)

    def _codebook_term(self, features: Tensor, quantized_codes: Tensor, commitment: Tensor):
        """‖z_q − sg(z)‖²: the commitment's value, but with the gradient to the codes; an EMA
        codebook takes no gradient, so its (reported) term is the commitment's value."""
        if self.ema:
            return commitment.detach()
        return F.mse_loss(quantized_codes, features.detach())

    def _normalize(self, vectors: Tensor) -> Tensor:
        return F.normalize(vectors, dim=-1) if self.metric == "cosine" else vectors

    def _wasserstein(self, features: Tensor, codes: Tensor) -> Tensor:
        if self.distribution_loss is None:
            return features.new_zeros(())
        # Training: the queue, which forward has just pushed this batch into. Evaluation: the
        # batch alone, so that evaluating never depends on (or changes) the training queue.
        if self.training:
            feature_stats = self.queue.moments()
        else:
            feature_stats = kernels.moments(features.detach(), backend=self.backend)
        feature_cov = _sample_cov(feature_stats)
        # Scale-free re-weighting: divide by the (detached) largest per-dimension feature std.
        # Features without spread (one row, or identical rows) give no scale: use 1, rather
        # than a ~0 floor whose inverse would blow the loss and its gradient up.
        variance = torch.diagonal(feature_cov).max()
        scale = torch.where(variance > 0, variance, 1.0).sqrt()
        code_stats = kernels.moments(codes / scale.to(codes.dtype), backend=self.backend)
        distance = gaussian_w2(
            feature_stats.mean / scale,
            self.target_cov_scale * feature_cov / scale.square(),
            code_stats.mean,
            _sample_cov(code_stats),
        )
        return distance.float()

    @torch.no_grad()
    def _update_codebook_state(
        self, features: Tensor, indices: Tensor, counts: Tensor, finite: Tensor, sync: bool
    ) -> None:
        # No host sync: each table's new value is written through one torch.where on the 0-dim
        # "all finite" flag (or, for the sizes, a decay of 1 and zero counts), so a non-finite batch
        # leaves every table as it was. Each elementwise pass over a (K, D) table costs a
        # parallel region, so the passes are kept few (no clones, no separate restores).
        if self.ema:
            _, sums = kernels.code_sums(indices, features, self.codebook_size, backend=self.backend)
            sums = self._global(distributed.all_reduce_code_sums, sums, sync)
            torch.where(
                finite,
                self.embed_sum.lerp(sums, 1 - self.decay),
                self.embed_sum,
                out=self.embed_sum,
            )
        # counts is the histogram of indices (all ranks' when synchronised), zeros for a skipped
        # batch, whose sizes a decay of 1 then keeps.
        self.cluster_size.mul_(torch.where(finite, self.decay, 1.0))
        self.cluster_size.add_(counts, alpha=1 - self.decay)
        if self.ema:
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + LAPLACE_EPS) * (
                total / (total + self.codebook_size * LAPLACE_EPS)
            )
            torch.where(
                finite, self.embed_sum / smoothed[:, None], self.embedding, out=self.embedding
            )
        if self.dead_code_threshold > 0:
            self._unless_nonfinite(finite, self._replace_dead_codes)

    def _unless_nonfinite(self, finite: Tensor, update) -> None:
        """Runs ``update()`` (which may move any codebook table and the random stream), then
        puts the old values back if the batch was not finite."""
        state = [self.cluster_size, self.embedding, self.generator.offset]
        if self.ema:
            state.append(self.embed_sum)
        before = [tensor.clone() for tensor in state]
        update()
        for tensor, old in zip(state, before):
            torch.where(finite, tensor, old, out=tensor)

    @torch.no_grad()
    def _replace_dead_codes(self) -> None:
        dead = (self.cluster_size < self.dead_code_threshold) & (self.queue.filled > 0)
        candidates = self.queue.sample(self.codebook_size, self.generator)
        self._refill(dead, candidates, self.dead_code_threshold)

    @torch.no_grad()
    def refill_dead_codes(self, threshold: float) -> Tensor:
        """Refill every code whose EMA usage (tokens per step) is below ``threshold`` with a
        distinct row of the reservoir, then empty the reservoir, so that the next refill draws
        from the features seen after this one. Returns the number refilled (int64 0-dim)."""
        if self.reservoir is None:
            raise ValueError(
                "refill_dead_codes: the quantizer has no reservoir; "
                "construct it with reservoir_size > 0"
            )
        dead = (self.cluster_size < threshold) & (self.reservoir.filled > 0)
        # Dead code j takes the j-th row of one random permutation of the reservoir.
        rank = (torch.cumsum(dead, 0) - 1).clamp_min(0)
        candidates = self.reservoir.draw_distinct(self.codebook_size, self.generator)[rank]
        refilled = self._refill(dead, candidates, threshold)
        self.reservoir.clear()
        return refilled.sum()

    def _refill(self, dead: Tensor, candidates: Tensor, threshold: float) -> Tensor:
        """Moves the dead codes that have a finite candidate to it; returns which moved."""
        # forward never stores a non-finite row, but a state_dict may hold one: such a code
        # stays where it is rather than turn into NaN for good.
        dead = dead & torch.isfinite(candidates).all(1)
        # No host sync: every code gets a candidate row, and torch.where keeps the live ones.
        candidates = candidates.to(self.embedding.dtype)
        self.embedding.copy_(torch.where(dead[:, None], candidates, self.embedding))
        # Restarted codes count as average ones, so they are not replaced again at once.
        restart = self.cluster_size.mean().clamp_min(threshold)
        self.cluster_size.copy_(torch.where(dead, restart, self.cluster_size))
        if self.ema:
            self.embed_sum.copy_(self.embedding * self.cluster_size[:, None])
        return dead

    @torch.no_grad()
    def _kmeans_init(self, features: Tensor) -> None:
        # Under torch.distributed, kmeans fits the union of the ranks' first batches.
        fitted = kmeans(
            features,
            self.codebook_size,
            KMEANS_ITERS,
            process_group=self.process_group,
            backend=self.backend,
        )
        fitted = self._normalize(fitted.to(features.device))
        if self.linear_reparam:
            self.frozen_codes.copy_(fitted)
            nn.init.eye_(self.code_map.weight)
            nn.init.zeros_(self.code_map.bias)
        else:
            self.embedding.copy_(fitted)
        if self.ema:
            self.embed_sum.copy_(fitted)
        self.initialized = True

    def _stats(
        self, result, commitment: Tensor, codebook_term: Tensor, wasserstein: Tensor
    ) -> dict[str, Tensor]:
        utilization, perplexity = kernels.usage(result.counts, backend=self.backend)
        running_utilization, _ = kernels.usage(self.usage_counts, backend=self.backend)
        return {
            "quantization_error": result.distances.mean(),
            "utilization": utilization,
            "perplexity": perplexity,
            "running_utilization": running_utilization,
            "wasserstein": wasserstein.detach(),
            "commitment": commitment.detach(),
            "codebook": codebook_term.detach(),
            "skipped_nonfinite": self.skipped_nonfinite.float(),
        }

    def _statistics(self) -> list[Tensor]:
        """The floating-point buffers that hold running statistics rather than weights."""
        tensors = [self.cluster_size]
        if self.ema:
            tensors += [self.embedding, self.embed_sum]
        for store in (self.queue, self.reservoir):
            if store is not None:
                tensors.append(store.rows)
        return tensors

    def _apply(self, fn, recurse=True):
        # module.to(dtype) / .half() cast every floating buffer; the statistics move to the new
        # device but keep their dtype (rounding an EMA sum to bf16 once loses it for good).
        statistics = {id(tensor) for tensor in self._statistics()}

        def keep_statistics_dtype(tensor: Tensor) -> Tensor:
            converted = fn(tensor)
            if id(tensor) in statistics and converted.dtype != tensor.dtype:
                return tensor.to(converted.device)
            return converted

        return super()._apply(keep_statistics_dtype, recurse)

    def _parameter_dtype(self) -> torch.dtype:
        """The dtype the module's weights were cast to (float32 when it has none)."""
        return next((p.dtype for p in self.parameters()), torch.float32)

    def get_extra_state(self) -> dict:
        return {"initialized": self.initialized}

    def set_extra_state(self, state: dict) -> None:
        self.initialized = state["initialized"]

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, codebook_size={self.codebook_size}, "
            f"codebook_dim={self.codebook_dim}, distribution_loss={self.distribution_loss}, "
            f"ema={self.ema}, linear_reparam={self.linear_reparam}, metric={self.metric!r}"
        )


def finite_flag(values: Tensor) -> Tensor:
    """0-dim bool on the values' device, no host sync: are all values finite? One reduction
    (the minimum and maximum propagate NaN), where ``torch.isfinite(values).all()`` takes
    several passes over the values."""
    if values.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=values.device)
    low, high = torch.aminmax(values.detach())
    return torch.isfinite(low) & torch.isfinite(high)


def _working_dtype(z: Tensor) -> torch.dtype:
    """The dtype the assignment runs in: autocast's when it is on for z's device, else z's own
    half dtype, else float32 (the kernels take no float64)."""
    if torch.is_autocast_enabled(z.device.type):
        return torch.get_autocast_dtype(z.device.type)
    return z.dtype if z.dtype in HALF_DTYPES else torch.float32


def _output_dtype(z: Tensor) -> torch.dtype:
    """What a linear layer would return for z: autocast's dtype under autocast, else z's."""
    if torch.is_autocast_enabled(z.device.type):
        return torch.get_autocast_dtype(z.device.type)
    return z.dtype


def _in_parameter_dtype(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)`` as float32, computed in the layer's parameter dtype: a projection of a bf16
    module runs in bf16 like any bf16 layer, with autocast off."""
    dtype = next((p.dtype for p in layer.parameters()), x.dtype)
    return layer(x.to(dtype)).float()


def _sample_cov(stats) -> Tensor:
    """Unbiased covariance, but zeros for a single row (``Moments.sample_cov`` gives NaN there,
    as torch.cov, which W's eigenvalue solve fails on): one row, a one-code codebook or a
    one-token first batch, has no observed spread, so its Gaussian is taken as a point mass."""
    n = stats.count.to(torch.float64)
    return stats.cov * (n / (n - 1).clamp_min(1))


def nsvq_tau(epoch: int, start: float, decay: float, minimum: float) -> float:
    """NSVQ's temperature schedule: ``start·decay^epoch`` (epoch 0-based), floored at
    ``minimum``."""
    return max(minimum, start * decay**epoch)


def _check_nsvq_options(codebook_loss, ema, linear_reparam, reservoir_size) -> None:
    if codebook_loss not in CODEBOOK_LOSSES:
        raise ValueError(f"codebook_loss: expected one of {CODEBOOK_LOSSES}, got {codebook_loss!r}")
    if codebook_loss == "dense" and ema:
        raise ValueError("codebook_loss='dense' needs a learned codebook; got ema=True")
    if reservoir_size < 0:
        raise ValueError(f"reservoir_size: expected a size >= 0, got {reservoir_size}")
    if reservoir_size and linear_reparam:
        raise ValueError(
            "reservoir_size > 0 with linear_reparam=True: SimVQ codes are moved by "
            "the shared map, there is no per-code vector to refill"
        )


def _check_options(distribution_loss, metric, ema, linear_reparam, dead_code_threshold) -> None:
    if distribution_loss not in DISTRIBUTION_LOSSES:
        raise ValueError(
            f"distribution_loss: expected one of {DISTRIBUTION_LOSSES}, got {distribution_loss!r}"
        )
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    if ema and linear_reparam:
        raise ValueError("ema=True and linear_reparam=True: an EMA codebook has no learned map")
    if ema and distribution_loss is not None:
        raise ValueError("distribution_loss needs a learned codebook; got ema=True")
    if linear_reparam and dead_code_threshold > 0:
        raise ValueError(
            "dead_code_threshold > 0 with linear_reparam=True: SimVQ codes are "
            "moved by the shared map, there is no per-code vector to refill"
        )
