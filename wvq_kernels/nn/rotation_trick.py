"""Gradient estimators through the quantization step: the rotation trick and its peers.

Each takes the features ``e`` (``(..., D)``, differentiable) and their quantized codes ``q``
(same shape) and returns a tensor whose value is ``q`` (up to rounding) and whose gradient
reaches ``e`` by the estimator's rule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["directional_reparam", "rotate_to", "straight_through"]

# Norms below this are treated as this, so that a zero feature or code gives a finite gradient
# (and the same floor as vector-quantize-pytorch, whose outputs these must match).
NORM_FLOOR = 1e-6


def straight_through(features: Tensor, codes: Tensor) -> Tensor:
    """``e + sg(q − e)``: value q, identity gradient to e."""
    return features + (codes - features).detach()


class _RotateTo(torch.autograd.Function):
    """Value q, gradient to e the output gradient g rotated by Rᵀ and scaled by ‖q‖/‖e‖:
    ``Rᵀ g = g − 2 (g·r) r + 2 (g·q̂) ê``. Written out rather than left to autograd, which would
    run the forward formula and its derivative: about twice as many passes over (N, D)."""

    @staticmethod
    def forward(features: Tensor, codes: Tensor) -> Tensor:
        # A view, not a copy: the codes are the value.
        return codes.view_as(codes)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        features, codes = inputs
        ctx.save_for_backward(features.detach(), codes)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        features, codes = ctx.saved_tensors
        features_norm = features.norm(dim=-1, keepdim=True).clamp_min(NORM_FLOOR)
        codes_norm = codes.norm(dim=-1, keepdim=True).clamp_min(NORM_FLOOR)
        e_hat = features / features_norm
        q_hat = codes / codes_norm
        r = F.normalize(e_hat + q_hat, dim=-1, eps=NORM_FLOOR)
        scale = codes_norm / features_norm
        along_r = -2 * scale * (grad * r).sum(-1, keepdim=True)
        along_e = 2 * scale * (grad * q_hat).sum(-1, keepdim=True)
        rotated = torch.addcmul(grad * scale, along_r, r)
        return torch.addcmul(rotated, along_e, e_hat), None


def rotate_to(features: Tensor, codes: Tensor) -> Tensor:
    """The rotation trick (Fifty et al. 2024, "Restructuring vector quantization with the
    rotation trick", eq. 4 and section 4.2): ``sg(‖q‖/‖e‖) · sg(R) e`` with the rotation
    ``R = I − 2 r rᵀ + 2 q̂ êᵀ``, ``r = (ê + q̂)/‖ê + q̂‖``, which maps ê onto q̂. The value is q;
    the gradient to e is the output gradient rotated by Rᵀ and scaled by ‖q‖/‖e‖, so it keeps
    the angle it makes with q where plain straight-through copies it unchanged.

    R is applied to the gradient as ``g − 2 (g·r) r + 2 (g·q̂) ê`` (never built): O(D) per
    row. No gradient reaches the codes."""
    return _RotateTo.apply(features, codes.detach())


def directional_reparam(features: Tensor, codes: Tensor, noise_variance: float) -> Tensor:
    """DiVeQ (directional reparameterisation): ``e + sg(u)·‖q − e‖`` with u the unit vector
    along ``q − e`` plus Gaussian noise of variance ``noise_variance``. The value is q up to
    that noise in direction; the gradient reaches both e and the codes through the length
    ``‖q − e‖``, which is how the codebook learns without a codebook loss."""
    error = codes - features
    noisy = error.detach() + math.sqrt(noise_variance) * torch.randn_like(error)
    direction = F.normalize(noisy, dim=-1, eps=NORM_FLOOR)
    return features + direction * error.norm(dim=-1, keepdim=True)
