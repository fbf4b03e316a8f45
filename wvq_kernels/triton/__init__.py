"""Triton kernels for the wvq ops, registered as ``torch.ops.wvq_triton.*`` through
``torch.library.triton_op``: the same schemas as ``torch.ops.wvq``, visible to torch.compile.

A namespace of their own, because the ``wvq`` CPU and CUDA keys belong to the C++ kernels, and
under ``TRITON_INTERPRET=1`` these kernels run on CPU tensors too. Importing this package needs
triton, and ``TRITON_INTERPRET=1`` must be set before it when there is no GPU.
"""

from wvq_kernels.triton import (  # noqa: F401  (registers the ops)
    assign,
    histogram,
    moments,
    soft_assign,
)
