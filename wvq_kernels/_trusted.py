"""The trusted internal path to the ops, for the library's own callers (modules, k-means, the
application) whose arguments are valid by construction.

Same signatures and results as the public functions of ``wvq_kernels.ops``, but nothing is
checked: no dtype or shape checks, no index-range or finiteness scans. Nothing here reads a
tensor value on the host, so a module's forward built on these calls never syncs with the host
and traces whole under ``torch.compile(fullgraph=True)``. The public functions validate, then
call these: this is also the one layer that flattens ``(..., D)`` rows and answers N = 0
without launching a kernel.
"""

import torch
from torch import Tensor

from wvq_kernels._backends import resolve_backend
from wvq_kernels._registration import kernel
from wvq_kernels._types import Assignment, Moments, Sample, SoftAssignEntropy, SoftAssignStats
from wvq_kernels._validation import resolve_precision


def assign(
    x: Tensor,
    codebook: Tensor,
    *,
    metric: str = "l2",
    precision: str = "auto",
    histogram: bool = False,
    backend: str = "auto",
) -> Assignment:
    backend = resolve_backend(backend, x.device)
    rows = _rows(x.detach())
    num_codes = codebook.shape[0]
    if rows.shape[0] == 0:
        empty = torch.zeros(num_codes, dtype=torch.int64, device=x.device)
        indices = torch.empty(x.shape[:-1], dtype=torch.int64, device=x.device)
        distances = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
        return Assignment(indices, distances, empty if histogram else None)
    indices, distances, counts = kernel(backend, "assign")(
        rows, codebook.detach(), metric, resolve_precision(precision, x.dtype), bool(histogram)
    )
    batch_shape = x.shape[:-1]
    return Assignment(
        indices.reshape(batch_shape), distances.reshape(batch_shape), counts if histogram else None
    )


def assign_topk(
    x: Tensor,
    codebook: Tensor,
    k: int,
    *,
    metric: str = "l2",
    precision: str = "auto",
    histogram: bool = False,
    backend: str = "auto",
) -> Assignment:
    backend = resolve_backend(backend, x.device, op="assign_topk")
    rows = _rows(x.detach())
    num_codes = codebook.shape[0]
    batch_shape = (*x.shape[:-1], k)
    if rows.shape[0] == 0:
        empty = torch.zeros(num_codes, dtype=torch.int64, device=x.device)
        indices = torch.empty(batch_shape, dtype=torch.int64, device=x.device)
        distances = torch.empty(batch_shape, dtype=torch.float32, device=x.device)
        return Assignment(indices, distances, empty if histogram else None)
    indices, distances, counts = kernel(backend, "assign_topk")(
        rows, codebook.detach(), k, metric, resolve_precision(precision, x.dtype), bool(histogram)
    )
    return Assignment(
        indices.reshape(batch_shape), distances.reshape(batch_shape), counts if histogram else None
    )


def code_histogram(indices: Tensor, num_codes: int, *, backend: str = "auto") -> Tensor:
    backend = resolve_backend(backend, indices.device)
    flat = indices.detach().reshape(-1)
    if flat.numel() == 0:
        return torch.zeros(num_codes, dtype=torch.int64, device=indices.device)
    return kernel(backend, "code_histogram")(flat.to(torch.int64), num_codes)


