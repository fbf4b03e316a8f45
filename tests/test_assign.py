import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels.reference import normalise_rows
from wvq_kernels.testing import (
    LOW_PRECISION_ERROR_FACTOR,
    AssignmentTruth,
    check_assignment,
    distances64,
    hard_inputs,
    random_inputs,
)

DIMS = [1, 3, 8, 12, 59, 64, 256]
# (N, K): the reference is slow at K = 65536, so that size runs with few rows.
SIZES = [(0, 17), (1, 17), (1000, 17), (1, 1), (1000, 1), (0, 65536), (1, 65536), (200, 65536)]
METRICS = ["l2", "cosine", "dot"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("n, k", SIZES)
@pytest.mark.parametrize("d", DIMS)
def test_l2_meets_the_float64_oracle_across_sizes(backend, device, n, k, d):
    x, codebook = random_inputs(n, k, d, device=device, seed=d)
    result = wvq.assign(x, codebook, backend=backend)
    assert result.indices.shape == (n,) and result.distances.shape == (n,)
    assert result.counts is None
    check_assignment(x, codebook, result.indices, result.distances, "l2", "ieee")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("precision", ["ieee", "bf16", "auto"])
def test_every_metric_dtype_and_precision_meets_the_oracle(
    backend, device, metric, dtype, precision
):
    x, codebook = random_inputs(300, 300, 24, dtype=dtype, device=device)
    result = wvq.assign(x, codebook, metric=metric, precision=precision, backend=backend)
    check_assignment(x, codebook, result.indices, result.distances, metric, precision)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hard_inputs_meet_the_oracle(backend, device, metric, dtype):
    """Exact codes, near and far rows and an all-zero row, against a codebook with exact
    duplicates, in a strided layout: what `wvq check` runs."""
    x, codebook = hard_inputs((3, 70), 1000, 24, dtype, layout_strided=True)
    assert not x.is_contiguous()
    result = wvq.assign(x.to(device), codebook.to(device), metric=metric, backend=backend)
    check_assignment(x, codebook, result.indices, result.distances, metric, "auto")


def test_rows_near_distinct_codes_get_exactly_those_codes(backend, device):
    """Codes on a coarse grid, rows near distinct codes: every row is decisive."""
    x, codebook = random_inputs(500, 4000, 16, device=device)
    codebook = codebook.round()
    codebook[:500] = codebook[:500] + 10 * torch.arange(1, 501, device=device)[:, None]
    x = codebook[:500] + 0.01 * x
    result = wvq.assign(x, codebook, backend=backend)
    assert torch.equal(result.indices.cpu(), torch.arange(500))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [40, 10_000])
def test_duplicate_codes_go_to_the_smallest_index(backend, device, metric, k):
    x, codebook = random_inputs(64, k, 16, device=device)
    winner = 3 * torch.randn(16, generator=torch.Generator().manual_seed(1)).to(device)
    # Copies on both sides of the reference's 4096-code blocks when K allows.
    copies = [5, 11, 23, 39] if k == 40 else [100, 4095, 4096, 4196, 9999]
    codebook[copies] = winner
    x = winner + 0.05 * x
    result = wvq.assign(x, codebook, metric=metric, backend=backend)
    assert (result.indices == copies[0]).all()


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("precision", ["ieee", "bf16"])
# N = 1000 takes seconds per case in the Triton interpreter.
@pytest.mark.parametrize("n", [1, pytest.param(1000, marks=pytest.mark.slow)])
def test_identical_codes_all_go_to_code_0(backend, device, metric, precision, n):
    """65536 copies of one code: every score ties, whatever way the kernel splits the codes."""
    x, codebook = random_inputs(n, 1, 16, device=device, seed=n)
    codebook = codebook.expand(65536, 16)
    result = wvq.assign(x, codebook, metric=metric, precision=precision, backend=backend)
    assert not result.indices.any()


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("precision", ["ieee", "bf16"])
@pytest.mark.parametrize("k, d", [(10, 255), (4100, 64)])
def test_duplicates_of_a_random_code_go_to_index_0_one_row_at_a_time(
    backend, device, metric, precision, k, d
):
    """Issue 7: single rows (the BLAS matrix-vector path) against 10 copies at D = 255 picked
    copy 8 on the reference, and copies past its 4096-code block could win on rounding (issue
    13: the triton l2 norms of the last 4 of 4100 copies were summed in another order)."""
    for seed in range(8):
        generator = torch.Generator().manual_seed(seed)
        code = torch.randn(1, d, generator=generator)
        x = torch.randn(1, d, generator=generator).to(device)
        codebook = code.expand(k, d).contiguous().to(device)
        result = wvq.assign(x, codebook, metric=metric, precision=precision, backend=backend)
        assert int(result.indices) == 0, f"seed {seed}"


