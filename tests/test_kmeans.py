"""kmeans: never increases the quantization error and equals a plain float64 Lloyd loop."""

import itertools

import pytest
import torch

from wvq_kernels import assign
from wvq_kernels.kmeans import kmeans


def quantization_error(x, codebook):
    return assign(x, codebook, backend="reference").distances.double().mean().item()


def test_error_never_increases():
    x = torch.randn(3000, 5, generator=torch.Generator().manual_seed(0))
    errors = [quantization_error(x, kmeans(x, 64, iters)) for iters in (0, 1, 3, 10)]
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.8 * errors[0]


def plain_lloyd(x, codebook, iters):
    for _ in range(iters):
        nearest = torch.cdist(x.double(), codebook.double()).argmin(dim=1)
        for k in range(codebook.shape[0]):
            members = x[nearest == k]
            if len(members):
                codebook[k] = members.double().mean(0).float()
    return codebook


def test_matches_plain_lloyd_from_same_start():
    x = torch.randn(2000, 3, generator=torch.Generator().manual_seed(1))
    start = kmeans(x, 40, 0, seed=5)
    assert torch.allclose(kmeans(x, 40, 6, seed=5), plain_lloyd(x, start.clone(), 6), atol=1e-5)


def test_validation():
    with pytest.raises(ValueError, match="num_codes"):
        kmeans(torch.randn(4, 2), 0)
    with pytest.raises(TypeError, match="floating"):
        kmeans(torch.ones(4, 2, dtype=torch.long), 2)