def code_sums(
    indices: Tensor, x: Tensor, num_codes: int, *, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    backend = resolve_backend(backend, x.device)
    rows = _rows(x.detach())
    if rows.shape[0] == 0:
        return (
            torch.zeros(num_codes, dtype=torch.int64, device=x.device),
            torch.zeros(num_codes, rows.shape[1], dtype=torch.float32, device=x.device),
        )
    flat = indices.detach().reshape(-1).to(torch.int64)
    return kernel(backend, "code_sums")(flat, rows, num_codes)


def usage(counts: Tensor, *, backend: str = "auto") -> tuple[Tensor, Tensor]:
    backend = resolve_backend(backend, counts.device)
    return kernel(backend, "usage")(counts.detach().to(torch.int64))


def moments(x: Tensor, *, backend: str = "auto") -> Moments:
    backend = resolve_backend(backend, x.device)
    rows = _rows(x)
    if rows.shape[0] == 0:
        zeros = torch.zeros(rows.shape[1], dtype=torch.float64, device=x.device)
        count = torch.zeros((), dtype=torch.int64, device=x.device)
        return Moments(count, zeros, torch.outer(zeros, zeros))
    return Moments(*kernel(backend, "moments")(rows))


def soft_assign_stats(
    x: Tensor, codebook: Tensor, *, tau: float, lam: float = 0.01, backend: str = "auto"
) -> SoftAssignStats:
    backend = resolve_backend(backend, x.device, op="soft_assign_stats")
    rows = _rows(x.detach())
    # No rows: the reference's zeros, with the same codebook gradient (zero) as every backend.
    run = kernel("reference" if rows.shape[0] == 0 else backend, "soft_assign_stats")
    loss, weight_sums, weighted_sums, indices, distances = run(rows, codebook, tau, lam)
    batch_shape = x.shape[:-1]
    return SoftAssignStats(
        loss,
        weight_sums,
        weighted_sums,
        indices.reshape(batch_shape),
        distances.reshape(batch_shape),
    )


def sample_codes(
    x: Tensor,
    codebook: Tensor,
    temperature: float,
    *,
    seed: int = 0,
    metric: str = "l2",
    precision: str = "auto",
    backend: str = "auto",
) -> Sample:
    backend = resolve_backend(backend, x.device, op="sample_codes")
    rows = _rows(x.detach())
    batch_shape = x.shape[:-1]
    if rows.shape[0] == 0:
        return Sample(
            torch.empty(batch_shape, dtype=torch.int64, device=x.device),
            torch.empty(batch_shape, dtype=torch.float32, device=x.device),
        )
    indices, distances = kernel(backend, "sample_codes")(
        rows,
        codebook.detach(),
        float(temperature),
        int(seed),
        metric,
        resolve_precision(precision, x.dtype),
    )
    return Sample(indices.reshape(batch_shape), distances.reshape(batch_shape))


def soft_assign_entropy(
    x: Tensor, codebook: Tensor, *, tau: float, metric: str = "l2", backend: str = "auto"
) -> SoftAssignEntropy:
    backend = resolve_backend(backend, x.device, op="soft_assign_entropy")
    rows = _rows(x)
    if metric == "cosine":  # 1 - cos = ||x^ - e^||^2 / 2 on unit vectors
        rows, codebook, tau = unit_rows(rows), unit_rows(codebook), 2.0 * tau
    # No rows: the reference's empty results, with zero gradients on every backend.
    run = kernel("reference" if rows.shape[0] == 0 else backend, "soft_assign_entropy")
    entropies, mean = run(rows, codebook, tau)
    row_entropy = entropies.sum() / max(rows.shape[0], 1)
    code_entropy = distribution_entropy(mean)
    return SoftAssignEntropy(row_entropy, mean, code_entropy, entropies.reshape(x.shape[:-1]))


def distribution_entropy(probabilities: Tensor) -> Tensor:
    """-sum p log p of a distribution (K,), differentiable. A code whose probability underflows
    to 0 gets the finite gradient -(log tiny + 1), not -inf (which times the zero probabilities
    in the backward would give NaN)."""
    tiny = torch.finfo(probabilities.dtype).tiny
    return -torch.special.xlogy(probabilities, probabilities.clamp_min(tiny)).sum()


def unit_rows(t: Tensor) -> Tensor:
    """Rows scaled to unit norm, differentiably (zero rows stay zero)."""
    return torch.nn.functional.normalize(t, dim=-1)


def _rows(x: Tensor) -> Tensor:
    """``(..., D)`` as the 2-D rows the kernels take (a view where the layout allows)."""
    return x.reshape(-1, x.shape[-1])
