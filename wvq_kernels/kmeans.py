"""Lloyd's k-means on the fused ops: each iteration is one `assign` (no N×K matrix) and one
deterministic `code_sums`, so it runs at K = 65,536 in O(N + K·D) memory."""

from __future__ import annotations

import torch

from . import _trusted as kernels
from . import _validation as check

__all__ = ["kmeans"]


def _initial_codebook(
    rows: torch.Tensor, num_codes: int, generator: torch.Generator
) -> torch.Tensor:
    # Distinct rows when there are enough; sampling with replacement otherwise.
    if rows.shape[0] >= num_codes:
        picks = torch.randperm(rows.shape[0], generator=generator)[:num_codes]
    else:
        picks = torch.randint(rows.shape[0], (num_codes,), generator=generator)
    return rows[picks.to(rows.device)]


def kmeans(
    x: torch.Tensor, num_codes: int, iters: int = 10, *, seed: int = 0, backend: str = "auto"
) -> torch.Tensor:
    """Returns a float32 codebook (num_codes, D) fitted to the rows of `x` (..., D), of any
    floating-point dtype (float64 is rounded to float32 once; half dtypes convert exactly).

    Codes that lose all their rows keep their previous position (a later dead-code
    replacement step, if any, is the place to move them)."""
    check.check_tensor("x", x)
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point dtype, got {x.dtype}")
    check.check_rows("x", x)
    num_codes = check.check_num_codes(num_codes)
    if iters < 0:
        raise ValueError(f"iters: expected iters >= 0, got {iters}")
    rows = x.detach().reshape(-1, x.shape[-1]).float()
    if rows.shape[0] == 0:
        raise ValueError("x: expected at least one row, got none")
    check.check_finite("x", rows)
    generator = torch.Generator().manual_seed(seed)
    codebook = _initial_codebook(rows, num_codes, generator)
    for _ in range(iters):
        indices = kernels.assign(rows, codebook, backend=backend).indices
        counts, sums = kernels.code_sums(indices, rows, num_codes, backend=backend)
        filled = counts > 0
        means = sums / counts.clamp_min(1)[:, None].float()
        codebook = torch.where(filled[:, None], means, codebook)
    return codebook
