"""Functions of the logits of every code for every row, without an N×K matrix: the logits
are made block by block of codes (and remade in the backward), so the extra memory is
O(N · chunk).

The logits are vector-quantize-pytorch's: minus the Euclidean distance (``metric="l2"``) or
the dot product of unit vectors (``"cosine"``, inputs already normalised).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cross_entropy_chunked", "top_codes_chunked"]

# Codes per block: the scores of one block (N × CHUNK float32) are the largest temporaries.
CHUNK = 4096
# vector-quantize-pytorch's floors: squared distances before the square root, and uniforms
# before the logarithms of the Gumbel noise.
SQUARED_DISTANCE_FLOOR = 1e-8
UNIFORM_FLOOR = 1e-20


def _logits(features: Tensor, block: Tensor, metric: str) -> tuple[Tensor, Tensor | None]:
    """The (N, B) logits of a block of codes and, for l2, the squared distances under them."""
    products = features @ block.T
    if metric == "cosine":
        return products, None
    squared = features.square().sum(-1, keepdim=True) + block.square().sum(-1) - 2 * products
    return squared.clamp_min(SQUARED_DISTANCE_FLOOR).sqrt().neg(), squared


def _blocks(num_codes: int, chunk: int):
    return range(0, num_codes, chunk)


@torch.no_grad()
def top_codes_chunked(
    features: Tensor,
    codes: Tensor,
    k: int,
    temperature: float,
    metric: str,
    chunk: int = CHUNK,
) -> Tensor:
    """The ``k`` codes of largest logit per row of ``features`` (N, D), best first:
    ``(N, k)`` int64. With ``temperature > 0`` the logits are divided by it and get i.i.d.
    Gumbel(0, 1) noise first (Gumbel-top-k: k draws without replacement from
    ``softmax(logits / temperature)``; k = 1 is one exact draw). The running top k is merged
    with each block's, so the extra memory is O(N · (k + chunk)). Randomness comes from
    torch's global generator, as in the peer."""
    features, codes = features.float(), codes.float()
    best_scores = features.new_empty((features.shape[0], 0))
    best_codes = torch.empty((features.shape[0], 0), dtype=torch.int64, device=features.device)
    for start in _blocks(codes.shape[0], chunk):
        scores = _logits(features, codes[start : start + chunk], metric)[0]
        if temperature > 0:
            uniform = torch.rand_like(scores).clamp_min(UNIFORM_FLOOR)
            scores = scores / temperature - uniform.log_().neg_().clamp_min_(UNIFORM_FLOOR).log_()
        index = torch.arange(start, start + scores.shape[1], device=features.device)
        scores = torch.cat([best_scores, scores], dim=1)
        candidates = torch.cat([best_codes, index.expand(features.shape[0], -1)], dim=1)
        best_scores, position = scores.topk(min(k, scores.shape[1]), dim=1)
        best_codes = candidates.gather(1, position)
    return best_codes


def cross_entropy_chunked(
    features: Tensor, codes: Tensor, targets: Tensor, metric: str, chunk: int = CHUNK
) -> Tensor:
    """``Σᵢ (logsumexpⱼ logitᵢⱼ − logitᵢ,targetᵢ)`` over the rows whose target is not −1: the
    summed cross-entropy of the targets under softmax over all K codes, differentiable in
    ``features`` (N, D) and ``codes`` (K, D)."""
    return _CrossEntropy.apply(features.float(), codes.float(), targets, metric, chunk)[0]


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(features, codes, targets, metric, chunk):
        valid = targets >= 0
        log_partition = features.new_full((features.shape[0],), float("-inf"))
        for start in _blocks(codes.shape[0], chunk):
            logits = _logits(features, codes[start : start + chunk], metric)[0]
            log_partition = torch.logaddexp(log_partition, logits.logsumexp(dim=1))
        picked = _pair_logits(features, codes[targets.clamp_min(0)], metric)
        return ((log_partition - picked) * valid).sum(), log_partition

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
        for start in _blocks(codes.shape[0], ctx.chunk):
            block = codes[start : start + ctx.chunk]
            logits, squared = _logits(features, block, ctx.metric)
            # d loss / d logit: softmax minus the target's one-hot, on the valid rows.
            weights = (logits - log_partition[:, None]).exp() * valid
            inside = (targets >= start) & (targets < start + block.shape[0])
            weights[rows[inside], targets[inside] - start] -= 1
            weights *= grad
            if ctx.metric == "l2":
                # logit = −√s with s = ‖x‖² + ‖c‖² − 2x·c (0 gradient where s was floored):
                # d logit/d s = −1/(2√s); d s/dx = 2(x − c), d s/dc = 2(c − x).
                weights = torch.where(squared > SQUARED_DISTANCE_FLOOR, weights / logits * 0.5, 0.0)
                grad_features += 2 * (features * weights.sum(1, keepdim=True) - weights @ block)
                grad_codes[start : start + block.shape[0]] += 2 * (
                    block * weights.sum(0)[:, None] - weights.T @ features
                )
            else:
                grad_features += weights @ block
                grad_codes[start : start + block.shape[0]] += weights.T @ features
        return grad_features, grad_codes, None, None, None


def _pair_logits(features: Tensor, codes: Tensor, metric: str) -> Tensor:
    """The logit of each row of ``features`` for the same row of ``codes``, by the same
    formula as the blocks."""
    products = (features * codes).sum(-1)
    if metric == "cosine":
        return products
    squared = features.square().sum(-1) + codes.square().sum(-1) - 2 * products
    return squared.clamp_min(SQUARED_DISTANCE_FLOOR).sqrt().neg()
