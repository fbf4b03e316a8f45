"""Functions of the logits of every code for every row, without an N×K matrix: the logits
are made block by block of codes (and remade in the backward), about ``BLOCK_ELEMENTS``
logits at a time, so the extra memory is a few such blocks whatever N and K.

The logits are vector-quantize-pytorch's: minus the Euclidean distance (``metric="l2"``) or
the dot product of unit vectors (``"cosine"``, inputs already normalised).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cross_entropy_chunked", "top_codes_chunked"]

# Logits per block (16 MiB of float32): rows × codes per block, at least MIN_CHUNK codes.
BLOCK_ELEMENTS = 1 << 22
MIN_CHUNK = 64
# vector-quantize-pytorch's floors: squared distances before the square root, and the
# exponential variates of the Gumbel noise (−log E, E ~ Exp(1)) before their logarithm.
SQUARED_DISTANCE_FLOOR = 1e-8
EXPONENTIAL_FLOOR = 1e-20
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
            if ctx.metric == "l2":
                # logit = −√s with s = ‖x‖² + ‖c‖² − 2x·c (0 gradient where s was floored):
                # d logit/d s = 1/(2·logit); d s/dx = 2(x − c), d s/dc = 2(c − x).
                weights.div_(logits).mul_(0.5).masked_fill_(logits >= FLOORED_LOGIT, 0.0)
                grad_features += 2 * (features * weights.sum(1, keepdim=True) - weights @ block)
                block_grad += 2 * (block * weights.sum(0)[:, None] - weights.T @ features)
            else:
                grad_features += weights @ block
                block_grad += weights.T @ features
        return grad_features, grad_codes, None, None, None


def _pair_logits(features: Tensor, codes: Tensor, metric: str) -> Tensor:
    """The logit of each row of ``features`` for the same row of ``codes``, by the same
    formula as the blocks."""
    products = (features * codes).sum(-1)
    if metric == "cosine":
        return products
    squared = features.square().sum(-1) + codes.square().sum(-1) - 2 * products
    return squared.clamp_min(SQUARED_DISTANCE_FLOOR).sqrt().neg()
