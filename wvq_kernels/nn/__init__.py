"""Quantizer modules built on the fused ops."""

from .feature_queue import FeatureQueue
from .quantizer import QuantizerOutput, VectorQuantizer
from .vq_compat import VectorQuantize

__all__ = ["FeatureQueue", "QuantizerOutput", "VectorQuantize", "VectorQuantizer"]
