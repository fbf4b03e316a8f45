"""kmeans: never increases the quantization error, equals a plain float64 Lloyd loop, reports
faiss's objective, starts well with k-means++ / k-means||, and splits clusters into empty codes
as faiss does; everything deterministic for a seed."""

import importlib
import itertools

import pytest
import torch

from wvq_kernels import KMeansResult, assign, kmeans, kmeans_fit
from wvq_kernels.kmeans import SPLIT_EPSILON

# The module, not the function wvq_kernels.kmeans that shadows it.
kmeans_module = importlib.import_module("wvq_kernels.kmeans")

SMART_INITS = ("kmeans++", "kmeans||")


def quantization_error(x, codebook):
    return assign(x, codebook, backend="reference").distances.double().mean().item()


def float64_objective(x, codebook):
    return torch.cdist(x.double(), codebook.double()).min(1).values.square().sum().item()


def blobs(num_blobs, rows, dim=4, spread=0.2, seed=0):
    """Rows around well-separated centres (about 20 apart), every blob populated."""
    generator = torch.Generator().manual_seed(seed)
    centres = 20 * torch.randn(num_blobs, dim, generator=generator)
    picks = torch.arange(rows) % num_blobs
    return centres[picks] + spread * torch.randn(rows, dim, generator=generator)


def test_error_never_increases():
    x = torch.randn(3000, 5, generator=torch.Generator().manual_seed(0))
    errors = [quantization_error(x, kmeans(x, 64, iters)) for iters in (0, 1, 3, 10)]
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.8 * errors[0]


def plain_lloyd(x, codebook, iters):
    for _ in range(iters):
        nearest = torch.cdist(x.double(), codebook.double()).argmin(dim=1)
        for k in range(codebook.shape[0]):
            members = x[nearest == k]
            if len(members):
                codebook[k] = members.double().mean(0).float()
    return codebook


def test_matches_plain_lloyd_from_same_start():
    x = torch.randn(2000, 3, generator=torch.Generator().manual_seed(1))
    start = kmeans(x, 40, 0, seed=5)
    assert torch.allclose(kmeans(x, 40, 6, seed=5), plain_lloyd(x, start.clone(), 6), atol=1e-5)
    given = kmeans_fit(x, 40, 6, init_codebook=start.double())
    assert torch.equal(given.codebook, kmeans(x, 40, 6, seed=5))
    assert torch.equal(kmeans(x, 40, 0, init_codebook=start), start)


def test_objective_is_the_float64_objective_of_each_assignment_step():
    x = torch.randn(1500, 6, generator=torch.Generator().manual_seed(2))
    result = kmeans_fit(x, 30, 8, seed=3, split_empty=False)
    assert isinstance(result, KMeansResult)
    assert result.objective.dtype == torch.float64 and result.objective.shape == (8,)
    for step in range(8):
        # The objective of step i is measured against the codebook after i updates.
        expected = float64_objective(x, kmeans(x, 30, step, seed=3, split_empty=False))
        assert result.objective[step].item() == pytest.approx(expected, rel=1e-5)
    assert (result.objective.diff() <= 1e-9 * result.objective[:-1]).all(), result.objective
    assert result.objective[-1] < 0.9 * result.objective[0]
    nearest = assign(x, kmeans(x, 30, 7, seed=3, split_empty=False)).indices
    assert torch.equal(result.counts, torch.bincount(nearest, minlength=30))


@pytest.mark.parametrize("init", SMART_INITS)
def test_smart_init_starts_far_below_random_on_separated_blobs(init):
    x = blobs(40, 4000)
    first = {
        name: kmeans_fit(x, 40, 1, init=name, seed=seed).objective[0].item()
        for name in ("random", init)
        for seed in (0,)
    }
    # Random starts leave several blobs without a centre (each costs ~400 per row of the blob);
    # D^2 sampling covers nearly every blob, so the start is within a few blobs' cost of 0.
    assert first[init] < 0.25 * first["random"], first


