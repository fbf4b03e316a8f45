"""Nearest-code assignment in Triton, without an N x K buffer.

Each program owns BLOCK_N rows and streams a range of the codebook in BLOCK_K-code tiles: the
scores of a tile are one tl.dot (plus ||c||^2 for l2), reduced at once to a running
(min, argmin) per row. Ties go to the smallest index: tl.min picks the left-most minimum in a
tile and a later tile replaces the incumbent only when strictly smaller.

Two ways to cut the work:
- row-owned (enough row blocks to fill the GPU): one program per row block scans all K codes and
  finishes its rows in the epilogue (distance, index, fused histogram);
- split-K (too few row blocks): the codes are cut into segments, one program per (row block,
  segment), and partial results merge with a 64-bit atomic min on a packed key (score bits
  high, index low; see csrc/common/packed_key.h), which is deterministic whatever order the
  segments finish in. A second small kernel then finishes the rows.

Operands: the codebook is prepared once by PyTorch ops (O(K*D)): normalised for cosine,
rounded to bf16 for precision="bf16" and transposed to (D, K) so tiles load coalesced along K;
||c||^2 is then taken from exactly those values by code_norms_kernel (tf32 rounds inside the
tensor cores, which no fp32 value can mirror, so its norms stay fp32). Rows are loaded raw and
cast in the kernel; only cosine normalises them first, in fp32 (one O(N*D) pass, as the op
contract prescribes). Rows or codes whose columns are strided (x[:, ::2], y.T) are copied to a
unit inner stride first, one O(N*D) pass: the kernels then always run their unit-stride
variant, which the ahead-of-time gate checks. The general-stride variant spills on sm_90 (a
run-time column stride costs registers in every reloaded row chunk; measured by the gate) and
its loads would not coalesce.

Exact ties. Identical codes must get bitwise-identical scores wherever they sit (which tile,
which column of it, which split-K segment), or rounding picks a later copy. A score is
||c||^2 - 2 x.c (l2) or -x.c:
- ||c||^2 comes from code_norms_kernel, which reduces every code by the same sequence of
  operations (D in BLOCK_D chunks, in order, each chunk one tl.sum whose tree depends only on
  the layout, the same for every column). PyTorch's sum over dim 0 of the (D, K) codebook did
  not: it vectorises across codes and sums a ragged tail of K in another order, so at K = 257
  code 256 came out one ulp below identical codes 5 and 128 and won (issue 13, item 11).
- x.c on a GPU: mma/wgmma (and the FMA dot of ieee) compute each output element by one fixed
  reduction tree over its row and column, so equal code columns give equal dots in any tile.
  The interpreter's tl.dot is numpy's matmul instead; see _tile_dot.
- tl.min then takes the left-most of equal scores in a tile, a later tile must be strictly
  smaller, and split-K segments merge on (score, index) keys: the smallest index wins.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from wvq_kernels.reference import input_scales, inverse_temperature, normalise_rows
from wvq_kernels.triton import configs, counter_hash

METRIC_CODES = {"l2": 0, "cosine": 1, "dot": 2}
# precision -> tl.dot input_precision for fp32 operands; bf16 operands ignore it.
DOT_PRECISION = {"ieee": "ieee", "tf32": "tf32", "tf32x3": "tf32x3", "bf16": "ieee"}
KEY_UNSET = torch.iinfo(torch.int64).max


@triton.jit
def _pack_key(score, index):
    """Signed 64-bit key ordered as (score, index): the signed form of packed_key.h's unsigned
    key (the two differ by the top bit), so that a signed atomic min merges partial argmins."""
    score = tl.where(score == 0.0, 0.0, score)  # -0 and +0 are one score
    bits = score.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats count down
    return (ordered.to(tl.int64) << 32) | index.to(tl.int64)


@triton.jit
def _load_rows(
    x_ptr,
    row_offsets,
    row_mask,
    cols,
    D,
    stride_xd,
    row_scale,
    ROUND_BF16: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """A (rows, cols) tile of x as the dot sees it: fp32 times row_scale (a power of two), or
    that rounded to bf16 (kept in fp32 when INTERPRETED: the interpreter's bf16 conversion and
    arithmetic are wrong)."""
    mask = row_mask[:, None] & (cols < D)[None, :]
    pointers = x_ptr + row_offsets[:, None] + cols[None, :].to(tl.int64) * stride_xd
    tile = tl.load(pointers, mask=mask, other=0.0).to(tl.float32) * row_scale
    if ROUND_BF16:
        if INTERPRETED:
            tile = _round_to_bf16_in_fp32(tile)
        else:
            tile = tile.to(tl.bfloat16)
    return tile


@triton.jit
def _round_to_bf16_in_fp32(values):
    """Round to nearest even on the bits (the interpreter's .to(tl.bfloat16) truncates)."""
    bits = values.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # -65536 = 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _load_code_tile(codes_t_ptr, cols, codes, code_mask, D, K, dtype: tl.constexpr):
    """A (cols, codes) tile of the transposed codebook, zero outside it, in the rows' dtype."""
    pointers = codes_t_ptr + cols[:, None].to(tl.int64) * K + codes[None, :]
    tile = tl.load(pointers, mask=(cols < D)[:, None] & code_mask[None, :], other=0.0)
    return tile.to(dtype)


@triton.jit
def _tile_dot(row_tile, code_tile, dots, DOT_PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    if INTERPRETED:
        # numpy's matmul. In float64 the products of fp32 (or bf16-valued) operands are exact,
        # so a column's value depends only on the order of its d-sum, which gemm keeps the same
        # for every column (checked for every tile shape of the tables: identical columns come
        # out bitwise equal); rounding once to fp32 then gives identical codes identical dots.
        products = tl.dot(row_tile.to(tl.float64), code_tile.to(tl.float64), input_precision="ieee")
        return dots + products.to(tl.float32)
    return tl.dot(row_tile, code_tile, dots, input_precision=DOT_PRECISION)


@triton.jit
def _finish_rows(
    rows,
    row_mask,
    best_index,
    x_ptr,
    stride_xn,
    stride_xd,
    dist_codes_ptr,
    stride_cn,
    stride_cd,
    indices_ptr,
    distances_ptr,
    counts_ptr,
    D,
    METRIC: tl.constexpr,
    HISTOGRAM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    D_CHUNKS: tl.constexpr,
):
    """Store each row's index and its distance to the chosen code, recomputed in fp32 from the
    unrounded operands; count the rows per code with integer atomics (exact in any order)."""
    row_offsets = rows.to(tl.int64) * stride_xn
    code_offsets = best_index.to(tl.int64) * stride_cn
    total = tl.zeros([rows.shape[0]], dtype=tl.float32)
    for chunk in range(D_CHUNKS):
        cols = chunk * BLOCK_D + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (cols < D)[None, :]
        col_offsets = cols[None, :].to(tl.int64)
        row_values = tl.load(
            x_ptr + row_offsets[:, None] + col_offsets * stride_xd, mask=mask, other=0.0
        ).to(tl.float32)
        code_values = tl.load(
            dist_codes_ptr + code_offsets[:, None] + col_offsets * stride_cd, mask=mask, other=0.0
        ).to(tl.float32)
        if METRIC == 0:
            difference = row_values - code_values
            total += tl.sum(difference * difference, axis=1)
        else:
            total += tl.sum(row_values * code_values, axis=1)
    if METRIC == 0:
        distance = total
    elif METRIC == 1:
        distance = tl.maximum(1.0 - total, 0.0)
    else:
        distance = -total
    tl.store(indices_ptr + rows, best_index.to(tl.int64), mask=row_mask)
    tl.store(distances_ptr + rows, distance, mask=row_mask)
    if HISTOGRAM:
        tl.atomic_add(counts_ptr + best_index, 1, mask=row_mask, sem="relaxed")


@triton.jit
def _tile_scores(
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
    METRIC: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    INTERPRETED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    D_CHUNKS: tl.constexpr,
):
    """The (BLOCK_N, BLOCK_K) scores of a row tile against the code tile ``codes``: ||c||^2 -
    2 x.c (l2) or -x.c, lower is nearer, over D in chunks of BLOCK_D (the first chunk of the
    rows, ``first_rows``, stays in registers; the others are reloaded per tile). Masked codes
    score garbage: the callers mask them."""
    first_cols = tl.arange(0, BLOCK_D)
    code_tile = _load_code_tile(codes_t_ptr, first_cols, codes, code_mask, D, K, first_rows.dtype)
    dots = _tile_dot(
        first_rows,
        code_tile,
        tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32),
        DOT_PRECISION,
        INTERPRETED,
    )
    for chunk in range(1, D_CHUNKS):
        cols = chunk * BLOCK_D + tl.arange(0, BLOCK_D)
        row_tile = _load_rows(
            x_ptr,
            row_offsets,
            row_mask,
            cols,
            D,
            stride_xd,
            row_scale,
            ROUND_BF16,
            INTERPRETED,
        )
        code_tile = _load_code_tile(codes_t_ptr, cols, codes, code_mask, D, K, row_tile.dtype)
        dots = _tile_dot(row_tile, code_tile, dots, DOT_PRECISION, INTERPRETED)
    if METRIC == 0:
        norms = tl.load(norms_ptr + codes, mask=code_mask, other=0.0)
        scores = norms[None, :] - 2.0 * dots
    else:
        scores = -dots
    return scores


@triton.jit
def assign_kernel(
    x_ptr,
    stride_xn,
    stride_xd,  # rows (N, D) as scored: x, or unit rows for cosine
    row_scale_ptr,  # (1,) fp32: the power of two of reference.input_scales for the rows
    codes_t_ptr,  # scored codes, (D, K) contiguous, fp32 or bf16
    norms_ptr,  # (K,) fp32 ||c||^2 of the scored codes (l2 only)
    dist_codes_ptr,
    stride_cn,
    stride_cd,  # (K, D) codes for the reported distance
    keys_ptr,  # (N,) int64 packed keys (split-K only)
    indices_ptr,
    distances_ptr,
    counts_ptr,
    N,
    K,
    D,
    codes_per_split,
    inv_temperature_ptr,  # sample_codes: (1,) fp32, 1 / T in score units (inf: T = 0)
    seed_word,  # sample_codes: the seed's key, as an int32
    METRIC: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    INTERPRETED: tl.constexpr,
    SPLIT_K: tl.constexpr,
    HISTOGRAM: tl.constexpr,
    SAMPLE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    D_CHUNKS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    if SAMPLE:
        first_key, second_key = counter_hash.row_keys(seed_word, rows)
        inv_temperature = tl.load(inv_temperature_ptr)
    row_mask = rows < N
    row_offsets = rows.to(tl.int64) * stride_xn
    # The first BLOCK_D columns of the rows stay in registers for the whole codebook stream;
    # wider rows reload their other chunks (from L1/L2) for every code tile.
    first_cols = tl.arange(0, BLOCK_D)
    row_scale = tl.load(row_scale_ptr)
    first_rows = _load_rows(
        x_ptr, row_offsets, row_mask, first_cols, D, stride_xd, row_scale, ROUND_BF16, INTERPRETED
    )
    best_score = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    best_index = tl.zeros([BLOCK_N], dtype=tl.int32)
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
        if SAMPLE:  # Gumbel-max: score / T + log E (see wvq_kernels/triton/sample_codes.py)
            noise = counter_hash.gumbel_noise(first_key, second_key, codes)
            # 1 / T overflowed float32: T is 0 to the scores, the draw is the nearest code.
            scores = tl.where(
                inv_temperature < float("inf"), scores * inv_temperature + noise, scores
            )
        scores = tl.where(code_mask[None, :], scores, float("inf"))
        tile_score, tile_index = tl.min(
            scores, axis=1, return_indices=True, return_indices_tie_break_left=True
        )
        better = tile_score < best_score
        best_score = tl.where(better, tile_score, best_score)
        best_index = tl.where(better, tile_start + tile_index, best_index)
    if SPLIT_K:
        tl.atomic_min(
            keys_ptr + rows, _pack_key(best_score, best_index), mask=row_mask, sem="relaxed"
        )
    else:
        _finish_rows(
            rows,
            row_mask,
            best_index,
            x_ptr,
            stride_xn,
            stride_xd,
            dist_codes_ptr,
            stride_cn,
            stride_cd,
            indices_ptr,
            distances_ptr,
            counts_ptr,
            D,
            METRIC,
            HISTOGRAM,
            BLOCK_D,
            D_CHUNKS,
        )


@triton.jit
def finish_split_kernel(
    keys_ptr,
    x_ptr,
    stride_xn,
    stride_xd,
    dist_codes_ptr,
    stride_cn,
    stride_cd,
    indices_ptr,
    distances_ptr,
    counts_ptr,
    N,
    D,
    METRIC: tl.constexpr,
    HISTOGRAM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    D_CHUNKS: tl.constexpr,
):
    """After split-K: the merged key's low half is the index."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    keys = tl.load(keys_ptr + rows, mask=row_mask, other=0)
    best_index = (keys & 0xFFFFFFFF).to(tl.int32)
    _finish_rows(
        rows,
        row_mask,
        best_index,
        x_ptr,
        stride_xn,
        stride_xd,
        dist_codes_ptr,
        stride_cn,
        stride_cd,
        indices_ptr,
        distances_ptr,
        counts_ptr,
        D,
        METRIC,
        HISTOGRAM,
        BLOCK_D,
        D_CHUNKS,
    )


@triton.jit
def code_norms_kernel(codes_t_ptr, norms_ptr, K, D, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """||c||^2 of BLOCK_K codes of the (D, K) codebook, every code by the same operations (see
    the module docstring), so identical codes get identical norms wherever they sit."""
    codes = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    code_mask = codes < K
    norms = tl.zeros([BLOCK_K], dtype=tl.float32)
    for start in range(0, D, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        tile = _load_code_tile(codes_t_ptr, cols, codes, code_mask, D, K, tl.float32)
        norms += tl.sum(tile * tile, axis=0)
    tl.store(norms_ptr + codes, norms, mask=code_mask)


def code_norms(codes_t: Tensor, arch: str | None) -> Tensor:
    """||c||^2 (K,) fp32 of the transposed codebook's columns."""
    dim, num_codes = codes_t.shape
    config = configs.rows_config("code_norms", dim, arch)
    norms = torch.empty(num_codes, dtype=torch.float32, device=codes_t.device)
    wrap_triton(code_norms_kernel)[(triton.cdiv(num_codes, config.block_rows),)](
        codes_t,
        norms,
        num_codes,
        dim,
        BLOCK_K=config.block_rows,
        BLOCK_D=config.block_d,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return norms


def split_count(num_rows: int, num_codes: int, config: configs.AssignConfig, sms: int) -> int:
    """Code segments per row block: 1 (row-owned) when the row blocks alone fill every SM,
    else enough segments for about one program per SM."""
    row_blocks = triton.cdiv(num_rows, config.block_n)
    if row_blocks >= sms:
        return 1
    return min(triton.cdiv(num_codes, config.block_k), triton.cdiv(sms, row_blocks))


def _scored_operands(x: Tensor, codebook: Tensor, metric: str, precision: str, arch: str | None):
    """(rows to score, their scale (1,), the codes' scale, codes to score transposed (D, K),
    ||c||^2 (l2 only, else empty), codes for the distance). l2 and dot scale extreme inputs by
    powers of two as the reference does (reference.input_scales): the codes here, the rows in
    the kernel."""
    row_scale, code_scale = input_scales(x, codebook, metric)
    codes = codebook.to(torch.float32) * code_scale
    rows = x
    if metric == "cosine":
        rows, codes = normalise_rows(x.to(torch.float32)), normalise_rows(codes)
    dist_codes = codes if metric == "cosine" else codebook
    operand_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    codes_t = codes.to(operand_dtype).T.contiguous()
    # ||c||^2 of the values the dot product sees (bf16-rounded for bf16).
    norms = (
        code_norms(codes_t, arch) if metric == "l2" else codes_t.new_empty(0, dtype=torch.float32)
    )
    return rows, row_scale.reshape(1), code_scale, codes_t, norms, dist_codes


def _unit_inner_stride(t: Tensor) -> tuple[Tensor, int, int]:
    """(t, its row stride, 1): copied first if its columns are strided. With one column the
    column stride addresses nothing, so 1 is passed whatever it is."""
    if t.shape[1] > 1 and t.stride(1) != 1:
        t = t.contiguous()
    return t, t.stride(0), 1


def launch_assign(
    x: Tensor,
    codebook: Tensor,
    metric: str,
    precision: str,
    histogram: bool,
    splits: int | None = None,
    sample: tuple[float, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The op's body; ``splits`` forces a number of code segments (tests take both paths);
    ``sample`` = (temperature > 0, the seed's key) makes it sample_codes'."""
    num_rows, dim = x.shape
    num_codes = codebook.shape[0]
    arch = configs.device_arch(x.device)
    rows, row_scale, code_scale, codes_t, norms, dist_codes = _scored_operands(
        x, codebook, metric, precision, arch
    )
    config = configs.assign_config(dim, configs.dot_kind(precision), arch)
    if sample and arch is not None:  # the interpreter's tiles are for speed, not registers
        config = configs.sample_config(config, arch, configs.dot_kind(precision))
    if splits is None:
        splits = split_count(num_rows, num_codes, config, configs.sm_count(x.device))
    codes_per_split = triton.cdiv(triton.cdiv(num_codes, splits), config.block_k) * config.block_k
    splits = triton.cdiv(num_codes, codes_per_split)
    indices = torch.empty(num_rows, dtype=torch.int64, device=x.device)
    distances = torch.empty(num_rows, dtype=torch.float32, device=x.device)
    counts = torch.zeros(num_codes if histogram else 0, dtype=torch.int64, device=x.device)
    keys = torch.full(
        (num_rows if splits > 1 else 0,), KEY_UNSET, dtype=torch.int64, device=x.device
    )
    constants = {
        "METRIC": METRIC_CODES[metric],
        "HISTOGRAM": histogram,
        "BLOCK_D": config.block_d,
        "D_CHUNKS": triton.cdiv(dim, config.block_d),
    }
    row_args = _unit_inner_stride(rows)
    dist_codes_args = _unit_inner_stride(dist_codes)
    outputs = (indices, distances, counts)
    grid = (triton.cdiv(num_rows, config.block_n), splits)
    wrap_triton(assign_kernel)[grid](
        *row_args,
        row_scale,
        codes_t,
        norms,
        *dist_codes_args,
        keys,
        *outputs,
        num_rows,
        num_codes,
        dim,
        codes_per_split,
        inverse_temperature(sample[0], metric, row_scale, code_scale).reshape(1)
        if sample
        else row_scale,
        counter_hash.signed_word(sample[1]) if sample else 0,
        DOT_PRECISION=DOT_PRECISION[precision],
        ROUND_BF16=precision == "bf16",
        INTERPRETED=configs.INTERPRETED,
        SPLIT_K=splits > 1,
        SAMPLE=sample is not None,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        **constants,
    )
    if splits > 1:
        wrap_triton(finish_split_kernel)[(grid[0],)](
            keys,
            *row_args,
            *dist_codes_args,
            *outputs,
            num_rows,
            dim,
            BLOCK_N=config.block_n,
            num_warps=config.num_warps,
            **constants,
        )
    return indices, distances, counts


@triton_op("wvq_triton::assign", mutates_args=())
def assign(
    x: Tensor, codebook: Tensor, metric: str, precision: str, histogram: bool
) -> tuple[Tensor, Tensor, Tensor]:
    return launch_assign(x, codebook, metric, precision, histogram)
