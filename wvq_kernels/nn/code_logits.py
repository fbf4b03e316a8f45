"""Functions of the logits of every code for every row, without an N×K matrix: the logits
are made block by block of codes (and remade in the backward), about ``BLOCK_ELEMENTS``
logits at a time, so the extra memory is a few such blocks whatever N and K.

The logits are vector-quantize-pytorch's: minus the Euclidean distance (``metric="l2"``) or
the dot product of unit vectors (``"cosine"``, inputs already normalised).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cross_entropy_chunked", "diversity_loss_chunked", "top_codes_chunked"]

# Logits per block (16 MiB of float32): rows × codes per block, at least MIN_CHUNK codes.
BLOCK_ELEMENTS = 1 << 22
MIN_CHUNK = 64
# vector-quantize-pytorch's floors: squared distances before the square root, and the
# exponential variates of the Gumbel noise (−log E, E ~ Exp(1)) before their logarithm.
SQUARED_DISTANCE_FLOOR = 1e-8
EXPONENTIAL_FLOOR = 1e-20
# vector-quantize-pytorch's floor of probabilities inside the entropy's logarithm.
ENTROPY_FLOOR = 1e-5
# The logit of a floored distance, as float32 computes it: no gradient flows there.
FLOORED_LOGIT = -torch.tensor(SQUARED_DISTANCE_FLOOR).sqrt().item()


def _logits(features: Tensor, norms: Tensor, block: Tensor, metric: str) -> Tensor:
    """The (N, B) logits of a block of codes; ``norms``: the rows' squared norms (N, 1)."""
    logits = features @ block.T
    if metric == "cosine":
        return logits
    squared = logits.mul_(-2).add_(norms).add_(block.square().sum(-1))
    return squared.clamp_min_(SQUARED_DISTANCE_FLOOR).sqrt_().neg_()


def _blocks(num_rows: int, num_codes: int, chunk: int | None) -> tuple[range, int]:
    """The first code of each block, and the codes per block (``chunk``, or about
    ``BLOCK_ELEMENTS`` logits)."""
    chunk = chunk or max(MIN_CHUNK, BLOCK_ELEMENTS // max(num_rows, 1))
    return range(0, num_codes, chunk), chunk


@torch.no_grad()
def top_codes_chunked(
    features: Tensor,
    codes: Tensor,
    k: int,
    temperature: float,
    metric: str,
    chunk: int | None = None,
) -> Tensor:
    """The ``k`` codes of largest logit per row of ``features`` (N, D), best first:
    ``(N, k)`` int64. With ``temperature > 0`` the logits are divided by it and get i.i.d.
    Gumbel(0, 1) noise first (Gumbel-top-k: k draws without replacement from
    ``softmax(logits / temperature)``; k = 1 is one exact draw). The running top k is merged
    with each block's, so the extra memory is O(N · (k + chunk)). Randomness comes from
    torch's global generator, as in the peer."""
    features, codes = features.float(), codes.float()
    norms = features.square().sum(-1, keepdim=True)
    best_scores = features.new_empty((features.shape[0], 0))
    best_codes = torch.empty((features.shape[0], 0), dtype=torch.int64, device=features.device)
    starts, chunk = _blocks(features.shape[0], codes.shape[0], chunk)
    for start in starts:
        scores = _logits(features, norms, codes[start : start + chunk], metric)
        if temperature > 0:
            noise = torch.empty_like(scores).exponential_().clamp_min_(EXPONENTIAL_FLOOR)
            scores = scores.div_(temperature).sub_(noise.log_())
        kept = best_codes.shape[1]
        best_scores, position = torch.cat([best_scores, scores], dim=1).topk(
            min(k, kept + scores.shape[1]), dim=1
        )
        # Positions below ``kept`` are earlier winners; the others this block's codes.
        earlier = best_codes.gather(1, position.clamp_max(max(kept - 1, 0))) if kept else position
        best_codes = torch.where(position < kept, earlier, position - kept + start)
    return best_codes


def cross_entropy_chunked(
    features: Tensor, codes: Tensor, targets: Tensor, metric: str, chunk: int | None = None
) -> Tensor:
    """``Σᵢ (logsumexpⱼ logitᵢⱼ − logitᵢ,targetᵢ)`` over the rows whose target is not −1: the
    summed cross-entropy of the targets under softmax over all K codes, differentiable in
    ``features`` (N, D) and ``codes`` (K, D)."""
    return _CrossEntropy.apply(features.float(), codes.float(), targets, metric, chunk)[0]


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(features, codes, targets, metric, chunk):
        norms = features.square().sum(-1, keepdim=True)
        log_partition = features.new_full((features.shape[0],), float("-inf"))
        starts, chunk = _blocks(features.shape[0], codes.shape[0], chunk)
        for start in starts:
            logits = _logits(features, norms, codes[start : start + chunk], metric)
            log_partition = torch.logaddexp(log_partition, logits.logsumexp(dim=1))
        picked = _pair_logits(features, codes[targets.clamp_min(0)], metric)
        return ((log_partition - picked) * (targets >= 0)).sum(), log_partition

    @staticmethod
    def setup_context(ctx, inputs, output):
        features, codes, targets, metric, chunk = inputs
        ctx.save_for_backward(features, codes, targets, output[1])
        ctx.metric, ctx.chunk = metric, chunk
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad, _):
        features, codes, targets, log_partition = ctx.saved_tensors
        valid = (targets >= 0).to(features.dtype)[:, None]
        grad_features, grad_codes = torch.zeros_like(features), torch.zeros_like(codes)
        rows = torch.arange(features.shape[0], device=features.device)
        norms = features.square().sum(-1, keepdim=True)
        starts, chunk = _blocks(features.shape[0], codes.shape[0], ctx.chunk)
        for start in starts:
            block = codes[start : start + chunk]
            logits = _logits(features, norms, block, ctx.metric)
            # d loss / d logit: softmax minus the target's one-hot, on the valid rows.
            weights = (logits - log_partition[:, None]).exp_().mul_(valid)
            inside = (targets >= start) & (targets < start + block.shape[0])
            weights[rows[inside], targets[inside] - start] -= 1
            weights.mul_(grad)
            block_grad = grad_codes[start : start + block.shape[0]]
            _chain(weights, logits, features, block, grad_features, block_grad, ctx.metric)
        return grad_features, grad_codes, None, None, None