@pytest.mark.parametrize("init", [*SMART_INITS, "random"])
def test_init_is_deterministic_per_seed_and_picks_rows(init):
    x = blobs(12, 500, seed=1)
    start = kmeans(x, 12, 0, init=init, seed=7)
    assert torch.equal(start, kmeans(x, 12, 0, init=init, seed=7))
    assert not torch.equal(start, kmeans(x, 12, 0, init=init, seed=8))
    # Every initial centre is one of the rows.
    assert ((start[:, None] - x[None]).abs().sum(-1).min(1).values == 0).all()


@pytest.mark.parametrize("init", SMART_INITS)
def test_smart_init_with_more_codes_than_distinct_rows(init):
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).repeat(3, 1)
    start = kmeans(x, 5, 0, init=init, seed=0)
    # Three distinct rows: every one of them is picked before any repeats.
    assert {tuple(row) for row in start.tolist()} == {(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)}


def start_with_a_stranded_code(x, num_codes, seed=0):
    """Distinct rows as centres, the last one moved far from every row: its cluster is empty."""
    start = kmeans(x, num_codes, 0, seed=seed)
    start[-1] = 1e4
    return start


def test_empty_cluster_is_split_from_a_larger_one():
    x = blobs(10, 600, seed=2)
    start = start_with_a_stranded_code(x, 16)
    one = kmeans_fit(x, 16, 1, init_codebook=start, seed=4)
    assert one.splits == 1 and one.counts[-1] == 0
    plain = plain_lloyd(x, start.clone(), 1)
    # The empty code and its donor are the donor's new mean moved apart by +-epsilon.
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0])
    moved = (one.codebook[:15] - plain[:15]).abs().amax(1) > 1e-4
    donors = moved.nonzero().flatten().tolist()
    assert len(donors) == 1 and one.counts[donors[0]] > 1
    centre = plain[donors[0]]
    torch.testing.assert_close(one.codebook[-1], centre * (1 + SPLIT_EPSILON * signs))
    torch.testing.assert_close(one.codebook[donors[0]], centre * (1 - SPLIT_EPSILON * signs))
    # At the next assignment step every code has rows.
    two = kmeans_fit(x, 16, 2, init_codebook=start, seed=4)
    assert (two.counts > 0).all() and two.splits == 1
    assert torch.equal(two.codebook, kmeans(x, 16, 2, init_codebook=start, seed=4))


def test_without_splitting_an_empty_code_keeps_its_position():
    x = blobs(10, 600, seed=2)
    start = start_with_a_stranded_code(x, 16)
    result = kmeans_fit(x, 16, 3, init_codebook=start, split_empty=False)
    assert result.splits == 0 and result.counts[-1] == 0
    assert torch.equal(result.codebook[-1], start[-1])


def test_splits_are_deterministic_per_seed():
    x = torch.randn(400, 3, generator=torch.Generator().manual_seed(3))
    start = kmeans(x, 40, 0, seed=0)
    start[20:] = 1e3 + torch.arange(20.0)[:, None]  # 20 stranded codes
    runs = [kmeans_fit(x, 40, 3, init_codebook=start, seed=seed) for seed in (0, 0, 1)]
    assert runs[0].splits >= 20
    assert torch.equal(runs[0].codebook, runs[1].codebook)
    assert not torch.equal(runs[0].codebook, runs[2].codebook)
    # Once split, every code has rows at the next assignment step.
    assert (assign(x, runs[0].codebook, histogram=True).counts > 0).all()


def test_fewer_rows_than_codes_leaves_codes_empty_without_failing():
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(4))
    result = kmeans_fit(x, 8, 3)
    assert result.counts.sum() == 5 and (result.counts == 0).sum() >= 3


def test_bf16_precision_objective_close_to_ieee():
    x = torch.randn(3000, 16, generator=torch.Generator().manual_seed(5))
    ieee = kmeans_fit(x, 64, 5, seed=1, precision="ieee").objective
    bf16 = kmeans_fit(x, 64, 5, seed=1, precision="bf16").objective
    assert bf16[-1].item() == pytest.approx(ieee[-1].item(), rel=5e-3)


