"""Triton kernels for the wvq ops, registered as ``torch.ops.wvq_triton.*`` through
``torch.library.triton_op``, visible to torch.compile. Their schemas, inferred from the type
hints, equal the table in ``wvq_kernels._schemas`` that ``torch.ops.wvq`` is defined from
(tests/test_registry.py).

A namespace of their own, because the ``wvq`` CPU and CUDA keys belong to the C++ kernels, and
under ``TRITON_INTERPRET=1`` these kernels run on CPU tensors too. Importing this package needs
triton, and ``TRITON_INTERPRET=1`` must be set before it when there is no GPU.
"""

from wvq_kernels.triton import (  # noqa: F401  (registers the ops)
    assign,
    assign_topk,
    histogram,
    moments,
    sample_codes,
    soft_assign,
)
