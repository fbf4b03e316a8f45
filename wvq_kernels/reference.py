"""Pure-PyTorch implementations of the ``wvq`` ops: the ground truth for tests and benchmarks.

Each function mirrors the C++ schema in docs/op-contract.md exactly (same arguments, same output
tuple, dtypes and shapes, 2-D ``x``) and runs on any device. ``assign`` works on blocks of rows
and codes so that it never holds more than one block of scores: O(N + K*D) extra memory,
whatever N and K.
"""

import torch
from torch import Tensor

# A 4096 x 4096 block of float32 scores is 64 MiB: large enough for GEMM to run near its peak,
# small enough that the reference can run next to the tensors it is checking.
ROW_BLOCK = 4096
CODE_BLOCK = 4096


def assign(
    x: Tensor, codebook: Tensor, metric: str, precision: str, histogram: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest code of every row of ``x`` (N, D) in ``codebook`` (K, D).

    Returns (indices int64 (N,), distances float32 (N,), counts int64 (K,) or (0,)).
    """
    codes = _score_operand(codebook, metric, precision)
    # For l2 the row norm is the same for every code, so the score is ||c||^2 - 2 x.c.
    code_sq_norms = codes.square().sum(dim=1) if metric == "l2" else None
    indices = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for start in range(0, x.shape[0], ROW_BLOCK):
        rows = _score_operand(x[start : start + ROW_BLOCK], metric, precision)
        indices[start : start + ROW_BLOCK] = _argmin_scores(rows, codes, code_sq_norms)
    distances = _chosen_distances(x, codebook, indices, metric)
    counts = _counts(indices, codebook.shape[0]) if histogram else _no_counts(x.device)
    return indices, distances, counts


def code_histogram(indices: Tensor, num_codes: int) -> Tensor:
    """How many times each code in [0, num_codes) occurs in ``indices``: int64 (num_codes,)."""
    return _counts(indices, num_codes)


def code_sums(indices: Tensor, x: Tensor, num_codes: int) -> tuple[Tensor, Tensor]:
    """Per-code counts (int64 (K,)) and sums of the rows of ``x`` (float32 (K, D)).

    Sums accumulate in float64 (exact for any realistic N) and are rounded once at the end.
    """
    sums = torch.zeros(num_codes, x.shape[1], dtype=torch.float64, device=x.device)
    sums.index_add_(0, indices, x.to(torch.float64))
    return _counts(indices, num_codes), sums.to(torch.float32)


def usage(counts: Tensor) -> tuple[Tensor, Tensor]:
    """(utilization, perplexity) of a code histogram, as float32 0-dim tensors.

    utilization = fraction of codes used; perplexity = exp(entropy), with 0 log 0 = 0. An empty
    histogram has zero entropy, hence perplexity 1. Computed on the device: no host sync.
    """
    counts = counts.to(torch.float64)
    utilization = (counts > 0).to(torch.float64).mean()
    probabilities = counts / counts.sum().clamp_min(1.0)
    entropy = -torch.special.xlogy(probabilities, probabilities).sum()
    return utilization.to(torch.float32), entropy.exp().to(torch.float32)


def moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(count int64 0-dim, mean float64 (D,), population covariance float64 (D, D)).

    Centred before the outer product, so a large common offset costs no accuracy. Plain torch
    ops, hence differentiable in ``x``. N = 0 gives zeros.
    """
    count = torch.tensor(x.shape[0], dtype=torch.int64, device=x.device)
    rows = x.to(torch.float64)
    if x.shape[0] == 0:
        zeros = rows.new_zeros(x.shape[1])
        return count, zeros, torch.outer(zeros, zeros)
    mean = rows.mean(dim=0)
    centred = rows - mean
    return count, mean, centred.T @ centred / x.shape[0]


def _score_operand(t: Tensor, metric: str, precision: str) -> Tensor:
    """The float32 values the scores are computed from: normalised for cosine, then rounded
    through bf16 when precision='bf16' (bf16 products are exact in float32, so only this
    rounding distinguishes the bf16 path)."""
    t = t.to(torch.float32)
    if metric == "cosine":
        t = _normalise_rows(t)
    if precision == "bf16":
        t = t.to(torch.bfloat16).to(torch.float32)
    return t


def _normalise_rows(t: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm in float32; all-zero rows stay zero (no epsilon, which would
    distort tiny but nonzero rows)."""
    norms = t.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, t / norms, torch.zeros_like(t))


def _argmin_scores(rows: Tensor, codes: Tensor, code_sq_norms: Tensor | None) -> Tensor:
    """Index of the lowest score per row, scanning the codebook block by block.

    torch.min returns the first minimum within a block; merging blocks with a strict '<' keeps
    the earlier block on equal scores, so ties go to the smallest index overall.
    """
    best_scores = torch.full((rows.shape[0],), float("inf"), device=rows.device)
    best_indices = torch.zeros(rows.shape[0], dtype=torch.int64, device=rows.device)
    for start in range(0, codes.shape[0], CODE_BLOCK):
        block = codes[start : start + CODE_BLOCK]
        if code_sq_norms is None:
            scores = -(rows @ block.T)
        else:
            scores = torch.addmm(code_sq_norms[start : start + CODE_BLOCK], rows, block.T, alpha=-2)
        block_scores, block_indices = scores.min(dim=1)
        better = block_scores < best_scores
        best_scores = torch.where(better, block_scores, best_scores)
        best_indices = torch.where(better, block_indices + start, best_indices)
    return best_indices


def _chosen_distances(x: Tensor, codebook: Tensor, indices: Tensor, metric: str) -> Tensor:
    """Distance to the chosen code, recomputed from the unrounded inputs in float32."""
    distances = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], ROW_BLOCK):
        rows = x[start : start + ROW_BLOCK].to(torch.float32)
        chosen = codebook[indices[start : start + ROW_BLOCK]].to(torch.float32)
        distances[start : start + ROW_BLOCK] = _pair_distances(rows, chosen, metric)
    return distances


def _pair_distances(rows: Tensor, codes: Tensor, metric: str) -> Tensor:
    if metric == "l2":
        return (rows - codes).square().sum(dim=1)
    if metric == "cosine":
        similarity = (_normalise_rows(rows) * _normalise_rows(codes)).sum(dim=1)
        return (1.0 - similarity).clamp_min(0.0)
    return -(rows * codes).sum(dim=1)


def _counts(indices: Tensor, num_codes: int) -> Tensor:
    return torch.bincount(indices.reshape(-1), minlength=num_codes)


def _no_counts(device: torch.device) -> Tensor:
    return torch.empty(0, dtype=torch.int64, device=device)
