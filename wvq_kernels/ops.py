"""The Python face of each ``wvq`` op: validation, backend choice, fake kernels, autograd.

Every public function validates its arguments before anything runs (DESIGN.md section 4),
flattens ``(..., D)`` inputs to the 2-D rows the kernels take, and dispatches to one backend:

- ``"reference"``: ``wvq_kernels.reference`` (pure PyTorch, any device);
- ``"cpu"``: the C++ kernels of ``wvq_kernels._C``, reached through ``torch.ops.wvq``;
- ``"triton"``: ``wvq_kernels.triton``, reached through ``torch.ops.wvq_triton`` (CUDA tensors,
  or CPU tensors under ``TRITON_INTERPRET=1``);
- ``"cuda"``: the CUDA kernels of ``wvq_kernels._C_cuda`` (built with ``WVQ_BUILD_CUDA=1``),
  registered for CUDA tensors under the same ``torch.ops.wvq`` schemas as ``"cpu"``.

``backend="auto"`` picks the fastest available backend for the tensors' device; the
environment variable ``WVQ_BACKEND`` overrides ``auto``.
"""

import importlib
import importlib.util
import math
import numbers
import operator
import os
from typing import NamedTuple

import torch
from torch import Tensor

from wvq_kernels import reference

ENV_BACKEND = "WVQ_BACKEND"
METRICS = ("l2", "cosine", "dot")
PRECISIONS = ("auto", "ieee", "bf16", "tf32", "tf32x3")
# Tensor-core modes: only GPU backends on CUDA tensors have them.
GPU_PRECISIONS = ("tf32", "tf32x3")
GPU_BACKENDS = ("triton", "cuda")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# moments also takes float64, so that its gradient can be checked numerically.
MOMENTS_DTYPES = FLOAT_DTYPES + (torch.float64,)


class BackendStatus(NamedTuple):
    """Whether a backend can run here, and why (not). Truthy iff available."""

    available: bool
    reason: str

    def __bool__(self) -> bool:
        return self.available


class Assignment(NamedTuple):
    """Result of :func:`assign`: indices int64 and distances float32, both ``x.shape[:-1]``;
    counts int64 ``(K,)`` when ``histogram=True``, else None."""

    indices: Tensor
    distances: Tensor
    counts: Tensor | None


class SoftAssignStats(NamedTuple):
    """Result of :func:`soft_assign_stats`: the dense loss (float32 0-dim, differentiable in the
    codebook), per-code weight sums (K,) and weighted row sums (K, D), float32; the nearest
    codes' indices int64 and distances float32, both ``x.shape[:-1]``."""

    loss: Tensor
    weight_sums: Tensor
    weighted_sums: Tensor
    indices: Tensor
    distances: Tensor


class Moments(NamedTuple):
    """Result of :func:`moments`: count int64 0-dim, mean float64 ``(D,)`` and the population
    covariance (1/n) float64 ``(D, D)``."""

    count: Tensor
    mean: Tensor
    cov: Tensor

    def merge(self, other: "Moments") -> "Moments":
        """Moments of the union of both row sets (Chan et al.), exact up to float64 rounding:
        combines chunks of a stream or the shards of several ranks."""
        n_a, n_b = self.count.to(torch.float64), other.count.to(torch.float64)
        # Clamped so that two empty parts merge to zeros rather than 0/0; with one empty part
        # the other comes back unchanged.
        n = (n_a + n_b).clamp_min(1.0)
        delta = other.mean - self.mean
        mean = self.mean + delta * (n_b / n)
        m2 = self.cov * n_a + other.cov * n_b + torch.outer(delta, delta) * (n_a * n_b / n)
        return Moments(self.count + other.count, mean, m2 / n)

    def sample_cov(self) -> Tensor:
        """Unbiased covariance, cov * n / (n - 1); nan for a single row, as torch.cov."""
        n = self.count.to(torch.float64)
        return self.cov * (n / (n - 1))


def _load_extension(module_name: str) -> BackendStatus:
    try:
        importlib.import_module(module_name)
    except (ImportError, OSError) as error:
        return BackendStatus(False, f"{module_name} could not be loaded: {error}")
    return BackendStatus(True, f"{module_name} loaded")


