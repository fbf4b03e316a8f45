"""The hand-written CUDA backend (wvq_kernels._C_cuda).

The shared suite already runs every op on ``cuda`` through the ``backend`` fixture when the
backend is available; these tests add what is specific to the CUDA kernels: the tensor-core
precisions, the split-K path, the warp-aggregated histogram on a collapsed codebook,
determinism, and agreement with the Triton backend. They need a GPU and skip without one.
"""

import pytest
import torch
from oracle import check_assignment

import wvq_kernels as wvq

requires_cuda_backend = pytest.mark.skipif(
    not wvq.available_backends()["cuda"], reason="the cuda backend is not available"
)
pytestmark = [pytest.mark.gpu, requires_cuda_backend]


def _data(n, k, d, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator).to("cuda", dtype)
    codebook = torch.randn(k, d, generator=generator).to("cuda", dtype)
    return x, codebook


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
@pytest.mark.parametrize("precision", ["ieee", "tf32", "bf16"])
@pytest.mark.parametrize("n, k, d", [(4096, 1000, 64), (3, 70_000, 33), (777, 129, 5)])
def test_assign_precisions_and_split_k(metric, precision, n, k, d):
    """Few rows and many codes take the split-K path (packed-key atomicMin across segments)."""
    x, codebook = _data(n, k, d)
    result = wvq.assign(x, codebook, metric=metric, precision=precision, backend="cuda")
    # tf32 keeps 10 mantissa bits, more than bf16: the bf16 bound covers it.
    check_assignment(
        x,
        codebook,
        result.indices,
        result.distances,
        metric,
        "ieee" if precision == "ieee" else "bf16",
    )


def test_ties_go_to_the_smallest_index_across_segments():
    x, _ = _data(5, 1, 16)
    codebook = x[2].repeat(50_000, 1)  # every code ties, across many split-K segments
    result = wvq.assign(x, codebook, backend="cuda")
    assert (result.indices == 0).all()


def test_fused_histogram_on_a_collapsed_codebook():
    x, codebook = _data(100_000, 512, 8)
    codebook[7] = 0.0
    x = x * 1e-3  # every row is nearest to the zero code
    result = wvq.assign(x, codebook, histogram=True, backend="cuda")
    expected = torch.zeros(512, dtype=torch.int64, device="cuda")
    expected[7] = 100_000
    assert torch.equal(result.counts, expected)


def test_matches_triton():
    if not wvq.available_backends()["triton"]:
        pytest.skip("triton backend unavailable")
    x, codebook = _data(2048, 4096, 32)
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
    x, _ = _data(50_000, 1, 48)
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
