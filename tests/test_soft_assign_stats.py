"""soft_assign_stats (NSVQ's dense loss statistics) on every backend against its definition
materialised in float64 (reference.soft_assign_stats_materialised): every output, the gradient,
ties, shapes and layouts, half-precision inputs, and every CPU ISA."""

import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels.reference import soft_assign_stats_materialised
from wvq_kernels.testing import (
    LOW_PRECISION_ERROR_FACTOR,
    SOFT_ASSIGN_TOLERANCE,
    AssignmentTruth,
    random_inputs,
    relative_error,
    soft_assign_failures,
    soft_assign_truth,
)

TAUS = [0.1, 1.0, 10.0]
DIMS = [1, 3, 8, 12, 59]
SIZES = [(0, 17), (1, 17), (257, 17), (1, 1), (257, 1), (257, 300)]


def _check_outputs(x, codebook, tau, lam, result):
    problems = soft_assign_failures(x, codebook, tau, lam, result)
    assert not problems, "; ".join(problems)


def _check_nearest(x, codebook, indices):
    problems = AssignmentTruth(x, codebook, "l2").choice_failures(indices, "ieee")
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n, k", SIZES)
def test_matches_float64_definition(backend, device, n, k, d, tau):
    x, codebook = random_inputs(n, k, d, device=device, seed=n + k + d)
    result = wvq.soft_assign_stats(x, codebook, tau=tau, backend=backend)
    _check_outputs(x, codebook, tau, 0.01, result)


@pytest.mark.parametrize("lam", [0.0, 1.0])
@pytest.mark.parametrize("tau", [0.01, 1.0])
def test_other_lambdas_and_a_small_tau_match_float64(backend, device, lam, tau):
    """lam = 1 clamps many weights at 1; tau = 0.01 makes most weights underflow to 0."""
    x, codebook = random_inputs(300, 600, 6, device=device, seed=1)
    result = wvq.soft_assign_stats(x, codebook, tau=tau, lam=lam, backend=backend)
    _check_outputs(x, codebook, tau, lam, result)


