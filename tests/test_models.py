import torch

from wvq_kernels.nn import VectorQuantizer
from wvq_kernels.vqvae.models import VQVAE


def test_vqvae_shapes():
    model = VQVAE(VectorQuantizer(8, 64), latent_dim=8, hidden=16)
    images = torch.randn(2, 3, 32, 32)
    assert model.encode(images).shape == (2, 8, 8, 8)
    reconstruction, out = model(images)
    assert reconstruction.shape == images.shape
    assert out.indices.shape == (2, 8, 8)
    reconstruction.sum().add(out.loss).backward()
    assert model.encoder.net[0].weight.grad is not None
