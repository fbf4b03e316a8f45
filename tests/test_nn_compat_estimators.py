"""The gradient estimators of the swap-in (rotation trick, straight-through) against a float64
implementation of the paper's formula and against vector-quantize-pytorch, and the chunked
Gumbel-max code sampler against the exact softmax."""

import pytest
import torch
import torch.nn.functional as F

from wvq_kernels.nn.code_logits import (
    cross_entropy_chunked,
    diversity_loss_chunked,
    top_codes_chunked,
)
from wvq_kernels.nn.rotation_trick import rotate_to, straight_through

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS, DIM = 64, 12


def pairs(dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(ROWS, DIM, generator=generator, dtype=torch.float64)
    codes = torch.randn(ROWS, DIM, generator=generator, dtype=torch.float64) * 2
    upstream = torch.randn(ROWS, DIM, generator=generator, dtype=torch.float64)
    return features.to(dtype), codes.to(dtype), upstream.to(dtype)


def rotation_by_matrix(features: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Fifty et al. (2024), eq. 4: q̃ = sg(‖q‖/‖e‖ · R) e with R = I − 2rrᵀ + 2q̂êᵀ,
    r = (ê + q̂)/‖ê + q̂‖, R built as a D×D matrix per row, in float64."""
    e_norm = features.detach().norm(dim=-1, keepdim=True)
    q_norm = codes.norm(dim=-1, keepdim=True)
    e_hat, q_hat = features.detach() / e_norm, codes / q_norm
    r = (e_hat + q_hat) / (e_hat + q_hat).norm(dim=-1, keepdim=True)
    eye = torch.eye(features.shape[-1], dtype=features.dtype)
    rotation = eye - 2 * r[:, :, None] * r[:, None, :] + 2 * q_hat[:, :, None] * e_hat[:, None, :]
    scale = q_norm / e_norm
    return scale * torch.einsum("nij,nj->ni", rotation, features)


def gradient(function, features, codes, upstream):
    features = features.clone().requires_grad_()
    output = function(features, codes)
    (output * upstream).sum().backward()
    return output.detach(), features.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rotation_trick_matches_the_papers_formula_in_float64(dtype):
    features, codes, upstream = pairs(dtype)
    value, grad = gradient(rotate_to, features, codes, upstream)
    expected_value, expected_grad = gradient(
        rotation_by_matrix, features.double(), codes.double(), upstream.double()
    )
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    torch.testing.assert_close(value, expected_value.to(dtype), **tolerance)
    torch.testing.assert_close(grad, expected_grad.to(dtype), **tolerance)
    # The value is the code; the gradient is the upstream one rotated and rescaled: its norm
    # is multiplied by ‖q‖/‖e‖ and it differs from straight-through's.
    torch.testing.assert_close(value, codes, **tolerance)
    ratio = codes.norm(dim=-1) / features.norm(dim=-1)
    torch.testing.assert_close(grad.norm(dim=-1), ratio * upstream.norm(dim=-1), **tolerance)
    _, plain = gradient(straight_through, features, codes, upstream)
    torch.testing.assert_close(plain, upstream)
    assert (grad - plain).norm() > 0.1 * plain.norm()


def test_rotation_trick_matches_the_peers_gradient():
    peer = pytest.importorskip("vector_quantize_pytorch.vector_quantize_pytorch")
    features, codes, upstream = pairs()
    value, grad = gradient(rotate_to, features, codes, upstream)
    peer_value, peer_grad = gradient(peer.rotate_to, features, codes, upstream)
    torch.testing.assert_close(value, peer_value)
    torch.testing.assert_close(grad, peer_grad)


def test_rotation_trick_is_finite_at_zero_features():
    features, codes, upstream = pairs()
    features[0] = 0
    value, grad = gradient(rotate_to, features, codes, upstream)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()


def exact_probabilities(row, codes, temperature, metric):
    if metric == "cosine":
        logits = codes.double() @ row.double()
    else:
        logits = -(codes.double() - row.double()).norm(dim=-1)
    return torch.softmax(logits / temperature, dim=0)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("chunk", [3, 64], ids=["blocks of 3", "one block"])
def test_chunked_gumbel_max_draws_from_the_softmax(metric, chunk):
    torch.manual_seed(0)
    codes = torch.randn(10, 4)
    row = torch.randn(4)
    if metric == "cosine":
        codes, row = torch.nn.functional.normalize(codes, dim=-1), row / row.norm()
    draws = 40_000
    samples = top_codes_chunked(row.expand(draws, 4), codes, 1, 0.7, metric, chunk=chunk)[:, 0]
    frequencies = torch.bincount(samples, minlength=10).double() / draws
    expected = exact_probabilities(row, codes, 0.7, metric)
    # Five binomial standard deviations per code.
    bound = 5 * (expected * (1 - expected) / draws).sqrt() + 1e-9
    assert ((frequencies - expected).abs() <= bound).all(), (frequencies, expected)


def test_low_temperature_sampling_is_the_nearest_code():
    torch.manual_seed(0)
    codes, rows = torch.randn(50, 6), torch.randn(200, 6)
    samples = top_codes_chunked(rows, codes, 1, 1e-6, "l2", chunk=7)[:, 0]
    assert torch.equal(samples, torch.cdist(rows, codes).argmin(-1))


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_top_codes_are_the_k_largest_logits_in_order(metric):
    generator = torch.Generator().manual_seed(0)
    codes, rows = torch.randn(50, 6, generator=generator), torch.randn(200, 6, generator=generator)
    if metric == "cosine":
        codes, rows = F.normalize(codes, dim=-1), F.normalize(rows, dim=-1)
    logits = rows @ codes.T if metric == "cosine" else -torch.cdist(rows, codes)
    top = top_codes_chunked(rows, codes, 5, 0.0, metric, chunk=7)
    assert torch.equal(top, logits.topk(5, dim=1).indices)


def test_gumbel_top_k_draws_distinct_codes_by_the_softmax():
    torch.manual_seed(0)
    codes, row = torch.randn(6, 3), torch.randn(3)
    draws = top_codes_chunked(row.expand(40_000, 3), codes, 2, 1.0, "l2", chunk=4)
    assert (draws[:, 0] != draws[:, 1]).all()
    # The first of the k is one exact draw from the softmax.
    expected = torch.softmax(-(codes.double() - row.double()).norm(dim=-1), dim=0)
    frequencies = torch.bincount(draws[:, 0], minlength=6).double() / len(draws)
    bound = 5 * (expected * (1 - expected) / len(draws)).sqrt()
    assert ((frequencies - expected).abs() <= bound).all()


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_chunked_cross_entropy_matches_the_materialised_one_in_float64(metric):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 5, generator=generator, dtype=torch.float64)
    codes = torch.randn(11, 5, generator=generator, dtype=torch.float64)
    if metric == "cosine":
        features, codes = F.normalize(features, dim=-1), F.normalize(codes, dim=-1)
    codes[3] = features[0]  # a zero distance, where the peer's floor stops the gradient
    targets = torch.randint(-1, 11, (40,), generator=generator)
    ours = [t.float().requires_grad_() for t in (features, codes)]
    loss = cross_entropy_chunked(*ours, targets, metric, chunk=4)
    loss.backward()
    exact = [t.clone().requires_grad_() for t in (features, codes)]
    logits = exact[0] @ exact[1].T
    if metric == "l2":
        squared = exact[0].square().sum(-1, keepdim=True) + exact[1].square().sum(-1) - 2 * logits
        logits = -squared.clamp_min(1e-8).sqrt()
    expected = F.cross_entropy(logits, targets, ignore_index=-1, reduction="sum")
    expected.backward()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    for mine, reference in zip(ours, exact):
        torch.testing.assert_close(mine.grad.double(), reference.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_chunked_diversity_loss_matches_the_materialised_one_in_float64(metric):
    generator = torch.Generator().manual_seed(0)
    batch, length, codes_count, temperature = 3, 5, 11, 3.0
    features = torch.randn(batch * length, 4, generator=generator, dtype=torch.float64)
    codes = torch.randn(codes_count, 4, generator=generator, dtype=torch.float64)
    if metric == "cosine":
        features, codes = F.normalize(features, dim=-1), F.normalize(codes, dim=-1)
    positions = torch.arange(length).repeat(batch)
    kept = torch.rand(batch * length, generator=generator) > 0.3  # rows of a masked batch
    ours = [t.float().requires_grad_() for t in (features, codes)]
    loss = diversity_loss_chunked(
        ours[0][kept], ours[1], positions[kept], length, temperature, metric, chunk=4
    )
    loss.backward()
    exact = [t.clone().requires_grad_() for t in (features, codes)]
    logits = exact[0] @ exact[1].T if metric == "cosine" else -torch.cdist(*exact)
    probabilities = (temperature * logits).softmax(-1)[kept]
    sums = torch.zeros(length, codes_count, dtype=torch.float64)
    sums = sums.index_add(0, positions[kept], probabilities)
    counts = torch.bincount(positions[kept], minlength=length).double()
    average = sums[counts > 0] / counts[counts > 0, None]
    expected = (average * average.clamp_min(1e-5).log()).sum(-1).mean()
    expected.backward()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    for mine, reference in zip(ours, exact):
        torch.testing.assert_close(mine.grad.double(), reference.grad, rtol=1e-4, atol=1e-6)
