import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels.testing import skewed_indices


@pytest.mark.parametrize("num_codes", [1, 17, 65536])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_histogram_matches_bincount(backend, device, num_codes, dtype):
    if dtype == torch.uint8 and num_codes > 256:
        pytest.skip("uint8 indices cannot reach these codes")
    indices = skewed_indices((7, 1000), num_codes, dtype=dtype, device=device)
    counts = wvq.code_histogram(indices, num_codes, backend=backend)
    assert counts.dtype == torch.int64 and counts.shape == (num_codes,)
    assert torch.equal(counts, torch.bincount(indices.reshape(-1).long(), minlength=num_codes))


def test_histogram_of_no_indices_is_zero(backend, device):
    no_indices = torch.empty(0, 3, dtype=torch.int64, device=device)
    counts = wvq.code_histogram(no_indices, 5, backend=backend)
    assert torch.equal(counts.cpu(), torch.zeros(5, dtype=torch.int64))


def test_histogram_of_non_contiguous_indices_matches_bincount_and_leaves_them(backend, device):
    indices = skewed_indices((300, 40), 100, device=device).T
    before = indices.clone()
    counts = wvq.code_histogram(indices, 100, backend=backend)
    assert torch.equal(indices, before)
    assert torch.equal(counts, torch.bincount(indices.reshape(-1), minlength=100))
