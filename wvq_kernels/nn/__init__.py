"""Quantizer modules built on the fused ops."""

from .feature_queue import FeatureQueue
from .quantizer import QuantizerOutput, VectorQuantizer
from .residual_vq import GroupedResidualVQ, ResidualVQ
from .vq_compat import VectorQuantize

__all__ = [
    "FeatureQueue",
    "GroupedResidualVQ",
    "QuantizerOutput",
    "ResidualVQ",
    "VectorQuantize",
    "VectorQuantizer",
]