def _cuda_status() -> BackendStatus:
    # Checked first: a CPU build of torch cannot load the CUDA-linked _C_cuda at all.
    if not torch.cuda.is_available():
        return BackendStatus(False, "no CUDA device (torch.cuda.is_available() is False)")
    if importlib.util.find_spec("wvq_kernels._C_cuda") is None:
        return BackendStatus(
            False, "wvq_kernels._C_cuda is not built (see README: Building the CUDA backend)"
        )
    schemas = _load_extension("wvq_kernels._C")
    return schemas if not schemas else _load_extension("wvq_kernels._C_cuda")


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_status() -> BackendStatus:
    if not (torch.cuda.is_available() or _triton_interpreted()):
        return BackendStatus(
            False, "no CUDA device, and TRITON_INTERPRET=1 (CPU tensors) is not set"
        )
    status = _load_extension("wvq_kernels.triton")
    if not status:
        return status
    mode = "interpreter, CPU tensors" if _triton_interpreted() else "CUDA tensors"
    return BackendStatus(True, f"wvq_kernels.triton loaded ({mode})")


_BACKEND_STATUS = {
    "reference": BackendStatus(True, "pure PyTorch, always available"),
    "cpu": _load_extension("wvq_kernels._C"),
    "triton": _triton_status(),
    "cuda": _cuda_status(),
}


def available_backends() -> dict[str, BackendStatus]:
    """Every backend by name, with whether it can run on this machine and why (not)."""
    return dict(_BACKEND_STATUS)


def assign(
    x: Tensor,
    codebook: Tensor,
    *,
    metric: str = "l2",
    precision: str = "auto",
    histogram: bool = False,
    backend: str = "auto",
    check_finite: bool = True,
) -> Assignment:
    """Nearest code in ``codebook`` (K, D) of every row of ``x`` (..., D), without building the
    N x K distance matrix. Not differentiable.

    metric: ``"l2"`` (distance = squared L2), ``"cosine"`` (1 - cos) or ``"dot"`` (-x.c).
    precision: ``"ieee"`` (fp32 products), ``"bf16"`` (inputs rounded to bf16, fp32
    accumulation, code norms from the rounded codes) or ``"auto"``: bf16 for bfloat16 inputs,
    whose rounding is then a no-op and which the CPU multiplies natively (vdpbf16ps); ieee for
    float32 and float16, since the CPU has no fp16 dot-product instruction and fp16 -> fp32 is
    exact, so the fp32 path loses nothing. ``"tf32"`` exists on GPU backends only.
    Ties go to the smallest index. ``x`` and ``codebook`` must share dtype and device.
    """
    _check_float_tensor("x", x, FLOAT_DTYPES)
    _check_rows("x", x)
    _check_codebook(codebook, x)
    _check_choice("metric", metric, METRICS)
    backend = _resolve_backend(backend, x.device)
    precision = _resolve_precision(precision, x.dtype, backend, x.device)
    rows = x.detach().reshape(-1, x.shape[-1])
    codebook = codebook.detach()
    if check_finite:
        _check_finite("x", rows)
        _check_finite("codebook", codebook)
    num_codes = codebook.shape[0]
    if rows.shape[0] == 0:
        return _empty_assignment(x, num_codes, histogram)
    indices, distances, counts = _op(backend, "assign")(
        rows, codebook, metric, precision, bool(histogram)
    )
    batch_shape = x.shape[:-1]
    return Assignment(
        indices.reshape(batch_shape), distances.reshape(batch_shape), counts if histogram else None
    )


def code_histogram(indices: Tensor, num_codes: int, *, backend: str = "auto") -> Tensor:
    """How many times each code in [0, num_codes) occurs in ``indices`` (integer, any shape):
    int64 ``(num_codes,)``."""
    _check_integer_tensor("indices", indices)
    num_codes = _check_num_codes(num_codes)
    backend = _resolve_backend(backend, indices.device)
    flat = indices.detach().reshape(-1)
    _check_index_range(flat, num_codes)
    if flat.numel() == 0:
        return torch.zeros(num_codes, dtype=torch.int64, device=indices.device)
    return _op(backend, "code_histogram")(flat.to(torch.int64), num_codes)


