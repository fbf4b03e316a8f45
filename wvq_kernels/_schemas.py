"""The one table of op schemas, shared by both namespaces.

``torch.ops.wvq`` is defined in C++ (csrc/ops.cpp, ``TORCH_LIBRARY(wvq, m)``) with exactly these
strings, and ``torch.ops.wvq_triton`` by ``torch.library.triton_op`` from the type hints of the
functions in wvq_kernels/triton/, which infers unnamed returns and ``SymInt`` sizes: the table is
written in that form so that both namespaces can equal it. tests/test_registry.py fails when
either namespace differs from this table, or when an op lacks its reference function, public
wrapper, test file or benchmark. Adding an op: docs/adding-an-op.md.
"""

SCHEMAS = {
    "assign": (
        "(Tensor x, Tensor codebook, str metric, str precision, bool histogram)"
        " -> (Tensor, Tensor, Tensor)"
    ),
    "code_histogram": "(Tensor indices, SymInt num_codes) -> Tensor",
    "code_sums": "(Tensor indices, Tensor x, SymInt num_codes) -> (Tensor, Tensor)",
    "usage": "(Tensor counts) -> (Tensor, Tensor)",
    "moments": "(Tensor x) -> (Tensor, Tensor, Tensor)",
    "soft_assign_stats": (
        "(Tensor x, Tensor codebook, float tau, float lam)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
    # Top-k nearest codes (issue 16): the public entry is assign(..., k=...).
    "assign_topk": (
        "(Tensor x, Tensor codebook, SymInt k, str metric, str precision, bool histogram)"
        " -> (Tensor, Tensor, Tensor)"
    ),
    # ---- issue 16 ----
    "sample_codes": (
        "(Tensor x, Tensor codebook, float temperature, SymInt seed, str metric, str precision)"
        " -> (Tensor, Tensor)"
    ),
    "soft_assign_entropy": "(Tensor x, Tensor codebook, float tau) -> (Tensor, Tensor)",
    # ---- end issue 16 ----
}

# Ops without a CUDA kernel of their own: on CUDA tensors "auto" runs their Triton kernel
# (_backends.GPU_PREFERENCE), an explicit backend="cuda" is refused with a pointer to "triton",
# and scripts/check_cuda_registration.py does not ask _C_cuda for one.
TRITON_ON_CUDA_OPS = frozenset({"assign_topk", "sample_codes", "soft_assign_entropy"})

# Gradient kernels of the C++ library, called by the registered autograd on CPU tensors only
# (not public ops: no reference function, wrapper or Triton twin of their own).
CPU_GRADIENT_OPS = {
    "soft_assign_entropy_backward": (
        "(Tensor x, Tensor codebook, float tau, Tensor grad_entropy, Tensor grad_mean)"
        " -> (Tensor, Tensor)"
    ),
}

# Ops of the C++ library that take no tensors and exist on the CPU extension only.
HOST_ONLY_OPS = {"cpu_isa": "() -> str", "peak_gflops": "(str kind, float seconds) -> float"}
