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
    SOFT_ASSIGN_GPU_SHAPES,
    SOFT_ASSIGN_TOLERANCE,
    check_assignment,
    code_sums_failures,
    moments_failures,
    random_inputs,
    random_rows,
    relative_error,
    skewed_indices,
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


@pytest.mark.parametrize("lam", [0.01, 1.0])
@pytest.mark.parametrize("tau", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("n, k, d", SOFT_ASSIGN_GPU_SHAPES)
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


# ---------------------------------------------------------------------------------------------
# Assignment: the single-segment path, half inputs, and sizes beyond 32-bit offsets


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
@pytest.mark.parametrize("precision", ["ieee", "tf32", "bf16"])
def test_assign_single_segment(metric, precision):
    """40,000 rows make 625 row blocks, more than twice the SMs of any GPU: one codebook
    segment per row block, so no split-K and no packed-key atomics across segments."""
    x, codebook = random_inputs(40_000, 1000, 64, seed=5, device="cuda")
    result = wvq.assign(x, codebook, metric=metric, precision=precision, backend="cuda")
    check_assignment(x, codebook, result.indices, result.distances, metric, precision)


HALF_DTYPES = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("n, k", [(4096, 1000), (5, 70_000)])
def test_assign_half_inputs(dtype, metric, n, k):
    x, codebook = random_inputs(n, k, 40, dtype=dtype, device="cuda")
    result = wvq.assign(x, codebook, metric=metric, histogram=True, backend="cuda")
    check_assignment(x, codebook, result.indices, result.distances, metric, "auto")
    assert torch.equal(result.counts, torch.bincount(result.indices, minlength=k))


def _ramp_rows(n: int, d: int, dtype) -> torch.Tensor:
    """(n, d) as the transposed view of a contiguous (d, n) tensor: column j of row r is
    (j + 1) r / n plus noise, so rows read from wrong offsets change every statistic."""
    generator = torch.Generator(device="cuda").manual_seed(d)
    ramp = torch.linspace(0, 1, n, device="cuda", dtype=torch.float32)
    columns = torch.arange(1, d + 1, device="cuda", dtype=torch.float32)[:, None] * ramp
    noise = torch.randn(d, n, device="cuda", generator=generator).mul_(0.01)
    x = columns.add_(noise).to(dtype).T
    assert not x.is_contiguous() and x.shape == (n, d)
    return x


# N * D = 2^31 + 64,000: element offsets past 2^31 in every kernel that reads x.
LARGE_N, LARGE_D = 2**25 + 1000, 64


def test_assign_beyond_32_bit_offsets():
    x = _ramp_rows(LARGE_N, LARGE_D, torch.float32)
    codebook = torch.linspace(0, 1, 97, device="cuda")[:, None] * torch.arange(
        1, LARGE_D + 1, device="cuda", dtype=torch.float32
    )
    result = wvq.assign(x, codebook, check_finite=False, backend="cuda")
    for rows in (slice(0, 4096), slice(LARGE_N // 2, LARGE_N // 2 + 4096), slice(-4096, None)):
        check_assignment(
            x[rows], codebook, result.indices[rows], result.distances[rows], "l2", "ieee"
        )
    assert int(result.indices[-1]) == 96


# ---------------------------------------------------------------------------------------------
# Statistics: half inputs, the parallel paths on a collapsed codebook, sizes beyond 32 bits


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_code_sums_half_inputs(dtype):
    x, _ = random_inputs(20_000, 1, 48, dtype=dtype, device="cuda")
    indices = skewed_indices((20_000,), 300, device="cuda")
    counts, sums = wvq.code_sums(indices, x, 300, backend="cuda")
    assert not code_sums_failures(indices, x, counts, sums)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_moments_half_inputs(dtype):
    x = (3 + random_rows(30_000, 70, seed=1)).to("cuda", dtype)
    assert not moments_failures(wvq.moments(x, backend="cuda"), x)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_soft_assign_half_inputs(dtype):
    x, codebook = random_inputs(1000, 300, 24, dtype=dtype, device="cuda")
    result = wvq.soft_assign_stats(x, codebook, tau=0.5, backend="cuda")
    _check_soft_assign(x.float(), codebook.float(), 0.5, 0.01, result)


@pytest.mark.parametrize("d", [48, 300])
def test_code_sums_collapsed_codebook(d):
    """Every one of 10^6 rows on code 7: the code's rows are cut into pieces summed in
    parallel and merged in a fixed order. Against float64, and the same bits on every run."""
    x = random_rows(1_000_000, d, seed=d).to("cuda")
    indices = torch.full((1_000_000,), 7, device="cuda")
    counts, sums = wvq.code_sums(indices, x, 300, backend="cuda")
    assert not code_sums_failures(indices, x, counts, sums)
    again = wvq.code_sums(indices, x, 300, backend="cuda")
    assert torch.equal(counts, again[0]) and torch.equal(sums, again[1])


def test_code_sums_segments_across_piece_boundaries():
    """Codes of 1 to 1,000 rows in shuffled row order, so that segments start and end on,
    just before and just after the boundaries of the fixed-size pieces."""
    lengths = torch.tensor([1, 255, 256, 257, 1, 511, 512, 513, 1000, 3, 767, 0, 258, 1])
    codes = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    order = torch.randperm(len(codes), generator=torch.Generator().manual_seed(0))
    indices = codes[order].to("cuda")
    x = random_rows(len(codes), 33, seed=2).to("cuda")
    counts, sums = wvq.code_sums(indices, x, len(lengths), backend="cuda")
    assert not code_sums_failures(indices, x, counts, sums)


@pytest.mark.parametrize("d", [8, 130])
def test_moments_parallel_path_matches_float64(d):
    """10^6 rows with a large common offset: about 250 chunks of rows, each reduced as a tiled
    product (three 64-column tiles when d = 130), merged in chunk order."""
    x = (1e3 + random_rows(1_000_000, d, seed=d, dtype=torch.float64)).to("cuda")
    result = wvq.moments(x, backend="cuda")
    assert not moments_failures(result, x, tolerance=1e-10)
    again = wvq.moments(x, backend="cuda")
    assert torch.equal(result.mean, again.mean) and torch.equal(result.cov, again.cov)


def test_moments_beyond_32_bit_offsets():
    x = _ramp_rows(LARGE_N, LARGE_D, torch.bfloat16)
    result = wvq.moments(x, check_finite=False, backend="cuda")
    total = torch.zeros(LARGE_D, dtype=torch.float64, device="cuda")
    for chunk in x.split(1 << 22):
        total += chunk.double().sum(0)
    mean = total / LARGE_N
    cov = torch.zeros(LARGE_D, LARGE_D, dtype=torch.float64, device="cuda")
    for chunk in x.split(1 << 22):
        centred = chunk.double() - mean
        cov += centred.T @ centred
    cov /= LARGE_N
    assert int(result.count) == LARGE_N
    assert relative_error(result.mean, mean) <= 1e-9
    assert relative_error(result.cov, cov) <= 1e-9


# ---------------------------------------------------------------------------------------------
# Streams, opcheck, direct calls through torch.ops


def _every_op(dtype=torch.float32):
    """(name, arguments) of one small call of every wvq op on CUDA tensors."""
    x, codebook = random_inputs(700, 300, 24, dtype=dtype, device="cuda")
    indices = skewed_indices((700,), 300, device="cuda")
    counts = torch.bincount(indices, minlength=300)
    return [
        ("assign", (x, codebook, "l2", "ieee", True)),
        ("assign", (x, codebook, "l2", "bf16", False)),
        ("code_histogram", (indices, 300)),
        ("code_sums", (indices, x, 300)),
        ("usage", (counts,)),
        ("moments", (x,)),
        ("soft_assign_stats", (x, codebook, 0.5, 0.01)),
    ]


def _as_tuple(result):
    return (result,) if isinstance(result, torch.Tensor) else tuple(result)


def test_a_non_default_stream_gives_the_default_streams_results():
    """Each op's inputs are written on a side stream after a long sleep there: kernels that
    ran on any other stream than the current one would read them before they are written."""
    for name, arguments in _every_op():
        op = getattr(torch.ops.wvq, name)
        expected = op(*arguments)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.cuda._sleep(100_000_000)
            late = [a.clone() if isinstance(a, torch.Tensor) else a for a in arguments]
            got = op(*late)
        side.synchronize()
        for a, b in zip(_as_tuple(got), _as_tuple(expected)):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("dtype", [torch.float32, *HALF_DTYPES])
def test_opcheck_on_cuda_tensors(dtype):
    for name, arguments in _every_op(dtype):
        torch.library.opcheck(getattr(torch.ops.wvq, name).default, arguments)


def test_direct_calls_with_zero_dimensions():
    """D = 0 through torch.ops (the public functions reject it first) raises in every op with
    rows, as on the CPU (tests/test_validation.py)."""
    x, codebook = torch.zeros(5, 0, device="cuda"), torch.zeros(3, 0, device="cuda")
    indices = torch.tensor([0, 2, 2, 1, 2], device="cuda")
    calls = [
        lambda: torch.ops.wvq.assign(x, codebook, "l2", "ieee", True),
        lambda: torch.ops.wvq.soft_assign_stats(x, codebook, 0.5, 0.01),
        lambda: torch.ops.wvq.moments(x),
        lambda: torch.ops.wvq.code_sums(indices, x, 3),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="D must be at least 1"):
            call()
    torch.cuda.synchronize()


def test_direct_calls_skip_out_of_range_indices():
    """Indices outside [0, K) reach the kernels only through torch.ops: they are counted and
    summed nowhere, and nothing is written out of bounds."""
    x = random_rows(1000, 16, seed=3).to("cuda")
    indices = torch.randint(-3, 53, (1000,), generator=torch.Generator().manual_seed(3))
    valid = (indices >= 0) & (indices < 50)
    indices = indices.to("cuda")
    expected = torch.bincount(indices[valid.cuda()], minlength=50)
    assert torch.equal(torch.ops.wvq.code_histogram(indices, 50), expected)
    counts, sums = torch.ops.wvq.code_sums(indices, x, 50)
    assert torch.equal(counts, expected)
    truth = torch.zeros(50, 16, dtype=torch.float64).index_add_(
        0, indices.cpu()[valid], x.cpu().double()[valid]
    )
    torch.testing.assert_close(sums.cpu().double(), truth, rtol=1e-6, atol=1e-5)
    torch.cuda.synchronize()


def test_direct_calls_with_a_cpu_tensor_raise():
    """A CUDA tensor among the arguments dispatches to the CUDA kernel, which must refuse the
    CPU one before it builds a device guard or launches anything."""
    x = torch.zeros(4, 3, device="cuda")
    with pytest.raises(RuntimeError, match="on different devices"):
        torch.ops.wvq.code_sums(torch.zeros(4, dtype=torch.int64), x, 5)
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor"):
        torch.ops.wvq.code_sums(torch.zeros(4, dtype=torch.int64, device="cuda"), x.cpu(), 5)
    with pytest.raises(RuntimeError, match="on different devices"):
        torch.ops.wvq.assign(x, x.cpu(), "l2", "ieee", False)
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor"):
        torch.ops.wvq.soft_assign_stats(x.cpu(), x, 0.5, 0.01)
