"""Count, mean and population covariance of the rows in one pass, in Triton.

Each program owns a contiguous range of rows and a (column block i, column block j) pair of
the covariance. It walks its rows tile by tile, all in float64: a tile is centred on its own
mean (so a large common offset costs nothing), its centred sums of products are one tl.dot, and
the tile is folded into the program's running (count, mean, M2) with the Chan formula. The
per-program partials are then merged in float64 on the device, in program order (the many-part
form of the same formula): no host sync, and the same bits on every run.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from wvq_kernels.triton import configs

# Partial covariances take programs * D * D * 8 bytes: at most 32 MiB.
PARTIAL_ELEMENTS = 1 << 22


@triton.jit
def moments_kernel(
    x_ptr,
    stride_xn,
    stride_xd,
    N,
    D,
    rows_per_program,
    means_ptr,  # (programs, D) float64 partial means
    m2_ptr,  # (programs, D, D) float64 partial centred sums of products
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    program = tl.program_id(0)
    cols_i = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cols_j = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    start = program * rows_per_program
    stop = tl.minimum(N, start + rows_per_program)
    count = tl.zeros([], dtype=tl.float64)
    mean_i = tl.zeros([BLOCK_D], dtype=tl.float64)
    mean_j = tl.zeros([BLOCK_D], dtype=tl.float64)
    m2 = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float64)
    for tile_start in range(start, stop, BLOCK_ROWS):
        rows = tile_start + tl.arange(0, BLOCK_ROWS)
        row_mask = rows < stop
        tile_count = tl.minimum(stop - tile_start, BLOCK_ROWS).to(tl.float64)
        tile_mean_i, centred_i, sum_i = _centred_tile(
            x_ptr, rows, row_mask, cols_i, D, stride_xn, stride_xd, tile_count
        )
        tile_mean_j, centred_j, sum_j = _centred_tile(
            x_ptr, rows, row_mask, cols_j, D, stride_xn, stride_xd, tile_count
        )
        # Centred on a rounded mean; the outer product of the residual sums corrects for it.
        tile_m2 = tl.dot(tl.trans(centred_i), centred_j, input_precision="ieee")
        tile_m2 -= sum_i[:, None] * sum_j[None, :] / tile_count
        total = count + tile_count
        delta_i = tile_mean_i - mean_i
        delta_j = tile_mean_j - mean_j
        m2 += tile_m2 + delta_i[:, None] * delta_j[None, :] * (count * tile_count / total)
        mean_i += delta_i * (tile_count / total)
        mean_j += delta_j * (tile_count / total)
        count = total
    partial = program.to(tl.int64) * D
    m2_pointers = m2_ptr + (partial + cols_i[:, None]) * D + cols_j[None, :]
    tl.store(m2_pointers, m2, mask=(cols_i < D)[:, None] & (cols_j < D)[None, :])
    if tl.program_id(2) == 0:
        tl.store(means_ptr + partial + cols_i, mean_i, mask=cols_i < D)


@triton.jit
def _centred_tile(x_ptr, rows, row_mask, cols, D, stride_xn, stride_xd, tile_count):
    """(tile mean, tile centred on its rounded mean, sums of the residuals), all float64."""
    mask = row_mask[:, None] & (cols < D)[None, :]
    # Both products in int64: a strided x can put column D - 1 past 2**31 elements.
    pointers = (
        x_ptr + rows[:, None].to(tl.int64) * stride_xn + cols[None, :].to(tl.int64) * stride_xd
    )
    tile = tl.load(pointers, mask=mask, other=0.0).to(tl.float64)
    shift = tl.sum(tile, axis=0) / tile_count
    centred = tl.where(mask, tile - shift[None, :], 0.0)
    residual = tl.sum(centred, axis=0)
    return shift + residual / tile_count, centred, residual


def launch_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    num_rows, dim = x.shape
    arch = configs.device_arch(x.device)
    config = configs.rows_config("moments", dim, arch)
    most_programs = max(1, min(2 * configs.sm_count(x.device), PARTIAL_ELEMENTS // dim**2))
    programs = min(triton.cdiv(num_rows, config.block_rows), most_programs)
    rows_per_program = triton.cdiv(triton.cdiv(num_rows, programs), config.block_rows)
    rows_per_program *= config.block_rows
    programs = triton.cdiv(num_rows, rows_per_program)
    means = torch.empty(programs, dim, dtype=torch.float64, device=x.device)
    m2 = torch.empty(programs, dim, dim, dtype=torch.float64, device=x.device)
    column_blocks = triton.cdiv(dim, config.block_d)
    wrap_triton(moments_kernel)[(programs, column_blocks, column_blocks)](
        x,
        x.stride(0),
        x.stride(1),
        num_rows,
        dim,
        rows_per_program,
        means,
        m2,
        BLOCK_ROWS=config.block_rows,
        BLOCK_D=config.block_d,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return _merge_partials(num_rows, rows_per_program, means, m2)


def _merge_partials(num_rows: int, rows_per_program: int, means: Tensor, m2: Tensor):
    """Chan's formula over all partials at once: mean = sum n_p mean_p / n,
    M2 = sum M2_p + sum n_p (mean_p - mean)(mean_p - mean)^T."""
    starts = torch.arange(means.shape[0], device=means.device) * rows_per_program
    counts = (num_rows - starts).clamp(max=rows_per_program).to(torch.float64)
    mean = counts @ means / num_rows
    delta = means - mean
    cov = (m2.sum(dim=0) + (delta.T * counts) @ delta) / num_rows
    count = torch.full((), num_rows, dtype=torch.int64, device=means.device)
    return count, mean, cov


@triton_op("wvq_triton::moments", mutates_args=())
def moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return launch_moments(x)
