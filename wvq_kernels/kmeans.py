"""Lloyd's k-means on the fused ops: each iteration is one `assign` (no N×K matrix) and one
deterministic `code_sums`, so it runs at K = 65,536 in O(N + K·D) memory."""

from __future__ import annotations

import torch
import torch.distributed

from . import _trusted as kernels
from . import _validation as check
from . import distributed

__all__ = ["kmeans"]


def _initial_codebook(
    rows: torch.Tensor, num_codes: int, generator: torch.Generator
) -> torch.Tensor:
    return rows[_draw(rows.shape[0], num_codes, generator).to(rows.device)]


def _draw(num_rows: int, num_codes: int, generator: torch.Generator) -> torch.Tensor:
    # Distinct rows when there are enough; sampling with replacement otherwise.
    if num_rows >= num_codes:
        return torch.randperm(num_rows, generator=generator)[:num_codes]
    return torch.randint(num_rows, (num_codes,), generator=generator)


def kmeans(
    x: torch.Tensor,
    num_codes: int,
    iters: int = 10,
    *,
    seed: int = 0,
    process_group=None,
    backend: str = "auto",
) -> torch.Tensor:
    """Returns a float32 codebook (num_codes, D) fitted to the rows of `x` (..., D), of any
    floating-point dtype (float64 is rounded to float32 once; half dtypes convert exactly).

    Codes that lose all their rows keep their previous position (a later dead-code
    replacement step, if any, is the place to move them).

    With a process group (or torch.distributed initialised; see
    :func:`wvq_kernels.distributed.is_distributed`) `x` is this rank's share of the rows, which
    may be empty on some ranks: every rank gets the same codebook, the one a single process
    computes on the ranks' rows concatenated in rank order (same `seed`), up to the rounding
    of the summed per-code sums. Every rank must pass the same num_codes, iters and seed."""
    check.check_tensor("x", x)
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point dtype, got {x.dtype}")
    check.check_rows("x", x)
    num_codes = check.check_num_codes(num_codes)
    if iters < 0:
        raise ValueError(f"iters: expected iters >= 0, got {iters}")
    rows = x.detach().reshape(-1, x.shape[-1]).float()
    check.check_finite("x", rows)
    if not distributed.is_distributed(process_group):
        if rows.shape[0] == 0:
            raise ValueError("x: expected at least one row, got none")
        generator = torch.Generator().manual_seed(seed)
        codebook = _initial_codebook(rows, num_codes, generator)
    else:
        codebook = _initial_codebook_distributed(rows, num_codes, seed, process_group)
    for _ in range(iters):
        indices = kernels.assign(rows, codebook, backend=backend).indices
        counts, sums = kernels.code_sums(indices, rows, num_codes, backend=backend)
        counts = distributed.all_reduce_histogram(counts, process_group)
        sums = distributed.all_reduce_code_sums(sums, process_group)
        filled = counts > 0
        means = sums / counts.clamp_min(1)[:, None].float()
        codebook = torch.where(filled[:, None], means, codebook)
    return codebook


def _initial_codebook_distributed(
    rows: torch.Tensor, num_codes: int, seed: int, process_group
) -> torch.Tensor:
    """The draw _initial_codebook makes on the ranks' rows concatenated in rank order, without
    concatenating them: every rank draws the same global picks, and only the picked rows are
    gathered (each from the rank that holds it)."""
    sizes = distributed.all_gather_sizes(rows.shape[0], process_group)
    total = sum(sizes)
    if total == 0:
        raise ValueError("x: expected at least one row on some rank, got none on every rank")
    generator = torch.Generator().manual_seed(seed)
    picks = _draw(total, num_codes, generator)
    rank = torch.distributed.get_rank(process_group)
    start = sum(sizes[:rank])
    mine = (picks >= start) & (picks < start + rows.shape[0])
    local = rows[(picks[mine] - start).to(rows.device)]
    # Gathered in rank order, the picked rows come grouped by owner and, within an owner, in
    # pick order: a stable sort of the picks by owner gives where each one lands.
    gathered = distributed.all_gather_rows(local, process_group)
    owner = torch.bucketize(picks, torch.tensor(sizes).cumsum(0), right=True)
    order = torch.sort(owner, stable=True).indices
    codebook = torch.empty_like(gathered)
    codebook[order.to(rows.device)] = gathered
    return codebook
