import math

import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels.testing import skewed_indices, usage_failures


@pytest.fixture
def usage_on(backend, monkeypatch):
    """usage has no backend argument: WVQ_BACKEND chooses it."""
    monkeypatch.setenv("WVQ_BACKEND", backend)
    return wvq.usage


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
def test_usage_equals_hand_computed_values(usage_on, device, counts, utilization, perplexity):
    counts = torch.tensor(counts, dtype=torch.int64, device=device)
    result = usage_on(counts)
    assert not usage_failures(result, counts)
    assert float(result[0]) == pytest.approx(utilization, rel=1e-6)
    assert float(result[1]) == pytest.approx(perplexity, rel=1e-6)


def test_usage_of_a_large_int32_histogram_matches_float64(usage_on, device):
    counts = torch.bincount(skewed_indices(100_000, 65536, device=device), minlength=65536)
    assert (counts == 0).any() and counts.max() > 10
    result = usage_on(counts.int())
    problems = usage_failures(result, counts)
    assert not problems, "; ".join(problems)
