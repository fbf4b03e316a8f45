"""assign(..., k=...): the k nearest codes, on every backend, against the float64 oracle
(wvq_kernels.testing.TopkTruth): every rank's regret within the precision's bound, the exact
index at decisive ranks, distances ascending with ties to the smallest index at every rank."""

import subprocess
import sys

import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels import MAX_TOP_K
from wvq_kernels.testing import (
    TopkTruth,
    check_topk,
    distances64,
    hard_inputs,
    random_inputs,
)

METRICS = ["l2", "cosine", "dot"]
TOP_KS = [1, 2, 8, 64]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("precision", ["ieee", "bf16"])
@pytest.mark.parametrize("k", TOP_KS)
@pytest.mark.parametrize("d", [12, 59])
def test_every_rank_meets_the_oracle(backend, device, metric, precision, k, d):
    """Exact codes, near and far rows and an all-zero row against a codebook with duplicates."""
    x, codebook = hard_inputs((40,), 300, d)
    result = wvq.assign(
        x.to(device), codebook.to(device), k=k, metric=metric, precision=precision, backend=backend
    )
    assert result.indices.shape == (40, k) and result.distances.shape == (40, k)
    check_topk(x, codebook, result.indices, result.distances, metric, precision)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_meet_the_oracle(backend, device, metric, dtype):
    x, codebook = hard_inputs((2, 30), 500, 24, dtype, layout_strided=True)
    result = wvq.assign(x.to(device), codebook.to(device), k=8, metric=metric, backend=backend)
    assert result.indices.shape == (2, 30, 8)
    check_topk(x, codebook, result.indices, result.distances, metric, "auto")


@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("histogram", [False, True])
def test_zero_and_one_rows(backend, device, n, histogram):
    x, codebook = random_inputs(n, 70, 12, device=device)
    result = wvq.assign(x, codebook, k=8, histogram=histogram, backend=backend)
    assert result.indices.shape == (n, 8) and result.indices.dtype == torch.int64
    assert result.distances.shape == (n, 8) and result.distances.dtype == torch.float32
    if histogram:
        assert torch.equal(result.counts, torch.bincount(result.indices[:, 0], minlength=70))
    check_topk(x, codebook, result.indices, result.distances, "l2", "ieee")


def test_k_equal_to_the_codebook_size_sorts_every_code(backend, device):
    x, codebook = random_inputs(20, 9, 12, device=device)
    result = wvq.assign(x, codebook, k=9, backend=backend)
    assert torch.equal(result.indices.sort(dim=1).values.cpu(), torch.arange(9).expand(20, 9))
    check_topk(x, codebook, result.indices, result.distances, "l2", "ieee")


@pytest.mark.parametrize("metric", METRICS)
def test_duplicates_across_tile_boundaries_keep_index_order(backend, device, metric):
    """Five copies of the nearest code and three of the runner-up, on both sides of the
    reference's 4096-code blocks, the CPU's code segments and the Triton tiles: ranks 0-4 are
    the first group in index order, ranks 5-7 the second."""
    x, codebook = random_inputs(64, 10_000, 16, device=device)
    generator = torch.Generator().manual_seed(1)
    winner = 3 * torch.randn(16, generator=generator)
    runner_up = 0.9 * winner + 0.3 * torch.randn(16, generator=generator)
    winners, runners_up = [100, 4095, 4096, 4196, 9999], [7, 4097, 8191]
    codebook[winners] = winner.to(device)
    codebook[runners_up] = runner_up.to(device)
    x = winner.to(device) + 0.05 * x
    result = wvq.assign(x, codebook, k=8, metric=metric, backend=backend)
    assert (result.indices.cpu() == torch.tensor(winners + runners_up)).all()
    first, second = result.distances[:, :5], result.distances[:, 5:]
    assert (first == first[:, :1]).all() and (second == second[:, :1]).all()


