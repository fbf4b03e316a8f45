"""The k nearest codes in Triton, without an N x K buffer.

The scan is assign's (wvq_kernels/triton/assign.py: the same operands, row loads, tile dot and
l2 scores, so identical codes get identical scores); only the epilogue differs. Each program
keeps, per row, an unsorted list of K_PAD (score, index) candidates in registers and its
threshold, the worst of them. A code tile is merged in by repeated extraction: take each row's
best remaining score in the tile (tl.min, ties to the left-most), and where it beats the
threshold it replaces the worst candidate; stop when no row of the block has a score left
below its threshold. After the first tiles that is one min and one compare per tile, as in
assign. Ties: a candidate enters only when strictly below the threshold, and the worst is the
largest index among equal scores, so an equal score with a larger index never displaces a
smaller one, at any rank. Slots beyond k hold -inf (never the worst), and empty slots start as
(+inf, K + slot), distinct indices beyond every code.

Split-K (few row blocks) gives each (row block, code segment) program its own list; the lists
are merged afterwards in PyTorch, sorted by (score, index), which is exact in any order. The
k codes are then ordered by their reported distances, recomputed as the reference does
(reference.rank_by_distance), and the histogram counts each row's first code: O(N k D), small
next to the scan.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from wvq_kernels.reference import rank_by_distance, sort_pairs
from wvq_kernels.triton import configs
from wvq_kernels.triton.assign import (
    DOT_PRECISION,
    _load_rows,
    _scored_operands,
    _tile_scores,
    _unit_inner_stride,
    split_count,
)


@triton.jit
def _merge_tile(scores, tile_start, list_scores, list_index, threshold, BLOCK_K: tl.constexpr):
    """Moves the tile's scores that beat each row's threshold into its candidate list."""
    columns = tl.arange(0, BLOCK_K)
    tile_min, tile_arg = tl.min(
        scores, axis=1, return_indices=True, return_indices_tie_break_left=True
    )
    need = tile_min < threshold
    while tl.max(need.to(tl.int32), axis=0) > 0:
        worst = tl.max(tl.where(list_scores == threshold[:, None], list_index, -1), axis=1)
        replace = need[:, None] & (list_index == worst[:, None])
        list_scores = tl.where(replace, tile_min[:, None], list_scores)
        list_index = tl.where(replace, (tile_start + tile_arg)[:, None], list_index)
        threshold = tl.max(list_scores, axis=1)
        scores = tl.where(columns[None, :] == tile_arg[:, None], float("inf"), scores)
        tile_min, tile_arg = tl.min(
            scores, axis=1, return_indices=True, return_indices_tie_break_left=True
        )
        need = tile_min < threshold
    return list_scores, list_index, threshold


@triton.jit
def assign_topk_kernel(
    x_ptr,
    stride_xn,
    stride_xd,  # rows (N, D) as scored: x, or unit rows for cosine
    row_scale_ptr,  # (1,) fp32: the power of two of reference.input_scales for the rows
    codes_t_ptr,  # scored codes, (D, K) contiguous, fp32 or bf16
    norms_ptr,  # (K,) fp32 ||c||^2 of the scored codes (l2 only)
    list_scores_ptr,  # (splits, N, k) fp32: each program's candidates, unsorted
    list_index_ptr,  # (splits, N, k) int32
    N,
    K,
    D,
    TOP_K,
    codes_per_split,
    METRIC: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    INTERPRETED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    D_CHUNKS: tl.constexpr,
    K_PAD: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    row_offsets = rows.to(tl.int64) * stride_xn
    first_cols = tl.arange(0, BLOCK_D)
    row_scale = tl.load(row_scale_ptr)
    first_rows = _load_rows(
        x_ptr, row_offsets, row_mask, first_cols, D, stride_xd, row_scale, ROUND_BF16, INTERPRETED
    )
    slots = tl.arange(0, K_PAD)
    live = tl.broadcast_to((slots < TOP_K)[None, :], [BLOCK_N, K_PAD])
    list_scores = tl.where(live, float("inf"), -float("inf"))
    list_index = tl.where(live, K + slots[None, :], -1)
    threshold = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    code_start = tl.program_id(1) * codes_per_split
    code_stop = tl.minimum(K, code_start + codes_per_split)
    for tile_start in range(code_start, code_stop, BLOCK_K):
        codes = tile_start + tl.arange(0, BLOCK_K)
        code_mask = codes < code_stop
        scores = _tile_scores(
            first_rows,
            x_ptr,
            row_offsets,
            row_mask,
            stride_xd,
            row_scale,
            codes_t_ptr,
            norms_ptr,
            codes,
            code_mask,
            D,
            K,
            METRIC,
            DOT_PRECISION,
            ROUND_BF16,
            INTERPRETED,
            BLOCK_N,
            BLOCK_K,
            BLOCK_D,
            D_CHUNKS,
        )
        scores = tl.where(code_mask[None, :], scores, float("inf"))
        list_scores, list_index, threshold = _merge_tile(
            scores, tile_start, list_scores, list_index, threshold, BLOCK_K
        )
    out = (tl.program_id(1) * N + rows).to(tl.int64)[:, None] * TOP_K + slots[None, :]
    store_mask = row_mask[:, None] & live
    tl.store(list_scores_ptr + out, list_scores, mask=store_mask)
    tl.store(list_index_ptr + out, list_index, mask=store_mask)


def launch_assign_topk(
    x: Tensor,
    codebook: Tensor,
    k: int,
    metric: str,
    precision: str,
    histogram: bool,
    splits: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The op's body; ``splits`` forces a number of code segments (tests take both paths)."""
    num_rows, dim = x.shape
    num_codes = codebook.shape[0]
    arch = configs.device_arch(x.device)
    rows, row_scale, _, codes_t, norms, _ = _scored_operands(x, codebook, metric, precision, arch)
    config = configs.assign_topk_config(dim, configs.dot_kind(precision), arch)
    if splits is None:
        splits = split_count(num_rows, num_codes, config, configs.sm_count(x.device))
    codes_per_split = triton.cdiv(triton.cdiv(num_codes, splits), config.block_k) * config.block_k
    splits = triton.cdiv(num_codes, codes_per_split)
    list_scores = torch.empty(splits, num_rows, k, dtype=torch.float32, device=x.device)
    list_index = torch.empty(splits, num_rows, k, dtype=torch.int32, device=x.device)
    wrap_triton(assign_topk_kernel)[(triton.cdiv(num_rows, config.block_n), splits)](
        *_unit_inner_stride(rows),
        row_scale,
        codes_t,
        norms,
        list_scores,
        list_index,
        num_rows,
        num_codes,
        dim,
        k,
        codes_per_split,
        METRIC={"l2": 0, "cosine": 1, "dot": 2}[metric],
        DOT_PRECISION=DOT_PRECISION[precision],
        ROUND_BF16=precision == "bf16",
        INTERPRETED=configs.INTERPRETED,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        BLOCK_D=config.block_d,
        D_CHUNKS=triton.cdiv(dim, config.block_d),
        K_PAD=configs.next_power_of_two(k),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    scores = list_scores.permute(1, 0, 2).reshape(num_rows, splits * k)
    candidates = list_index.permute(1, 0, 2).reshape(num_rows, splits * k).to(torch.int64)
    chosen = sort_pairs(scores, candidates)[1][:, :k]
    # Empty slots (index K + slot) survive only where no score was finite: non-finite inputs.
    chosen = chosen.clamp_max(num_codes - 1)
    distances, indices = rank_by_distance(x, codebook, chosen, metric)
    counts = (
        torch.bincount(indices[:, 0], minlength=num_codes)
        if histogram
        else torch.zeros(0, dtype=torch.int64, device=x.device)
    )
    return indices, distances, counts


@triton_op("wvq_triton::assign_topk", mutates_args=())
def assign_topk(
    x: Tensor, codebook: Tensor, k: int, metric: str, precision: str, histogram: bool
) -> tuple[Tensor, Tensor, Tensor]:
    return launch_assign_topk(x, codebook, k, metric, precision, histogram)
