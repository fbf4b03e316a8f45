"""The ops' result types (re-exported by ``wvq_kernels.ops`` and ``wvq_kernels``)."""

from typing import NamedTuple

import torch
from torch import Tensor


class Assignment(NamedTuple):
    """Result of :func:`wvq_kernels.assign`: indices int64 and distances float32, both
    ``x.shape[:-1]`` (``x.shape[:-1] + (k,)``, nearest first, for ``k=...``); counts int64
    ``(K,)`` when ``histogram=True`` (of the nearest codes), else None."""

    indices: Tensor
    distances: Tensor
    counts: Tensor | None


class SoftAssignStats(NamedTuple):
    """Result of :func:`wvq_kernels.soft_assign_stats`: the dense loss (float32 0-dim,
    differentiable in the codebook), per-code weight sums (K,) and weighted row sums (K, D),
    float32; the nearest codes' indices int64 and distances float32, both ``x.shape[:-1]``."""

    loss: Tensor
    weight_sums: Tensor
    weighted_sums: Tensor
    indices: Tensor
    distances: Tensor


class Sample(NamedTuple):
    """Result of :func:`wvq_kernels.sample_codes`: the drawn codes' indices int64 and their
    distances float32 (as :func:`wvq_kernels.assign` reports them), both ``x.shape[:-1]``."""

    indices: Tensor
    distances: Tensor


class SoftAssignEntropy(NamedTuple):
    """Result of :func:`wvq_kernels.soft_assign_entropy`, for p_ik = softmax_k(-d_ik / tau):
    the mean over rows of the entropy of p_i (0-dim), the batch-averaged code distribution
    p-bar (K,) and its entropy (0-dim), and the per-row entropies (``x.shape[:-1]``); float32
    (float64 for float64 inputs), all differentiable in x and the codebook."""

    row_entropy: Tensor
    code_distribution: Tensor
    code_entropy: Tensor
    row_entropies: Tensor


class Moments(NamedTuple):
    """Result of :func:`wvq_kernels.moments`: count int64 0-dim, mean float64 ``(D,)`` and the
    population covariance (1/n) float64 ``(D, D)``."""

    count: Tensor
    mean: Tensor
    cov: Tensor

    def merge(self, other: "Moments") -> "Moments":
        """Moments of the union of both row sets (Chan et al.), exact up to float64 rounding:
        combines chunks of a stream or the shards of several ranks."""
        n_a, n_b = self.count.to(torch.float64), other.count.to(torch.float64)
        # Clamped so that two empty parts merge to zeros rather than 0/0; with one empty part
        # the other comes back unchanged.
        n = (n_a + n_b).clamp_min(1.0)
        delta = other.mean - self.mean
        mean = self.mean + delta * (n_b / n)
        m2 = self.cov * n_a + other.cov * n_b + torch.outer(delta, delta) * (n_a * n_b / n)
        return Moments(self.count + other.count, mean, m2 / n)

    def sample_cov(self) -> Tensor:
        """Unbiased covariance, cov * n / (n - 1); nan for a single row, as torch.cov."""
        n = self.count.to(torch.float64)
        return self.cov * (n / (n - 1))
