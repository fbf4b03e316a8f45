"""NSVQ's dense soft-assignment statistics in Triton, without an N x K buffer.

Two kernels, as on the CPU (csrc/cpu/soft_assign.cpp):

- scan: each program owns BLOCK_N rows and streams the codebook in BLOCK_K-code tiles, keeping
  per row the running minimum distance, its index (ties to the smallest: tl.min's left-most
  minimum within a tile, a strict "<" across tiles) and the online log-sum-exp
  Z = sum_k exp(-(d_k - min) / tau), rescaled whenever the minimum drops. It stores the
  minimum, its index and bias = log(lam K) - log Z;
- accumulate: each program owns BLOCK_K codes (and one segment of the rows) and streams the
  rows, recomputing their distances, forming the weights w = exp(min(0, bias - (d - min) / tau))
  (that is min(1, lam K softmax), 1 for the winner) and summing w, w x (one fp32 tl.dot) and
  w d. Programs write their own partial sums, which PyTorch adds in a fixed order: no float
  atomics, the same bits on every run.

Distances are sums of squared differences in fp32 (one FMA pair per dimension, on the FMA
units), not |x|^2 + |e|^2 - 2 x.e: the weights depend on (d - min) / tau, where the expanded
form's cancellation error, divided by a small tau, would dominate. Both kernels compute them with
the same function. Inputs are loaded in their dtype and upcast to fp32 in the kernels.
"""

import math

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from wvq_kernels.triton import configs


