"""Pure-PyTorch implementations of the ``wvq`` ops: the ground truth for tests and benchmarks.

Each function mirrors the C++ schema in docs/op-contract.md exactly (same arguments, same output
tuple, dtypes and shapes, 2-D ``x``) and runs on any device. ``assign`` and
``soft_assign_stats`` work on blocks of rows and codes so that they never hold more than one
block of scores: O(N + K*D) extra memory, whatever N and K. The one exception,
``soft_assign_stats_materialised``, transcribes the definition with full N x K tensors: the
float64 oracle of the tests and the PyTorch baseline of the benchmarks.
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor

from wvq_kernels import _counter_hash

# A 4096 x 4096 block of float32 scores is 64 MiB: large enough for GEMM to run near its peak,
# small enough that the reference can run next to the tensors it is checking.
ROW_BLOCK = 4096
CODE_BLOCK = 4096
# soft_assign_stats holds float64 blocks: 1024 x 4096 of them are 32 MiB.
SOFT_ROW_BLOCK = 1024


def assign(
    x: Tensor, codebook: Tensor, metric: str, precision: str, histogram: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Nearest code of every row of ``x`` (N, D) in ``codebook`` (K, D).

    Returns (indices int64 (N,), distances float32 (N,), counts int64 (K,) or (0,)).
    """
    row_scale, code_scale = input_scales(x, codebook, metric)
    codes = _score_operand(codebook, metric, precision, code_scale)
    # For l2 the row norm is the same for every code, so the score is ||c||^2 - 2 x.c.
    code_sq_norms = codes.square().sum(dim=1) if metric == "l2" else None
    first_identical = _first_identical(codes)
    indices = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for start in range(0, x.shape[0], ROW_BLOCK):
        rows = _score_operand(x[start : start + ROW_BLOCK], metric, precision, row_scale)
        best = _argmin_scores(rows, codes, code_sq_norms)
        indices[start : start + ROW_BLOCK] = first_identical[best]
    distances = _chosen_distances(x, codebook, indices, metric)
    counts = _counts(indices, codebook.shape[0]) if histogram else _no_counts(x.device)
    return indices, distances, counts


# ---------------------------------------------------------------------------------------------
# Top-k nearest codes (issue 16)

# Rows per block of the top-k scan: each block sorts its scores with the running candidates,
# so it holds a few copies of a TOPK_ROW_BLOCK x CODE_BLOCK tile (~100 MiB at 1024 x 4096).
TOPK_ROW_BLOCK = 1024