@pytest.mark.parametrize("precision", ["ieee", "bf16"])
def test_duplicate_rule_uses_the_rounded_normalised_code(backend, device, precision):
    """The tie rule applies to codes whose score operands are identical: after normalisation
    under cosine (so power-of-two multiples, whose normalisations are exactly equal, tie) and
    after rounding to bf16 under bf16 precision (codes that round alike tie)."""
    generator = torch.Generator().manual_seed(3)
    code = torch.randn(1, 40, generator=generator)
    others = torch.randn(3, 40, generator=generator)
    x = (code + 0.01 * torch.randn(16, 40, generator=generator)).to(device)
    multiples = torch.cat([others, 4 * code, 0.5 * code, code, 2 * code]).to(device)
    result = wvq.assign(x, multiples, metric="cosine", precision=precision, backend=backend)
    assert (result.indices == 3).all()
    if precision == "bf16":
        # Differs from code only far below bf16's resolution: the same code once rounded.
        nudged = code * (1 + 2**-20)
        codebook = torch.cat([others, nudged, code, code]).to(device)
        for metric in METRICS:
            result = wvq.assign(x, codebook, metric=metric, precision="bf16", backend=backend)
            assert (result.indices == 3).all(), metric


def test_reference_reports_the_first_copy_whatever_the_scan_picks(monkeypatch):
    """The reference resolves identical codes after the scan, so a later copy that rounding
    made win is reported as the first copy, with the same distance."""
    from wvq_kernels import reference

    x, codebook = random_inputs(5, 6, 8, seed=4)
    codebook[4] = codebook[1]
    monkeypatch.setattr(reference, "_argmin_scores", lambda rows, *_: torch.full((5,), 4))
    indices, distances, _ = reference.assign(x, codebook, "l2", "ieee", False)
    assert indices.tolist() == [1] * 5
    assert torch.equal(distances, (x - codebook[1]).square().sum(dim=1))