def _chain(weights, logits, features, block, grad_features, block_grad, metric) -> None:
    """Adds the gradients of the features and of the block's codes, given ``weights`` =
    d loss / d logit (N, B) (overwritten)."""
    if metric == "l2":
        # logit = −√s with s = ‖x‖² + ‖c‖² − 2x·c (0 gradient where s was floored):
        # d logit/d s = 1/(2·logit); d s/dx = 2(x − c), d s/dc = 2(c − x).
        weights.div_(logits).mul_(0.5).masked_fill_(logits >= FLOORED_LOGIT, 0.0)
        grad_features += 2 * (features * weights.sum(1, keepdim=True) - weights @ block)
        block_grad += 2 * (block * weights.sum(0)[:, None] - weights.T @ features)
    else:
        grad_features += weights @ block
        block_grad += weights.T @ features


def diversity_loss_chunked(
    features: Tensor,
    codes: Tensor,
    positions: Tensor,
    num_positions: int,
    temperature: float,
    metric: str,
    chunk: int | None = None,
) -> Tensor:
    """vector-quantize-pytorch's codebook diversity loss, minus the mean entropy of the
    average code distribution of each position: with ``pᵢ = softmax(temperature · logitsᵢ)``
    over all K codes and ``aₙ`` the mean of ``pᵢ`` over the rows i at position n
    (``positions``, int64 (N,) in [0, num_positions)), ``mean over positions with rows of
    Σⱼ aₙⱼ log max(aₙⱼ, 1e-5)``. Differentiable in ``features`` (N, D) and ``codes`` (K, D);
    the distributions are made block by block of codes (four passes), never N×K or
    positions×K."""
    return _Diversity.apply(
        features.float(), codes.float(), positions, num_positions, temperature, metric, chunk
    )[0]