def test_progress_lines_on_request_only(capsys):
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(6))
    kmeans_fit(x, 8, 3, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["kmeans:", "iteration", f"{i}/3"] for i in (1, 2, 3)
    ]
    assert all("objective" in line for line in lines)
    kmeans_fit(x, 8, 3, progress=False)
    kmeans_fit(x, 8, 3)  # None: stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""


def test_validation():
    with pytest.raises(ValueError, match="num_codes"):
        kmeans(torch.randn(4, 2), 0)
    with pytest.raises(TypeError, match="floating"):
        kmeans(torch.ones(4, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="init"):
        kmeans(torch.randn(4, 2), 2, init="kmeans+")
    with pytest.raises(ValueError, match="init_codebook"):
        kmeans(torch.randn(4, 2), 2, init_codebook=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="init_codebook"):
        kmeans(torch.randn(4, 2), 2, init_codebook=torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match="precision"):
        kmeans(torch.randn(4, 2), 2, precision="fp8")
    with pytest.raises(ValueError, match="row"):
        kmeans(torch.empty(0, 2), 2)


def fit_both_ways(x, num_codes, iters, **options):
    pruned = kmeans_fit(x, num_codes, iters, prune=True, **options)
    plain = kmeans_fit(x, num_codes, iters, prune=False, **options)
    return pruned, plain


def assert_bitwise_same_fit(got, expected):
    assert torch.equal(got.codebook, expected.codebook)
    assert torch.equal(got.objective, expected.objective)
    assert torch.equal(got.counts, expected.counts) and got.splits == expected.splits


class PathSpy:
    """Counts the rows and codes each fused call of the pruned step sees, to show which of
    its paths a fit took (the moved-codes scan, the full rescan, the plain kernel's
    fallback on near-ties)."""

    def __init__(self, monkeypatch):
        self.calls = {"assign": [], "assign_topk": []}
        for name in self.calls:
            original = getattr(kmeans_module.kernels, name)
            monkeypatch.setattr(kmeans_module.kernels, name, self._spy(name, original))

    def _spy(self, name, original):
        def spied(x, codebook, *args, **kwargs):
            self.calls[name].append((x.shape[0], codebook.shape[0]))
            return original(x, codebook, *args, **kwargs)

        return spied


def near_tie_rows(rows=2000, dim=3, seed=0):
    """Gaussian rows, a tenth of them moved onto the plane x0 = 0 where the codes below sit in
    mirrored pairs: those rows are exactly equidistant from two codes."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=generator)
    x[::10, 0] = 0
    return x


def mirrored_codes(x, pairs, seed=0):
    picks = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:pairs]
    half = x[picks].clone()
    half[:, 0] = half[:, 0].abs() + 0.5
    mirror = half.clone()
    mirror[:, 0] = -mirror[:, 0]
    return torch.cat([half, mirror])


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("dim", [2, 8, 33])
def test_pruned_steps_equal_plain_steps_bitwise(seed, dim, monkeypatch):
    x = torch.randn(3000, dim, generator=torch.Generator().manual_seed(seed))
    spy = PathSpy(monkeypatch)
    pruned, plain = fit_both_ways(x, 64, 30, seed=seed)
    assert_bitwise_same_fit(pruned, plain)
    # The moved-codes scan ran on fewer codes than K at some step: pruning took place.
    assert any(codes < 64 for rows, codes in spy.calls["assign_topk"] if rows == 3000)


@pytest.mark.parametrize("seed", range(3))
def test_pruned_steps_equal_plain_steps_on_clustered_data(seed):
    x = blobs(30, 3000, dim=6, spread=0.5, seed=seed)
    pruned, plain = fit_both_ways(x, 90, 12, seed=seed)
    assert_bitwise_same_fit(pruned, plain)


def test_pruned_steps_equal_plain_steps_on_exact_ties(monkeypatch):
    x = near_tie_rows()
    start = mirrored_codes(x, 20)
    spy = PathSpy(monkeypatch)
    # No update: rows equidistant from a mirrored pair stay tied, so the plain kernel decides.
    pruned, plain = fit_both_ways(x, 40, 1, init_codebook=start)
    assert_bitwise_same_fit(pruned, plain)
    tied = [rows for rows, codes in spy.calls["assign"] if codes == 40 and rows < len(x)]
    assert tied and tied[0] >= 1, spy.calls
    pruned, plain = fit_both_ways(x, 40, 8, init_codebook=start)
    assert_bitwise_same_fit(pruned, plain)


def test_pruned_steps_equal_plain_steps_on_duplicate_codes_and_rows():
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(7)).repeat(4, 1)
    start = x[:30].repeat(2, 1)  # every code twice: ties at every step until split
    for split_empty in (True, False):
        pruned, plain = fit_both_ways(x, 60, 6, init_codebook=start, split_empty=split_empty)
        assert_bitwise_same_fit(pruned, plain)


def test_pruned_steps_equal_plain_steps_with_splits():
    x = blobs(10, 600, seed=2)
    start = start_with_a_stranded_code(x, 16)
    start[8:12] = 1e4 + torch.arange(4.0)[:, None]
    pruned, plain = fit_both_ways(x, 16, 6, init_codebook=start, seed=4)
    assert pruned.splits >= 5
    assert_bitwise_same_fit(pruned, plain)


@pytest.mark.parametrize("init", SMART_INITS)
def test_pruned_steps_equal_plain_steps_from_smart_inits(init):
    x = torch.randn(3000, 5, generator=torch.Generator().manual_seed(8))
    pruned, plain = fit_both_ways(x, 50, 10, init=init, seed=1)
    assert_bitwise_same_fit(pruned, plain)


@pytest.mark.parametrize("scale", [1e-18, 1.0, 1e18])
def test_pruned_steps_equal_plain_steps_at_extreme_magnitudes(scale):
    x = scale * torch.randn(2000, 8, generator=torch.Generator().manual_seed(9))
    pruned, plain = fit_both_ways(x, 40, 8, seed=2)
    assert_bitwise_same_fit(pruned, plain)


@pytest.mark.parametrize("dim", [1, 3, 8, 17, 64])
@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_reported_distances_are_the_kernels_bit_for_bit(dim, scale):
    generator = torch.Generator().manual_seed(dim)
    x = scale * torch.randn(3000, dim, generator=generator)
    codebook = scale * torch.randn(300, dim, generator=generator)
    found = assign(x, codebook, backend="cpu", precision="ieee")
    got = kmeans_module._reported_distances(x, codebook[found.indices])
    assert torch.equal(got, found.distances)


def test_bf16_precision_and_few_codes_do_not_prune(monkeypatch):
    spy = PathSpy(monkeypatch)
    x = torch.randn(1000, 8, generator=torch.Generator().manual_seed(10))
    kmeans_fit(x, 32, 3, precision="bf16", prune=True)
    kmeans_fit(x, 32, 3)  # prune=None: too few codes to pay
    assert spy.calls["assign_topk"] == [] and len(spy.calls["assign"]) == 6
    # From PRUNE_MIN_CODES codes on, prune=None prunes.
    many = kmeans_module.PRUNE_MIN_CODES
    x = torch.randn(many, 2, generator=torch.Generator().manual_seed(11))
    kmeans_fit(x, many, 1)
    assert spy.calls["assign_topk"] == [(many, many)]


@pytest.mark.parametrize(("rows_per_code", "dim"), [(4, 16), (5, 16), (4, 17)])
def test_pruning_by_default_follows_the_screen(monkeypatch, rows_per_code, dim):
    """Where ieee assign screens on AMX tiles, prune=None prunes only for small D and few rows
    per code; elsewhere from PRUNE_MIN_CODES codes on."""
    spy = PathSpy(monkeypatch)
    codes = kmeans_module.PRUNE_MIN_CODES
    rows = rows_per_code * codes
    x = torch.randn(rows, dim, generator=torch.Generator().manual_seed(12))
    kmeans_fit(x, codes, 1)
    amx = torch.ops.wvq.cpu_isa() == "avx512_amx"
    pays = not amx or (
        dim <= kmeans_module.AMX_PRUNE_MAX_DIM
        and rows_per_code <= kmeans_module.AMX_PRUNE_MAX_ROWS_PER_CODE
    )
    assert spy.calls["assign_topk"] == ([(rows, codes)] if pays else [])
