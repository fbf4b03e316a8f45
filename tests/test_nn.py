"""VectorQuantizer: loss values and gradients against float64, state round-trip, training."""
import copy

import pytest
import torch

from wvq_kernels import moments
from wvq_kernels.nn import FeatureQueue, VectorQuantizer

VARIANTS = {
    "vanilla": {},
    "wasserstein": {"distribution_loss": "wasserstein"},
    "ema": {"ema": True},
    "simvq": {"linear_reparam": True},
    "projected": {"codebook_dim": 4, "dead_code_threshold": 0.5},
    "cosine": {"metric": "cosine"},
}


def make(name, dim=6, codebook_size=64, seed=0, **overrides):
    torch.manual_seed(seed)
    options = {"feature_queue_size": 300, **VARIANTS[name], **overrides}
    return VectorQuantizer(dim, codebook_size, **options)


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_shapes_and_stats(name):
    quantizer = make(name)
    z = torch.randn(3, 20, 6)
    out = quantizer(z)
    assert out.quantized.shape == z.shape and out.quantized.dtype == z.dtype
    assert out.indices.shape == (3, 20) and out.indices.dtype == torch.int64
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    for key, value in out.stats.items():
        assert value.dim() == 0 and value.dtype == torch.float32, key
    # In eval mode nothing moves the codes, so decoding the indices gives the output back.
    quantizer.eval()
    out = quantizer(z)
    assert torch.allclose(quantizer.indices_to_codes(out.indices), out.quantized, atol=1e-6)