def assign_topk(
    x: Tensor, codebook: Tensor, k: int, metric: str, precision: str, histogram: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` nearest codes of every row of ``x`` (N, D) in ``codebook`` (K, D), k <= K.

    Returns (indices int64 (N, k), distances float32 (N, k), counts int64 (K,) or (0,)): the k
    codes with the lowest scores (as :func:`assign` forms them), ties to the smallest index,
    then ordered by their reported distances, ties again to the smallest index; counts are
    those of each row's first code. Identical codes get one score: each group of identical
    score operands is scored once, through its first code, and stands for its members in index
    order (GEMM would round their columns differently, and a later copy could take the place
    of an earlier one at the k-th rank).
    """
    row_scale, code_scale = input_scales(x, codebook, metric)
    codes = _score_operand(codebook, metric, precision, code_scale)
    first_identical = _first_identical(codes)
    code_ids = torch.arange(codes.shape[0], device=codes.device)
    heads = code_ids[first_identical == code_ids]  # each group's first code, ascending
    members = _group_members(first_identical, heads, k)
    head_codes = codes[heads]
    head_sq_norms = head_codes.square().sum(dim=1) if metric == "l2" else None
    indices = torch.empty(x.shape[0], k, dtype=torch.int64, device=x.device)
    for start in range(0, x.shape[0], TOPK_ROW_BLOCK):
        rows = _score_operand(x[start : start + TOPK_ROW_BLOCK], metric, precision, row_scale)
        scores, groups = _smallest_scores(rows, head_codes, head_sq_norms, min(k, len(heads)))
        candidates = members[groups].flatten(1)  # (rows, groups * k), K where a group ends
        candidate_scores = scores.repeat_interleave(k, dim=1)
        candidate_scores = candidate_scores.masked_fill(candidates == codes.shape[0], math.inf)
        indices[start : start + TOPK_ROW_BLOCK] = sort_pairs(candidate_scores, candidates)[1][:, :k]
    distances, indices = rank_by_distance(x, codebook, indices, metric)
    counts = _counts(indices[:, 0], codebook.shape[0]) if histogram else _no_counts(x.device)
    return indices, distances, counts


def rank_by_distance(
    x: Tensor, codebook: Tensor, indices: Tensor, metric: str
) -> tuple[Tensor, Tensor]:
    """(distances, indices) (N, k) of the chosen codes, recomputed as :func:`assign` reports
    them and sorted by distance, ties to the smallest index: the order holds on the values a
    caller sees, whatever rounding separated near-equal scores. Shared with the Triton
    launcher. Rows are repeated k times a block at a time, never all at once."""
    k = indices.shape[1]
    distances = torch.empty(indices.shape, dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], ROW_BLOCK):
        block = slice(start, start + ROW_BLOCK)
        rows = x[block].repeat_interleave(k, dim=0)
        chosen = _chosen_distances(rows, codebook, indices[block].reshape(-1), metric)
        distances[block] = chosen.reshape(-1, k)
    return sort_pairs(distances, indices)


def sort_pairs(scores: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's (score, index) pairs sorted by score, then index (two stable sorts)."""
    indices, by_index = indices.sort(dim=1, stable=True)
    scores, by_score = scores.gather(1, by_index).sort(dim=1, stable=True)
    return scores, indices.gather(1, by_score)


def _group_members(first_identical: Tensor, heads: Tensor, k: int) -> Tensor:
    """(groups, k): the first k codes of each group of identical codes, ascending, padded with
    K. Group g is the one whose first code is heads[g]."""
    num_codes = first_identical.shape[0]
    group = torch.searchsorted(heads, first_identical)
    order = torch.argsort(group * num_codes + torch.arange(num_codes, device=group.device))
    sorted_group = group[order]
    group_start = torch.searchsorted(sorted_group, sorted_group, side="left")
    rank = torch.arange(num_codes, device=group.device) - group_start
    members = torch.full((len(heads), k), num_codes, dtype=torch.int64, device=group.device)
    keep = rank < k
    members[sorted_group[keep], rank[keep]] = order[keep]
    return members


def _smallest_scores(
    rows: Tensor, codes: Tensor, code_sq_norms: Tensor | None, k: int
) -> tuple[Tensor, Tensor]:
    """Per row, the k lowest scores and their code positions, sorted by score then position,
    scanning the codebook block by block: each block's scores follow the running candidates,
    whose positions are all smaller, so a stable sort keeps ties on the smaller position."""
    best = torch.full((rows.shape[0], 0), math.inf, device=rows.device)
    positions = torch.zeros(rows.shape[0], 0, dtype=torch.int64, device=rows.device)
    for start in range(0, codes.shape[0], CODE_BLOCK):
        block = codes[start : start + CODE_BLOCK]
        if code_sq_norms is None:
            scores = -(rows @ block.T)
        else:
            scores = torch.addmm(code_sq_norms[start : start + CODE_BLOCK], rows, block.T, alpha=-2)
        block_positions = torch.arange(start, start + block.shape[0], device=rows.device)
        best, order = torch.cat([best, scores], dim=1).sort(dim=1, stable=True)
        candidates = torch.cat([positions, block_positions.expand(rows.shape[0], -1)], dim=1)
        best, positions = best[:, :k], candidates.gather(1, order[:, :k])
    return best, positions


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


def soft_assign_stats(
    x: Tensor, codebook: Tensor, tau: float, lam: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """NSVQ's dense loss statistics of ``x`` (N, D) against ``codebook`` (K, D), in float64.

    With d_ik = ||x_i - e_k||^2 and weights w_ik = 1 for the nearest code (ties to the smallest
    index), else min(1, lam K softmax_k(-d_ik / tau)): returns (loss = sum w d / (N D), float32
    0-dim; weight sums (K,) and weighted row sums (K, D), float32; indices int64 (N,); the
    nearest distances float32 (N,)). Two passes over blocks of scores, never N x K: the first
    finds each row's minimum and its softmax normaliser by an online log-sum-exp, the second
    forms the weights and sums them. Not differentiable (see ops.soft_assign_stats).
    """
    rows, codes = x.to(torch.float64), codebook.detach().to(torch.float64)
    log_scale = math.log(lam * codes.shape[0]) if lam > 0 else -math.inf
    best = torch.empty(rows.shape[0], dtype=torch.float64, device=x.device)
    indices = torch.empty(rows.shape[0], dtype=torch.int64, device=x.device)
    weight_sums = torch.zeros(codes.shape[0], dtype=torch.float64, device=x.device)
    weighted_sums = torch.zeros_like(codes)
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, rows.shape[0], SOFT_ROW_BLOCK):
        block = slice(start, start + SOFT_ROW_BLOCK)
        best[block], indices[block], log_normaliser = _softmax_normalisers(rows[block], codes, tau)
        loss += _add_weights(
            rows[block],
            codes,
            tau,
            best[block],
            indices[block],
            log_scale - log_normaliser,
            weight_sums,
            weighted_sums,
        )
    loss = loss / max(rows.shape[0] * rows.shape[1], 1)
    return loss.float(), weight_sums.float(), weighted_sums.float(), indices, best.float()


def soft_assign_stats_materialised(
    x: Tensor, codebook: Tensor, tau: float, lam: float, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The same statistics, in ``dtype`` and transcribed from the definition with N x K tensors
    (distances, softmax, weights): the oracle of the tests (float64) and the materialising
    baseline of the benchmarks (float32). The loss is differentiable in ``codebook`` with the
    weights detached; outputs stay in ``dtype``."""
    rows, codes = x.to(dtype), codebook.to(dtype)
    distances = _exact_sq_distances(rows, codes)
    best, indices = distances.detach().min(dim=1)
    softmax = torch.softmax(-distances.detach() / tau, dim=1)
    weights = (lam * codes.shape[0] * softmax).clamp(max=1)
    weights[torch.arange(rows.shape[0], device=x.device), indices] = 1.0
    loss = (weights * distances).sum() / max(rows.shape[0] * rows.shape[1], 1)
    return loss, weights.sum(dim=0), weights.T @ rows, indices, best


def _softmax_normalisers(rows: Tensor, codes: Tensor, tau: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per row, by an online log-sum-exp over blocks of codes: the minimum distance, its first
    index and log Z, Z = sum_k exp(-(d_k - min) / tau). A lower minimum in a later block
    rescales the running sum; an equal one keeps the earlier, smaller index."""
    best = torch.full((rows.shape[0],), math.inf, dtype=rows.dtype, device=rows.device)
    indices = torch.zeros(rows.shape[0], dtype=torch.int64, device=rows.device)
    total = torch.zeros_like(best)
    for start in range(0, codes.shape[0], CODE_BLOCK):
        distances = _exact_sq_distances(rows, codes[start : start + CODE_BLOCK])
        block_best, block_indices = distances.min(dim=1)
        indices = torch.where(block_best < best, block_indices + start, indices)
        new_best = torch.minimum(best, block_best)
        # On the first block best is inf: exp(-inf) = 0 scales the empty sum.
        total = total * ((new_best - best) / tau).exp()
        total += ((new_best[:, None] - distances) / tau).exp().sum(dim=1)
        best = new_best
    return best, indices, total.log()


def _add_weights(
    rows: Tensor,
    codes: Tensor,
    tau: float,
    best: Tensor,
    indices: Tensor,
    bias: Tensor,
    weight_sums: Tensor,
    weighted_sums: Tensor,
) -> Tensor:
    """Adds the rows' weights, w = exp(min(0, bias - (d - best) / tau)) with bias = log(lam K)
    - log Z (that is min(1, lam K softmax)) and 1 for the winner, and the weighted rows into the
    sums, block of codes by block; returns sum w d."""
    loss = torch.zeros((), dtype=rows.dtype, device=rows.device)
    for start in range(0, codes.shape[0], CODE_BLOCK):
        block = slice(start, start + CODE_BLOCK)
        distances = _exact_sq_distances(rows, codes[block])
        weights = (bias[:, None] - (distances - best[:, None]) / tau).clamp(max=0).exp()
        code_ids = torch.arange(start, start + distances.shape[1], device=rows.device)
        weights[code_ids == indices[:, None]] = 1.0
        weight_sums[block] += weights.sum(dim=0)
        weighted_sums[block] += weights.T @ rows
        loss += (weights * distances).sum()
    return loss


def _exact_sq_distances(rows: Tensor, codes: Tensor) -> Tensor:
    """Squared L2 distances from differences (no |x|^2 + |c|^2 - 2 x.c cancellation), so that
    identical codes tie exactly. cdist has no CPU kernels for half dtypes, which get an
    N x K x D difference tensor instead (small inputs only: the tests' same-precision runs)."""
    if rows.dtype in (torch.float16, torch.bfloat16):
        return (rows[:, None, :] - codes[None, :, :]).square().sum(dim=2)
    return torch.cdist(rows, codes, compute_mode="donot_use_mm_for_euclid_dist").square()


def input_scales(x: Tensor, codebook: Tensor, metric: str) -> tuple[Tensor, Tensor]:
    """Powers of two for the rows and the codes (0-dim float32 tensors, no host sync), as the CPU
    kernel chooses them: 1 while the largest magnitude lies in [2^-32, 2^32], else the power that
    brings it into [1, 2). Exact, and the scores keep their order, but |c|^2 no longer overflows
    above ~1.8e19, nor do tiny inputs vanish. l2 needs one scale for both sides; dot may scale
    each alone; cosine normalises instead."""
    one = torch.ones((), device=x.device)
    if metric == "cosine":
        return one, one
    largest_row = _largest_magnitude(x) if x.numel() else one
    largest_code = _largest_magnitude(codebook)
    if metric == "l2":
        largest_row = largest_code = torch.maximum(largest_row, largest_code)
    return _power_of_two_scale(largest_row), _power_of_two_scale(largest_code)


def _largest_magnitude(t: Tensor) -> Tensor:
    low, high = torch.aminmax(t)  # no |t| temporary as large as t
    return torch.maximum(-low, high).to(torch.float32)


def _power_of_two_scale(largest: Tensor) -> Tensor:
    _, exponent = torch.frexp(largest)  # largest = m * 2^exponent, m in [0.5, 1)
    shift = (1 - exponent).clamp(-128, 126)  # largest * 2^shift lies in [1, 2)
    keep = (exponent - 1).abs() <= 32
    keep |= ~torch.isfinite(largest) | (largest == 0)
    return torch.where(keep, 1.0, torch.ldexp(torch.ones_like(largest), shift.to(torch.float32)))


def _score_operand(t: Tensor, metric: str, precision: str, scale: Tensor) -> Tensor:
    """The float32 values the scores are computed from: normalised for cosine, times the power
    of two of input_scales, then rounded through bf16 when precision='bf16' (bf16 products are
    exact in float32, so only this rounding distinguishes the bf16 path; scaling first keeps
    subnormal inputs' bits, as the CPU and GPU kernels do)."""
    t = t.to(torch.float32)
    if metric == "cosine":
        t = normalise_rows(t)
    t = t * scale
    if precision == "bf16":
        t = t.to(torch.bfloat16).to(torch.float32)
    return t


def normalise_rows(t: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm in their own dtype; all-zero rows stay zero (no epsilon, which
    would distort tiny but nonzero rows). The one zero-safe normalisation: the float64 oracle
    (wvq_kernels.testing) and the Triton launcher use it too. The norm is taken in float64, where
    the squares of any float32 value neither overflow (above ~1.8e19) nor vanish (below ~1e-23)."""
    wide = t.to(torch.float64)
    norms = wide.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, wide / norms, 0.0).to(t.dtype)


def _first_identical(codes: Tensor) -> Tensor:
    """For each code, the smallest index of a code with the same score operand (the values the
    scores are computed from: normalised for cosine, rounded for bf16).

    Identical codes have identical true scores, so ties go to the smallest of them; but GEMM
    rounds identical columns differently depending on where they fall in its blocking (or on
    the BLAS path taken for one row), so the scan alone can report a later copy."""
    _, group = torch.unique(codes, dim=0, return_inverse=True)
    code_ids = torch.arange(codes.shape[0], device=codes.device)
    first = torch.full_like(code_ids, codes.shape[0]).scatter_reduce(
        0, group, code_ids, reduce="amin"
    )
    return first[group]


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
    """Distance to the chosen code, recomputed from the unrounded inputs in float32 (dot's
    products in float64)."""
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
        similarity = (normalise_rows(rows) * normalise_rows(codes)).sum(dim=1)
        return (1.0 - similarity).clamp_min(0.0)
    # In float64, as the CPU and CUDA kernels: float32 terms beyond ~1.8e19 would add up to
    # inf - inf = NaN where the true -x.c merely rounds to -inf or to a finite float32.
    return -(rows.double() * codes.double()).sum(dim=1).to(torch.float32)


def _counts(indices: Tensor, num_codes: int) -> Tensor:
    return torch.bincount(indices.reshape(-1), minlength=num_codes)


def _no_counts(device: torch.device) -> Tensor:
    return torch.empty(0, dtype=torch.int64, device=device)


# ---- sample_codes (issue 16) ----

# sample_codes holds a few int64 and float32 (rows x codes) blocks for the counter hash.
SAMPLE_ROW_BLOCK = 512
SAMPLE_CODE_BLOCK = 2048


def sample_codes(
    x: Tensor, codebook: Tensor, temperature: float, seed: int, metric: str, precision: str
) -> tuple[Tensor, Tensor]:
    """One draw per row of ``x`` (N, D) from softmax(-d(x, c_j) / temperature) over the codes of
    ``codebook`` (K, D), by Gumbel-max over the same float32 scores as :func:`assign`, with the
    noise of (seed, row, code) from wvq_kernels._counter_hash. Returns (indices int64 (N,),
    distances float32 (N,) of the drawn codes). temperature = 0, or one so small that 1 / T
    overflows float32, is assign."""
    row_scale, code_scale = input_scales(x, codebook, metric)
    inverse = inverse_temperature(temperature, metric, row_scale, code_scale)
    if not bool(torch.isfinite(inverse)):
        indices, distances, _ = assign(x, codebook, metric, precision, False)
        return indices, distances
    codes = _score_operand(codebook, metric, precision, code_scale)
    code_sq_norms = codes.square().sum(dim=1) if metric == "l2" else None
    seed_word = _counter_hash.seed_key(torch.tensor(seed, dtype=torch.int64, device=x.device))
    indices = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for start in range(0, x.shape[0], SAMPLE_ROW_BLOCK):
        rows = _score_operand(x[start : start + SAMPLE_ROW_BLOCK], metric, precision, row_scale)
        row_ids = torch.arange(start, start + rows.shape[0], device=x.device)
        keys = _counter_hash.row_keys(seed_word, row_ids)
        indices[start : start + rows.shape[0]] = _argmin_perturbed(
            rows, codes, code_sq_norms, inverse, keys
        )
    return indices, _chosen_distances(x, codebook, indices, metric)


def inverse_temperature(
    temperature: float, metric: str, row_scale: Tensor, code_scale: Tensor
) -> Tensor:
    """1 / T in score units, as float32 (inf for T = 0): the scores are s_rows s_codes times
    d - |x|^2 (l2), d (dot) or d - 1 (cosine), and the per-row constants leave the draw alone."""
    scale = torch.ones((), dtype=torch.float64, device=row_scale.device)
    if metric != "cosine":
        scale = row_scale.double() * code_scale.double()
    if temperature == 0:
        return torch.full_like(scale, torch.inf).float()
    return (1.0 / (temperature * scale)).float()


def _argmin_perturbed(
    rows: Tensor,
    codes: Tensor,
    code_sq_norms: Tensor | None,
    inverse: Tensor,
    keys: tuple[Tensor, Tensor],
) -> Tensor:
    """Per row, the first index of the lowest score / T + noise, block of codes by block."""
    best_scores = torch.full((rows.shape[0],), torch.inf, device=rows.device)
    best_indices = torch.zeros(rows.shape[0], dtype=torch.int64, device=rows.device)
    for start in range(0, codes.shape[0], SAMPLE_CODE_BLOCK):
        block = codes[start : start + SAMPLE_CODE_BLOCK]
        if code_sq_norms is None:
            scores = -(rows @ block.T)
        else:
            norms = code_sq_norms[start : start + SAMPLE_CODE_BLOCK]
            scores = torch.addmm(norms, rows, block.T, alpha=-2)
        code_ids = torch.arange(start, start + block.shape[0], device=rows.device)
        noise = _counter_hash.gumbel_noise(_counter_hash.code_words(*keys, code_ids))
        block_scores, block_indices = (scores * inverse + noise).min(dim=1)
        better = block_scores < best_scores
        best_scores = torch.where(better, block_scores, best_scores)
        best_indices = torch.where(better, block_indices + start, best_indices)
    return best_indices


# ---- end sample_codes ----


# ---- soft_assign_entropy (issue 16) ----

# soft_assign_entropy's blocks: a handful of float64 (rows x codes) temporaries, 2 MiB each.
ENTROPY_ROW_BLOCK = 128
ENTROPY_CODE_BLOCK = 2048


def soft_assign_entropy(x: Tensor, codebook: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Entropy terms of p_ik = softmax_k(-d_ik / tau), d_ik = ||x_i - e_k||^2, for ``x`` (N, D)
    and ``codebook`` (K, D), in float64 over blocks of rows and codes (never N x K).

    Returns (H_i = -sum_k p_ik log p_ik (N,); p-bar_k = (1/N) sum_i p_ik (K,)), float64 for
    float64 inputs, else float32. Per block of rows, one pass keeps the minimum m, Z = sum_k
    exp(-(d_ik - m) / tau) and S = sum_k exp(-(d_ik - m) / tau) (d_ik - m) online (H = S /
    (tau Z) + log Z); a second pass sums the probabilities. Not differentiable by itself: the
    registered ops' gradient is :func:`soft_assign_entropy_grad`.
    """
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows, codes = x.detach().to(torch.float64), codebook.detach().to(torch.float64)
    entropy = rows.new_empty(rows.shape[0])
    probability_sums = rows.new_zeros(codes.shape[0])
    distances_of = _exact_distances(codes)
    for start in range(0, rows.shape[0], ENTROPY_ROW_BLOCK):
        block = slice(start, start + ENTROPY_ROW_BLOCK)
        stats = _online_row_statistics(rows[block], codes, tau, distances_of)
        entropy[block] = stats.entropy
        for code_block, scaled in _block_scaled_excess(
            rows[block], codes, stats, tau, distances_of
        ):
            probability_sums[code_block] += stats.probabilities(scaled).sum(dim=0)
    mean = probability_sums / max(rows.shape[0], 1)
    return entropy.to(out_dtype), mean.to(out_dtype)


class _RowStatistics(NamedTuple):
    best: Tensor  # m_i = min_k d_ik
    log_normaliser: Tensor  # log Z_i
    excess: Tensor  # H_i - log Z_i = sum_k p_ik (d_ik - m_i) / tau
    best_weight: Tensor  # c_best(i), the code weight of row i's nearest code (else 0)
    expected: Tensor  # r_i - c_best(i) = sum_k p_ik (c_k - c_best(i)), for code weights c

    @property
    def entropy(self) -> Tensor:
        return self.excess + self.log_normaliser

    def probabilities(self, scaled: Tensor) -> Tensor:
        """p_ik from (d_ik - m_i) / tau."""
        return (-scaled - self.log_normaliser[:, None]).exp()


def _online_row_statistics(
    rows: Tensor, codes: Tensor, tau: float, distances_of, code_weights: Tensor | None = None
) -> _RowStatistics:
    """Per row, by one online pass over blocks of codes: m, log Z, H - log Z and r - c_best.
    A lower minimum m' in a later block rescales the sums by exp(-(m - m') / tau), after S
    gains (m - m') Z (its distances are measured from the minimum) and W (its weights from the
    nearest code's) gains (c_best - c_best') Z. Measured from the nearest code, the sums keep
    their bits where that code holds nearly all the mass."""
    best = torch.full((rows.shape[0],), torch.inf, dtype=rows.dtype, device=rows.device)
    total, spread, weighted = torch.zeros_like(best), torch.zeros_like(best), torch.zeros_like(best)
    best_weight = torch.zeros_like(best)
    for start in range(0, codes.shape[0], ENTROPY_CODE_BLOCK):
        block = slice(start, start + ENTROPY_CODE_BLOCK)
        distances = distances_of(rows, block)
        block_best, block_index = distances.min(dim=1)
        new_best = torch.minimum(best, block_best)
        started = total > 0  # no inf * 0 on the first block
        shift = torch.where(started, best - new_best, 0.0)
        rescale = ((new_best - best) / tau).exp()
        spread = (spread + shift * total) * rescale
        if code_weights is not None:
            new_weight = torch.where(
                block_best < best, code_weights[block][block_index], best_weight
            )
            weight_shift = torch.where(started, best_weight - new_weight, 0.0)
            weighted = (weighted + weight_shift * total) * rescale
            best_weight = new_weight
        total = total * rescale
        excess = distances.sub_(new_best[:, None])  # in place: one block of temporaries less
        terms = (excess / -tau).exp_()
        total += terms.sum(dim=1)
        spread += (terms * excess).sum(dim=1)
        if code_weights is not None:
            weighted += (terms * (code_weights[block] - best_weight[:, None])).sum(dim=1)
        best = new_best
    return _RowStatistics(best, total.log(), spread / (tau * total), best_weight, weighted / total)


def _block_scaled_excess(rows: Tensor, codes: Tensor, stats: _RowStatistics, tau, distances_of):
    """(codes, (d_ik - m_i) / tau) for the rows, a block of codes at a time."""
    for start in range(0, codes.shape[0], ENTROPY_CODE_BLOCK):
        block = slice(start, start + ENTROPY_CODE_BLOCK)
        distances = distances_of(rows, block)
        # In place over the distances: one block of temporaries, whatever the block count.
        yield block, distances.sub_(stats.best[:, None]).div_(tau)


def soft_assign_entropy_grad(
    x: Tensor,
    codebook: Tensor,
    tau: float,
    grad_entropy: Tensor | None,
    grad_mean: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """(dL/dx, dL/dcodebook) given g_i = dL/dH_i (``grad_entropy``, (N,)) and dL/dp-bar_k
    (``grad_mean``, (K,)), recomputing the probabilities block by block (never N x K), in
    float64, for the reference and Triton backends (the CPU kernel computes the same in its
    two passes): a first pass per block of rows finds m_i, log Z_i, H_i and r_i online, a
    second forms G_ij and adds its contributions. (The forward's float32 m_i and
    log Z_i are not reused: probabilities from them would not sum to 1 in float64.)

    With p_ik = exp(-(d_ik - m_i) / tau - log Z_i) and c_k = (dL/dp-bar_k) / N:
      dH_i / dd_ij = (p_ij / tau) (log p_ij + H_i)            (d/dd_ij of -sum_k p_ik log p_ik)
      dp_ik / dd_ij = -(p_ik / tau) (delta_jk - p_ij)        (the softmax Jacobian)
    so sum_k c_k dp_ik / dd_ij = -(p_ij / tau) (c_j - r_i) with r_i = sum_k p_ik c_k, and
      G_ij = dL/dd_ij = (p_ij / tau) (g_i (log p_ij + H_i) - c_j + r_i).
    For the batch entropy H(p-bar) = -sum_k p-bar_k log p-bar_k, autograd supplies
    dL/dp-bar_k = -(log p-bar_k + 1) dL/dH(p-bar), so dH(p-bar)/dd_ij = (p_ij / (N tau))
    (log p-bar_j - sum_k p_ik log p-bar_k) (the +1 cancels against r_i). With d_ij =
    ||x_i - e_j||^2:
      dL/dx_i = 2 sum_j G_ij (x_i - e_j),   dL/de_j = -2 sum_i G_ij (x_i - e_j).
    Both brackets are evaluated in a form that keeps the bits of G for a code with p_ij near 1
    (where its G is a sum over the other codes, below the rounding of log p + H and c_j - r_i):
    log p_ij + H_i = sum_k p_ik (d_ik - d_ij) / tau = (H_i - log Z_i) - (d_ij - m_i) / tau, and
    c_j - r_i = (c_j - c_best) - sum_k p_ik (c_k - c_best), c_best the nearest code's weight.
    """
    rows, codes = x.detach().to(torch.float64), codebook.detach().to(torch.float64)
    row_weights = rows.new_zeros(rows.shape[0])
    if grad_entropy is not None:
        row_weights = grad_entropy.to(torch.float64)
    code_weights = codes.new_zeros(codes.shape[0])
    if grad_mean is not None:
        code_weights = grad_mean.to(torch.float64) / rows.shape[0]
    distances_of = _expanded_distances(codes)
    grad_rows, grad_codes = torch.zeros_like(rows), torch.zeros_like(codes)
    for start in range(0, rows.shape[0], ENTROPY_ROW_BLOCK):
        block = slice(start, start + ENTROPY_ROW_BLOCK)
        stats = _online_row_statistics(rows[block], codes, tau, distances_of, code_weights)
        for code_block, scaled in _block_scaled_excess(
            rows[block], codes, stats, tau, distances_of
        ):
            # G = (p / tau) (g (log p + H) - c + r), in place over p and the scaled distances.
            probabilities = stats.probabilities(scaled)
            inner = scaled.neg_().add_(stats.excess[:, None]).mul_(row_weights[block, None])
            relative_weights = code_weights[code_block] - stats.best_weight[:, None]
            inner.sub_(relative_weights.sub_(stats.expected[:, None]))
            gradient = probabilities.mul_(inner).div_(tau)
            grad_rows[block] += 2 * (
                gradient.sum(dim=1)[:, None] * rows[block] - gradient @ codes[code_block]
            )
            grad_codes[code_block] += 2 * (
                gradient.sum(dim=0)[:, None] * codes[code_block] - gradient.T @ rows[block]
            )
    return grad_rows.to(x.dtype), grad_codes.to(codebook.dtype)


def _exact_distances(codes: Tensor):
    """distances(rows, block): squared L2 distances from differences (the forward's truth)."""

    def distances(rows: Tensor, block: slice) -> Tensor:
        return _exact_sq_distances(rows, codes[block])

    return distances


def _expanded_distances(codes: Tensor):
    """distances(rows, block): ||x||^2 + ||e||^2 - 2 x.e in float64, one GEMM per block (the
    cancellation error, ~1e-16 of the norms, is far below what the gradients need; a distance
    it takes slightly below 0 is harmless here)."""
    code_sq_norms = codes.square().sum(dim=1)

    def distances(rows: Tensor, block: slice) -> Tensor:
        scores = torch.addmm(code_sq_norms[block], rows, codes[block].T, alpha=-2)
        return scores.add_(rows.square().sum(dim=1, keepdim=True))

    return distances


def soft_assign_entropy_materialised(
    x: Tensor,
    codebook: Tensor,
    tau: float,
    dtype: torch.dtype = torch.float64,
    *,
    nearest_complement: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """(mean row entropy, p-bar (K,), H(p-bar)) transcribed from the definition with N x K
    tensors in ``dtype``, differentiable by autograd: the oracle of the tests (float64, with
    ``nearest_complement``) and the materialising baseline of the benchmarks (float32, as a user
    would write it).

    ``nearest_complement`` writes each row's nearest code's probability as 1 - q (q the sum of
    the others') and its log as log1p(-q). Autograd of the plain form loses that code's gradient
    where q is below the rounding unit (its softmax backward subtracts two numbers that agree to
    all their digits); of this form, it gets the others' sum instead, to full precision."""
    distances = _exact_sq_distances(x.to(dtype), codebook.to(dtype))
    log_p = torch.log_softmax(-distances / tau, dim=1)
    p = log_p.exp()
    if nearest_complement:
        nearest = torch.zeros_like(p, dtype=torch.bool)
        nearest.scatter_(1, distances.argmin(dim=1, keepdim=True), True)
        others = p.masked_fill(nearest, 0.0).sum(dim=1, keepdim=True)
        p = torch.where(nearest, 1 - others, p)
        log_p = torch.where(nearest, torch.log1p(-others), log_p)
    row_entropy = -(p * log_p).sum(dim=1).mean()
    mean = p.mean(dim=0)
    return row_entropy, mean, -torch.special.xlogy(mean, mean).sum()


# ---- end soft_assign_entropy ----
