"""The public ops: each validates its arguments, then runs on one backend.

Backends and ``backend="auto"`` are described in ``wvq_kernels._backends``; the checks live in
``wvq_kernels._validation``, the fake kernels and autograd formulas in
``wvq_kernels._registration``, and the unchecked calls that do the work (also used by the
library's own modules) in ``wvq_kernels._trusted``.
"""

from torch import Tensor

from wvq_kernels import _trusted
from wvq_kernels import _validation as check
from wvq_kernels._backends import (
    ENV_BACKEND,
    BackendStatus,
    available_backends,
    has_kernel,
)
from wvq_kernels._backends import resolve_backend as _resolve_backend
from wvq_kernels._types import Assignment, Moments, Sample, SoftAssignEntropy, SoftAssignStats
from wvq_kernels._validation import MAX_TOP_K, METRICS, PRECISIONS, resolve_precision

__all__ = [
    "ENV_BACKEND",
    "MAX_TOP_K",
    "METRICS",
    "PRECISIONS",
    "Assignment",
    "BackendStatus",
    "Moments",
    "Sample",
    "SoftAssignEntropy",
    "SoftAssignStats",
    "assign",
    "assign_topk",
    "available_backends",
    "code_histogram",
    "code_sums",
    "has_kernel",
    "moments",
    "resolve_precision",
    "sample_codes",
    "soft_assign_entropy",
    "soft_assign_stats",
    "usage",
]


def assign(
    x: Tensor,
    codebook: Tensor,
    *,
    metric: str = "l2",
    precision: str = "auto",
    histogram: bool = False,
    backend: str = "auto",
    check_finite: bool = True,
    k: int | None = None,
) -> Assignment:
    """Nearest code in ``codebook`` (K, D) of every row of ``x`` (..., D), without building the
    N x K distance matrix. Not differentiable.

    k: None (the nearest code; indices and distances ``x.shape[:-1]``) or an int in
    [1, min(K, MAX_TOP_K = 64)]: the k nearest codes, ``x.shape[:-1] + (k,)``, as
    :func:`assign_topk` returns them.

    metric: ``"l2"`` (distance = squared L2), ``"cosine"`` (1 - cos) or ``"dot"`` (-x.c).
    precision: ``"ieee"`` (fp32 products), ``"bf16"`` (inputs rounded to bf16, fp32
    accumulation, code norms from the rounded codes) or ``"auto"`` (see
    :func:`resolve_precision`: bf16 for bfloat16 inputs, ieee otherwise). ``"tf32"`` and
    ``"tf32x3"`` exist on GPU backends only.
    Ties go to the smallest index. ``x`` and ``codebook`` must share dtype and device.
    """
    check.check_float_tensor("x", x, check.FLOAT_DTYPES)
    check.check_rows("x", x)
    check.check_codebook(codebook, x)
    check.check_choice("metric", metric, METRICS)
    if k is not None:
        k = check.check_top_k(k, codebook.shape[0])
    backend = _resolve_backend(backend, x.device)
    check.check_precision(precision, backend, x.device)
    if check_finite:
        check.check_finite("x", x)
        check.check_finite("codebook", codebook)
    options = dict(metric=metric, precision=precision, histogram=histogram, backend=backend)
    if k is not None:
        return _trusted.assign_topk(x, codebook, k, **options)
    return _trusted.assign(x, codebook, **options)


def assign_topk(
    x: Tensor,
    codebook: Tensor,
    k: int,
    *,
    metric: str = "l2",
    precision: str = "auto",
    histogram: bool = False,
    backend: str = "auto",
    check_finite: bool = True,
) -> Assignment:
    """The ``k`` nearest codes in ``codebook`` (K, D) of every row of ``x`` (..., D), in one
    fused scan without an N x K buffer: ``assign(x, codebook, k=k, ...)``. Not differentiable.

    Returns indices int64 and distances float32, both ``x.shape[:-1] + (k,)``, sorted by
    distance (nearest first) with ties to the smallest index at every rank; distances as
    :func:`assign` reports them (recomputed from the unrounded inputs). ``histogram=True``
    counts each row's nearest code. 1 <= k <= min(K, MAX_TOP_K = 64). On CUDA tensors
    ``backend="cuda"`` runs the Triton kernel. Other arguments as :func:`assign`.
    """
    if k is None:  # assign's k=None means the nearest code alone, not a top-k
        raise TypeError("k: expected an int, got NoneType")
    return assign(
        x,
        codebook,
        metric=metric,
        precision=precision,
        histogram=histogram,
        backend=backend,
        check_finite=check_finite,
        k=k,
    )


