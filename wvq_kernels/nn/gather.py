"""``codes[indices]`` with a deterministic backward.

PyTorch's backward of an index gather is ``index_put_(accumulate=True)``, whose float
additions into one code row happen in thread (CPU) or atomic (GPU) order, so the codebook
gradient, and with it a whole training run, differs from run to run in the last bits. Here the
backward is the library's ``code_sums``, which sums each code's rows in a fixed order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _trusted as kernels

__all__ = ["gather_codes"]


class _GatherCodes(torch.autograd.Function):
    @staticmethod
    def forward(codes: Tensor, indices: Tensor, backend: str) -> Tensor:
        return codes[indices]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        codes, indices, backend = inputs
        ctx.save_for_backward(indices)
        ctx.num_codes, ctx.dtype, ctx.backend = codes.shape[0], codes.dtype, backend

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (indices,) = ctx.saved_tensors
        # code_sums adds in float32 whatever the gradient's dtype; the codes' gradient must
        # carry the codes' dtype.
        _, sums = kernels.code_sums(
            indices, grad.reshape(-1, grad.shape[-1]), ctx.num_codes, backend=ctx.backend
        )
        return sums.to(ctx.dtype), None, None


def gather_codes(codes: Tensor, indices: Tensor, backend: str = "auto") -> Tensor:
    """``codes[indices]`` (``indices.shape + codes.shape[1:]``) for a (K, D) codebook, whose
    gradient to ``codes`` is the same bits on every run and thread count."""
    return _GatherCodes.apply(codes, indices, backend)
