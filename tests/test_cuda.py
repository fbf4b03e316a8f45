"""The hand-written CUDA backend (wvq_kernels._C_cuda).

The shared suite already runs every op on ``cuda`` through the ``backend`` fixture when the
backend is available; these tests add what is specific to the CUDA kernels: the tensor-core
precisions, the split-K path, the warp-aggregated histogram on a collapsed codebook,
determinism, agreement with the Triton backend, and soft_assign_stats on its split paths (code
segments in the scan, row segments and column blocks in the accumulation) up to K = 65,536.
They need a GPU and skip without one.
"""

import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels import reference
from wvq_kernels.testing import (
    SOFT_ASSIGN_TOLERANCE,
    check_assignment,
    random_inputs,
    relative_error,
)

requires_cuda_backend = pytest.mark.skipif(
    not wvq.available_backends()["cuda"], reason="the cuda backend is not available"
)
pytestmark = [pytest.mark.gpu, requires_cuda_backend]


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
@pytest.mark.parametrize("precision", ["ieee", "tf32", "bf16"])
@pytest.mark.parametrize("n, k, d", [(4096, 1000, 64), (3, 70_000, 33), (777, 129, 5)])
def test_assign_precisions_and_split_k(metric, precision, n, k, d):
    """Few rows and many codes take the split-K path (packed-key atomicMin across segments)."""
    x, codebook = random_inputs(n, k, d, device="cuda")
    result = wvq.assign(x, codebook, metric=metric, precision=precision, backend="cuda")
    check_assignment(x, codebook, result.indices, result.distances, metric, precision)


def test_ties_go_to_the_smallest_index_across_segments():
    x, _ = random_inputs(5, 1, 16, device="cuda")
    codebook = x[2].repeat(50_000, 1)  # every code ties, across many split-K segments
    result = wvq.assign(x, codebook, backend="cuda")
    assert (result.indices == 0).all()


def test_fused_histogram_on_a_collapsed_codebook():
    x, codebook = random_inputs(100_000, 512, 8, device="cuda")
    codebook[7] = 0.0
    x = x * 1e-3  # every row is nearest to the zero code
    result = wvq.assign(x, codebook, histogram=True, backend="cuda")
    expected = torch.zeros(512, dtype=torch.int64, device="cuda")
    expected[7] = 100_000
    assert torch.equal(result.counts, expected)


def test_matches_triton():
    if not wvq.available_backends()["triton"]:
        pytest.skip("triton backend unavailable")
    x, codebook = random_inputs(2048, 4096, 32, device="cuda")
    cuda = wvq.assign(x, codebook, precision="ieee", histogram=True, backend="cuda")
    triton = wvq.assign(x, codebook, precision="ieee", histogram=True, backend="triton")
    same = cuda.indices == triton.indices
    assert same.float().mean() > 0.999
    torch.testing.assert_close(cuda.distances[same], triton.distances[same], rtol=1e-5, atol=1e-5)
    counts_cuda, sums_cuda = wvq.code_sums(cuda.indices, x, 4096, backend="cuda")
    counts_triton, sums_triton = wvq.code_sums(cuda.indices, x, 4096, backend="triton")
    assert torch.equal(counts_cuda, counts_triton)
    torch.testing.assert_close(sums_cuda, sums_triton)


