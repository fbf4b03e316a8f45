"""Code histogram, per-code sums and usage statistics in Triton.

The histogram adds ones with integer atomics, exact in any order. Code sums must be bitwise
deterministic, so they never use float atomics: the rows are ordered by code (a stable sort of
the indices), and each code's segment of rows (starting at the exclusive prefix sum of the
counts) is added in that fixed order and by a fixed tree, in float64.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from wvq_kernels import reference
from wvq_kernels.triton import configs


@triton.jit
def histogram_kernel(indices_ptr, counts_ptr, N, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < N
    codes = tl.load(indices_ptr + offsets, mask=mask, other=0)
    tl.atomic_add(counts_ptr + codes, 1, mask=mask, sem="relaxed")


@triton.jit
def code_sums_kernel(
    order_ptr,  # (N,) int64 row numbers sorted by code (stable)
    starts_ptr,
    counts_ptr,  # (K,) int64 segment start in ``order`` and length
    x_ptr,
    stride_xn,
    stride_xd,
    sums_ptr,
    K,
    D,
    BLOCK_CODES: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """BLOCK_CODES codes side by side; each step adds the next BLOCK_ROWS rows of every code's
    segment by a fixed tree, into float64 sums: the same inputs give the same bits."""
    codes = tl.program_id(0) * BLOCK_CODES + tl.arange(0, BLOCK_CODES)
    code_mask = codes < K
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D
    starts = tl.load(starts_ptr + codes, mask=code_mask, other=0)
    counts = tl.load(counts_ptr + codes, mask=code_mask, other=0)
    sums = tl.zeros([BLOCK_CODES, BLOCK_D], dtype=tl.float64)
    for first in range(0, tl.max(counts, axis=0), BLOCK_ROWS):
        positions = first + tl.arange(0, BLOCK_ROWS)
        has_row = positions[None, :] < counts[:, None]
        rows = tl.load(order_ptr + starts[:, None] + positions[None, :], mask=has_row, other=0)
        pointers = (
            x_ptr + rows[:, :, None] * stride_xn + cols[None, None, :].to(tl.int64) * stride_xd
        )
        mask = has_row[:, :, None] & col_mask[None, None, :]
        values = tl.load(pointers, mask=mask, other=0.0)
        sums += tl.sum(values.to(tl.float64), axis=1)
    pointers = sums_ptr + codes[:, None].to(tl.int64) * D + cols[None, :]
    tl.store(pointers, sums.to(tl.float32), mask=code_mask[:, None] & col_mask[None, :])


def launch_histogram(indices: Tensor, num_codes: int) -> Tensor:
    config = configs.rows_config("histogram", 1, configs.device_arch(indices.device))
    counts = torch.zeros(num_codes, dtype=torch.int64, device=indices.device)
    indices = indices.contiguous()
    grid = (triton.cdiv(indices.numel(), config.block_rows),)
    wrap_triton(histogram_kernel)[grid](
        indices, counts, indices.numel(), BLOCK=config.block_rows, num_warps=config.num_warps
    )
    return counts


def launch_code_sums(indices: Tensor, x: Tensor, num_codes: int) -> tuple[Tensor, Tensor]:
    dim = x.shape[1]
    config = configs.rows_config("code_sums", dim, configs.device_arch(x.device))
    counts = launch_histogram(indices, num_codes)
    order = torch.sort(indices, stable=True).indices
    starts = torch.cumsum(counts, dim=0) - counts
    sums = torch.empty(num_codes, dim, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(num_codes, config.block_codes), triton.cdiv(dim, config.block_d))
    wrap_triton(code_sums_kernel)[grid](
        order,
        starts,
        counts,
        x,
        x.stride(0),
        x.stride(1),
        sums,
        num_codes,
        dim,
        BLOCK_CODES=config.block_codes,
        BLOCK_ROWS=config.block_rows,
        BLOCK_D=config.block_d,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return counts, sums


@triton_op("wvq_triton::code_histogram", mutates_args=())
def code_histogram(indices: Tensor, num_codes: int) -> Tensor:
    return launch_histogram(indices, num_codes)


@triton_op("wvq_triton::code_sums", mutates_args=())
def code_sums(indices: Tensor, x: Tensor, num_codes: int) -> tuple[Tensor, Tensor]:
    return launch_code_sums(indices, x, num_codes)


@triton_op("wvq_triton::usage", mutates_args=())
def usage(counts: Tensor) -> tuple[Tensor, Tensor]:
    # A K-element reduction that PyTorch fuses well enough; no kernel of its own.
    return reference.usage(counts)
