"""Distribution-matching losses for vector quantization.

`gaussian_w2` is the closed-form 2-Wasserstein distance between two Gaussians,

    W² = |μa − μb|² + tr Σa + tr Σb − 2 tr (Σa^½ Σb Σa^½)^½,

the distribution loss of Wasserstein VQ. Only eigenvalues of the d×d matrices are needed, and
the gradients below are written in terms of matrix square roots only, with no 1/(λi − λj)
factors, so they stay finite for repeated eigenvalues and rank-deficient (even all-zero)
covariances.
"""

from __future__ import annotations

import torch

from wvq_kernels import _validation as check

__all__ = ["gaussian_w2"]

_METHODS = ("eigh", "newton_schulz")
# The reference implementation takes W = sqrt(max(W², 0) + 1e-10) so that W = 0 has a gradient.
_SQRT_FLOOR = 1e-10


def _sym(matrix: torch.Tensor) -> torch.Tensor:
    return 0.5 * (matrix + matrix.transpose(-1, -2))


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Principal square root of a symmetric PSD matrix; negative rounding noise is clamped."""
    values, vectors = torch.linalg.eigh(_sym(matrix))
    return (vectors * values.clamp_min(0).sqrt().unsqueeze(-2)) @ vectors.transpose(-1, -2)


def _weighted_inverse_sqrt(inner: torch.Tensor, outer: torch.Tensor, eps: float) -> torch.Tensor:
    """d/dB Σ sqrt(λ(S B S) + eps) = S V diag(1 / (2 sqrt(λ + eps))) Vᵀ S, with S = outer and
    S B S = inner = V diag(λ) Vᵀ: exact for the eps-regularised trace, eigenvalues only."""
    values, vectors = torch.linalg.eigh(_sym(inner))
    weights = 0.5 / (values.clamp_min(0) + eps).sqrt()
    middle = (vectors * weights.unsqueeze(-2)) @ vectors.transpose(-1, -2)
    return outer @ middle @ outer


class _TraceSqrtProduct(torch.autograd.Function):
    """tr (A^½ B A^½)^½ with each eigenvalue regularised as sqrt(λ + eps); float64 inside.

    The value is symmetric in A and B (the eigenvalues are those of A B), which gives the
    gradient with respect to A by swapping roles."""

    @staticmethod
    def forward(ctx, cov_a, cov_b, eps):
        a, b = cov_a.double(), cov_b.double()
        sqrt_a = _psd_sqrt(a)
        values = torch.linalg.eigvalsh(_sym(sqrt_a @ b @ sqrt_a))
        ctx.save_for_backward(a, b, sqrt_a)
        ctx.eps = eps
        ctx.dtypes = (cov_a.dtype, cov_b.dtype)
        return (values.clamp_min(0) + eps).sqrt().sum().to(cov_a.dtype)

    @staticmethod
    def backward(ctx, grad):
        a, b, sqrt_a = ctx.saved_tensors
        grad_a = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_b = _weighted_inverse_sqrt(sqrt_a @ b @ sqrt_a, sqrt_a, ctx.eps)
            grad_b = (grad.double() * grad_b).to(ctx.dtypes[1])
        if ctx.needs_input_grad[0]:
            sqrt_b = _psd_sqrt(b)
            grad_a = _weighted_inverse_sqrt(sqrt_b @ a @ sqrt_b, sqrt_b, ctx.eps)
            grad_a = (grad.double() * grad_a).to(ctx.dtypes[0])
        return grad_a, grad_b, None


def _newton_schulz_sqrt(matrix: torch.Tensor, iterations: int) -> torch.Tensor:
    """Coupled Newton–Schulz iteration for the square root of a PSD matrix: matmuls only, so
    no host synchronisation on a GPU, and differentiable by ordinary autograd."""
    dim = matrix.shape[-1]
    identity = torch.eye(dim, dtype=matrix.dtype, device=matrix.device)
    norm = torch.linalg.matrix_norm(matrix).clamp_min(1e-30)
    y, z = matrix / norm, identity
    for _ in range(iterations):
        t = 0.5 * (3.0 * identity - z @ y)
        y, z = y @ t, t @ z
    return y * norm.sqrt()


def _trace_sqrt_newton_schulz(cov_a, cov_b, eps, iterations):
    a, b = cov_a.double(), cov_b.double()
    dim = a.shape[-1]
    jitter = eps * torch.eye(dim, dtype=a.dtype, device=a.device)
    sqrt_a = _newton_schulz_sqrt(_sym(a) + jitter, iterations)
    inner = _sym(sqrt_a @ b @ sqrt_a) + jitter
    return torch.diagonal(_newton_schulz_sqrt(inner, iterations), dim1=-2, dim2=-1).sum()


def _check_gaussian(name: str, mean: torch.Tensor, cov: torch.Tensor) -> None:
    if not (mean.is_floating_point() and cov.is_floating_point()):
        raise TypeError(
            f"{name}: mean and cov must be floating point, got {mean.dtype}, {cov.dtype}"
        )
    dim = mean.shape[-1] if mean.dim() == 1 else None
    if mean.dim() != 1 or cov.shape != (dim, dim):
        raise ValueError(
            f"{name}: expected mean (d,) and cov (d, d), got {tuple(mean.shape)} "
            f"and {tuple(cov.shape)}"
        )


def gaussian_w2(
    mean_a: torch.Tensor,
    cov_a: torch.Tensor,
    mean_b: torch.Tensor,
    cov_b: torch.Tensor,
    *,
    squared: bool = False,
    method: str = "eigh",
    eps: float = 1e-8,
    iterations: int = 30,
) -> torch.Tensor:
    """2-Wasserstein distance between N(mean_a, cov_a) and N(mean_b, cov_b).

    Returns W² when `squared`, else W = sqrt(max(W², 0) + 1e-10) (the Wasserstein-VQ
    convention). `method="eigh"` is exact (two symmetric eigenvalue solves in float64);
    `"newton_schulz"` uses `iterations` coupled Newton–Schulz steps and never synchronises
    with the host. `eps` is added to every eigenvalue inside the square roots. The result is a
    0-dim tensor in float64 (the d×d algebra is done in float64 whatever the input dtype).
    """
    _check_gaussian("gaussian_w2 (a)", mean_a, cov_a)
    _check_gaussian("gaussian_w2 (b)", mean_b, cov_b)
    if mean_a.shape != mean_b.shape:
        raise ValueError(f"gaussian_w2: dimensions differ, {mean_a.shape[0]} vs {mean_b.shape[0]}")
    if method not in _METHODS:
        raise ValueError(f"gaussian_w2: method must be one of {_METHODS}, got {method!r}")
    eps = check.check_real("eps", eps, lowest=0.0, inclusive=True)
    iterations = check.check_count("iterations", iterations, lowest=1)
    if method == "eigh":
        cross = _TraceSqrtProduct.apply(cov_a.double(), cov_b.double(), eps)
    else:
        cross = _trace_sqrt_newton_schulz(cov_a, cov_b, eps, iterations)
    mean_term = (mean_a.double() - mean_b.double()).square().sum()
    traces = torch.diagonal(cov_a.double()).sum() + torch.diagonal(cov_b.double()).sum()
    w2 = mean_term + traces - 2.0 * cross
    if squared:
        return w2
    return (w2.clamp_min(0) + _SQRT_FLOOR).sqrt()
