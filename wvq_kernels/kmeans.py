"""Lloyd's k-means on the fused ops: each iteration is one `assign` (no N×K matrix) and one
deterministic `code_sums`, so it runs at K = 65,536 in O(N + K·D) memory."""
from __future__ import annotations

import torch

from .ops import assign, code_sums

__all__ = ["kmeans"]


def _initial_codebook(x: torch.Tensor, num_codes: int, generator: torch.Generator) -> torch.Tensor:
    # Distinct rows when there are enough; sampling with replacement otherwise.
    if x.shape[0] >= num_codes:
        rows = torch.randperm(x.shape[0], generator=generator)[:num_codes]
    else:
        rows = torch.randint(x.shape[0], (num_codes,), generator=generator)
    return x[rows.to(x.device)].float()


def kmeans(x: torch.Tensor, num_codes: int, iters: int = 10, *, seed: int = 0,
           backend: str = "auto") -> torch.Tensor:
    """Returns a float32 codebook (num_codes, D) fitted to the rows of `x` (..., D).

    Codes that lose all their rows keep their previous position (a later dead-code
    replacement step, if any, is the place to move them)."""
    if not x.is_floating_point():
        raise TypeError(f"kmeans: x must be floating point, got {x.dtype}")
    if num_codes <= 0:
        raise ValueError(f"kmeans: num_codes must be positive, got {num_codes}")
    if iters < 0:
        raise ValueError(f"kmeans: iters must be >= 0, got {iters}")
    rows = x.detach().reshape(-1, x.shape[-1])
    if rows.shape[0] == 0:
        raise ValueError("kmeans: x has no rows")
    generator = torch.Generator().manual_seed(seed)
    codebook = _initial_codebook(rows, num_codes, generator)
    for _ in range(iters):
        indices = assign(rows, codebook, backend=backend).indices
        counts, sums = code_sums(indices, rows, num_codes, backend=backend)
        filled = counts > 0
        codebook = torch.where(filled[:, None], sums / counts.clamp_min(1)[:, None].float(), codebook)
    return codebook
