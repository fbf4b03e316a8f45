import math

import pytest
import torch

import wvq_kernels as wvq

FP32_UNIT_ROUNDOFF = 2.0**-24


def _indices(shape, num_codes, dtype=torch.int64, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    # Skewed towards low codes, so that counts differ and some codes stay unused.
    values = (torch.rand(shape, generator=generator) ** 3 * num_codes).long()
    return values.to(device=device, dtype=dtype)


@pytest.mark.parametrize("num_codes", [1, 17, 65536])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_histogram_matches_bincount(backend, device, num_codes, dtype):
    if dtype == torch.uint8 and num_codes > 256:
        pytest.skip("uint8 indices cannot reach these codes")
    indices = _indices((7, 1000), num_codes, dtype, device)
    counts = wvq.code_histogram(indices, num_codes, backend=backend)
    assert counts.dtype == torch.int64 and counts.shape == (num_codes,)
    assert torch.equal(counts, torch.bincount(indices.reshape(-1).long(), minlength=num_codes))


def test_histogram_of_no_indices_is_zero(backend, device):
    no_indices = torch.empty(0, 3, dtype=torch.int64, device=device)
    counts = wvq.code_histogram(no_indices, 5, backend=backend)
    assert torch.equal(counts.cpu(), torch.zeros(5, dtype=torch.int64))


def test_histogram_non_contiguous_and_untouched(backend, device):
    indices = _indices((300, 40), 100, device=device).T
    before = indices.clone()
    counts = wvq.code_histogram(indices, 100, backend=backend)
    assert torch.equal(indices, before)
    assert torch.equal(counts, torch.bincount(indices.reshape(-1), minlength=100))


def _expected_sums(indices, x, num_codes):
    rows = x.reshape(-1, x.shape[-1]).double()
    flat = indices.reshape(-1).long()
    sums = torch.zeros(num_codes, rows.shape[1], dtype=torch.float64, device=x.device)
    magnitudes = torch.zeros_like(sums)
    sums.index_add_(0, flat, rows)
    magnitudes.index_add_(0, flat, rows.abs())
    return sums, magnitudes


def _check_sums(indices, x, num_codes, counts, sums):
    expected, magnitudes = _expected_sums(indices, x, num_codes)
    assert counts.dtype == torch.int64 and sums.dtype == torch.float32
    assert sums.shape == (num_codes, x.shape[-1])
    assert torch.equal(counts, torch.bincount(indices.reshape(-1).long(), minlength=num_codes))
    # Summing n terms in float32 in any order errs by at most (n - 1) u sum|x|; the final
    # rounding to float32 adds u |sum|. A float64 accumulation meets the second term alone.
    terms = counts.double()[:, None]
    allowed = FP32_UNIT_ROUNDOFF * ((terms - 1).clamp_min(0) * magnitudes + expected.abs())
    error = (sums.double() - expected).abs()
    assert (error <= allowed).all(), f"sum error {error.max()} beyond the rounding bound"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_codes", [1, 17, 4000])
def test_code_sums_match_float64_index_add(backend, device, dtype, num_codes):
    generator = torch.Generator().manual_seed(1)
    x = (torch.randn(5000, 12, generator=generator) + 3).to(device=device, dtype=dtype)
    indices = _indices(5000, num_codes, device=device)
    counts, sums = wvq.code_sums(indices, x, num_codes, backend=backend)
    _check_sums(indices, x, num_codes, counts, sums)


def test_code_sums_batched_non_contiguous_untouched(backend, device):
    x = torch.randn(6, 50, 32, device=device)[..., ::2]
    indices = _indices((50, 6), 30, dtype=torch.int32, device=device).T
    x_before, indices_before = x.clone(), indices.clone()
    counts, sums = wvq.code_sums(indices, x, 30, backend=backend)
    assert torch.equal(x, x_before) and torch.equal(indices, indices_before)
    _check_sums(indices, x, 30, counts, sums)


def test_code_sums_deterministic(backend, device):
    x = torch.randn(20000, 16, device=device)
    indices = _indices(20000, 50, device=device)
    first = wvq.code_sums(indices, x, 50, backend=backend)
    second = wvq.code_sums(indices, x, 50, backend=backend)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_code_sums_of_no_rows(backend, device):
    counts, sums = wvq.code_sums(
        torch.empty(0, dtype=torch.int64, device=device), torch.empty(0, 4, device=device), 3,
        backend=backend,
    )
    assert torch.equal(counts.cpu(), torch.zeros(3, dtype=torch.int64))
    assert torch.equal(sums.cpu(), torch.zeros(3, 4))


def _usage_on(backend, counts, monkeypatch):
    # usage has no backend argument: WVQ_BACKEND chooses it.
    monkeypatch.setenv("WVQ_BACKEND", backend)
    return wvq.usage(counts)


def _entropy(probabilities):
    return -sum(p * math.log(p) for p in probabilities if p > 0)


@pytest.mark.parametrize(
    "counts, utilization, perplexity",
    [
        ([0, 3, 1, 0], 0.5, math.exp(_entropy([0.75, 0.25]))),
        ([5, 5, 5, 5], 1.0, 4.0),
        ([0, 0, 7, 0, 0], 0.2, 1.0),
        ([2, 0, 1, 1, 0, 4, 0, 0], 0.5, math.exp(_entropy([0.25, 0.125, 0.125, 0.5]))),
        ([0, 0, 0], 0.0, 1.0),  # empty histogram: zero entropy
    ],
)
def test_usage_by_hand(backend, device, monkeypatch, counts, utilization, perplexity):
    counts = torch.tensor(counts, dtype=torch.int64, device=device)
    got_utilization, got_perplexity = _usage_on(backend, counts, monkeypatch)
    for value in (got_utilization, got_perplexity):
        assert value.shape == () and value.dtype == torch.float32 and value.device == device
    assert float(got_utilization) == pytest.approx(utilization, rel=1e-6)
    assert float(got_perplexity) == pytest.approx(perplexity, rel=1e-6)


def test_usage_of_a_large_histogram(backend, device, monkeypatch):
    counts = torch.bincount(_indices(100_000, 65536, device=device), minlength=65536)
    probabilities = counts.double() / counts.sum()
    expected = math.exp(_entropy(probabilities[probabilities > 0].tolist()))
    utilization, perplexity = _usage_on(backend, counts.int(), monkeypatch)
    assert float(utilization) == pytest.approx(float((counts > 0).double().mean()), rel=1e-6)
    assert float(perplexity) == pytest.approx(expected, rel=1e-5)
