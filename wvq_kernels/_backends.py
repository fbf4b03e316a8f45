"""Which backends this machine has, and which one runs an op on a given device.

- ``"reference"``: ``wvq_kernels.reference`` (pure PyTorch, any device);
- ``"cpu"``: the C++ kernels of ``wvq_kernels._C``, reached through ``torch.ops.wvq``;
- ``"triton"``: ``wvq_kernels.triton``, reached through ``torch.ops.wvq_triton`` (CUDA tensors,
  or CPU tensors under ``TRITON_INTERPRET=1``);
- ``"cuda"``: the CUDA kernels of ``wvq_kernels._C_cuda`` (built with ``WVQ_BUILD_CUDA=1``),
  registered for CUDA tensors under the same ``torch.ops.wvq`` schemas as ``"cpu"``.

``"auto"`` picks the fastest available backend for the tensors' device; the environment
variable ``WVQ_BACKEND`` overrides ``auto``. Resolution looks at devices and names only, never
at tensor values, so it costs no host sync and traces under ``torch.compile``.
"""

import importlib
import importlib.util
import os
from typing import NamedTuple

import torch

from wvq_kernels._schemas import SCHEMAS

ENV_BACKEND = "WVQ_BACKEND"
# Backends with kernels for CUDA tensors.
GPU_BACKENDS = ("triton", "cuda")


class BackendStatus(NamedTuple):
    """Whether a backend can run here, and why (not). Truthy iff available."""

    available: bool
    reason: str

    def __bool__(self) -> bool:
        return self.available


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


def triton_interpreted() -> bool:
    """Whether Triton kernels run in its interpreter (on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_status() -> BackendStatus:
    if not (torch.cuda.is_available() or triton_interpreted()):
        return BackendStatus(
            False, "no CUDA device, and TRITON_INTERPRET=1 (CPU tensors) is not set"
        )
    status = _load_extension("wvq_kernels.triton")
    if not status:
        return status
    mode = "interpreter, CPU tensors" if triton_interpreted() else "CUDA tensors"
    return BackendStatus(True, f"wvq_kernels.triton loaded ({mode})")


BACKEND_STATUS = {
    "reference": BackendStatus(True, "pure PyTorch, always available"),
    "cpu": _load_extension("wvq_kernels._C"),
    "triton": _triton_status(),
    "cuda": _cuda_status(),
}


def available_backends() -> dict[str, BackendStatus]:
    """Every backend by name, with whether it can run on this machine and why (not)."""
    return dict(BACKEND_STATUS)


def resolve_backend(backend: str, device: torch.device, op: str | None = None) -> str:
    """The backend to run on; ``op`` names an op that not every backend may have (see
    :func:`has_kernel`). Raises ValueError for an unknown, unavailable or misplaced backend."""
    argument = "backend"
    if backend == "auto" and os.environ.get(ENV_BACKEND, "auto") not in ("", "auto"):
        backend, argument = os.environ[ENV_BACKEND], ENV_BACKEND
    if backend == "auto":
        return _auto_backend(device, op)
    if backend not in BACKEND_STATUS:
        expected = ", ".join(repr(name) for name in ("auto", *BACKEND_STATUS))
        raise ValueError(f"{argument}: expected one of {expected}, got {backend!r}")
    status = BACKEND_STATUS[backend]
    if not status:
        raise ValueError(f"{argument}: backend {backend!r} is not available: {status.reason}")
    if op is not None and not has_kernel(backend, op):
        raise ValueError(
            f"{argument}: backend {backend!r} has no kernel for {op}; on CUDA tensors use "
            f"'triton' (or 'auto')"
        )
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"{argument}: backend 'cpu' expects CPU tensors, got tensors on {device}")
    if backend == "triton" and device.type != "cuda" and not triton_interpreted():
        raise ValueError(
            f"{argument}: backend 'triton' expects CUDA tensors (CPU tensors only under "
            f"TRITON_INTERPRET=1), got tensors on {device}"
        )
    return backend


# The order in which ``auto`` tries the GPU backends, per op. Until scripts/gpu_first_run.sh has
# measured them on a GPU, it follows the roofline model of docs/gpu-routing.md: assign is bound
# by its dot products, and only Triton's reach the sm_90 tensor cores through wgmma (the CUDA
# kernel's WMMA lowers to mma.sync); every other op is bound by memory, atomics or float64 and
# FMA work, where the CUDA kernels do no worse (warp-aggregated histogram atomics, split hot
# codes in code_sums) and need no JIT compilation on first use.
GPU_PREFERENCE = {
    "assign": ("triton", "cuda"),
    # Issue 16's ops exist in Triton only (_schemas.TRITON_ON_CUDA_OPS): top-k and sample_codes
    # are assign's scan with other epilogues, and the entropy's two passes are soft_assign_stats'
    # Triton kernels.
    "assign_topk": ("triton",),
    "sample_codes": ("triton",),
    "soft_assign_entropy": ("triton",),
}
DEFAULT_GPU_PREFERENCE = ("cuda", "triton")


def gpu_preference(op: str | None) -> tuple[str, ...]:
    """The GPU backends ``auto`` tries for ``op``, best first."""
    return GPU_PREFERENCE.get(op, DEFAULT_GPU_PREFERENCE)


def _auto_backend(device: torch.device, op: str | None) -> str:
    if device.type == "cpu":
        return "cpu" if BACKEND_STATUS["cpu"] else "reference"
    if device.type == "cuda":
        for backend in gpu_preference(op):
            if BACKEND_STATUS[backend] and (op is None or has_kernel(backend, op)):
                return backend
    return "reference"


def has_kernel(backend: str, op: str) -> bool:
    """Whether an available ``backend`` implements ``op``: the CUDA extension registers its
    kernels op by op, so a ``_C_cuda`` built from older sources may lack a newer op's kernel
    (``auto`` then runs that op's CUDA tensors on Triton)."""
    return backend != "cuda" or op in _CUDA_KERNELS


# Read once, after the extensions loaded: a dict lookup traces under torch.compile, the
# dispatcher query does not.
_CUDA_KERNELS = frozenset(
    op
    for op in SCHEMAS
    if BACKEND_STATUS["cuda"]
    and torch._C._dispatch_has_kernel_for_dispatch_key(f"wvq::{op}", "CUDA")
)
