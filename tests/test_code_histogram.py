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


@pytest.mark.parametrize(
    "dtype, value, num_codes",
    [(torch.uint8, 200, 300), (torch.int8, 100, 300), (torch.int16, 30000, 70000)],
)
def test_narrow_index_dtypes_accept_every_valid_index(backend, device, dtype, value, num_codes):
    """num_codes beyond the index dtype's range must not be cast into it (it would wrap, and a
    valid index would then look out of range)."""
    indices = torch.tensor([value, 0, value], dtype=dtype, device=device)
    counts = wvq.code_histogram(indices, num_codes, backend=backend)
    assert counts.shape == (num_codes,)
    assert int(counts[value]) == 2 and int(counts[0]) == 1 and int(counts.sum()) == 3
    sums_counts, sums = wvq.code_sums(
        indices, torch.ones(3, 2, device=device), num_codes, backend=backend
    )
    assert torch.equal(sums_counts, counts)
    assert sums[value].tolist() == [2.0, 2.0]


@pytest.mark.parametrize(
    "dtype, bad, num_codes",
    [(torch.uint8, 250, 200), (torch.int8, -3, 300), (torch.int16, 30000, 20000)],
)
def test_narrow_index_dtypes_still_reject_out_of_range(backend, device, dtype, bad, num_codes):
    indices = torch.tensor([1, bad], dtype=dtype, device=device)
    message = rf"indices: expected values in \[0, {num_codes}\), got {bad} at flat position 1"
    with pytest.raises(ValueError, match=message):
        wvq.code_histogram(indices, num_codes, backend=backend)
    with pytest.raises(ValueError, match=message):
        wvq.code_sums(indices, torch.ones(2, 2, device=device), num_codes, backend=backend)