def code_histogram(indices: Tensor, num_codes: int, *, backend: str = "auto") -> Tensor:
    """How many times each code in [0, num_codes) occurs in ``indices`` (integer, any shape):
    int64 ``(num_codes,)``."""
    check.check_integer_tensor("indices", indices)
    num_codes = check.check_num_codes(num_codes)
    backend = _resolve_backend(backend, indices.device)
    check.check_index_range(indices, num_codes)
    return _trusted.code_histogram(indices, num_codes, backend=backend)


def code_sums(
    indices: Tensor,
    x: Tensor,
    num_codes: int,
    *,
    backend: str = "auto",
    check_finite: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per-code counts int64 ``(K,)`` and sums float32 ``(K, D)`` of the rows of ``x``
    (..., D) assigned to each code by ``indices`` (shape ``x.shape[:-1]``). Deterministic:
    the same inputs give bitwise the same sums. Not differentiable. ``check_finite`` (default)
    refuses non-finite values in ``x``, naming the first bad row."""
    check.check_integer_tensor("indices", indices)
    check.check_float_tensor("x", x, check.FLOAT_DTYPES)
    check.check_rows("x", x)
    if indices.shape != x.shape[:-1]:
        raise ValueError(
            f"indices: expected shape x.shape[:-1] = {tuple(x.shape[:-1])}, "
            f"got {tuple(indices.shape)}"
        )
    check.check_same_device("x", x, "indices", indices)
    num_codes = check.check_num_codes(num_codes)
    backend = _resolve_backend(backend, x.device)
    check.check_index_range(indices, num_codes)
    if check_finite:
        check.check_finite("x", x)
    return _trusted.code_sums(indices, x, num_codes, backend=backend)


def usage(counts: Tensor, *, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """(utilization, perplexity) of a code histogram ``counts`` (integer, ``(K,)``), as float32
    0-dim tensors on its device, without a host sync. utilization = fraction of codes with a
    nonzero count; perplexity = exp(-sum p log p) with 0 log 0 = 0 (1 for an empty histogram)."""
    check.check_integer_tensor("counts", counts)
    if counts.dim() != 1 or counts.shape[0] == 0:
        raise ValueError(f"counts: expected shape (K,) with K >= 1, got {tuple(counts.shape)}")
    backend = _resolve_backend(backend, counts.device)
    return _trusted.usage(counts, backend=backend)


def moments(x: Tensor, *, backend: str = "auto", check_finite: bool = True) -> Moments:
    """Count, mean and population covariance of the rows of ``x`` (..., D), accumulated in
    float64 from centred tiles. Differentiable in ``x``. No rows gives zero mean and cov.
    ``check_finite`` (default) refuses non-finite values in ``x``, naming the first bad row."""
    check.check_float_tensor("x", x, check.MOMENTS_DTYPES)
    check.check_rows("x", x)
    backend = _resolve_backend(backend, x.device)
    if check_finite:
        check.check_finite("x", x)
    return _trusted.moments(x, backend=backend)


def soft_assign_stats(
    x: Tensor,
    codebook: Tensor,
    *,
    tau: float,
    lam: float = 0.01,
    backend: str = "auto",
    check_finite: bool = True,
) -> SoftAssignStats:
    """NSVQ's dense non-stationary embedding loss and its statistics, without an N x K tensor.

    With d_ik = ||x_i - e_k||^2 (x (..., D) flattened to N rows, codebook (K, D)), r_i the
    nearest code (ties to the smallest index) and weights w_ik = 1 for k = r_i, else
    min(1, lam K softmax_k(-d_ik / tau)), held constant (no gradient through them):

    - loss = (1/N) sum_i sum_k w_ik d_ik / D (0 for N = 0), differentiable in ``codebook``:
      dloss/de_k = 2 / (N D) (weight_sums_k e_k - weighted_sums_k). ``x`` is treated as
      stop-gradient: it never receives a gradient;
    - weight_sums_k = sum_i w_ik and weighted_sums_k = sum_i w_ik x_i (float32);
    - indices r_i and distances d_i,r_i, as :func:`assign` (l2) reports them.

    Computed in two passes (an online log-sum-exp per row, then per-code sums), in float32 with
    float64 sums on the compiled backends, from differences (x - e)^2 so that small ``tau``
    does not amplify cancellation. ``tau > 0`` and ``lam >= 0`` must be finite numbers.
    """
    check.check_float_tensor("x", x, check.FLOAT_DTYPES)
    check.check_rows("x", x)
    check.check_codebook(codebook, x)
    tau = check.check_real("tau", tau, lowest=0.0, inclusive=False)
    lam = check.check_real("lam", lam, lowest=0.0, inclusive=True)
    backend = _resolve_backend(backend, x.device, op="soft_assign_stats")
    if check_finite:
        check.check_finite("x", x)
        check.check_finite("codebook", codebook)
    return _trusted.soft_assign_stats(x, codebook, tau=tau, lam=lam, backend=backend)


def sample_codes(
    x: Tensor,
    codebook: Tensor,
    temperature: float,
    *,
    seed: int = 0,
    metric: str = "l2",
    precision: str = "auto",
    backend: str = "auto",
    check_finite: bool = True,
) -> Sample:
    """One exact draw per row of ``x`` (..., D) from softmax(-d(x, c_j) / temperature) over all
    K codes of ``codebook`` (K, D), without an N x K tensor. Not differentiable.

    Gumbel-max inside the assignment scan: the drawn code minimises d_j / T - G_j, with G_j a
    standard Gumbel variable computed from a counter-based hash of (seed, row, j), where row is
    the index in ``x.reshape(-1, D)``. The draw is therefore a function of (inputs, seed) alone:
    the same on every backend, thread count and tiling, up to float rounding of the scores
    (a draw can differ only where two perturbed scores agree to within it). Different seeds,
    or different rows, give independent draws.

    temperature: a finite number >= 0. ``0`` returns :func:`assign`'s answer (as does a
    temperature so small that 1 / T overflows float32 in score units); as T grows the draw
    tends to uniform. metric, precision: as :func:`assign` (d is computed from the same scores,
    so the draw follows softmax(-d / T) up to the precision's rounding of d, amplified by
    1 / T). Returns ``Sample(indices, distances)``: the drawn codes and their distances as
    assign reports them.
    """
    check.check_float_tensor("x", x, check.FLOAT_DTYPES)
    check.check_rows("x", x)
    check.check_codebook(codebook, x)
    check.check_choice("metric", metric, METRICS)
    temperature = check.check_real("temperature", temperature, lowest=0.0, inclusive=True)
    seed = check.check_seed(seed)
    backend = _resolve_backend(backend, x.device, op="sample_codes")
    check.check_precision(precision, backend, x.device)
    if check_finite:
        check.check_finite("x", x)
        check.check_finite("codebook", codebook)
    return _trusted.sample_codes(
        x,
        codebook,
        temperature,
        seed=seed,
        metric=metric,
        precision=precision,
        backend=backend,
    )


# The metrics whose distance is a squared L2 distance (cosine on unit vectors, halved).
ENTROPY_METRICS = ("l2", "cosine")


def soft_assign_entropy(
    x: Tensor,
    codebook: Tensor,
    tau: float,
    *,
    metric: str = "l2",
    backend: str = "auto",
    check_finite: bool = True,
) -> SoftAssignEntropy:
    """Entropy terms of the soft assignment p_ik = softmax_k(-d(x_i, e_k) / tau) of the rows of
    ``x`` (..., D) to the codes of ``codebook`` (K, D), without an N x K tensor, differentiable
    in both (LFQ / MAGVIT-2 style entropy losses: per-row entropy down, batch entropy up).

    Returns ``SoftAssignEntropy(row_entropy, code_distribution, code_entropy, row_entropies)``:
    the mean over rows of H(p_i) = -sum_k p_ik log p_ik, the batch-averaged distribution
    p-bar = mean_i p_i (K,), its entropy H(p-bar), and H(p_i) per row (``x.shape[:-1]``). No rows
    give zeros. Entropies are in nats.

    metric: ``"l2"`` (squared L2) or ``"cosine"`` (1 - cos, as ||x^ - e^||^2 / 2 of the
    normalised vectors). ``tau > 0``, a finite number. The forward runs in two passes (an online
    log-sum-exp that also sums each row's entropy, then the per-code probability sums), in
    float32 with float64 sums on the compiled backends (float64 throughout on the reference,
    which also takes float64 inputs); the backward recomputes the probabilities in two passes
    per block of rows: on CPU tensors the C++ kernel (float32 distances, float64 sums,
    bitwise the same at every thread count), elsewhere the reference's float64 blocks.
    """
    check.check_float_tensor("x", x, check.MOMENTS_DTYPES)
    check.check_rows("x", x)
    check.check_codebook(codebook, x, check.MOMENTS_DTYPES)
    check.check_choice("metric", metric, ENTROPY_METRICS)
    tau = check.check_real("tau", tau, lowest=0.0, inclusive=False)
    backend = _resolve_backend(backend, x.device, op="soft_assign_entropy")
    if check_finite:
        check.check_finite("x", x)
        check.check_finite("codebook", codebook)
    return _trusted.soft_assign_entropy(x, codebook, tau=tau, metric=metric, backend=backend)
