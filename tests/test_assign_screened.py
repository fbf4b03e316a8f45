"""Screened exact assignment (csrc/cpu/assign.cpp): where the CPU has a bf16 kernel, ieee
assignment may screen the codes with bf16 dot products and re-rank the candidates in fp32. Its
indices and distances must equal, bit for bit, those of the plain fp32 kernel (screening off with
WVQ_ASSIGN_SCREEN=0, forced on with =1) on every row: near-ties that bf16 scores misorder, exact
ties, clusters that overflow the candidate lists, large, tiny and subnormal magnitudes."""

import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels.testing import check_assignment, random_inputs

pytestmark = pytest.mark.skipif(
    not torch.ops.wvq.cpu_isa().startswith(("avx512_bf16", "avx512_amx")),
    reason="no bf16 kernel on this CPU: ieee assignment is never screened",
)


def _assign(x, codebook, screen: str, monkeypatch, **kwargs):
    monkeypatch.setenv("WVQ_ASSIGN_SCREEN", screen)
    return wvq.assign(x, codebook, precision="ieee", backend="cpu", **kwargs)


def _assert_screened_equals_plain(x, codebook, monkeypatch, metric="l2"):
    plain = _assign(x, codebook, "0", monkeypatch, metric=metric, histogram=True)
    screened = _assign(x, codebook, "1", monkeypatch, metric=metric, histogram=True)
    rows = torch.nonzero(plain.indices != screened.indices).flatten()
    assert rows.numel() == 0, f"rows {rows[:10].tolist()} differ"
    assert torch.equal(plain.distances.view(torch.int32), screened.distances.view(torch.int32))
    assert torch.equal(plain.counts, screened.counts)
    return plain


def _near_ties(n, k, d, spread, seed):
    """Every code within `spread` (relative) of a shared centre, the rows at that centre: the
    distances differ far below bf16's resolution, so bf16 scores misorder them."""
    generator = torch.Generator().manual_seed(seed)
    centre = torch.randn(d, generator=generator) * 4
    codebook = centre + spread * torch.randn(k, d, generator=generator)
    x = centre + spread * torch.randn(n, d, generator=generator)
    return x, codebook


@pytest.mark.parametrize(
    ("n", "k", "d"),
    [
        (0, 100, 8),
        (1, 1, 1),
        (1, 70, 3),
        (257, 1000, 8),
        (100, 333, 12),
        (50, 4100, 59),
        (33, 700, 256),
        (300, 2048, 32),
        (64, 65, 64),
        (40, 5000, 17),
    ],
)
@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
def test_screened_equals_plain_on_random_inputs(n, k, d, metric, monkeypatch):
    x, codebook = random_inputs(n, k, d, seed=n + k + d)
    plain = _assert_screened_equals_plain(x, codebook, monkeypatch, metric)
    check_assignment(x, codebook, plain.indices, plain.distances, metric, "ieee")


@pytest.mark.parametrize("d", [8, 12, 59, 256])
def test_near_ties_that_bf16_misorders_are_exact(d, monkeypatch):
    x, codebook = _near_ties(200, 3000, d, spread=1e-3, seed=d)
    bf16 = wvq.assign(x, codebook, precision="bf16", backend="cpu")
    plain = _assert_screened_equals_plain(x, codebook, monkeypatch)
    # The inputs do test the bound: bf16 scores alone pick other codes on many rows.
    assert (bf16.indices != plain.indices).float().mean() > 0.2


@pytest.mark.parametrize("d", [8, 32, 59])
def test_rounding_errors_aligned_to_the_bound(d, monkeypatch):
    """Codes v (bf16-exact, positive) and a = v (1 + e), e just under half a bf16 ulp, so that a
    rounds to v; row v (1 + m), m = 2^-5. Exactly, a is nearer by about 2 m e |v|^2; its bf16
    score is higher by 2 e |v|^2 (the exact bias against the same rounded products), every
    component's rounding error pushing the same way, as in the bound's worst case: bf16 picks v
    on every row, and the screened scan keeps a only if its bound is within ~1x of the truth."""
    generator = torch.Generator().manual_seed(d)
    n = 64
    v = (torch.rand(n, d, generator=generator) + 0.5).bfloat16().float()
    nearer = v * (1 + 0.99 * 2.0**-9)
    assert torch.equal(nearer.bfloat16().float(), v)
    far = torch.randn(500, d, generator=generator) * 3
    codebook = torch.cat([v, nearer, far])  # v_j at j, its nearer twin at n + j
    x = v * (1 + 2.0**-5)
    plain = _assert_screened_equals_plain(x, codebook, monkeypatch)
    assert torch.equal(plain.indices, torch.arange(n) + n)
    bf16 = wvq.assign(x, codebook, precision="bf16", backend="cpu")
    assert torch.equal(bf16.indices, torch.arange(n))


