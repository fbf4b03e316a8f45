"""Stochastic code choice without an N×K matrix: Gumbel-max over blocks of codes."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sample_codes_chunked"]

# Codes per block: the scores of one block (N × CHUNK float32) are the only large temporary.
CHUNK = 4096
# vector-quantize-pytorch's floors: squared distances before the square root, and uniforms
# before the logarithms of the Gumbel noise.
SQUARED_DISTANCE_FLOOR = 1e-8
UNIFORM_FLOOR = 1e-20


@torch.no_grad()
def sample_codes_chunked(
    features: Tensor, codes: Tensor, temperature: float, metric: str, chunk: int = CHUNK
) -> Tensor:
    """One draw per row of ``features`` (N, D) from ``softmax(logits / temperature)`` over all
    K codes, with the logits of vector-quantize-pytorch: minus the Euclidean distance
    (``metric="l2"``) or the dot product of unit vectors (``"cosine"``, inputs already
    normalised). Gumbel-max: the argmax over codes of ``logit/T + G``, G i.i.d. Gumbel(0, 1),
    is such a draw; the argmax is carried block by block, so the extra memory is
    O(N · chunk). Randomness comes from torch's global generator, as in the peer."""
    features, codes = features.float(), codes.float()
    best_score = features.new_full((features.shape[0],), float("-inf"))
    best_index = torch.zeros(features.shape[0], dtype=torch.int64, device=features.device)
    feature_norms = features.square().sum(-1, keepdim=True)
    for start in range(0, codes.shape[0], chunk):
        block = codes[start : start + chunk]
        scores = _logits(features, feature_norms, block, metric) / temperature
        uniform = torch.rand_like(scores).clamp_min(UNIFORM_FLOOR)
        scores -= uniform.log_().neg_().clamp_min_(UNIFORM_FLOOR).log_()
        value, index = scores.max(dim=1)
        better = value > best_score
        best_score = torch.where(better, value, best_score)
        best_index = torch.where(better, index + start, best_index)
    return best_index


def _logits(features: Tensor, feature_norms: Tensor, block: Tensor, metric: str) -> Tensor:
    products = features @ block.T
    if metric == "cosine":
        return products
    squared = feature_norms + block.square().sum(-1) - 2 * products
    return squared.clamp_min_(SQUARED_DISTANCE_FLOOR).sqrt_().neg_()