def code_sums(
    indices: Tensor, x: Tensor, num_codes: int, *, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Per-code counts int64 ``(K,)`` and sums float32 ``(K, D)`` of the rows of ``x``
    (..., D) assigned to each code by ``indices`` (shape ``x.shape[:-1]``). Deterministic:
    the same inputs give bitwise the same sums. Not differentiable."""
    _check_integer_tensor("indices", indices)
    _check_float_tensor("x", x, FLOAT_DTYPES)
    _check_rows("x", x)
    if indices.shape != x.shape[:-1]:
        raise ValueError(
            f"indices: expected shape x.shape[:-1] = {tuple(x.shape[:-1])}, "
            f"got {tuple(indices.shape)}"
        )
    _check_same_device("x", x, "indices", indices)
    num_codes = _check_num_codes(num_codes)
    backend = _resolve_backend(backend, x.device)
    flat = indices.detach().reshape(-1)
    _check_index_range(flat, num_codes)
    rows = x.detach().reshape(-1, x.shape[-1])
    if rows.shape[0] == 0:
        return (
            torch.zeros(num_codes, dtype=torch.int64, device=x.device),
            torch.zeros(num_codes, rows.shape[1], dtype=torch.float32, device=x.device),
        )
    return _op(backend, "code_sums")(flat.to(torch.int64), rows, num_codes)


def usage(counts: Tensor) -> tuple[Tensor, Tensor]:
    """(utilization, perplexity) of a code histogram ``counts`` (integer, ``(K,)``), as float32
    0-dim tensors on its device, without a host sync. utilization = fraction of codes with a
    nonzero count; perplexity = exp(-sum p log p) with 0 log 0 = 0 (1 for an empty histogram)."""
    _check_integer_tensor("counts", counts)
    if counts.dim() != 1 or counts.shape[0] == 0:
        raise ValueError(f"counts: expected shape (K,) with K >= 1, got {tuple(counts.shape)}")
    backend = _resolve_backend("auto", counts.device)
    return _op(backend, "usage")(counts.detach().to(torch.int64))


def moments(x: Tensor, *, backend: str = "auto") -> Moments:
    """Count, mean and population covariance of the rows of ``x`` (..., D), accumulated in
    float64 from centred tiles. Differentiable in ``x``. No rows gives zero mean and cov."""
    _check_float_tensor("x", x, MOMENTS_DTYPES)
    _check_rows("x", x)
    backend = _resolve_backend(backend, x.device)
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] == 0:
        return _empty_moments(rows)
    return Moments(*_op(backend, "moments")(rows))


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
    _check_float_tensor("x", x, FLOAT_DTYPES)
    _check_rows("x", x)
    _check_codebook(codebook, x)
    tau = _check_real("tau", tau, lowest=0.0, inclusive=False)
    lam = _check_real("lam", lam, lowest=0.0, inclusive=True)
    backend = _resolve_backend(backend, x.device, op="soft_assign_stats")
    rows = x.detach().reshape(-1, x.shape[-1])
    if check_finite:
        _check_finite("x", rows)
        _check_finite("codebook", codebook.detach())
    loss, weight_sums, weighted_sums, indices, distances = _op(backend, "soft_assign_stats")(
        rows, codebook, tau, lam
    )
    batch_shape = x.shape[:-1]
    return SoftAssignStats(
        loss, weight_sums, weighted_sums, indices.reshape(batch_shape),
        distances.reshape(batch_shape),
    )


def _op(backend: str, name: str):
    """The implementation of op ``name`` for a resolved backend. The C++ backends share the
    ``torch.ops.wvq`` entry points, which dispatch on the tensors' device; Triton has its own
    ``torch.ops.wvq_triton`` ones, since it also runs on CPU tensors (interpreter)."""
    if backend == "reference":
        if name == "soft_assign_stats":  # plain PyTorch, given the registered ops' gradient
            return _ReferenceSoftAssignStats.apply
        return getattr(reference, name)
    return getattr(torch.ops.wvq_triton if backend == "triton" else torch.ops.wvq, name)


def _resolve_backend(backend: str, device: torch.device, op: str | None = None) -> str:
    """The backend to run on; ``op`` names an op that not every backend has (see
    :func:`has_kernel`)."""
    argument = "backend"
    if backend == "auto" and os.environ.get(ENV_BACKEND, "auto") not in ("", "auto"):
        backend, argument = os.environ[ENV_BACKEND], ENV_BACKEND
    if backend == "auto":
        return _auto_backend(device, op)
    if backend not in _BACKEND_STATUS:
        expected = ", ".join(repr(name) for name in ("auto", *_BACKEND_STATUS))
        raise ValueError(f"{argument}: expected one of {expected}, got {backend!r}")
    status = _BACKEND_STATUS[backend]
    if not status:
        raise ValueError(f"{argument}: backend {backend!r} is not available: {status.reason}")
    if op is not None and not has_kernel(backend, op):
        raise ValueError(
            f"{argument}: backend {backend!r} has no kernel for {op}; on CUDA tensors use "
            f"'triton' (or 'auto')"
        )
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"{argument}: backend 'cpu' expects CPU tensors, got tensors on {device}")
    if backend == "triton" and device.type != "cuda" and not _triton_interpreted():
        raise ValueError(
            f"{argument}: backend 'triton' expects CUDA tensors (CPU tensors only under "
            f"TRITON_INTERPRET=1), got tensors on {device}"
        )
    return backend


def _auto_backend(device: torch.device, op: str | None) -> str:
    if device.type == "cpu":
        return "cpu" if _BACKEND_STATUS["cpu"] else "reference"
    if device.type == "cuda":
        # The hand-written CUDA kernels when built (and registered for this op), else Triton.
        for backend in ("cuda", "triton"):
            if _BACKEND_STATUS[backend] and (op is None or has_kernel(backend, op)):
                return backend
    return "reference"


def has_kernel(backend: str, op: str) -> bool:
    """Whether an available ``backend`` implements ``op``: the CUDA extension registers its
    kernels op by op, so a ``_C_cuda`` built from older sources may lack a newer op's kernel
    (``auto`` then runs that op's CUDA tensors on Triton)."""
    if backend != "cuda":
        return True
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"wvq::{op}", "CUDA")


def _resolve_precision(
    precision: str, dtype: torch.dtype, backend: str, device: torch.device
) -> str:
    _check_choice("precision", precision, PRECISIONS)
    if precision in GPU_PRECISIONS and (backend not in GPU_BACKENDS or device.type != "cuda"):
        raise ValueError(
            f"precision: {precision!r} is a GPU tensor-core mode; backend {backend!r} on "
            f"{device.type} tensors accepts 'auto', 'ieee' or 'bf16'"
        )
    if precision == "auto":
        return "bf16" if dtype == torch.bfloat16 else "ieee"
    return precision


def _check_choice(argument: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        expected = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{argument}: expected one of {expected}, got {value!r}")


def _check_tensor(argument: str, value) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{argument}: expected a torch.Tensor, got {type(value).__name__}")


def _check_float_tensor(argument: str, value, dtypes: tuple[torch.dtype, ...]) -> None:
    _check_tensor(argument, value)
    if value.dtype not in dtypes:
        expected = ", ".join(str(dtype) for dtype in dtypes)
        raise TypeError(f"{argument}: expected dtype {expected}, got {value.dtype}")


def _check_integer_tensor(argument: str, value) -> None:
    _check_tensor(argument, value)
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"{argument}: expected an integer dtype, got {value.dtype}")


def _check_rows(argument: str, value: Tensor) -> None:
    """A tensor of rows: shape (..., D) with D >= 1."""
    if value.dim() == 0 or value.shape[-1] == 0:
        raise ValueError(
            f"{argument}: expected shape (..., D) with D >= 1, got {tuple(value.shape)}"
        )


def _check_codebook(codebook, x: Tensor) -> None:
    _check_float_tensor("codebook", codebook, FLOAT_DTYPES)
    if codebook.dtype != x.dtype:
        raise TypeError(f"codebook: expected dtype {x.dtype} (that of x), got {codebook.dtype}")
    if codebook.dim() != 2:
        raise ValueError(f"codebook: expected shape (K, D), got {tuple(codebook.shape)}")
    if codebook.shape[0] == 0:
        raise ValueError(f"codebook: expected K >= 1 codes, got shape {tuple(codebook.shape)}")
    if codebook.shape[1] != x.shape[-1]:
        raise ValueError(
            f"codebook: expected D = x.shape[-1] = {x.shape[-1]} columns, "
            f"got shape {tuple(codebook.shape)}"
        )
    _check_same_device("x", x, "codebook", codebook)


def _check_same_device(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_b}: expected device {a.device} (that of {name_a}), got {b.device}")


def _check_num_codes(num_codes) -> int:
    if isinstance(num_codes, bool):
        raise TypeError("num_codes: expected an int, got bool")
    try:
        num_codes = operator.index(num_codes)
    except TypeError:
        raise TypeError(f"num_codes: expected an int, got {type(num_codes).__name__}") from None
    if num_codes <= 0:
        raise ValueError(f"num_codes: expected num_codes >= 1, got {num_codes}")
    return num_codes


def _check_real(argument: str, value, lowest: float, inclusive: bool) -> float:
    """A finite real number above ``lowest`` (or equal to it when ``inclusive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{argument}: expected a real number, got {type(value).__name__}")
    value = float(value)
    bound = f">= {lowest}" if inclusive else f"> {lowest}"
    if not math.isfinite(value) or value < lowest or (value == lowest and not inclusive):
        raise ValueError(f"{argument}: expected a finite number {bound}, got {value}")
    return value


def _check_index_range(flat_indices: Tensor, num_codes: int) -> None:
    if flat_indices.numel() == 0:
        return
    low, high = torch.aminmax(flat_indices)
    if low >= 0 and high < num_codes:
        return
    out_of_range = (flat_indices < 0) | (flat_indices >= num_codes)
    position = int(out_of_range.nonzero()[0, 0])
    raise ValueError(
        f"indices: expected values in [0, {num_codes}), "
        f"got {int(flat_indices[position])} at flat position {position}"
    )


def _check_finite(argument: str, rows: Tensor) -> None:
    # The full scan is one fused reduction; finding the row is paid for only on failure.
    if torch.isfinite(rows).all():
        return
    bad_row = int((~torch.isfinite(rows)).any(dim=1).nonzero()[0, 0])
    raise ValueError(
        f"{argument}: expected finite values (check_finite=True), got a non-finite value "
        f"in row {bad_row} of {argument}.reshape(-1, D)"
    )


def _empty_assignment(x: Tensor, num_codes: int, histogram: bool) -> Assignment:
    batch_shape = x.shape[:-1]
    return Assignment(
        torch.empty(batch_shape, dtype=torch.int64, device=x.device),
        torch.empty(batch_shape, dtype=torch.float32, device=x.device),
        torch.zeros(num_codes, dtype=torch.int64, device=x.device) if histogram else None,
    )


def _empty_moments(rows: Tensor) -> Moments:
    zeros = torch.zeros(rows.shape[1], dtype=torch.float64, device=rows.device)
    count = torch.zeros((), dtype=torch.int64, device=rows.device)
    return Moments(count, zeros, torch.outer(zeros, zeros))


def _moments_input_grad(x: Tensor, mean: Tensor, grad_mean: Tensor, grad_cov: Tensor) -> Tensor:
    """d/dx of <grad_mean, mean> + <grad_cov, cov> for cov = (1/n) sum (x_i - mu)(x_i - mu)^T:
    grad_mean / n + (1/n) (G + G^T)(x_i - mu). The path through mu vanishes because the
    centred rows sum to zero."""
    n = x.shape[0]
    centred = x.to(torch.float64) - mean
    grad = grad_mean / n + centred @ (grad_cov + grad_cov.T) / n
    return grad.to(x.dtype)


def _register_fake_kernels(namespace: str) -> None:
    """Shape-only kernels, so that the ops trace under torch.compile and FakeTensor."""

    @torch.library.register_fake(f"{namespace}::assign")
    def _(x, codebook, metric, precision, histogram):
        num_counts = codebook.shape[0] if histogram else 0
        return (
            x.new_empty(x.shape[0], dtype=torch.int64),
            x.new_empty(x.shape[0], dtype=torch.float32),
            x.new_empty(num_counts, dtype=torch.int64),
        )

    @torch.library.register_fake(f"{namespace}::code_histogram")
    def _(indices, num_codes):
        return indices.new_empty(num_codes, dtype=torch.int64)

    @torch.library.register_fake(f"{namespace}::code_sums")
    def _(indices, x, num_codes):
        return (
            x.new_empty(num_codes, dtype=torch.int64),
            x.new_empty(num_codes, x.shape[1], dtype=torch.float32),
        )

    @torch.library.register_fake(f"{namespace}::usage")
    def _(counts):
        return counts.new_empty((), dtype=torch.float32), counts.new_empty((), dtype=torch.float32)

    @torch.library.register_fake(f"{namespace}::soft_assign_stats")
    def _(x, codebook, tau, lam):
        num_codes, dim = codebook.shape
        return (
            x.new_empty((), dtype=torch.float32),
            x.new_empty(num_codes, dtype=torch.float32),
            x.new_empty(num_codes, dim, dtype=torch.float32),
            x.new_empty(x.shape[0], dtype=torch.int64),
            x.new_empty(x.shape[0], dtype=torch.float32),
        )

    @torch.library.register_fake(f"{namespace}::moments")
    def _(x):
        return (
            x.new_empty((), dtype=torch.int64),
            x.new_empty(x.shape[1], dtype=torch.float64),
            x.new_empty(x.shape[1], x.shape[1], dtype=torch.float64),
        )


def _register_moments_autograd(namespace: str) -> None:
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        _, mean, _ = output
        ctx.save_for_backward(x, mean)

    def backward(ctx, grad_count, grad_mean, grad_cov):
        x, mean = ctx.saved_tensors
        return _moments_input_grad(x, mean, grad_mean, grad_cov)

    torch.library.register_autograd(
        f"{namespace}::moments", backward, setup_context=setup_context
    )


def _soft_assign_setup_context(ctx, inputs, output):
    x, codebook, _, _ = inputs
    _, weight_sums, weighted_sums, indices, distances = output
    ctx.mark_non_differentiable(weight_sums, weighted_sums, indices, distances)
    ctx.save_for_backward(codebook, weight_sums, weighted_sums)
    ctx.num_rows, ctx.dim = x.shape


def _soft_assign_backward(ctx, grad_loss, *_):
    """dloss/de_k = 2 / (N D) (W_k e_k - S_k), the weights held constant; none for x."""
    codebook, weight_sums, weighted_sums = ctx.saved_tensors
    scale = grad_loss * (2.0 / (max(ctx.num_rows, 1) * ctx.dim))
    grad = (weight_sums[:, None] * codebook.to(torch.float32) - weighted_sums) * scale
    return None, grad.to(codebook.dtype), None, None


class _ReferenceSoftAssignStats(torch.autograd.Function):
    """The reference backend's soft_assign_stats with the registered ops' gradient."""

    @staticmethod
    def forward(x, codebook, tau, lam):
        return reference.soft_assign_stats(x, codebook, tau, lam)

    setup_context = staticmethod(_soft_assign_setup_context)
    backward = staticmethod(_soft_assign_backward)


# The same fake kernels and autograd for every namespace that the backends define.
for _backend, _namespace in (("cpu", "wvq"), ("triton", "wvq_triton")):
    if _BACKEND_STATUS[_backend]:
        _register_fake_kernels(_namespace)
        _register_moments_autograd(_namespace)
        torch.library.register_autograd(
            f"{_namespace}::soft_assign_stats", _soft_assign_backward,
            setup_context=_soft_assign_setup_context,
        )
