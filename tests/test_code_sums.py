import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels.testing import code_sums_failures, skewed_indices


def _check_sums(indices, x, counts, sums):
    problems = code_sums_failures(indices, x, counts, sums)
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_codes", [1, 17, 4000])
def test_code_sums_match_float64_index_add(backend, device, dtype, num_codes):
    generator = torch.Generator().manual_seed(1)
    x = (torch.randn(5000, 12, generator=generator) + 3).to(device=device, dtype=dtype)
    indices = skewed_indices(5000, num_codes, device=device)
    counts, sums = wvq.code_sums(indices, x, num_codes, backend=backend)
    assert sums.shape == (num_codes, 12)
    _check_sums(indices, x, counts, sums)


def test_batched_non_contiguous_inputs_match_float64_and_stay_untouched(backend, device):
    x = torch.randn(6, 50, 32, device=device)[..., ::2]
    indices = skewed_indices((50, 6), 30, dtype=torch.int32, device=device).T
    x_before, indices_before = x.clone(), indices.clone()
    counts, sums = wvq.code_sums(indices, x, 30, backend=backend)
    assert torch.equal(x, x_before) and torch.equal(indices, indices_before)
    _check_sums(indices, x, counts, sums)


def test_code_sums_are_bitwise_deterministic(backend, device):
    x = torch.randn(20000, 16, device=device)
    indices = skewed_indices(20000, 50, device=device)
    first = wvq.code_sums(indices, x, 50, backend=backend)
    second = wvq.code_sums(indices, x, 50, backend=backend)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_code_sums_of_no_rows_are_zero(backend, device):
    counts, sums = wvq.code_sums(
        torch.empty(0, dtype=torch.int64, device=device),
        torch.empty(0, 4, device=device),
        3,
        backend=backend,
    )
    assert torch.equal(counts.cpu(), torch.zeros(3, dtype=torch.int64))
    assert torch.equal(sums.cpu(), torch.zeros(3, 4))