def test_code_sums_are_deterministic():
    x, _ = random_inputs(50_000, 1, 48, device="cuda")
    indices = torch.randint(0, 300, (50_000,), device="cuda")
    first = wvq.code_sums(indices, x, 300, backend="cuda")
    for _ in range(3):
        again = wvq.code_sums(indices, x, 300, backend="cuda")
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_moments_with_a_large_offset_match_float64():
    x = (1e4 + 1e-2 * torch.randn(20_000, 6, dtype=torch.float64)).to("cuda")
    result = wvq.moments(x, backend="cuda")
    centred = x - x.mean(0)
    torch.testing.assert_close(result.mean, x.mean(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(result.cov, centred.T @ centred / x.shape[0], rtol=1e-9, atol=1e-15)


def _check_soft_assign(x, codebook, tau, lam, result):
    """Every float output within SOFT_ASSIGN_TOLERANCE of the chunked float64 reference (computed on
    the GPU, never N x K), and the nearest codes and their distances as assign owes them."""
    truth = reference.soft_assign_stats(x.double(), codebook.double(), tau, lam)
    for name, got, expected in zip(("loss", "weight_sums", "weighted_sums"), result, truth):
        assert got.dtype == torch.float32 and got.shape == expected.shape
        error = relative_error(got, expected)
        assert error <= SOFT_ASSIGN_TOLERANCE, f"{name}: relative error {error:.2e}"
    check_assignment(x, codebook, result.indices, result.distances, "l2", "ieee")


# (N, K, D): empty and single rows, one chunk of dimensions and several, few rows and many codes
# (the scan splits the codebook), many rows and few codes (row segments in the accumulation).
SOFT_ASSIGN_SHAPES = [
    (0, 17, 12),
    (1, 17, 59),
    (1, 1, 1),
    (777, 300, 12),
    (2049, 300, 59),
    (3, 5000, 8),
    (5000, 17, 8),
    (600, 130, 40),
]


@pytest.mark.parametrize("lam", [0.01, 1.0])
@pytest.mark.parametrize("tau", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("n, k, d", SOFT_ASSIGN_SHAPES)
def test_soft_assign_matches_float64(n, k, d, tau, lam):
    x, codebook = random_inputs(n, k, d, seed=n + k + d, device="cuda")
    result = wvq.soft_assign_stats(x, codebook, tau=tau, lam=lam, backend="cuda")
    _check_soft_assign(x, codebook, tau, lam, result)


@pytest.mark.parametrize("tau", [0.1, 1.0])
@pytest.mark.parametrize("n", [5, 2048])
def test_soft_assign_65536_codes(n, tau):
    x, codebook = random_inputs(n, 65_536, 8, seed=n, device="cuda")
    result = wvq.soft_assign_stats(x, codebook, tau=tau, backend="cuda")
    _check_soft_assign(x, codebook, tau, 0.01, result)


def test_soft_assign_auto_runs_the_cuda_kernels():
    x, codebook = random_inputs(300, 200, 12, device="cuda")
    auto = wvq.soft_assign_stats(x, codebook, tau=0.5)
    cuda = wvq.soft_assign_stats(x, codebook, tau=0.5, backend="cuda")
    for a, b in zip(auto, cuda):
        assert torch.equal(a, b)


def test_soft_assign_ties_across_code_segments_and_determinism():
    """Copies of the winner in different scan segments: the first copy wins (weight 1), the
    others get softmax weights; repeated runs give the same bits."""
    x, codebook = random_inputs(40, 70_000, 16, seed=3, device="cuda")
    winner = 3 * torch.randn(16, generator=torch.Generator().manual_seed(4)).to("cuda")
    copies = [1000, 20_000, 40_000, 69_999]
    codebook[copies] = winner
    x = winner + 0.05 * x
    first = wvq.soft_assign_stats(x, codebook, tau=1.0, backend="cuda")
    assert (first.indices == copies[0]).all()
    _check_soft_assign(x, codebook, 1.0, 0.01, first)
    for _ in range(2):
        again = wvq.soft_assign_stats(x, codebook, tau=1.0, backend="cuda")
        for a, b in zip(first, again):
            assert torch.equal(a, b)


@pytest.mark.parametrize("n, k, d", [(4096, 8192, 32), (3000, 700, 12), (8, 20_000, 59)])
def test_soft_assign_matches_triton(n, k, d):
    if not wvq.available_backends()["triton"]:
        pytest.skip("triton backend unavailable")
    x, codebook = random_inputs(n, k, d, seed=k, device="cuda")
    cuda = wvq.soft_assign_stats(x, codebook, tau=0.5, backend="cuda")
    triton = wvq.soft_assign_stats(x, codebook, tau=0.5, backend="triton")
    same = cuda.indices == triton.indices
    assert same.float().mean() > 0.999
    torch.testing.assert_close(cuda.distances[same], triton.distances[same], rtol=1e-5, atol=1e-5)
    # Each within SOFT_ASSIGN_TOLERANCE of float64, so within twice it of each other.
    for got, expected in zip(cuda[:3], triton[:3]):
        assert relative_error(got, expected) <= 2 * SOFT_ASSIGN_TOLERANCE


@pytest.mark.parametrize("tau", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("d", [12, 59])
def test_soft_assign_codebook_gradient_matches_float64(d, tau):
    x, codebook = random_inputs(1500, 300, d, seed=d, device="cuda")
    codebook.requires_grad_()
    (3 * wvq.soft_assign_stats(x, codebook, tau=tau, backend="cuda").loss).backward()
    codebook64 = codebook.detach().double().requires_grad_()
    truth = reference.soft_assign_stats_materialised(x.double(), codebook64, tau, 0.01)
    (3 * truth[0]).backward()
    assert codebook.grad.dtype == torch.float32
    assert relative_error(codebook.grad, codebook64.grad) <= SOFT_ASSIGN_TOLERANCE
