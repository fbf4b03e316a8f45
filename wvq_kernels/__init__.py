"""Fused kernels for large-codebook vector quantization behind a thin PyTorch API.

Importing works without the compiled extension: the pure-PyTorch reference backend is always
there, and ``available_backends()`` says why the others are missing.
"""

from wvq_kernels import distributed
from wvq_kernels.distributed import assign_sharded
from wvq_kernels.kmeans import KMeansResult, kmeans, kmeans_fit
from wvq_kernels.losses import gaussian_w2
from wvq_kernels.ops import (
    MAX_TOP_K,
    Assignment,
    BackendStatus,
    Moments,
    Sample,
    SoftAssignEntropy,
    SoftAssignStats,
    assign,
    assign_topk,
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
    "MAX_TOP_K",
    "Assignment",
    "BackendStatus",
    "KMeansResult",
    "Moments",
    "Sample",
    "SoftAssignEntropy",
    "SoftAssignStats",
    "__version__",
    "assign",
    "assign_sharded",
    "assign_topk",
    "available_backends",
    "code_histogram",
    "code_sums",
    "distributed",
    "gaussian_w2",
    "kmeans",
    "kmeans_fit",
    "moments",
    "resolve_precision",
    "sample_codes",
    "soft_assign_entropy",
    "soft_assign_stats",
    "usage",
]
