"""Fused kernels for large-codebook vector quantization behind a thin PyTorch API.

Importing works without the compiled extension: the pure-PyTorch reference backend is always
there, and ``available_backends()`` says why the others are missing.
"""

from wvq_kernels import distributed
from wvq_kernels.distributed import assign_sharded
from wvq_kernels.kmeans import kmeans
from wvq_kernels.losses import gaussian_w2
from wvq_kernels.ops import (
    Assignment,
    BackendStatus,
    Moments,
    Sample,
    SoftAssignEntropy,
    SoftAssignStats,
    assign,
    available_backends,
    code_histogram,
    code_sums,
    moments,
    resolve_precision,
    sample_codes,
    soft_assign_entropy,
    soft_assign_stats,
    usage,
)

__version__ = "0.1.0"

__all__ = [
    "Assignment",
    "BackendStatus",
    "Moments",
    "Sample",
    "SoftAssignEntropy",
    "SoftAssignStats",
    "__version__",
    "assign",
    "assign_sharded",
    "available_backends",
    "code_histogram",
    "code_sums",
    "distributed",
    "gaussian_w2",
    "kmeans",
    "moments",
    "resolve_precision",
    "sample_codes",
    "soft_assign_entropy",
    "soft_assign_stats",
    "usage",
]