def test_lam_zero_gives_nearest_code_statistics(backend, device):
    """With lam = 0 only winners weigh: weight sums are the histogram, weighted sums the code
    sums, the loss the mean nearest distance over D."""
    x, codebook = random_inputs(500, 40, 8, device=device, seed=2)
    result = wvq.soft_assign_stats(x, codebook, tau=1.0, lam=0.0, backend=backend)
    counts, sums = wvq.code_sums(result.indices, x, 40, backend="reference")
    assert torch.equal(result.weight_sums, counts.float())
    torch.testing.assert_close(result.weighted_sums, sums, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(result.loss, result.distances.mean() / 8, rtol=1e-6, atol=0)


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("d", [1, 12, 59])
def test_gradient_matches_float64_autograd(backend, device, tau, d):
    x, codebook = random_inputs(257, 300, d, device=device, seed=d)
    x.requires_grad_()
    codebook.requires_grad_()
    result = wvq.soft_assign_stats(x, codebook, tau=tau, backend=backend)
    (2 * result.loss).backward()
    codebook64 = codebook.detach().cpu().double().requires_grad_()
    (2 * soft_assign_truth(x, codebook64, tau, 0.01)[0]).backward()
    assert codebook.grad.dtype == codebook.dtype
    assert relative_error(codebook.grad, codebook64.grad) <= SOFT_ASSIGN_TOLERANCE
    assert x.grad is None  # x is stop-gradient


def test_empty_batch_gives_zeros_and_a_zero_gradient(backend, device):
    x = torch.empty(3, 0, 8, device=device)
    codebook = torch.randn(17, 8, device=device, requires_grad=True)
    result = wvq.soft_assign_stats(x, codebook, tau=1.0, backend=backend)
    assert result.indices.shape == (3, 0) and result.distances.shape == (3, 0)
    assert result.loss.item() == 0 and not result.weight_sums.any()
    assert result.weighted_sums.shape == (17, 8) and not result.weighted_sums.any()
    result.loss.backward()
    assert torch.equal(codebook.grad, torch.zeros_like(codebook))


@pytest.mark.parametrize("k", [40, 600])
def test_duplicate_codes_go_to_the_smallest_index(backend, device, k):
    """Copies of one code, on both sides of the CPU's 256-code blocks when K allows: the first
    copy wins (weight 1), the others get the softmax weight, as in float64."""
    x, codebook = random_inputs(64, k, 16, device=device, seed=3)
    winner = 3 * torch.randn(16, generator=torch.Generator().manual_seed(4)).to(device)
    copies = [5, 11, 23, 39] if k == 40 else [100, 255, 256, 300, 599]
    codebook[copies] = winner
    x = winner + 0.05 * x
    result = wvq.soft_assign_stats(x, codebook, tau=1.0, backend=backend)
    assert (result.indices == copies[0]).all()
    _check_outputs(x, codebook, 1.0, 0.01, result)


def test_leading_batch_dims_and_strided_inputs_match_flat_ones(backend, device):
    x, codebook = random_inputs(240, 50, 12, device=device, seed=5)
    wide = torch.zeros(240, 24, device=device)
    wide[:, ::2] = x
    strided_x, transposed_codebook = wide[:, ::2], codebook.T.contiguous().T
    assert not strided_x.is_contiguous() and not transposed_codebook.is_contiguous()
    batched = wvq.soft_assign_stats(
        strided_x.reshape(2, 3, 40, 12), transposed_codebook, tau=0.5, backend=backend
    )
    flat = wvq.soft_assign_stats(x, codebook, tau=0.5, backend=backend)
    assert batched.indices.shape == (2, 3, 40) and batched.distances.shape == (2, 3, 40)
    assert torch.equal(batched.indices.reshape(-1), flat.indices)
    for got, expected in zip(batched[:3], flat[:3]):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(batched.distances.reshape(-1), flat.distances, rtol=1e-6, atol=0)


def test_many_rows_few_codes_match_float64(backend, device):
    """Few code blocks: the CPU and Triton kernels split the rows into segments whose partial
    sums are added afterwards."""
    x, codebook = random_inputs(5000, 17, 8, device=device, seed=6)
    result = wvq.soft_assign_stats(x, codebook, tau=1.0, backend=backend)
    _check_outputs(x, codebook, 1.0, 0.01, result)


def test_more_than_2_to_the_31_pairs_give_exact_winner_statistics(fast_backend, fast_device):
    """N * K > 2^31 (64-bit offsets). With lam = 0 only winners weigh, which gives exact
    checks: the weight sums are the histogram of the indices, the weighted sums the code sums,
    and sampled rows' codes are the nearest."""
    if fast_backend == "triton" and fast_device.type == "cpu":
        pytest.skip("too slow in the Triton interpreter; runs on a GPU")
    n, k, d = 32_800, 65_536, 4
    assert n * k > 2**31
    x, codebook = random_inputs(n, k, d, device=fast_device, seed=11)
    result = wvq.soft_assign_stats(x, codebook, tau=1.0, lam=0.0, backend=fast_backend)
    counts, sums = wvq.code_sums(result.indices, x, k, backend="reference")
    assert torch.equal(result.weight_sums, counts.float())
    torch.testing.assert_close(result.weighted_sums, sums, rtol=1e-6, atol=1e-5)
    sample = torch.cat([torch.arange(16), torch.arange(n - 16, n)])
    _check_nearest(x[sample], codebook, result.indices[sample])


def test_deterministic_and_inputs_untouched(backend, device):
    x, codebook = random_inputs(500, 300, 16, device=device, seed=7)
    x_before, codebook_before = x.clone(), codebook.clone()
    first = wvq.soft_assign_stats(x, codebook, tau=0.3, backend=backend)
    second = wvq.soft_assign_stats(x, codebook, tau=0.3, backend=backend)
    assert torch.equal(x, x_before) and torch.equal(codebook, codebook_before)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_cpu_results_do_not_depend_on_the_thread_count():
    if not wvq.available_backends()["cpu"]:
        pytest.skip("cpu backend not built")
    x, codebook = random_inputs(5000, 700, 8, seed=10)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, max(2, threads)):
            torch.set_num_threads(count)
            results.append(wvq.soft_assign_stats(x, codebook, tau=0.5, backend="cpu"))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_within_the_low_precision_rule(backend, device, dtype):
    """The project's low-precision rule (testing.LOW_PRECISION_ERROR_FACTOR): accumulated in
    float32, the error against float64 on the same (rounded) inputs is at most twice that of
    the definition computed by PyTorch in the inputs' precision."""
    x, codebook = random_inputs(257, 300, 12, dtype=dtype, device=device, seed=8)
    result = wvq.soft_assign_stats(x, codebook, tau=1.0, backend=backend)
    truth = soft_assign_truth(x, codebook, 1.0, 0.01)
    same_precision = soft_assign_stats_materialised(x.cpu(), codebook.cpu(), 1.0, 0.01, dtype)
    for got, baseline, expected in zip(result[:3], same_precision[:3], truth[:3]):
        baseline_error = relative_error(baseline, expected)
        assert baseline_error > 0
        assert relative_error(got, expected) <= LOW_PRECISION_ERROR_FACTOR * baseline_error
    _check_nearest(x, codebook, result.indices)


def test_backward_under_aot_autograd(fast_backend, fast_device):
    """The fake kernel and the registered gradient trace with torch.compile (fullgraph;
    without the finiteness check, a data-dependent branch)."""
    if fast_device.type == "cpu" and fast_backend == "triton":
        pytest.skip("the interpreter cannot run kernels on fake tensors (see test_triton_ops.py)")

    def loss(x, codebook):
        return wvq.soft_assign_stats(
            x, codebook, tau=1.0, backend=fast_backend, check_finite=False
        ).loss

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    x, codebook = random_inputs(100, 70, 8, device=fast_device, seed=9)
    codebook.requires_grad_()
    (eager_grad,) = torch.autograd.grad(loss(x, codebook), codebook)
    (compiled_grad,) = torch.autograd.grad(compiled(x, codebook), codebook)
    torch.testing.assert_close(compiled_grad, eager_grad)


# (N, K, D, tau, lam) per ISA: one chunk of dimensions and several, weights clamped at 1, and
# lam = 0 (winners only).
ISA_CASES = [
    (257, 1000, 1, 0.1, 0.01),
    (100, 333, 12, 1.0, 0.01),
    (50, 700, 59, 10.0, 0.01),
    (33, 70, 3, 0.05, 1.0),
    (40, 300, 8, 1.0, 0.0),
]


@pytest.mark.slow
def test_every_cpu_isa_matches_float64(run_on_isa):
    inputs = [random_inputs(n, k, d, seed=n * k + d) for n, k, d, _, _ in ISA_CASES]
    calls = [
        ("soft_assign_stats", (x, codebook), {"tau": tau, "lam": lam, "backend": "cpu"})
        for (x, codebook), (_, _, _, tau, lam) in zip(inputs, ISA_CASES, strict=True)
    ]
    results = run_on_isa(calls)
    for (x, codebook), (*_, tau, lam), result in zip(inputs, ISA_CASES, results, strict=True):
        _check_outputs(x, codebook, tau, lam, wvq.SoftAssignStats(*result))