@pytest.mark.parametrize("metric", ["l2", "dot"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("precision", ["ieee", "bf16"])
def test_exact_ties_on_integer_data_go_to_the_first_best_code(
    backend, device, metric, dtype, precision
):
    """Small integers make every score exact in any precision and order, so ties are real
    ties, many of them between different codes; each must go to the first best code."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randint(-2, 3, (400, 6), generator=generator).to(device, dtype)
    codebook = torch.randint(-2, 3, (5000, 6), generator=generator).to(device, dtype)
    result = wvq.assign(x, codebook, metric=metric, precision=precision, backend=backend)
    expected = distances64(x.cpu(), codebook.cpu(), metric).argmin(dim=1)
    assert torch.equal(result.indices.cpu(), expected)


def test_leading_batch_dims_match_flat_rows(backend, device):
    x, codebook = random_inputs(240, 50, 12, device=device)
    batched = wvq.assign(x.reshape(2, 3, 40, 12), codebook, histogram=True, backend=backend)
    flat = wvq.assign(x, codebook, histogram=True, backend=backend)
    assert batched.indices.shape == (2, 3, 40) and batched.distances.shape == (2, 3, 40)
    assert torch.equal(batched.indices.reshape(-1), flat.indices)
    assert torch.equal(batched.distances.reshape(-1), flat.distances)
    assert torch.equal(batched.counts, flat.counts)


def test_single_vector_gives_0_dim_results(backend, device):
    x, codebook = random_inputs(1, 17, 8, device=device)
    result = wvq.assign(x[0], codebook, backend=backend)
    assert result.indices.shape == () and result.distances.shape == ()


@pytest.mark.parametrize("histogram", [False, True])
def test_empty_batch_gives_empty_results_and_zero_counts(backend, device, histogram):
    codebook = torch.randn(17, 8, device=device)
    x = torch.empty(3, 0, 8, device=device)
    result = wvq.assign(x, codebook, histogram=histogram, backend=backend)
    assert result.indices.shape == (3, 0) and result.indices.dtype == torch.int64
    assert result.distances.shape == (3, 0) and result.distances.dtype == torch.float32
    if histogram:
        assert torch.equal(result.counts.cpu(), torch.zeros(17, dtype=torch.int64))
    else:
        assert result.counts is None


@pytest.mark.parametrize("metric", METRICS)
def test_non_contiguous_inputs_give_the_contiguous_results(backend, device, metric):
    x, codebook = random_inputs(300, 64, 24, device=device)
    strided_x = torch.randn(300, 48, device=device)[:, ::2]
    strided_x.copy_(x)
    transposed_codebook = codebook.T.contiguous().T
    assert not strided_x.is_contiguous() and not transposed_codebook.is_contiguous()
    result = wvq.assign(strided_x, transposed_codebook, metric=metric, backend=backend)
    check_assignment(x, codebook, result.indices, result.distances, metric, "ieee")
    contiguous = wvq.assign(x, codebook, metric=metric, backend=backend)
    torch.testing.assert_close(result.distances, contiguous.distances, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [1, 17, 5000])
def test_fused_histogram_matches_bincount(backend, device, metric, k):
    x, codebook = random_inputs(3000, k, 8, device=device)
    result = wvq.assign(x, codebook, metric=metric, histogram=True, backend=backend)
    assert result.counts.dtype == torch.int64 and result.counts.shape == (k,)
    assert torch.equal(result.counts, torch.bincount(result.indices, minlength=k))


def test_cosine_zero_rows_go_to_code_0_at_distance_1(backend, device):
    """A zero row or code has cosine similarity 0 with everything: distance exactly 1, and a
    zero row ties with every code, so it goes to code 0."""
    x, codebook = random_inputs(8, 5, 4, device=device)
    x[3] = 0
    codebook[2] = 0
    result = wvq.assign(x, codebook, metric="cosine", backend=backend)
    assert result.indices[3] == 0 and result.distances[3] == 1.0
    check_assignment(x, codebook, result.indices, result.distances, "cosine", "ieee")


def test_inputs_untouched_and_runs_deterministic(backend, device):
    x, codebook = random_inputs(500, 300, 16, device=device)
    x_before, codebook_before = x.clone(), codebook.clone()
    first = wvq.assign(x, codebook, histogram=True, backend=backend)
    second = wvq.assign(x, codebook, histogram=True, backend=backend)
    assert torch.equal(x, x_before) and torch.equal(codebook, codebook_before)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_bf16_mean_regret_within_the_low_precision_rule(backend, device):
    """The project's low-precision rule (testing.LOW_PRECISION_ERROR_FACTOR): the mean regret of
    precision='bf16' against float64 is at most twice that of plain PyTorch in bf16 (bf16 GEMM
    output, norms of the bf16 codes) on the same inputs."""
    x, codebook = random_inputs(2000, 1024, 32, device=device, seed=3)
    ours = wvq.assign(x, codebook, precision="bf16", backend=backend).indices
    x16, codes16 = x.cpu().bfloat16(), codebook.cpu().bfloat16()
    scores = codes16.float().square().sum(1) - 2 * (x16 @ codes16.T).float()
    truth = AssignmentTruth(x, codebook, "l2")
    baseline_regret = truth.regret(scores.argmin(dim=1)).mean()
    assert baseline_regret > 0
    assert truth.regret(ours).mean() <= LOW_PRECISION_ERROR_FACTOR * baseline_regret


@pytest.mark.parametrize("metric", METRICS)
def test_bf16_precision_solves_the_rounded_problem(backend, device, metric):
    """precision='bf16' is the exact problem on bf16-rounded operands up to fp32 accumulation:
    code norms come from the rounded codes, and cosine normalises in fp32 before rounding.
    Against a float64 oracle on those operands the regret stays within the fp32 bound, which
    norms of the unrounded codes (errors ~2^-8 ||c||^2) would exceed."""
    x, codebook = random_inputs(2000, 1024, 32, device=device, seed=6)
    result = wvq.assign(x, codebook, metric=metric, precision="bf16", backend=backend)
    x, codebook = x.cpu(), codebook.cpu()
    if metric == "cosine":
        # Unit operands make the cosine score a plain dot product.
        x, codebook, metric = normalise_rows(x), normalise_rows(codebook), "dot"
    truth = AssignmentTruth(x.bfloat16(), codebook.bfloat16(), metric)
    assert (truth.regret(result.indices) <= truth.regret_bound("ieee")).all()


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_distance_to_an_identical_code_is_not_negative(backend, device, metric):
    """Rows equal to codes (up to scale, for cosine): rounding may push 1 - cos below zero,
    the clamp must not let it."""
    _, codebook = random_inputs(0, 2000, 24, device=device)
    scale = 1.0 if metric == "l2" else 3.0
    result = wvq.assign(scale * codebook, codebook, metric=metric, backend=backend)
    assert (result.distances >= 0).all()
    assert (result.distances <= 1e-5).all()


def test_more_than_2_to_the_31_pairs_meet_the_oracle(fast_backend, fast_device):
    """N * K > 2^31: 64-bit offsets everywhere. Rows at the start, at random and at the very
    end are checked against float64, and the histogram must account for every row."""
    if fast_backend == "triton" and fast_device.type == "cpu":
        pytest.skip("too slow in the Triton interpreter (~50 s); runs on a GPU")
    n, k, d = 32_800, 65_536, 4
    assert n * k > 2**31
    x, codebook = random_inputs(n, k, d, device=fast_device, seed=4)
    result = wvq.assign(x, codebook, histogram=True, backend=fast_backend)
    assert int(result.counts.sum()) == n
    assert torch.equal(result.counts, torch.bincount(result.indices, minlength=k))
    middle = torch.randint(16, n - 48, (64,), generator=torch.Generator().manual_seed(5))
    sample = torch.cat([torch.arange(16), middle, torch.arange(n - 48, n)])
    check_assignment(
        x[sample], codebook, result.indices[sample], result.distances[sample], "l2", "ieee"
    )
