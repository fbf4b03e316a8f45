"""Property-based tests (hypothesis) of every public op against the float64 oracle of
wvq_kernels.testing: random shapes (no rows, one row, batch dims, odd D, K up to a few thousand
and one K = 65,536 example), dtypes, non-contiguous layouts, exact and near ties and magnitudes
from float32 denormals to 1e30.

Each case is a frozen dataclass drawn by hypothesis whose ``repr`` rebuilds it, so a failure
prints its reproduction: ``AssignCase(...).build()``. The profile (tests/conftest.py) is "ci" by
default; WVQ_HYPOTHESIS_PROFILE=dev runs many more examples (docs/testing.md). The Triton
interpreter costs per program, so Triton gets fewer and smaller examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from torch import Tensor

import wvq_kernels as wvq
from wvq_kernels._backends import GPU_BACKENDS, triton_interpreted
from wvq_kernels.losses import gaussian_w2
from wvq_kernels.testing import (
    FP64_UNIT,
    check_assignment,
    code_sums_failures,
    codebook_with_duplicates,
    device_for,
    distances64,
    first_identical_code,
    moments_failures,
    pair_distances64,
    soft_assign_failures,
    strided,
    usage_failures,
)

COMPILED = ["cpu", "triton"]
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INDEX_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
METRICS = ["l2", "cosine", "dot"]
PRECISIONS = ["ieee", "bf16", "auto"]
LAYOUTS = ["contiguous", "strided", "transposed"]
# Rows of a "spread" case are scaled apart by up to 10^SPREAD either way.
SPREAD = 6
# Scales of N(0, 1) values: float32 denormals to 1e30; each dtype keeps those it can hold.
SCALES = [1e-40, 1e-30, 1e-20, 1e-10, 1e-3, 1.0, 1e3, 1e10, 1e18, 1e20, 1e30]
# The Triton interpreter runs programs one after another in Python: a share of the examples.
TRITON = settings(max_examples=max(4, settings.default.max_examples // 4))


def _scales_for(dtype: torch.dtype, headroom: float = 8.0) -> list[float]:
    """The scales at which values up to ``headroom`` times the scale (N(0, 1) values stay
    below 8) are finite and not all zero in dtype."""
    info = torch.finfo(dtype)
    smallest = info.smallest_normal * info.eps
    return [s for s in SCALES if headroom * s < info.max and s > smallest]


def _on(backend: str, *tensors: Tensor) -> list[Tensor]:
    """The tensors where ``backend`` runs (CUDA for the GPU backends when there is a GPU);
    skips the test when the backend is not available here."""
    status = wvq.available_backends()[backend]
    if not status:
        pytest.skip(f"backend {backend!r} unavailable: {status.reason}")
    return [tensor.to(device_for(backend)) for tensor in tensors]


def _lay_out(x: Tensor, layout: str) -> Tensor:
    """The same values in a non-contiguous layout: every second column of a wider tensor, or
    the last dimension moved out of the innermost place."""
    if layout == "strided":
        return strided(x)
    if layout == "transposed" and x.dim() > 1:
        return x.movedim(-1, 0).contiguous().movedim(0, -1)
    return x


batch_shapes = st.one_of(
    st.just(()),
    st.tuples(st.integers(0, 300)),
    st.tuples(st.integers(0, 8), st.integers(0, 8)),
    st.tuples(st.integers(1, 3), st.integers(0, 4), st.integers(0, 4)),
)
# Enough rows for the compiled kernels to split the work between threads and tiles.
large_batch_shapes = st.one_of(batch_shapes, st.tuples(st.integers(2000, 40000)))
small_batch_shapes = st.one_of(
    st.just(()), st.tuples(st.integers(0, 24)), st.tuples(st.integers(0, 3), st.integers(0, 5))
)
dims = st.one_of(st.sampled_from([1, 5, 12, 59]), st.integers(1, 64))
code_counts = st.one_of(st.integers(1, 40), st.integers(41, 3000))


# The Triton interpreter (triton 3.8.0) converts bf16 subnormals to float32 wrongly (1.01e-39
# becomes 4.4e-39; a GPU's conversion is exact): under it, bf16 values stay above this scale.
TRITON_INTERPRETER_BF16_SCALE_FLOOR = 1e-30


def _interpreter_safe(bf16: bool, *scales: float) -> bool:
    return not (bf16 and triton_interpreted() and min(scales) < TRITON_INTERPRETER_BF16_SCALE_FLOOR)


@dataclass(frozen=True)
class AssignCase:
    """``wvq.assign(x, codebook, metric=, precision=)`` on x (*batch, dim) and a codebook
    (num_codes, dim) of N(0, 1) values times ``scale`` and ``code_scale``. ``ties``: "none";
    "codes" (rows are codes or codes plus noise; the codebook always has exact duplicates);
    "rows" (duplicated rows); "near" (rows halfway between two codes, plus noise 1e-6 of a
    code); "integers" (small integers at scale 1, so every float32 score is exact); "spread"
    (no ties, but rows scaled apart by up to 1e6 either way). The ties are exact when both
    scales are equal."""

    batch: tuple[int, ...]
    num_codes: int
    dim: int
    dtype: torch.dtype
    scale: float
    code_scale: float
    layout: str
    ties: str
    metric: str
    precision: str
    seed: int

    def scales(self) -> tuple[float, ...]:
        """The scales of the rows and of the codebook."""
        spread = 10.0**SPREAD if self.ties == "spread" else 1.0
        return self.scale / spread, self.scale * spread, self.code_scale

    def build(self) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        rows = math.prod(self.batch)
        codebook = codebook_with_duplicates(self.num_codes, self.dim, generator).double()
        x = torch.randn(rows, self.dim, generator=generator, dtype=torch.float64)
        picks = torch.randint(0, self.num_codes, (2, rows), generator=generator)
        if self.ties == "codes":
            x = torch.where(torch.rand(rows, 1, generator=generator) < 0.5, 0, 0.05 * x)
            x = x + codebook[picks[0]]
        elif self.ties == "rows" and rows:
            x = x[torch.randint(0, max(1, rows // 3), (rows,), generator=generator)]
        elif self.ties == "near":
            x = (codebook[picks[0]] + codebook[picks[1]]) / 2 + 1e-6 * x
        elif self.ties == "integers":
            x, codebook = (x * 3).round(), (codebook * 3).round()
        elif self.ties == "spread":
            x = x * 10.0 ** torch.randint(-SPREAD, SPREAD + 1, (rows, 1), generator=generator)
        exact = self.ties == "integers"
        x = (x * (1.0 if exact else self.scale)).to(self.dtype).reshape(*self.batch, self.dim)
        codebook = (codebook * (1.0 if exact else self.code_scale)).to(self.dtype)
        return _lay_out(x, self.layout), _lay_out(codebook, self.layout)


# Known open limitation that the assign properties step around (assume): Triton sums dot's
# reported distance in fp32, so where x.c overflows float32 it reports NaN (the reference, cpu
# and cuda accumulate in double and report -inf; docs/op-contract.md). The largest product of
# the two scales still drawn for Triton; widen it to math.inf in the commit that fixes it.
DOT_SCALE_PRODUCT_LIMIT_UNTIL_OVERFLOW_FIX = 1e30


def _within_known_bugs(case: AssignCase, backend: str) -> bool:
    row_scale, code_scale = max(case.scales()[:2]), case.scales()[2]
    dot_overflows = row_scale * code_scale > DOT_SCALE_PRODUCT_LIMIT_UNTIL_OVERFLOW_FIX
    return not (case.metric == "dot" and backend == "triton" and dot_overflows)


@st.composite
def assign_cases(
    draw,
    batch=batch_shapes,
    ties=("none", "codes", "rows", "near", "integers", "spread"),
    metrics=tuple(METRICS),
):
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    metric = draw(st.sampled_from(metrics))
    tie = draw(st.sampled_from(ties))
    headroom = 8 * 10.0**SPREAD if tie == "spread" else 8
    scale = draw(st.sampled_from(_scales_for(dtype, headroom)))
    return AssignCase(
        batch=draw(batch),
        num_codes=draw(code_counts),
        dim=draw(dims),
        dtype=dtype,
        scale=scale,
        code_scale=draw(st.one_of(st.just(scale), st.sampled_from(_scales_for(dtype)))),
        layout=draw(st.sampled_from(LAYOUTS)),
        ties=tie,
        metric=metric,
        precision=draw(st.sampled_from(PRECISIONS)),
        seed=draw(st.integers(0, 2**16)),
    )


LARGE_K = AssignCase(
    (40,), 65536, 12, torch.float32, 1.0, 1.0, "strided", "codes", "l2", "ieee", seed=0
)


def _check_assign(case: AssignCase, backend: str) -> None:
    """Regret within the precision's bound, the float64 index on decisive rows, the reported
    distance within its bound; of identical codes only the first is ever chosen; the histogram
    is the bincount of the indices."""
    assume(_within_known_bugs(case, backend))
    x, codebook = _on(backend, *case.build())
    result = wvq.assign(
        x, codebook, metric=case.metric, precision=case.precision, histogram=True, backend=backend
    )
    assert result.indices.shape == x.shape[:-1] and result.distances.shape == x.shape[:-1]
    check_assignment(x, codebook, result.indices, result.distances, case.metric, case.precision)
    chosen = result.indices.reshape(-1).cpu()
    first = first_identical_code(codebook.cpu())
    assert torch.equal(first[chosen], chosen), "a later identical code"
    expected_counts = torch.bincount(chosen, minlength=case.num_codes)
    assert torch.equal(result.counts.cpu(), expected_counts), "histogram differs from bincount"


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@given(case=assign_cases())
@example(case=LARGE_K)
@example(case=replace(LARGE_K, metric="cosine", precision="bf16", dtype=torch.bfloat16))
@example(case=replace(LARGE_K, batch=(3000,), num_codes=3000, dim=59, ties="near"))
def test_assign_meets_the_oracle(backend, case):
    _check_assign(case, backend)


@TRITON
@given(case=assign_cases(batch=small_batch_shapes))
def test_triton_assign_meets_the_oracle(case):
    bf16 = case.dtype == torch.bfloat16 or case.precision == "bf16"
    assume(_interpreter_safe(bf16, *case.scales()))
    _check_assign(case, "triton")


def _exact_expectation(x: Tensor, codebook: Tensor, metric: str) -> tuple[Tensor, Tensor]:
    """For inputs whose float32 scores are exact: the smallest index of the least score and
    its float64 distance."""
    rows = x.reshape(-1, x.shape[-1])
    scores = distances64(rows, codebook, metric)
    best = scores.min(dim=1, keepdim=True).values
    positions = torch.arange(codebook.shape[0]).expand_as(scores)
    first = torch.where(scores == best, positions, codebook.shape[0]).min(dim=1).values
    return first, pair_distances64(rows, codebook[first], metric)


@pytest.mark.parametrize("backend", ["reference", *COMPILED])
@given(case=assign_cases(batch=small_batch_shapes, ties=("integers",), metrics=("l2", "dot")))
def test_exact_scores_give_the_first_best_index_everywhere(backend, case):
    """Small integer inputs make every float32 score exact (in bf16 too), so exact ties
    between different codes abound: each backend owes the smallest best index and the exact
    distance, hence the same result as every other backend."""
    x, codebook = case.build()
    first, distance = _exact_expectation(x, codebook, case.metric)
    x, codebook = _on(backend, x, codebook)
    result = wvq.assign(x, codebook, metric=case.metric, precision=case.precision, backend=backend)
    assert torch.equal(result.indices.reshape(-1).cpu(), first)
    assert torch.equal(result.distances.reshape(-1).cpu().double(), distance)


# ---------------------------------------------------------------------------------------------
# code_histogram, code_sums, usage


@dataclass(frozen=True)
class IndexCase:
    """Indices (*batch) of ``index_dtype`` in [0, num_codes) (and in the dtype's range),
    ``skew`` > 1 crowding them onto the first codes, optionally a transposed view; rows x
    (*batch, dim) of N(0, 1) values times ``scale`` plus ``offset``, for code_sums."""

    batch: tuple[int, ...]
    num_codes: int
    index_dtype: torch.dtype
    skew: float
    transposed: bool
    dim: int
    dtype: torch.dtype
    scale: float
    offset: float
    seed: int

    def indices(self) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        top = min(self.num_codes, torch.iinfo(self.index_dtype).max + 1)
        uniform = torch.rand(
            self.batch[::-1] if self.transposed else self.batch, generator=generator
        )
        values = (uniform**self.skew * top).long().clamp_max(top - 1).to(self.index_dtype)
        return values.T if self.transposed else values

    def rows(self) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed + 1)
        x = torch.randn(*self.batch, self.dim, generator=generator, dtype=torch.float64)
        return (x * self.scale + self.offset).to(self.dtype)


@st.composite
def index_cases(draw, batch=large_batch_shapes):
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    scale = draw(st.sampled_from(_scales_for(dtype)))
    batch = draw(batch)
    return IndexCase(
        batch=batch,
        num_codes=draw(st.one_of(code_counts, st.just(65536))),
        index_dtype=draw(st.sampled_from(INDEX_DTYPES)),
        skew=draw(st.sampled_from([1.0, 3.0, 20.0])),
        transposed=len(batch) == 2 and draw(st.booleans()),
        dim=draw(dims),
        dtype=dtype,
        scale=scale,
        offset=draw(st.sampled_from([0.0, 3 * scale])),
        seed=draw(st.integers(0, 2**16)),
    )


def _check_histogram(case: IndexCase, backend: str) -> None:
    (indices,) = _on(backend, case.indices())
    counts = wvq.code_histogram(indices, case.num_codes, backend=backend)
    expected = torch.bincount(indices.reshape(-1).long(), minlength=case.num_codes)
    assert counts.dtype == torch.int64 and torch.equal(counts, expected)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@given(case=index_cases())
def test_code_histogram_is_the_bincount(backend, case):
    _check_histogram(case, backend)


@TRITON
@given(case=index_cases(batch=small_batch_shapes))
def test_triton_code_histogram_is_the_bincount(case):
    _check_histogram(case, "triton")


def _check_code_sums(case: IndexCase, backend: str) -> None:
    """Counts exact, sums within float32 summation's bound of float64, bitwise repeatable."""
    indices, x = _on(backend, case.indices(), case.rows())
    counts, sums = wvq.code_sums(indices, x, case.num_codes, backend=backend)
    problems = code_sums_failures(indices, x, counts, sums)
    assert not problems, "; ".join(problems)
    again = wvq.code_sums(indices, x, case.num_codes, backend=backend)
    assert torch.equal(again[0], counts) and torch.equal(again[1], sums), "not repeatable"


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@given(case=index_cases())
def test_code_sums_meet_float64(backend, case):
    _check_code_sums(case, backend)


@TRITON
@given(case=index_cases(batch=small_batch_shapes))
def test_triton_code_sums_meet_float64(case):
    assume(_interpreter_safe(case.dtype == torch.bfloat16, case.scale))
    _check_code_sums(case, "triton")


@st.composite
def histograms(draw) -> Tensor:
    """Counts (K,) of an integer dtype: zeros, small, huge (int64 up to 2^40) and a strided
    view among them."""
    dtype = draw(st.sampled_from(INDEX_DTYPES))
    top = min(torch.iinfo(dtype).max, 2**40)
    values = st.one_of(st.just(0), st.integers(0, 5), st.integers(0, top))
    counts = draw(st.lists(values, min_size=1, max_size=300))
    if draw(st.booleans()):
        return torch.tensor(counts, dtype=dtype).repeat_interleave(2)[::2]
    return torch.tensor(counts, dtype=dtype)


@pytest.mark.parametrize("backend", ["reference", *COMPILED])
@given(counts=histograms())
def test_usage_meets_float64(backend, counts):
    """utilization = share of used codes, perplexity = exp(entropy), 1 when empty."""
    (counts,) = _on(backend, counts)
    problems = usage_failures(wvq.usage(counts, backend=backend), counts)
    assert not problems, "; ".join(problems)


# ---------------------------------------------------------------------------------------------
# moments, Moments.merge


@dataclass(frozen=True)
class RowsCase:
    """Rows (*batch, dim) of correlated N(0, 1) values times ``scale`` plus ``offset`` times
    a fixed direction (a large common offset tests centring), optionally duplicated or laid
    out non-contiguously; ``cut`` splits the flattened rows in two for merge."""

    batch: tuple[int, ...]
    dim: int
    dtype: torch.dtype
    scale: float
    offset: float
    duplicated: bool
    layout: str
    cut: float
    seed: int

    def build(self) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        rows = math.prod(self.batch)
        mixing = torch.randn(self.dim, self.dim, generator=generator, dtype=torch.float64)
        x = torch.randn(rows, self.dim, generator=generator, dtype=torch.float64)
        direction = torch.randn(self.dim, generator=generator, dtype=torch.float64)
        if self.duplicated and rows:
            x = x[torch.randint(0, max(1, rows // 4), (rows,), generator=generator)]
        x = (x @ mixing / self.dim**0.5 + self.offset * direction) * self.scale
        return _lay_out(x.to(self.dtype).reshape(*self.batch, self.dim), self.layout)


MOMENTS_DTYPES = [*FLOAT_DTYPES, torch.float64]


@st.composite
def rows_cases(draw, batch=large_batch_shapes):
    dtype = draw(st.sampled_from(MOMENTS_DTYPES))
    offset = draw(st.sampled_from([0.0, 1.0, 100.0]))
    # float64 rows span float32's scales: the kernels may compute in float32.
    scales = _scales_for(torch.float32 if dtype == torch.float64 else dtype, 8 * (1 + offset))
    return RowsCase(
        batch=draw(batch),
        dim=draw(dims),
        dtype=dtype,
        scale=draw(st.sampled_from(scales)),
        offset=offset,
        duplicated=draw(st.booleans()),
        layout=draw(st.sampled_from(LAYOUTS)),
        cut=draw(st.floats(0.0, 1.0)),
        seed=draw(st.integers(0, 2**16)),
    )


def _check_moments(case: RowsCase, backend: str) -> None:
    """Count exact; mean and covariance within MOMENTS_TOLERANCE of float64; the merge of the
    moments of two chunks meets the same bound against the whole."""
    (x,) = _on(backend, case.build())
    problems = moments_failures(wvq.moments(x, backend=backend), x)
    assert not problems, "; ".join(problems)
    rows = x.reshape(-1, x.shape[-1])
    cut = round(case.cut * rows.shape[0])
    first, second = (wvq.moments(part, backend=backend) for part in (rows[:cut], rows[cut:]))
    problems = moments_failures(first.merge(second), x)
    assert not problems, "merged: " + "; ".join(problems)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@given(case=rows_cases())
def test_moments_and_merge_meet_float64(backend, case):
    _check_moments(case, backend)


@TRITON
@given(case=rows_cases(batch=small_batch_shapes))
def test_triton_moments_and_merge_meet_float64(case):
    assume(_interpreter_safe(case.dtype == torch.bfloat16, case.scale))
    _check_moments(case, "triton")


# ---------------------------------------------------------------------------------------------
# soft_assign_stats

# Scales at which float32 distances (~D scale^2), tau and the loss (a sum of up to K
# distances) stay normal and finite: below, distances underflow and every code ties, which
# changes the weights legitimately; above 1e12, the float32 loss of large K may overflow.
SOFT_ASSIGN_SCALES = (1e-10, 1e12)
# Known bug: cpu and Triton use tau in float32, where a valid tau below float32's normal range
# is subnormal or 0 and every weight becomes 1; the smallest tau drawn, until that is fixed.
SOFT_ASSIGN_TAU_FLOOR_UNTIL_FIX = torch.finfo(torch.float32).smallest_normal
# Known bug: the cpu loss is 0 for distances below ~1e-25 and imprecise up to ~1e-21 (well
# inside float32's normal range); the smallest cpu scale drawn, until that is fixed.
CPU_SOFT_ASSIGN_SCALE_FLOOR_UNTIL_LOSS_FIX = 1e-5


@dataclass(frozen=True)
class SoftCase:
    """``soft_assign_stats(x, codebook, tau=, lam=)`` on the inputs of an l2 AssignCase, tau
    ``tau_factor`` times the mean squared distance of two such random vectors (1e-30: every
    weight but the winners' underflows)."""

    inputs: AssignCase
    tau_factor: float
    lam: float

    def tau(self) -> float:
        typical = self.tau_factor * 2 * self.inputs.dim * self.inputs.scale**2
        return max(typical, SOFT_ASSIGN_TAU_FLOOR_UNTIL_FIX)


@st.composite
def soft_cases(draw, batch=batch_shapes):
    # Near ties are left out: float32 rounding may pick the other of two nearly equal codes,
    # which swaps their weights (1 and lam K softmax) and no tolerance covers that.
    inputs = draw(assign_cases(batch=batch, ties=("none", "codes", "rows", "integers")))
    scale = min(max(inputs.scale, SOFT_ASSIGN_SCALES[0]), SOFT_ASSIGN_SCALES[1])
    inputs = replace(inputs, metric="l2", precision="ieee", scale=scale, code_scale=scale)
    return SoftCase(
        inputs=inputs,
        tau_factor=draw(st.sampled_from([1e-30, 0.01, 0.1, 1.0, 10.0, 100.0])),
        lam=draw(st.sampled_from([0.0, 0.01, 0.1, 1.0])),
    )


def _check_soft_assign(case: SoftCase, backend: str) -> None:
    """Loss, weight sums, weighted sums and distances within SOFT_ASSIGN_TOLERANCE of the
    float64 definition; the nearest codes as assign owes them."""
    x, codebook = _on(backend, *case.inputs.build())
    result = wvq.soft_assign_stats(x, codebook, tau=case.tau(), lam=case.lam, backend=backend)
    problems = soft_assign_failures(x, codebook, case.tau(), case.lam, result)
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@given(case=soft_cases())
def test_soft_assign_stats_meet_float64(backend, case):
    cpu_floor = CPU_SOFT_ASSIGN_SCALE_FLOOR_UNTIL_LOSS_FIX
    assume(backend != "cpu" or case.inputs.ties == "integers" or case.inputs.scale >= cpu_floor)
    _check_soft_assign(case, backend)


@TRITON
@given(case=soft_cases(batch=small_batch_shapes))
def test_triton_soft_assign_stats_meet_float64(case):
    inputs = case.inputs
    assume(_interpreter_safe(inputs.dtype == torch.bfloat16, inputs.scale))
    _check_soft_assign(case, "triton")


# ---------------------------------------------------------------------------------------------
# gaussian_w2


@dataclass(frozen=True)
class GaussianCase:
    """Two Gaussians in ``dim`` dimensions with means and covariance factors (dim, rank) of
    N(0, 1) values times ``scale``; ``diagonal`` covariances are diagonal (some variances 0
    when rank < dim)."""

    dim: int
    rank: int
    scale: float
    diagonal: bool
    dtype: torch.dtype
    seed: int

    def build(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        gaussians = []
        for _ in range(2):
            mean = torch.randn(self.dim, generator=generator, dtype=torch.float64)
            factor = torch.randn(self.dim, self.rank, generator=generator, dtype=torch.float64)
            cov = factor @ factor.T / self.rank
            if self.diagonal:
                cov = torch.diag(
                    torch.cat([cov.diagonal()[: self.rank], cov.new_zeros(self.dim - self.rank)])
                )
            gaussians.append(
                ((mean * self.scale).to(self.dtype), (cov * self.scale**2).to(self.dtype))
            )
        return gaussians[0], gaussians[1]


@st.composite
def gaussian_cases(draw, diagonal: bool | None = None):
    dim = draw(st.integers(1, 12))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    # Variances (scale^2) stay normal in float32. A singular covariance rounded to float32 is
    # PSD only up to its rounding, whose clamped negative eigenvalues move the square roots by
    # sqrt(u32) of the scale: float32 covariances have full rank.
    return GaussianCase(
        dim=dim,
        rank=draw(st.integers(1 if dtype == torch.float64 else dim, dim)),
        scale=draw(st.sampled_from([1e-15, 1e-5, 1.0, 1e5, 1e15])),
        diagonal=draw(st.booleans()) if diagonal is None else diagonal,
        dtype=dtype,
        seed=draw(st.integers(0, 2**16)),
    )


def _size(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> float:
    """|mean_a - mean_b|^2 + tr cov_a + tr cov_b: the scale of W^2, which it never exceeds."""
    (mean_a, cov_a), (mean_b, cov_b) = a, b
    mean_term = (mean_a.double() - mean_b.double()).square().sum()
    return float(mean_term + cov_a.double().trace() + cov_b.double().trace())


def _w2_tolerance(dim: int) -> float:
    """Relative to :func:`_size`: a float64 eigenvalue errs by ~u64 of the largest, lambda,
    and its square root by up to sqrt(u64 lambda) where the eigenvalue is near zero (singular
    covariances): sqrt(u64) of the scale per dimension."""
    return 4 * dim * FP64_UNIT**0.5


@given(case=gaussian_cases())
def test_gaussian_w2_is_symmetric_non_negative_and_zero_on_itself(case):
    a, b = case.build()
    size = _size(a, b)
    forward = float(gaussian_w2(*a, *b, squared=True, eps=0.0))
    backward = float(gaussian_w2(*b, *a, squared=True, eps=0.0))
    assert abs(forward - backward) <= _w2_tolerance(case.dim) * size
    assert forward >= -_w2_tolerance(case.dim) * size
    assert float(gaussian_w2(*a, *b)) >= 0
    assert abs(float(gaussian_w2(*a, *a, squared=True, eps=0.0))) <= _w2_tolerance(
        case.dim
    ) * _size(a, a)


# Newton-Schulz normalises by a matrix norm clamped at an absolute 1e-30, so that the
# product of covariances of scale below ~1e-9 does not converge: the scales drawn, until fixed.
NEWTON_SCHULZ_SCALE_FLOOR_UNTIL_NORM_FIX = 1e-5


@given(case=gaussian_cases(diagonal=True), method=st.sampled_from(["eigh", "newton_schulz"]))
def test_gaussian_w2_of_diagonal_covariances_is_the_closed_form(case, method):
    """W^2 = |mean_a - mean_b|^2 + sum_i (sqrt(var_a,i) - sqrt(var_b,i))^2. Newton-Schulz
    (eps 1e-30 of the scale, 60 steps) converges slowly on zero variances: full rank only."""
    if method == "newton_schulz":
        scale = max(case.scale, NEWTON_SCHULZ_SCALE_FLOOR_UNTIL_NORM_FIX)
        case = replace(case, rank=case.dim, scale=scale)
    (mean_a, cov_a), (mean_b, cov_b) = case.build()
    roots = cov_a.double().diagonal().sqrt() - cov_b.double().diagonal().sqrt()
    exact = float((mean_a.double() - mean_b.double()).square().sum() + roots.square().sum())
    eps = 0.0 if method == "eigh" else 1e-30 * case.scale**2
    got = gaussian_w2(
        mean_a, cov_a, mean_b, cov_b, squared=True, method=method, eps=eps, iterations=60
    )
    tolerance = _w2_tolerance(case.dim) if method == "eigh" else 1e-6
    assert abs(float(got) - exact) <= tolerance * _size((mean_a, cov_a), (mean_b, cov_b))


# ---------------------------------------------------------------------------------------------
# Bad inputs


def _with_value(x: Tensor, position: int, value) -> Tensor:
    bad = x.clone()
    bad.view(-1)[position % bad.numel()] = value
    return bad


def _bad_calls(x: Tensor, codebook: Tensor, indices: Tensor, position: int, backend: str):
    """{case: (argument, call)}: each call is one bad argument away from a valid call."""
    num_codes = codebook.shape[0]
    assign, sums, soft = wvq.assign, wvq.code_sums, wvq.soft_assign_stats
    other = torch.float16 if x.dtype != torch.float16 else torch.float32
    wrong_dim = torch.cat([codebook, codebook[:, :1]], dim=1)
    mean, cov = torch.zeros(3), torch.eye(3)
    calls = {
        "assign x int": ("x", lambda: assign(x.long(), codebook, backend=backend)),
        "assign x float64": ("x", lambda: assign(x.double(), codebook.double(), backend=backend)),
        "assign x 0-dim": ("x", lambda: assign(x.reshape(-1)[0], codebook, backend=backend)),
        "assign x nan": (
            "x",
            lambda: assign(_with_value(x, position, math.nan), codebook, backend=backend),
        ),
        "assign codebook inf": (
            "codebook",
            lambda: assign(x, _with_value(codebook, position, -math.inf), backend=backend),
        ),
        "assign codebook dtype": (
            "codebook",
            lambda: assign(x, codebook.to(other), backend=backend),
        ),
        "assign codebook 1-D": ("codebook", lambda: assign(x, codebook[0], backend=backend)),
        "assign codebook empty": ("codebook", lambda: assign(x, codebook[:0], backend=backend)),
        "assign codebook D": ("codebook", lambda: assign(x, wrong_dim, backend=backend)),
        "assign metric": ("metric", lambda: assign(x, codebook, metric="l1", backend=backend)),
        "assign precision": (
            "precision",
            lambda: assign(x, codebook, precision="fp8", backend=backend),
        ),
        "assign tf32 on CPU": (
            "precision",
            lambda: assign(x, codebook, precision="tf32", backend=backend),
        ),
        "assign backend": ("backend", lambda: assign(x, codebook, backend="gpu")),
        "histogram float indices": (
            "indices",
            lambda: wvq.code_histogram(indices.float(), num_codes, backend=backend),
        ),
        "histogram index too large": (
            "indices",
            lambda: wvq.code_histogram(
                _with_value(indices, position, num_codes), num_codes, backend=backend
            ),
        ),
        "histogram index negative": (
            "indices",
            lambda: wvq.code_histogram(
                _with_value(indices, position, -1), num_codes, backend=backend
            ),
        ),
        "histogram num_codes 0": (
            "num_codes",
            lambda: wvq.code_histogram(indices, 0, backend=backend),
        ),
        "histogram num_codes bool": (
            "num_codes",
            lambda: wvq.code_histogram(indices, True, backend=backend),
        ),
        "histogram num_codes float": (
            "num_codes",
            lambda: wvq.code_histogram(indices, float(num_codes), backend=backend),
        ),
        "code_sums shape": (
            "indices",
            lambda: sums(indices[..., None], x, num_codes, backend=backend),
        ),
        "code_sums x int": ("x", lambda: sums(indices, x.long(), num_codes, backend=backend)),
        "code_sums x inf": (
            "x",
            lambda: sums(indices, _with_value(x, position, math.inf), num_codes, backend=backend),
        ),
        "code_sums index too large": (
            "indices",
            lambda: sums(_with_value(indices, position, 2**40), x, num_codes, backend=backend),
        ),
        "usage float counts": ("counts", lambda: wvq.usage(indices.float(), backend=backend)),
        "usage 2-D counts": ("counts", lambda: wvq.usage(indices.reshape(1, -1), backend=backend)),
        "moments x int": ("x", lambda: wvq.moments(x.long(), backend=backend)),
        "moments x nan": (
            "x",
            lambda: wvq.moments(_with_value(x, position, math.nan), backend=backend),
        ),
        "soft tau 0": ("tau", lambda: soft(x, codebook, tau=0.0, backend=backend)),
        "soft tau nan": ("tau", lambda: soft(x, codebook, tau=math.nan, backend=backend)),
        "soft tau bool": ("tau", lambda: soft(x, codebook, tau=True, backend=backend)),
        "soft lam negative": (
            "lam",
            lambda: soft(x, codebook, tau=1.0, lam=-1e-30, backend=backend),
        ),
        "soft codebook D": ("codebook", lambda: soft(x, wrong_dim, tau=1.0, backend=backend)),
        "w2 dims differ": ("dimensions", lambda: gaussian_w2(mean, cov, mean[:2], cov[:2, :2])),
        "w2 cov shape": ("cov", lambda: gaussian_w2(mean, cov[:2], mean, cov)),
        "w2 method": ("method", lambda: gaussian_w2(mean, cov, mean, cov, method="svd")),
        "w2 eps": ("eps", lambda: gaussian_w2(mean, cov, mean, cov, eps=-1.0)),
    }
    if x.device.type == "cuda" and backend in GPU_BACKENDS:
        del calls["assign tf32 on CPU"]  # a tensor-core mode there
    return calls


BAD_CASES = sorted(_bad_calls(torch.ones(1, 1), torch.ones(1, 1), torch.zeros(1), 0, "cpu"))


@pytest.mark.parametrize("backend", ["reference", *COMPILED])
@given(
    case=st.sampled_from(BAD_CASES),
    rows=st.integers(1, 40),
    num_codes=st.integers(1, 300),
    dim=dims,
    dtype=st.sampled_from(FLOAT_DTYPES),
    position=st.integers(0, 2**16),
)
def test_bad_inputs_raise_naming_the_argument(backend, case, rows, num_codes, dim, dtype, position):
    """One bad argument of a random otherwise valid call: a ValueError or TypeError whose
    message names the argument, never another error or a crash."""
    x, codebook, indices = _on(
        backend,
        torch.randn(rows, dim).to(dtype),
        torch.randn(num_codes, dim).to(dtype),
        torch.randint(0, num_codes, (rows,)),
    )
    calls = _bad_calls(x, codebook, indices, position, backend)
    assume(case in calls)
    argument, call = calls[case]
    with pytest.raises((ValueError, TypeError)) as error:
        call()
    assert argument in str(error.value), f"{argument!r} not named: {error.value}"
