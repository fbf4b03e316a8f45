"""Quantizer modules built on the fused ops."""
from .feature_queue import FeatureQueue
from .quantizer import QuantizerOutput, VectorQuantizer

__all__ = ["FeatureQueue", "QuantizerOutput", "VectorQuantizer"]