def test_exact_ties_go_to_the_smallest_index(monkeypatch):
    x, codebook = random_inputs(64, 2000, 16, seed=3)
    codebook[1500:] = codebook[:500]  # every code of the last 500 copies an earlier one
    x[:32] = codebook[1500:1532]
    plain = _assert_screened_equals_plain(x, codebook, monkeypatch)
    assert torch.equal(plain.indices[:32], torch.arange(32))


def test_rows_past_a_batch_of_candidate_lists_are_exact(monkeypatch):
    """The screen keeps candidate lists for 2^15 rows at a time: rows on both sides of a batch
    boundary, overflowing rows in the second batch among them, get the plain kernel's answer."""
    x, codebook = random_inputs(2**15 + 300, 200, 8, seed=21)
    codebook[100:190] = codebook[3]  # 90 copies of code 3: more than a candidate list holds
    x[-100:] = codebook[3]
    plain = _assert_screened_equals_plain(x, codebook, monkeypatch)
    assert torch.equal(plain.indices[-100:], torch.full((100,), 3))


@pytest.mark.parametrize("d", [8, 40])
def test_rows_whose_candidates_overflow_are_rescanned(d, monkeypatch):
    """Hundreds of codes tie or nearly tie for every row: far more than a row's candidate list
    holds, so those rows take the exact fallback scan."""
    generator = torch.Generator().manual_seed(d)
    codebook = torch.randn(1000, d, generator=generator)
    codebook[200:600] = codebook[7]  # 400 exact copies of code 7
    codebook[600:900] = codebook[7] + 1e-5 * torch.randn(300, d, generator=generator)
    x = torch.cat(
        [
            codebook[7] + 1e-4 * torch.randn(50, d, generator=generator),
            torch.randn(50, d, generator=generator),
        ]
    )
    _assert_screened_equals_plain(x, codebook, monkeypatch)


@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e-39])
@pytest.mark.parametrize("metric", ["l2", "dot"])
def test_extreme_magnitudes_are_exact(scale, metric, monkeypatch):
    x, codebook = _near_ties(100, 2000, 12, spread=1e-2, seed=5)
    _assert_screened_equals_plain(x * scale, codebook * scale, monkeypatch, metric)


def test_subnormal_and_normal_components_together(monkeypatch):
    """Components below 2^-126 (subnormal: the bf16 instructions read them as zero) beside
    normal ones in the same vectors."""
    x, codebook = random_inputs(128, 3000, 24, seed=9)
    x[:, ::3] *= 1e-40
    codebook[:, 1::3] *= 1e-41
    _assert_screened_equals_plain(x, codebook, monkeypatch)


def test_half_inputs_are_exact(monkeypatch):
    x, codebook = random_inputs(100, 1500, 20, seed=11)
    for dtype in (torch.float16, torch.bfloat16):
        _assert_screened_equals_plain(x.to(dtype), codebook.to(dtype), monkeypatch)


@pytest.mark.slow
def test_every_isa_screens_exactly(run_on_isa, monkeypatch):
    """Screening forced on under each ISA level (vdpbf16ps under avx512; the narrower levels have
    no bf16 kernel and stay plain) gives the plain kernel's answers of that level."""
    inputs = [_near_ties(100, 1500, d, spread=1e-3, seed=d) for d in (8, 59)]
    calls = [
        ("assign", (x, codebook), {"precision": "ieee", "backend": "cpu"}) for x, codebook in inputs
    ]
    monkeypatch.setenv("WVQ_ASSIGN_SCREEN", "0")
    plain = run_on_isa(calls)
    monkeypatch.setenv("WVQ_ASSIGN_SCREEN", "1")
    screened = run_on_isa(calls)
    for (indices, distances, _), (screened_indices, screened_distances, _) in zip(
        plain, screened, strict=True
    ):
        assert torch.equal(indices, screened_indices)
        assert torch.equal(distances.view(torch.int32), screened_distances.view(torch.int32))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_rows_get_the_plain_kernels_answer(bad, monkeypatch):
    """A non-finite row leaves the screen with no candidate (the modules send such rows through
    the trusted path, unchecked): it is rescanned by the plain kernel, the other rows screened."""
    x, codebook = random_inputs(200, 3000, 8, seed=7)
    x[[3, 150], 2] = bad

    def run(screen):
        monkeypatch.setenv("WVQ_ASSIGN_SCREEN", screen)
        return wvq.assign(
            x, codebook, precision="ieee", backend="cpu", histogram=True, check_finite=False
        )

    plain, screened = run("0"), run("1")
    assert torch.equal(plain.indices, screened.indices)
    assert torch.equal(plain.distances.view(torch.int32), screened.distances.view(torch.int32))
    assert torch.equal(plain.counts, screened.counts)
