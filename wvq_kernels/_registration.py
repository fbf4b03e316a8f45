"""What every op namespace needs beyond its kernels: fake (shape-only) kernels, so that the ops
trace under torch.compile and FakeTensor, and autograd formulas; plus the lookup from a resolved
backend to the callable that runs an op."""

import torch
from torch import Tensor

from wvq_kernels import reference
from wvq_kernels._backends import BACKEND_STATUS


def kernel(backend: str, name: str):
    """The implementation of op ``name`` on a resolved backend. The C++ backends share the
    ``torch.ops.wvq`` entry points, which dispatch on the tensors' device; Triton has its own
    ``torch.ops.wvq_triton`` ones, since it also runs on CPU tensors (interpreter)."""
    if backend == "reference":
        if name == "soft_assign_stats":  # plain PyTorch, given the registered ops' gradient
            return ReferenceSoftAssignStats.apply
        if name == "soft_assign_entropy":
            return ReferenceSoftAssignEntropy.apply
        return getattr(reference, name)
    return getattr(torch.ops.wvq_triton if backend == "triton" else torch.ops.wvq, name)


def _register_fake_kernels(namespace: str) -> None:
    @torch.library.register_fake(f"{namespace}::assign")
    def _(x, codebook, metric, precision, histogram):
        num_counts = codebook.shape[0] if histogram else 0
        return (
            x.new_empty(x.shape[0], dtype=torch.int64),
            x.new_empty(x.shape[0], dtype=torch.float32),
            x.new_empty(num_counts, dtype=torch.int64),
        )

    @torch.library.register_fake(f"{namespace}::assign_topk")
    def _(x, codebook, k, metric, precision, histogram):
        num_counts = codebook.shape[0] if histogram else 0
        return (
            x.new_empty(x.shape[0], k, dtype=torch.int64),
            x.new_empty(x.shape[0], k, dtype=torch.float32),
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

    @torch.library.register_fake(f"{namespace}::sample_codes")
    def _(x, codebook, temperature, seed, metric, precision):
        return (
            x.new_empty(x.shape[0], dtype=torch.int64),
            x.new_empty(x.shape[0], dtype=torch.float32),
        )

    @torch.library.register_fake(f"{namespace}::soft_assign_entropy")
    def _(x, codebook, tau):
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        return x.new_empty(x.shape[0], dtype=dtype), x.new_empty(codebook.shape[0], dtype=dtype)

    if namespace == "wvq":

        @torch.library.register_fake("wvq::soft_assign_entropy_backward")
        def _(x, codebook, tau, grad_entropy, grad_mean):
            return torch.empty_like(x), torch.empty_like(codebook)

    @torch.library.register_fake(f"{namespace}::moments")
    def _(x):
        return (
            x.new_empty((), dtype=torch.int64),
            x.new_empty(x.shape[1], dtype=torch.float64),
            x.new_empty(x.shape[1], x.shape[1], dtype=torch.float64),
        )


def _moments_input_grad(x: Tensor, mean: Tensor, grad_mean: Tensor, grad_cov: Tensor) -> Tensor:
    """d/dx of <grad_mean, mean> + <grad_cov, cov> for cov = (1/n) sum (x_i - mu)(x_i - mu)^T:
    grad_mean / n + (1/n) (G + G^T)(x_i - mu). The path through mu vanishes because the
    centred rows sum to zero."""
    n = x.shape[0]
    centred = x.to(torch.float64) - mean
    grad = grad_mean / n + centred @ (grad_cov + grad_cov.T) / n
    return grad.to(x.dtype)


def _moments_setup_context(ctx, inputs, output):
    (x,) = inputs
    _, mean, _ = output
    ctx.save_for_backward(x, mean)


def _moments_backward(ctx, grad_count, grad_mean, grad_cov):
    x, mean = ctx.saved_tensors
    return _moments_input_grad(x, mean, grad_mean, grad_cov)


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


class ReferenceSoftAssignStats(torch.autograd.Function):
    """The reference backend's soft_assign_stats with the registered ops' gradient."""

    @staticmethod
    def forward(x, codebook, tau, lam):
        return reference.soft_assign_stats(x, codebook, tau, lam)

    setup_context = staticmethod(_soft_assign_setup_context)
    backward = staticmethod(_soft_assign_backward)


def _entropy_setup_context(ctx, inputs, output):
    x, codebook, tau = inputs
    ctx.save_for_backward(x, codebook)
    ctx.tau = tau


def _entropy_gradients(x, codebook, tau, grad_entropy, grad_mean):
    """The gradients by the reference's float64 blocks (reference.soft_assign_entropy_grad,
    where the formulas are written out)."""
    return reference.soft_assign_entropy_grad(x, codebook, tau, grad_entropy, grad_mean)


def _cpu_entropy_gradients(x, codebook, tau, grad_entropy, grad_mean):
    """The same gradients by the CPU kernel for CPU tensors (the op's two passes per row tile,
    float32 distances, float64 sums); other devices take the reference's."""
    if x.device.type != "cpu":
        return _entropy_gradients(x, codebook, tau, grad_entropy, grad_mean)
    if grad_entropy is None:
        grad_entropy = x.new_zeros(x.shape[0], dtype=torch.float32)
    if grad_mean is None:
        grad_mean = x.new_zeros(codebook.shape[0], dtype=torch.float32)
    return torch.ops.wvq.soft_assign_entropy_backward(x, codebook, tau, grad_entropy, grad_mean)


def _entropy_backward(ctx, grad_entropy, grad_mean, gradients=_entropy_gradients):
    """Recomputes the probabilities from x and the codebook: nothing of size N x K lives
    between forward and backward."""
    x, codebook = ctx.saved_tensors
    grad_x, grad_codebook = gradients(x, codebook, ctx.tau, grad_entropy, grad_mean)
    return (
        grad_x if ctx.needs_input_grad[0] else None,
        grad_codebook if ctx.needs_input_grad[1] else None,
        None,
    )


class ReferenceSoftAssignEntropy(torch.autograd.Function):
    """The reference backend's soft_assign_entropy with the registered ops' gradient."""

    @staticmethod
    def forward(x, codebook, tau):
        return reference.soft_assign_entropy(x, codebook, tau)

    setup_context = staticmethod(_entropy_setup_context)
    backward = staticmethod(_entropy_backward)


def _cpu_entropy_backward(ctx, grad_entropy, grad_mean):
    return _entropy_backward(ctx, grad_entropy, grad_mean, _cpu_entropy_gradients)


def _register_autograd(namespace: str) -> None:
    # The C++ namespace has a CPU gradient kernel; Triton's (also run on CPU tensors by the
    # interpreter) keeps the reference's.
    torch.library.register_autograd(
        f"{namespace}::soft_assign_entropy",
        _cpu_entropy_backward if namespace == "wvq" else _entropy_backward,
        setup_context=_entropy_setup_context,
    )
    torch.library.register_autograd(
        f"{namespace}::moments", _moments_backward, setup_context=_moments_setup_context
    )
    torch.library.register_autograd(
        f"{namespace}::soft_assign_stats",
        _soft_assign_backward,
        setup_context=_soft_assign_setup_context,
    )


# The same fake kernels and autograd for every namespace that the backends define.
for _backend, _namespace in (("cpu", "wvq"), ("triton", "wvq_triton")):
    if BACKEND_STATUS[_backend]:
        _register_fake_kernels(_namespace)
        _register_autograd(_namespace)