@pytest.mark.parametrize("metric", ["l2", "dot"])
@pytest.mark.parametrize("precision", ["ieee", "bf16"])
def test_exact_ties_on_integer_data_follow_index_order_at_every_rank(
    backend, device, metric, precision
):
    """Small integers make every score and distance exact, so ties between different codes are
    real at every rank: the order must be float64's stable sort."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randint(-2, 3, (100, 6), generator=generator).float()
    codebook = torch.randint(-2, 3, (3000, 6), generator=generator).float()
    result = wvq.assign(
        x.to(device), codebook.to(device), k=8, metric=metric, precision=precision, backend=backend
    )
    distances, expected = distances64(x, codebook, metric).sort(dim=1, stable=True)
    assert torch.equal(result.indices.cpu(), expected[:, :8])
    assert torch.equal(result.distances.cpu().double(), distances[:, :8])


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("precision", ["ieee", "bf16"])
def test_k_1_equals_assign(backend, device, metric, precision):
    x, codebook = hard_inputs((50,), 400, 20)
    x, codebook = x.to(device), codebook.to(device)
    options = dict(metric=metric, precision=precision, histogram=True, backend=backend)
    nearest = wvq.assign(x, codebook, **options)
    top = wvq.assign(x, codebook, k=1, **options)
    assert torch.equal(top.indices[:, 0], nearest.indices)
    assert torch.equal(top.counts, nearest.counts)
    if backend == "triton":
        # Triton's assign sums the distance in its kernel, the top-k in PyTorch (as the
        # reference does): float32 sums in different orders.
        torch.testing.assert_close(top.distances[:, 0], nearest.distances, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(top.distances[:, 0], nearest.distances)


def test_histogram_counts_the_first_choice(backend, device):
    x, codebook = random_inputs(500, 40, 8, device=device)
    result = wvq.assign(x, codebook, k=5, histogram=True, backend=backend)
    assert torch.equal(result.counts, torch.bincount(result.indices[:, 0], minlength=40))


def test_leading_batch_dims_match_flat_rows(backend, device):
    x, codebook = random_inputs(240, 50, 12, device=device)
    batched = wvq.assign(x.reshape(2, 3, 40, 12), codebook, k=4, backend=backend)
    flat = wvq.assign(x, codebook, k=4, backend=backend)
    assert batched.indices.shape == (2, 3, 40, 4)
    assert torch.equal(batched.indices.reshape(-1, 4), flat.indices)
    assert torch.equal(batched.distances.reshape(-1, 4), flat.distances)


def test_assign_topk_is_assign_with_k(backend, device):
    x, codebook = random_inputs(30, 50, 12, device=device)
    for a, b in zip(
        wvq.assign_topk(x, codebook, 3, backend=backend),
        wvq.assign(x, codebook, k=3, backend=backend),
    ):
        assert (a is None and b is None) or torch.equal(a, b)


def test_cpu_results_do_not_depend_on_the_thread_count():
    """Thread counts change the CPU plan (row blocks, code segments): bitwise the same result."""
    if not wvq.available_backends()["cpu"]:
        pytest.skip("no CPU extension")
    x, codebook = hard_inputs((3, 100), 5000, 24)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = wvq.assign(x, codebook, k=8, histogram=True, backend="cpu")
        torch.set_num_threads(2)
        two = wvq.assign(x, codebook, k=8, histogram=True, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.parametrize("splits", [1, 3])
def test_triton_split_k_lists_merge_exactly(splits):
    """Row-owned and split-K launches give the same lists (the merge is by (score, index))."""
    if not wvq.available_backends()["triton"]:
        pytest.skip("no Triton")
    from wvq_kernels.triton.assign_topk import launch_assign_topk

    x, codebook = hard_inputs((30,), 1500, 12)
    indices, distances, _ = launch_assign_topk(x, codebook, 8, "l2", "ieee", False, splits)
    expected = wvq.assign(x, codebook, k=8, backend="reference")
    assert torch.equal(indices, expected.indices)
    check_topk(x, codebook, indices, distances, "l2", "ieee")


def test_the_oracle_rejects_a_wrong_order_and_a_wrong_tie():
    x, codebook = random_inputs(10, 60, 8)
    codebook[40] = codebook[3]
    x[0] = codebook[3]
    result = wvq.assign(x, codebook, k=4, backend="reference")
    truth = TopkTruth(x, codebook, "l2", 4)
    assert truth.failures(result.indices, result.distances, "ieee") == []
    assert result.indices[0, :2].tolist() == [3, 40]
    swapped = result.indices.clone()
    swapped[:, [1, 2]] = swapped[:, [2, 1]]
    assert truth.failures(swapped, result.distances, "ieee")
    tie_swapped = result.indices.clone()
    tie_swapped[0, :2] = torch.tensor([40, 3])
    assert truth.failures(tie_swapped, result.distances, "ieee")


@pytest.mark.parametrize(
    "k, error, message",
    [
        (0, ValueError, "k: expected 1 <= k <= 64, got 0"),
        (MAX_TOP_K + 1, ValueError, "k: expected 1 <= k <= 64, got 65"),
        (11, ValueError, "k: expected k <= K = 10 codes, got 11"),
        (2.0, TypeError, "k: expected an int or None, got float"),
        (True, TypeError, "k: expected an int or None, got bool"),
    ],
)
def test_bad_k_raises_naming_k(k, error, message):
    x, codebook = random_inputs(5, 10, 4)
    with pytest.raises(error, match=message):
        wvq.assign(x, codebook, k=k)
    with pytest.raises(error, match=message):
        wvq.assign_topk(x, codebook, k)


def test_assign_topk_needs_a_k():
    x, codebook = random_inputs(5, 10, 4)
    with pytest.raises(TypeError, match="k: expected an int, got NoneType"):
        wvq.assign_topk(x, codebook, None)


def test_compiles_without_graph_breaks():
    if not wvq.available_backends()["cpu"]:
        pytest.skip("no CPU extension")
    from wvq_kernels import _trusted

    def nearest_two(x, codebook):
        result = _trusted.assign_topk(x, codebook, 2, histogram=True, backend="cpu")
        return result.indices, result.distances.sum(dim=-1), result.counts

    compiled = torch.compile(nearest_two, backend="aot_eager", fullgraph=True, dynamic=True)
    for n in (33, 50):
        x, codebook = random_inputs(n, 40, 12, seed=n)
        for a, b in zip(compiled(x, codebook), nearest_two(x, codebook)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("precision", ["ieee", "bf16"])
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_triton_table_configs_meet_the_oracle(arch, precision):
    """The GPU table's tiles (64 x 64, several D chunks at D = 40 with 16- or 32-wide chunks)
    in the interpreter: two and a bit row blocks and code tiles, split-K (4 SMs) and
    row-owned (1 SM), with the largest k."""
    if not wvq.available_backends()["triton"]:
        pytest.skip("no Triton")
    from wvq_kernels.triton import configs
    from wvq_kernels.triton.assign_topk import launch_assign_topk

    x, codebook = hard_inputs((133,), 131, 40)
    for sms in (1, 4):
        with configs.emulate(arch, sms):
            indices, distances, counts = launch_assign_topk(x, codebook, 64, "l2", precision, True)
        check_topk(x, codebook, indices, distances, "l2", precision)
        assert torch.equal(counts, torch.bincount(indices[:, 0], minlength=131))


@pytest.mark.slow
def test_every_cpu_isa_meets_the_oracle(run_on_isa):
    """The top-k epilogue of every micro-kernel this CPU runs (AVX-512, AVX2, scalar), forced in
    a subprocess: every rank within the oracle, duplicates in index order."""
    shapes = [(60, 1000, 12), (30, 300, 59)]
    inputs = [hard_inputs((n,), k, d) for n, k, d in shapes]
    calls = [
        ("assign", (x, codebook), {"k": 8, "precision": precision, "backend": "cpu"})
        for x, codebook in inputs
        for precision in ("ieee", "bf16")
    ]
    results = iter(run_on_isa(calls))
    for x, codebook in inputs:
        for precision in ("ieee", "bf16"):
            indices, distances, _ = next(results)
            check_topk(x, codebook, indices, distances, "l2", precision)


PEAK_MEMORY = """
import sys, torch, wvq_kernels as wvq
from wvq_kernels.bench.harness import PeakMemory
backend, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
generator = torch.Generator().manual_seed(0)
x = torch.randn(n, 64, generator=generator)
codebook = torch.randn(65536, 64, generator=generator)
wvq.assign(x[:8], codebook[:100], k=k, backend=backend)
peak = PeakMemory()
peak.reset()
wvq.assign(x, codebook, k=k, histogram=True, backend=backend)
print(peak.peak_delta_mib())
"""


@pytest.mark.slow
@pytest.mark.parametrize("k", [8, 64])
def test_cpu_peak_memory_beyond_inputs_and_outputs_is_bounded(k):
    """Issue 16's size, N = 16384, K = 65536, D = 64: the packed codebook (16 MiB) and the
    candidate lists, under 64 MiB beyond the inputs and the (N, k) outputs, where the N x K
    scores would take 4 GiB."""
    if not wvq.available_backends()["cpu"]:
        pytest.skip("no CPU extension")
    n = 16384
    child = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY, "cpu", str(n), str(k)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    outputs_mib = n * k * 12 / 2**20
    peak_mib = float(child.stdout.split()[-1])
    assert peak_mib - outputs_mib < 64, f"{peak_mib:.1f} MiB, outputs {outputs_mib:.1f} MiB"