@triton.jit
def _distance_tile(
    x_ptr,
    row_offsets,
    row_mask,
    stride_xd,
    codes_t_ptr,
    codes,
    code_mask,
    K,
    D,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """sum_d (x - e)^2 for a (rows, codes) tile in fp32; +inf for codes outside the codebook."""
    distances = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    x_pointers = x_ptr + row_offsets
    code_pointers = codes_t_ptr + codes
    for _ in range(D):
        column = tl.load(x_pointers, mask=row_mask, other=0.0).to(tl.float32)
        code_row = tl.load(code_pointers, mask=code_mask, other=0.0)
        difference = column[:, None] - code_row[None, :]
        distances += difference * difference
        x_pointers += stride_xd
        code_pointers += K
    return tl.where(code_mask[None, :], distances, float("inf"))


@triton.jit
def soft_assign_scan_kernel(
    x_ptr,
    stride_xn,
    stride_xd,  # rows (N, D), any float dtype
    codes_t_ptr,  # (D, K) fp32 contiguous
    best_ptr,
    index_ptr,
    bias_ptr,  # (N,) fp32, int64, fp32
    entropy_ptr,  # (N,) fp32, ENTROPY only
    N,
    K,
    D,
    inv_tau,
    log_scale,
    ENTROPY: tl.constexpr,  # soft_assign_entropy: also each row's entropy S / (tau Z) + log Z
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    row_offsets = rows.to(tl.int64) * stride_xn
    best = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    best_index = tl.zeros([BLOCK_N], dtype=tl.int32)
    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    spread = tl.zeros([BLOCK_N], dtype=tl.float32)  # S = sum_k exp(-(d_k - min) / tau) (d_k - min)
    for tile_start in range(0, K, BLOCK_K):
        codes = tile_start + tl.arange(0, BLOCK_K)
        distances = _distance_tile(
            x_ptr,
            row_offsets,
            row_mask,
            stride_xd,
            codes_t_ptr,
            codes,
            codes < K,
            K,
            D,
            BLOCK_N,
            BLOCK_K,
        )
        tile_best, tile_index = tl.min(
            distances, axis=1, return_indices=True, return_indices_tie_break_left=True
        )
        best_index = tl.where(tile_best < best, tile_start + tile_index, best_index)
        new_best = tl.minimum(best, tile_best)
        # On the first tile best is inf: exp(-inf) = 0 scales the empty sum.
        rescale = tl.exp((new_best - best) * inv_tau)
        terms = tl.exp((new_best[:, None] - distances) * inv_tau)
        if ENTROPY:  # S measures from the minimum: it gains (old - new minimum) Z first
            shift = tl.where(total > 0.0, best - new_best, 0.0)  # not inf * 0 on the first tile
            spread = (spread + shift * total) * rescale
            excess = tl.where(terms > 0.0, distances - new_best[:, None], 0.0)
            spread += tl.sum(terms * excess, axis=1)
        total = total * rescale
        total += tl.sum(terms, axis=1)
        best = new_best
    tl.store(best_ptr + rows, best, mask=row_mask)
    tl.store(index_ptr + rows, best_index.to(tl.int64), mask=row_mask)
    tl.store(bias_ptr + rows, log_scale - tl.log(total), mask=row_mask)
    if ENTROPY:
        entropy = spread * inv_tau / total + tl.log(total)
        tl.store(entropy_ptr + rows, entropy, mask=row_mask)


@triton.jit
def soft_assign_accumulate_kernel(
    x_ptr,
    stride_xn,
    stride_xd,  # rows (N, D), any float dtype
    codes_t_ptr,  # (D, K) fp32 contiguous
    best_ptr,
    index_ptr,
    bias_ptr,  # the scan's per-row results
    weight_sums_ptr,  # (segments, K) fp32 partials
    weighted_sums_ptr,  # (segments, K, D) fp32 partials
    loss_ptr,  # (segments, code blocks) fp32 partials of sum w d
    N,
    K,
    D,
    rows_per_segment,
    inv_tau,
    PROBABILITIES: tl.constexpr,  # soft_assign_entropy: sum the softmax alone (bias = -log Z)
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    codes = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    code_mask = codes < K
    segment = tl.program_id(1)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D
    row_start = segment * rows_per_segment
    row_stop = tl.minimum(N, row_start + rows_per_segment)
    weight_sums = tl.zeros([BLOCK_K], dtype=tl.float32)
    weighted_sums = tl.zeros([BLOCK_K, BLOCK_D], dtype=tl.float32)
    loss = tl.zeros([BLOCK_K], dtype=tl.float32)
    for tile_start in range(row_start, row_stop, BLOCK_N):
        rows = tile_start + tl.arange(0, BLOCK_N)
        row_mask = rows < row_stop
        row_offsets = rows.to(tl.int64) * stride_xn
        distances = _distance_tile(
            x_ptr,
            row_offsets,
            row_mask,
            stride_xd,
            codes_t_ptr,
            codes,
            code_mask,
            K,
            D,
            BLOCK_N,
            BLOCK_K,
        )
        best = tl.load(best_ptr + rows, mask=row_mask, other=0.0)
        bias = tl.load(bias_ptr + rows, mask=row_mask, other=float("-inf"))
        winner = tl.load(index_ptr + rows, mask=row_mask, other=-1)
        exponent = tl.minimum(bias[:, None] - (distances - best[:, None]) * inv_tau, 0.0)
        weights = tl.exp(exponent)
        if not PROBABILITIES:
            weights = tl.where(codes[None, :] == winner[:, None], 1.0, weights)
        weights = tl.where(row_mask[:, None] & code_mask[None, :], weights, 0.0)
        weight_sums += tl.sum(weights, axis=0)
        if not PROBABILITIES:
            # Zero weights take zero distances: no 0 * inf from padded codes.
            loss += tl.sum(weights * tl.where(weights > 0.0, distances, 0.0), axis=0)
            x_pointers = x_ptr + row_offsets[:, None] + cols[None, :].to(tl.int64) * stride_xd
            x_tile = tl.load(x_pointers, mask=row_mask[:, None] & col_mask[None, :], other=0.0)
            weighted_sums = tl.dot(
                tl.trans(weights), x_tile.to(tl.float32), weighted_sums, input_precision="ieee"
            )
    partial = segment.to(tl.int64) * K + codes
    if not PROBABILITIES:
        pointers = weighted_sums_ptr + partial[:, None] * D + cols[None, :]
        tl.store(pointers, weighted_sums, mask=code_mask[:, None] & col_mask[None, :])
    # Every column block has the same weights; the first one stores them.
    if tl.program_id(2) == 0:
        tl.store(weight_sums_ptr + partial, weight_sums, mask=code_mask)
        if not PROBABILITIES:
            loss_offset = segment * tl.num_programs(0) + tl.program_id(0)
            tl.store(loss_ptr + loss_offset, tl.sum(loss, axis=0))


def segment_count(num_rows: int, code_blocks: int, block_n: int, sms: int) -> int:
    """Row segments of the accumulate grid: 1 when the code blocks alone fill the GPU, else
    enough for about two programs per SM (each a partial sum, added afterwards)."""
    if code_blocks >= 2 * sms:
        return 1
    return max(1, min(triton.cdiv(num_rows, block_n), triton.cdiv(2 * sms, code_blocks)))


def _scan(x: Tensor, codes_t: Tensor, inv_tau: float, log_scale: float, entropy: bool = False):
    """(min distance, its index, bias) per row, and the row entropies when ``entropy``."""
    num_rows, dim = x.shape
    num_codes = codes_t.shape[1]
    config = configs.soft_assign_config("scan", dim, configs.device_arch(x.device))
    best = torch.empty(num_rows, dtype=torch.float32, device=x.device)
    indices = torch.empty(num_rows, dtype=torch.int64, device=x.device)
    bias = torch.empty(num_rows, dtype=torch.float32, device=x.device)
    entropies = torch.empty(num_rows if entropy else 0, dtype=torch.float32, device=x.device)
    wrap_triton(soft_assign_scan_kernel)[(triton.cdiv(num_rows, config.block_n),)](
        x,
        x.stride(0),
        x.stride(1),
        codes_t,
        best,
        indices,
        bias,
        entropies,
        num_rows,
        num_codes,
        dim,
        inv_tau,
        log_scale,
        ENTROPY=entropy,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return best, indices, bias, entropies


def _accumulate(
    x: Tensor,
    codes_t: Tensor,
    inv_tau: float,
    best: Tensor,
    indices: Tensor,
    bias: Tensor,
    probabilities: bool = False,
):
    """(sum w d, weight sums (K,), weighted sums (K, D)), the partials added in float64; with
    ``probabilities``, the weight sums alone (float64) are soft_assign_entropy's sums of p."""
    num_rows, dim = x.shape
    num_codes = codes_t.shape[1]
    config = configs.soft_assign_config("accumulate", dim, configs.device_arch(x.device))
    code_blocks = triton.cdiv(num_codes, config.block_k)
    segments = segment_count(num_rows, code_blocks, config.block_n, configs.sm_count(x.device))
    rows_per_segment = triton.cdiv(triton.cdiv(num_rows, segments), config.block_n)
    rows_per_segment *= config.block_n
    segments = triton.cdiv(num_rows, rows_per_segment)
    weight_sums = torch.empty(segments, num_codes, dtype=torch.float32, device=x.device)
    partials = 0 if probabilities else segments  # the sums that PROBABILITIES leaves out
    weighted_sums = torch.empty(partials, num_codes, dim, dtype=torch.float32, device=x.device)
    loss = torch.empty(partials, code_blocks, dtype=torch.float32, device=x.device)
    column_blocks = 1 if probabilities else triton.cdiv(dim, config.block_d)
    grid = (code_blocks, segments, column_blocks)
    wrap_triton(soft_assign_accumulate_kernel)[grid](
        x,
        x.stride(0),
        x.stride(1),
        codes_t,
        best,
        indices,
        bias,
        weight_sums,
        weighted_sums,
        loss,
        num_rows,
        num_codes,
        dim,
        rows_per_segment,
        inv_tau,
        PROBABILITIES=probabilities,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        BLOCK_D=config.block_d,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if probabilities:
        return weight_sums.double().sum(dim=0)
    return (
        loss.double().sum(),
        weight_sums.double().sum(dim=0).float(),
        weighted_sums.double().sum(dim=0).float(),
    )


def launch_soft_assign_stats(
    x: Tensor, codebook: Tensor, tau: float, lam: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    num_rows, dim = x.shape
    num_codes = codebook.shape[0]
    if num_rows == 0:
        return (
            x.new_zeros((), dtype=torch.float32),
            x.new_zeros(num_codes, dtype=torch.float32),
            x.new_zeros(num_codes, dim, dtype=torch.float32),
            x.new_empty(0, dtype=torch.int64),
            x.new_empty(0, dtype=torch.float32),
        )
    codes_t = codebook.detach().to(torch.float32).T.contiguous()
    inv_tau = 1.0 / tau
    log_scale = math.log(lam * num_codes) if lam > 0 else -math.inf
    best, indices, bias, _ = _scan(x, codes_t, inv_tau, log_scale)
    loss, weight_sums, weighted_sums = _accumulate(x, codes_t, inv_tau, best, indices, bias)
    loss = (loss / (num_rows * dim)).float()
    return loss, weight_sums, weighted_sums, indices, best


@triton_op("wvq_triton::soft_assign_stats", mutates_args=())
def soft_assign_stats(
    x: Tensor, codebook: Tensor, tau: float, lam: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return launch_soft_assign_stats(x, codebook, tau, lam)


def launch_soft_assign_entropy(x: Tensor, codebook: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """soft_assign_entropy on the two kernels above: the scan with log_scale = 0 (its bias is
    -log Z) also stores the row entropies; the accumulation with PROBABILITIES sums p."""
    num_rows = x.shape[0]
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if num_rows == 0:
        return x.new_empty(0, dtype=out_dtype), x.new_zeros(codebook.shape[0], dtype=out_dtype)
    codes_t = codebook.detach().to(torch.float32).T.contiguous()
    inv_tau = 1.0 / tau
    # The kernels' float64 variant is left out of the ahead-of-time gate: such rows go as fp32.
    rows = x.detach().float() if x.dtype == torch.float64 else x.detach()
    best, indices, bias, entropies = _scan(rows, codes_t, inv_tau, 0.0, entropy=True)
    sums = _accumulate(rows, codes_t, inv_tau, best, indices, bias, probabilities=True)
    mean = sums / num_rows
    return entropies.to(out_dtype), mean.to(out_dtype)


@triton_op("wvq_triton::soft_assign_entropy", mutates_args=())
def soft_assign_entropy(x: Tensor, codebook: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    return launch_soft_assign_entropy(x, codebook, tau)