class _Diversity(torch.autograd.Function):
    @staticmethod
    def forward(features, codes, positions, num_positions, temperature, metric, chunk):
        blocks = _ProbabilityBlocks(
            features, codes, positions, num_positions, temperature, metric, chunk
        )
        total = features.new_zeros(())
        for _, _, average in blocks:
            total += (average * average.clamp_min(ENTROPY_FLOOR).log()).sum()
        return total / blocks.present, blocks.log_partition

    @staticmethod
    def setup_context(ctx, inputs, output):
        features, codes, positions, num_positions, temperature, metric, chunk = inputs
        ctx.save_for_backward(features, codes, positions, output[1])
        ctx.options = (num_positions, temperature, metric, chunk)
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad, _):
        features, codes, positions, log_partition = ctx.saved_tensors
        num_positions, temperature, metric, chunk = ctx.options
        blocks = _ProbabilityBlocks(
            features, codes, positions, num_positions, temperature, metric, chunk, log_partition
        )
        # d loss / d p for each row, and its softmax-weighted mean over codes (first pass).
        row_mean = features.new_zeros(features.shape[0])
        for _, probabilities, average in blocks:
            row_mean += (probabilities * blocks.row_gradient(average, grad)).sum(1)
        grad_features, grad_codes = torch.zeros_like(features), torch.zeros_like(codes)
        for start, probabilities, average in blocks:
            gradient = blocks.row_gradient(average, grad).sub_(row_mean[:, None])
            weights = gradient.mul_(probabilities).mul_(temperature)
            block = codes[start : start + probabilities.shape[1]]
            logits = _logits(features, blocks.norms, block, metric)
            block_grad = grad_codes[start : start + block.shape[0]]
            _chain(weights, logits, features, block, grad_features, block_grad, metric)
        return grad_features, grad_codes, None, None, None, None, None


class _ProbabilityBlocks:
    """Iterates over blocks of codes: (first code, the rows' softmax probabilities (N, B), their
    mean per position (positions, B)). Without ``log_partition`` it is computed first."""

    def __init__(
        self,
        features,
        codes,
        positions,
        num_positions,
        temperature,
        metric,
        chunk,
        log_partition=None,
    ):
        self.features, self.codes, self.positions = features, codes, positions
        self.temperature, self.metric = temperature, metric
        self.norms = features.square().sum(-1, keepdim=True)
        self.starts, self.chunk = _blocks(features.shape[0], codes.shape[0], chunk)
        counts = torch.zeros(num_positions, device=features.device).index_add_(
            0, positions, torch.ones_like(positions, dtype=torch.float32)
        )
        # Positions with rows; at least 1, so that no rows at all give a loss of 0.
        self.counts, self.present = counts.clamp_min(1), (counts > 0).sum().clamp_min(1)
        if log_partition is None:
            log_partition = features.new_full((features.shape[0],), float("-inf"))
            for start in self.starts:
                scaled = self._scaled_logits(start)
                log_partition = torch.logaddexp(log_partition, scaled.logsumexp(dim=1))
        self.log_partition = log_partition

    def _scaled_logits(self, start: int) -> Tensor:
        block = self.codes[start : start + self.chunk]
        return _logits(self.features, self.norms, block, self.metric).mul_(self.temperature)

    def __iter__(self):
        for start in self.starts:
            probabilities = self._scaled_logits(start).sub_(self.log_partition[:, None]).exp_()
            average = torch.zeros(
                self.counts.shape[0], probabilities.shape[1], device=probabilities.device
            ).index_add_(0, self.positions, probabilities)
            yield start, probabilities, average.div_(self.counts[:, None])

    def row_gradient(self, average: Tensor, grad: Tensor) -> Tensor:
        """d loss / d p for every row of the block (N, B), from the positions' averages."""
        per_position = average.clamp_min(ENTROPY_FLOOR).log_().add_(average > ENTROPY_FLOOR)
        per_position.mul_(grad / self.present).div_(self.counts[:, None])
        return per_position[self.positions]


def _pair_logits(features: Tensor, codes: Tensor, metric: str) -> Tensor:
    """The logit of each row of ``features`` for the same row of ``codes``, by the same
    formula as the blocks."""
    products = (features * codes).sum(-1)
    if metric == "cosine":
        return products
    squared = features.square().sum(-1) + codes.square().sum(-1) - 2 * products
    return squared.clamp_min(SQUARED_DISTANCE_FLOOR).sqrt().neg()
