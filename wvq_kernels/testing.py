"""The one float64 oracle of the library: what the tests, ``wvq check`` and the benchmarks hold
every backend to.

- Assignment: :class:`AssignmentTruth` (float64 best distance, expected index, gap to the best
  *different* code), one rounding model (:func:`score_error_bound`), :func:`check_assignment`
  (raises, for tests) and :meth:`AssignmentTruth.failures` (returns messages, for ``wvq check``).
- Statistics: code sums, usage, moments and soft assignment against float64.
- Inputs: random rows and codebooks, codebooks with exact duplicates, rows near and far from
  their codes (exact codes and an all-zero row included), skewed indices, strided copies.

Nothing here imports pytest or the application: a failure is an ``AssertionError`` or a list of
messages.

Rounding model (one score, one row x against one code c, computed in float32):

    error <= (m * gamma(D + 4) + 2 u + u^2) * M

``gamma(n) = n u32 / (1 - n u32)`` bounds a float32 sum of n products in any order (Higham,
Accuracy and Stability of Numerical Algorithms, section 3.1): D products plus up to four more
roundings (norms, the difference, the final subtraction). ``u`` is the relative rounding of each
operand before the products (:data:`INPUT_UNIT`); rounding both operands of a product moves it
by at most ``(2 u + u^2)`` of its magnitude. ``M`` bounds the magnitudes being summed:
``(|x| + max|c|)^2`` for l2 (it covers ``|c|^2 + 2|x.c|``, ``|x - c|^2`` and an added
``|x|^2``, whichever form a kernel computes), ``|x| max|c|`` for dot, 1 for cosine, whose
operands are unit vectors; ``m`` is 3 for cosine (the normalisation of both operands adds two
more such errors), else 1. The chosen code's computed score is at most the best code's, and each
is at most that far from its exact value: the regret is at most twice the bound. A row is
*decisive* when its best different code is farther than that: there the index must be the
float64 one. :data:`SAFETY` doubles everything for the second-order terms the first-order bound
drops; the bound is worst-case, so any blocking or summation order meets it.

Underflow adds absolute terms to that relative bound (:func:`underflow_bound`): below float32's
normal range a product errs by up to half the smallest subnormal, whatever its size, and bf16
rounds a subnormal operand to a multiple of its own smallest subnormal.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from wvq_kernels._backends import GPU_BACKENDS
from wvq_kernels.ops import resolve_precision
from wvq_kernels.reference import normalise_rows, soft_assign_stats_materialised

FP32_UNIT = 2.0**-24
FP64_UNIT = 2.0**-53
# Relative rounding of an operand before the products, per resolved precision. bf16 keeps 8
# significant bits (round to nearest: 2^-8). tf32 keeps 11, but tensor cores fed float32 may
# truncate instead of rounding: 2^-10. tf32x3 splits each operand into two tf32 parts and drops
# the low x low product: both the dropped term and the low part's truncation are ~2^-20 of a
# product, so 2^-19 per operand covers them.
INPUT_UNIT = {"ieee": 0.0, "bf16": 2.0**-8, "tf32": 2.0**-10, "tf32x3": 2.0**-19}
SAFETY = 2.0
# Smallest subnormals: float32 products and bf16 operands are rounded to multiples of these
# once they fall below the normal range (gradual underflow; flushing to zero is not allowed).
FP32_SUBNORMAL = 2.0**-149
BF16_SUBNORMAL = 2.0**-133
# Rows per float64 block of scores: 256 x 65,536 codes is 128 MiB.
ROW_BLOCK = 256
# Norm-wise relative error allowed on moments against float64. Centred float64 accumulation of
# float32 rows is ~1e-13 off; an uncentred float32 pass loses ~2^-24 offset^2 / variance.
MOMENTS_TOLERANCE = 1e-6
# Relative error allowed on usage's float32 outputs: float32 logarithms summed over K codes.
USAGE_TOLERANCE = 1e-5
# Norm-wise relative error allowed on soft_assign_stats' float outputs and gradient: float32
# distances and exponentials (each ~1e-7 relative) summed in float32 over K codes.
SOFT_ASSIGN_TOLERANCE = 1e-4
# (N, K, D) that take every path of the GPU soft_assign_stats kernels: empty and single rows,
# one chunk of dimensions and several, few rows and many codes (the scan splits the codebook),
# many rows and few codes (row segments in the accumulation), every column-block width (8, 16,
# 32). tests/test_cuda.py runs them on a GPU, tests/test_cuda_emulation.py in the emulation.
SOFT_ASSIGN_GPU_SHAPES = [
    (0, 17, 12),
    (1, 17, 59),
    (1, 1, 1),
    (777, 300, 12),
    (2049, 300, 59),
    (3, 5000, 8),
    (5000, 17, 8),
    (600, 130, 40),
]
# Low-precision rule: where the inputs are half precision, an op accumulating in float32 errs
# against float64 by no more than this many times what plain PyTorch computing the same
# definition in the inputs' precision errs (both judged on the same rounded inputs).
LOW_PRECISION_ERROR_FACTOR = 2.0


def gamma(terms: int) -> float:
    """Worst-case relative error of a float32 sum of ``terms`` products (Higham's gamma_n)."""
    return terms * FP32_UNIT / (1 - terms * FP32_UNIT)


def device_for(backend: str) -> torch.device:
    """Where a backend's inputs live: CUDA for the GPU backends when there is a GPU; Triton
    without one runs CPU tensors (under TRITON_INTERPRET=1, the only way it is available)."""
    on_gpu = backend in GPU_BACKENDS and torch.cuda.is_available()
    return torch.device("cuda" if on_gpu else "cpu")


def relative_error(got: Tensor, expected: Tensor) -> float:
    """||got - expected|| / ||expected|| in float64 on the CPU; ||got|| when expected is 0."""
    got, expected = got.detach().cpu().double(), expected.detach().cpu().double()
    scale = expected.norm()
    difference = (got - expected).norm()
    return float(difference / scale) if scale > 0 else float(difference)


# ---------------------------------------------------------------------------------------------
# Assignment


def distances64(rows: Tensor, codebook: Tensor, metric: str) -> Tensor:
    """All row-to-code distances (N, K) in float64 from 2-D inputs as given (l2 expanded)."""
    rows, codebook = rows.double(), codebook.double()
    if metric == "l2":
        return rows.square().sum(1, keepdim=True) + codebook.square().sum(1) - 2 * rows @ codebook.T
    if metric == "cosine":
        return 1 - normalise_rows(rows) @ normalise_rows(codebook).T
    return -(rows @ codebook.T)


def pair_distances64(rows: Tensor, codes: Tensor, metric: str) -> Tensor:
    """Distance of each row to its own code in float64; l2 as a sum of squares, exact near 0."""
    rows, codes = rows.double(), codes.double()
    if metric == "l2":
        return (rows - codes).square().sum(1)
    if metric == "cosine":
        return 1 - (normalise_rows(rows) * normalise_rows(codes)).sum(1)
    return -(rows * codes).sum(1)


def first_identical_code(codebook: Tensor) -> Tensor:
    """For every code, the smallest index of a code equal to it."""
    _, group = torch.unique(codebook, dim=0, return_inverse=True)
    first = torch.full((int(group.max()) + 1,), codebook.shape[0], dtype=torch.int64)
    first.scatter_reduce_(0, group, torch.arange(codebook.shape[0]), reduce="amin")
    return first[group]


def score_error_bound(
    rows: Tensor, codebook: Tensor, metric: str, precision: str, dtype: torch.dtype
) -> Tensor:
    """Per row, the most one float32 score can be off (see the module docstring). Inputs that
    already are bf16 lose nothing to any precision's rounding, except under cosine, whose
    normalised operands are rounded afresh."""
    precision = resolve_precision(precision, dtype)
    unit = 0.0 if dtype == torch.bfloat16 and metric != "cosine" else INPUT_UNIT[precision]
    terms = 3 if metric == "cosine" else 1
    relative = terms * gamma(rows.shape[1] + 4) + 2 * unit + unit**2
    floor = underflow_bound(rows, codebook, metric, unit > 0)
    if metric == "cosine":
        return torch.full((rows.shape[0],), relative, dtype=torch.float64) + floor
    row_norms, largest_code = rows.double().norm(dim=1), codebook.double().norm(dim=1).max()
    if metric == "l2":
        return relative * (row_norms + largest_code) ** 2 + floor
    return relative * row_norms * largest_code + floor


def underflow_bound(rows: Tensor, codebook: Tensor, metric: str, rounded: bool) -> Tensor:
    """Per row, the absolute error underflow adds to one float32 score: half a float32
    subnormal for each of at most 3 D + 4 products (x.c, |c|^2 and |x|^2 for l2) and, when the
    operands are ``rounded`` to bf16, half a bf16 subnormal per element of either operand,
    which moves an l2 score by at most 6 sqrt(D) of that times (|x| + max|c|) (2 |c| for
    |c|^2, 2 (|x| + |c|) for 2 x.c, 2 |x| for |x|^2); cosine's operands are unit vectors."""
    dim = rows.shape[1]
    products = (3 * dim + 4) * FP32_SUBNORMAL / 2
    if metric == "cosine":
        magnitude = torch.full((rows.shape[0],), 2.0, dtype=torch.float64)
    else:
        magnitude = rows.double().norm(dim=1) + codebook.double().norm(dim=1).max()
    operands = 6 * math.sqrt(dim) * BF16_SUBNORMAL / 2 * magnitude if rounded else 0.0
    return products + operands


class AssignmentTruth:
    """Float64 truth for one (x (..., D), codebook (K, D), metric): per row the best distance,
    the expected index (the first of identical codes; 0 for an all-zero row under cosine and
    dot, which ties every code) and the gap to the best *different* code. Scores are formed
    ROW_BLOCK rows at a time and not kept: memory O(ROW_BLOCK K + N)."""

    def __init__(self, x: Tensor, codebook: Tensor, metric: str) -> None:
        self.metric = metric
        self.dtype = x.dtype
        self.rows = x.detach().reshape(-1, x.shape[-1]).cpu().double()
        self.codebook = codebook.detach().cpu().double()
        self.expected, self.gap = self._nearest_distinct()
        self.best = self.distances(self.expected)

    def _nearest_distinct(self) -> tuple[Tensor, Tensor]:
        first = first_identical_code(self.codebook)
        expected, gap = [], []
        for block in self.rows.split(ROW_BLOCK):
            scores = distances64(block, self.codebook, self.metric)
            best, index = scores.min(dim=1)
            expected.append(first[index])
            same = first[None, :] == first[index][:, None]
            gap.append(scores.masked_fill(same, math.inf).min(dim=1).values - best)
        expected, gap = torch.cat(expected), torch.cat(gap)
        if self.metric != "l2":
            zero_rows = (self.rows == 0).all(dim=1)
            expected = torch.where(zero_rows, 0, expected)
            gap = torch.where(zero_rows, math.inf, gap)
        return expected, gap

    def distances(self, indices: Tensor) -> Tensor:
        """Float64 distance of every row to the code ``indices`` names."""
        return pair_distances64(self.rows, self.codebook[indices.reshape(-1).cpu()], self.metric)

    def regret(self, indices: Tensor) -> Tensor:
        return self.distances(indices) - self.best

    def regret_bound(self, precision: str) -> Tensor:
        """Largest regret rounding can explain, per row."""
        bound = score_error_bound(self.rows, self.codebook, self.metric, precision, self.dtype)
        return SAFETY * 2 * bound

    def decisive(self, precision: str) -> Tensor:
        """Rows whose best different code is beyond the regret bound: their index is owed."""
        return self.gap > self.regret_bound(precision)

    def worst_regret_ratio(self, indices: Tensor, precision: str) -> float:
        """The largest regret as a share of its row's bound (0 for no rows or no regret)."""
        regret, bound = self.regret(indices), self.regret_bound(precision)
        ratio = torch.where(regret > 0, regret / bound, 0.0)
        return float(ratio.max()) if len(ratio) else 0.0

    def distance_bound(self, indices: Tensor) -> Tensor:
        return reported_distance_bound(self.rows, self.codebook, indices, self.metric)

    def failures(self, indices: Tensor, distances: Tensor, precision: str) -> list[str]:
        """What an assignment owes, as messages (empty when it meets all): dtypes and range,
        regret within the bound, the expected index on decisive rows, the reported distance
        within its bound (never NaN) and, but for dot, not negative."""
        indices, distances = indices.reshape(-1).cpu(), distances.reshape(-1).cpu()
        if indices.dtype != torch.int64 or distances.dtype != torch.float32:
            return [f"dtypes {indices.dtype}, {distances.dtype} instead of int64, float32"]
        if not ((indices >= 0) & (indices < self.codebook.shape[0])).all():
            return [f"indices outside [0, {self.codebook.shape[0]})"]
        choices = self.choice_failures(indices, precision)
        return choices + self._distance_failures(indices, distances)

    def choice_failures(self, indices: Tensor, precision: str) -> list[str]:
        """The chosen codes alone: regret within the bound, the expected index on decisive
        rows."""
        indices = indices.reshape(-1).cpu()
        regret, bound = self.regret(indices), self.regret_bound(precision)
        problems = []
        if (regret > bound).any():
            row = int((regret - bound).argmax())
            problems.append(
                f"row {row}: regret {float(regret[row]):.3g} > bound {float(bound[row]):.3g}"
            )
        wrong = self.decisive(precision) & (indices != self.expected)
        if wrong.any():
            row = int(wrong.nonzero()[0, 0])
            problems.append(
                f"{int(wrong.sum())} wrong indices on decisive rows, first row {row}: "
                f"{int(indices[row])} instead of {int(self.expected[row])}"
            )
        return problems

    def _distance_failures(self, indices: Tensor, distances: Tensor) -> list[str]:
        return reported_distance_failures(self.rows, self.codebook, indices, distances, self.metric)


def reported_distance_bound(rows: Tensor, codebook: Tensor, indices: Tensor, metric: str) -> Tensor:
    """Error allowed on the distance of each row of ``rows`` (float64, (N, D)) to the code
    ``indices`` names, recomputed in float32 from the unrounded inputs: relative for l2 (a sum
    of squares has no cancellation), absolute for cosine, relative to sum |x_i c_i| for dot.
    float32's smallest normal is the floor."""
    relative = SAFETY * gamma(rows.shape[1] + 4)
    codes = codebook[indices.reshape(-1).cpu()]
    if metric == "l2":
        exact = pair_distances64(rows, codes, metric).abs()
        return relative * exact + torch.finfo(torch.float32).tiny
    if metric == "cosine":
        return torch.full((rows.shape[0],), 3 * relative, dtype=torch.float64)
    underflow = (rows.shape[1] + 4) * FP32_SUBNORMAL / 2
    return relative * (rows * codes).abs().sum(1) + underflow


def reported_distance_failures(
    rows: Tensor, codebook: Tensor, indices: Tensor, distances: Tensor, metric: str
) -> list[str]:
    """Each reported distance (one per row of ``rows``) within its bound of float64, never
    NaN and, but for dot, not negative."""
    exact = pair_distances64(rows, codebook[indices.reshape(-1).cpu()], metric)
    allowed = reported_distance_bound(rows, codebook, indices, metric)
    error = (distances.double() - exact).abs()
    # A distance beyond float32's range rounds to an infinity of its sign.
    beyond = exact.abs() - allowed > torch.finfo(torch.float32).max
    overflowed = beyond & distances.isinf() & (distances.sign() == exact.sign())
    error = torch.where(overflowed, 0.0, error)
    problems = []
    if (error > allowed).any():
        row = int((error - allowed).argmax())
        problems.append(
            f"row {row}: distance {float(distances[row]):.6g} vs float64 "
            f"{float(exact[row]):.6g} (bound {float(allowed[row]):.2g})"
        )
    if distances.isnan().any():
        problems.append(f"NaN distance in row {int(distances.isnan().nonzero()[0, 0])}")
    if metric != "dot" and (distances < 0).any():
        problems.append(f"negative {metric} distance {float(distances.min()):.3g}")
    return problems


def check_assignment(
    x: Tensor, codebook: Tensor, indices: Tensor, distances: Tensor, metric: str, precision: str
) -> AssignmentTruth:
    """Assert everything an assignment owes (see :meth:`AssignmentTruth.failures`); returns the
    truth for further checks."""
    truth = AssignmentTruth(x, codebook, metric)
    problems = truth.failures(indices, distances, precision)
    assert not problems, "; ".join(problems)
    return truth


class TopkTruth:
    """Float64 truth for the k nearest codes of every row of x (..., D): per row and rank j the
    j-th smallest distance t_j (identical codes scored as one, so that they tie exactly), the
    expected index (sorted by distance, ties to the smallest index; 0, ..., k-1 for an all-zero
    row under cosine and dot, which ties every code) and the gap from t_j to the nearest
    distance of a code not identical to the expected one.

    Rank-j regret (the reported j-th code's distance minus t_j) is bounded by twice the score
    bound, as for assign: a code whose computed score beats a true top-j code's cannot be
    farther than t_j plus that, so the kernel's k candidates hold j codes within it. Ordering
    the k candidates by their reported distances adds twice the error of one reported
    distance. A rank is decisive when its gap exceeds the bound: there the index is owed, and
    with it the exact order of identical codes. Memory O(ROW_BLOCK K + N k)."""

    def __init__(self, x: Tensor, codebook: Tensor, metric: str, k: int) -> None:
        self.metric, self.dtype, self.k = metric, x.dtype, k
        self.rows = x.detach().reshape(-1, x.shape[-1]).cpu().double()
        self.codebook = codebook.detach().cpu().double()
        first = first_identical_code(self.codebook)
        expected, gap = [], []
        for block in self.rows.split(ROW_BLOCK):
            scores = distances64(block, self.codebook, metric)[:, first]
            values, order = scores.sort(dim=1, stable=True)
            expected.append(order[:, :k])
            other = [first[None, :] != first[order[:, j]][:, None] for j in range(k)]
            gap.append(
                torch.stack(
                    [
                        (scores - values[:, j : j + 1]).abs().masked_fill(~other[j], math.inf)
                        for j in range(k)
                    ],
                    dim=1,
                ).amin(dim=2)
            )
        self.expected = torch.cat(expected) if expected else torch.zeros(0, k, dtype=torch.long)
        self.gap = torch.cat(gap) if gap else torch.zeros(0, k, dtype=torch.float64)
        if metric != "l2":
            zero_rows = (self.rows == 0).all(dim=1)[:, None]
            self.expected = torch.where(zero_rows, torch.arange(k), self.expected)
            self.gap = torch.where(zero_rows, math.inf, self.gap)
        self.best = self.distances(self.expected)

    def _pairs(self) -> Tensor:
        return self.rows.repeat_interleave(self.k, dim=0)

    def distances(self, indices: Tensor) -> Tensor:
        """Float64 distances (N, k) of every row to the codes ``indices`` (N, k) names."""
        codes = self.codebook[indices.reshape(-1).cpu()]
        return pair_distances64(self._pairs(), codes, self.metric).reshape(-1, self.k)

    def regret(self, indices: Tensor) -> Tensor:
        return self.distances(indices) - self.best

    def regret_bound(self, precision: str) -> Tensor:
        """Largest rank-j regret rounding can explain, (N, k)."""
        score = score_error_bound(self.rows, self.codebook, self.metric, precision, self.dtype)
        reported = reported_distance_bound(
            self._pairs(), self.codebook, self.expected, self.metric
        ).reshape(-1, self.k)
        return SAFETY * 2 * score[:, None] + 2 * reported.amax(dim=1, keepdim=True)

    def decisive(self, precision: str) -> Tensor:
        return self.gap > self.regret_bound(precision)

    def worst_regret_ratio(self, indices: Tensor, precision: str) -> float:
        regret, bound = self.regret(indices.reshape(-1, self.k)), self.regret_bound(precision)
        ratio = torch.where(regret > 0, regret / bound, 0.0)
        return float(ratio.max()) if ratio.numel() else 0.0

    def failures(self, indices: Tensor, distances: Tensor, precision: str) -> list[str]:
        """What a top-k owes, as messages: dtypes, shape and range; k distinct codes per row;
        distances ascending, equal ones in increasing index order; every rank's regret within
        the bound; the expected index at decisive ranks; every reported distance within its
        bound."""
        if indices.dtype != torch.int64 or distances.dtype != torch.float32:
            return [f"dtypes {indices.dtype}, {distances.dtype} instead of int64, float32"]
        if indices.shape[-1:] != (self.k,) or indices.shape != distances.shape:
            return [f"shapes {tuple(indices.shape)}, {tuple(distances.shape)}: k = {self.k}"]
        indices = indices.reshape(-1, self.k).cpu()
        distances = distances.reshape(-1, self.k).cpu()
        if not ((indices >= 0) & (indices < self.codebook.shape[0])).all():
            return [f"indices outside [0, {self.codebook.shape[0]})"]
        problems = self._order_failures(indices, distances)
        regret, bound = self.regret(indices), self.regret_bound(precision)
        if (regret > bound).any():
            row, rank = divmod(int((regret - bound).argmax()), self.k)
            problems.append(
                f"row {row} rank {rank}: regret {float(regret[row, rank]):.3g} > bound "
                f"{float(bound[row, 0]):.3g}"
            )
        wrong = self.decisive(precision) & (indices != self.expected)
        if wrong.any():
            row, rank = (int(i) for i in wrong.nonzero()[0])
            problems.append(
                f"{int(wrong.sum())} wrong indices at decisive ranks, first row {row} rank "
                f"{rank}: {int(indices[row, rank])} instead of {int(self.expected[row, rank])}"
            )
        return problems + reported_distance_failures(
            self._pairs(), self.codebook, indices, distances.reshape(-1), self.metric
        )

    @staticmethod
    def _order_failures(indices: Tensor, distances: Tensor) -> list[str]:
        problems = []
        if (indices.sort(dim=1).values.diff(dim=1) == 0).any():
            problems.append("a row names one code twice")
        step, index_step = distances.diff(dim=1), indices.diff(dim=1)
        if ((step < 0) | ((step == 0) & (index_step < 0))).any():
            row = int(((step < 0) | ((step == 0) & (index_step < 0))).any(dim=1).nonzero()[0, 0])
            problems.append(
                f"row {row} not sorted by (distance, index): {indices[row].tolist()} at "
                f"{distances[row].tolist()}"
            )
        return problems


def check_topk(
    x: Tensor,
    codebook: Tensor,
    indices: Tensor,
    distances: Tensor,
    metric: str,
    precision: str,
) -> TopkTruth:
    """Assert everything a top-k owes (see :meth:`TopkTruth.failures`); returns the truth."""
    truth = TopkTruth(x, codebook, metric, indices.shape[-1])
    problems = truth.failures(indices, distances, precision)
    assert not problems, "; ".join(problems)
    return truth


# ---------------------------------------------------------------------------------------------
# Statistics


def code_sums_failures(indices: Tensor, x: Tensor, counts: Tensor, sums: Tensor) -> list[str]:
    """Counts exact; sums float32 within the bound of a float32 summation in any order against
    float64: (n - 1) u sum |x| for n terms, plus u |sum| for the final rounding."""
    rows = x.detach().reshape(-1, x.shape[-1]).cpu().double()
    flat = indices.reshape(-1).cpu().long()
    counts, sums = counts.cpu(), sums.cpu()
    num_codes = sums.shape[0]
    expected_counts = torch.bincount(flat, minlength=num_codes)
    problems = []
    if counts.dtype != torch.int64 or not torch.equal(counts, expected_counts):
        problems.append(f"counts ({counts.dtype}) differ from torch.bincount")
    expected = torch.zeros(num_codes, rows.shape[1], dtype=torch.float64)
    magnitudes = torch.zeros_like(expected)
    expected.index_add_(0, flat, rows)
    magnitudes.index_add_(0, flat, rows.abs())
    terms = expected_counts.double()[:, None]
    allowed = SAFETY * FP32_UNIT * ((terms - 1).clamp_min(0) * magnitudes + expected.abs())
    error = (sums.double() - expected).abs()
    if sums.dtype != torch.float32 or (error > allowed).any():
        problems.append(f"sums ({sums.dtype}) off float64 by {float(error.max()):.3g}")
    return problems


def usage64(counts: Tensor) -> tuple[float, float]:
    """(utilization, perplexity) of a histogram in float64; an empty one has perplexity 1."""
    counts = counts.detach().cpu().double()
    probabilities = counts / max(float(counts.sum()), 1.0)
    entropy = -float(torch.special.xlogy(probabilities, probabilities).sum())
    return float((counts > 0).double().mean()), math.exp(entropy)


def usage_failures(result, counts: Tensor, tolerance: float = USAGE_TOLERANCE) -> list[str]:
    """Utilization and perplexity float32 0-dim on the counts' device, each within
    ``tolerance`` (relative) of float64."""
    problems = []
    for name, got, expected in zip(("utilization", "perplexity"), result, usage64(counts)):
        if got.shape != () or got.dtype != torch.float32 or got.device != counts.device:
            problems.append(f"{name}: {got.dtype} {tuple(got.shape)} on {got.device}")
        elif not math.isclose(float(got), expected, rel_tol=tolerance):
            problems.append(f"{name}: {float(got):.7g} instead of {expected:.7g}")
    return problems


def moments64(x: Tensor) -> tuple[int, Tensor, Tensor]:
    """(count, mean, population covariance) of the rows of x (..., D), centred, in float64."""
    rows = x.detach().reshape(-1, x.shape[-1]).cpu().double()
    mean = rows.mean(0)
    centred = rows - mean
    return rows.shape[0], mean, centred.T @ centred / rows.shape[0]


def moments_failures(result, x: Tensor, tolerance: float = MOMENTS_TOLERANCE) -> list[str]:
    """Count exact, mean and covariance float64 and within ``tolerance`` of float64: the mean
    relative to ||mean|| + sqrt(trace cov) (the rows' scale), the covariance norm-wise."""
    count, mean, cov = (t.detach().cpu() for t in result)
    expected_count, expected_mean, expected_cov = moments64(x)
    problems = []
    if count.dtype != torch.int64 or count.shape != () or int(count) != expected_count:
        problems.append(f"count {count} instead of {expected_count} (int64, 0-dim)")
    if mean.dtype != torch.float64 or cov.dtype != torch.float64:
        problems.append(f"mean {mean.dtype}, cov {cov.dtype} instead of float64")
    scale = float(expected_mean.norm() + expected_cov.diagonal().sum().sqrt())
    mean_error = float((mean.double() - expected_mean).norm())
    if mean_error > tolerance * scale:
        problems.append(f"mean off by {mean_error:.3g} > {tolerance:g} x {scale:.3g}")
    # Rows equal up to rounding have a covariance made of rounding alone: a float64 mean of n
    # rows errs by n u64 of their scale, each covariance entry by the square of that.
    floor = len(expected_mean) * (expected_count * FP64_UNIT * scale) ** 2
    cov_error = float((cov.double() - expected_cov).norm())
    allowed = tolerance * float(expected_cov.norm()) + floor
    if cov_error > allowed:
        problems.append(f"cov off by {cov_error:.3g} > {tolerance:g} relative ({allowed:.3g})")
    return problems


def soft_assign_truth(x: Tensor, codebook: Tensor, tau: float, lam: float) -> tuple:
    """reference.soft_assign_stats_materialised in float64 on the CPU, for rows x (..., D);
    the loss is differentiable in a float64 CPU codebook."""
    rows = x.detach().reshape(-1, x.shape[-1]).cpu().double()
    return soft_assign_stats_materialised(rows, codebook.cpu().double(), tau, lam)


def soft_assign_failures(
    x: Tensor,
    codebook: Tensor,
    tau: float,
    lam: float,
    result,
    tolerance: float = SOFT_ASSIGN_TOLERANCE,
) -> list[str]:
    """Dtypes and shapes, the loss, weight sums, weighted sums and nearest distances within
    ``tolerance`` (norm-wise relative, plus float32's smallest normal) of float64, and the
    nearest codes as assign owes them (bounded regret, the expected index on decisive rows)."""
    num_codes, dim = codebook.shape
    batch = tuple(x.shape[:-1])
    shapes = {
        "loss": ((), torch.float32),
        "weight_sums": ((num_codes,), torch.float32),
        "weighted_sums": ((num_codes, dim), torch.float32),
        "indices": (batch, torch.int64),
        "distances": (batch, torch.float32),
    }
    problems = [
        f"{name}: {tuple(got.shape)} {got.dtype} instead of {shape} {dtype}"
        for name, got, (shape, dtype) in zip(shapes, result, shapes.values(), strict=True)
        if tuple(got.shape) != shape or got.dtype != dtype
    ]
    loss, weight_sums, weighted_sums, _, best = soft_assign_truth(x, codebook, tau, lam)
    for name, got, expected in (
        ("loss", result.loss, loss),
        ("weight_sums", result.weight_sums, weight_sums),
        ("weighted_sums", result.weighted_sums, weighted_sums),
        ("distances", result.distances.reshape(-1), best),
    ):
        # Float32 outputs hold nothing below its smallest normal without losing digits.
        floor = torch.finfo(torch.float32).smallest_normal * math.sqrt(expected.numel())
        error = float((got.detach().cpu().double() - expected.detach().cpu()).norm())
        if error > tolerance * float(expected.norm()) + floor:
            relative = relative_error(got, expected)
            problems.append(f"{name}: relative error {relative:.2e} > {tolerance:g}")
    return problems + AssignmentTruth(x, codebook, "l2").choice_failures(result.indices, "ieee")


# ---------------------------------------------------------------------------------------------
# Inputs


def random_rows(
    n: int, d: int, *, dtype=torch.float32, device="cpu", seed: int | None = None
) -> Tensor:
    """N(0, 1) rows (n, d); by default seeded by the shape, so one shape gives one tensor."""
    generator = torch.Generator().manual_seed(n + d if seed is None else seed)
    return torch.randn(n, d, generator=generator).to(device=device, dtype=dtype)


def random_inputs(
    n: int, k: int, d: int, *, dtype=torch.float32, device="cpu", seed: int = 0
) -> tuple[Tensor, Tensor]:
    """N(0, 1) rows (n, d) and codebook (k, d), from one generator."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator)
    codebook = torch.randn(k, d, generator=generator)
    return x.to(device=device, dtype=dtype), codebook.to(device=device, dtype=dtype)


def codebook_with_duplicates(num_codes: int, dim: int, generator: torch.Generator) -> Tensor:
    """Random codes where some later codes (the last one included) copy earlier ones, so that
    exact ties occur and must go to the smallest index."""
    codebook = torch.randn(num_codes, dim, generator=generator)
    copies = torch.cat(
        [torch.arange(num_codes // 2, num_codes - 1, 7), torch.tensor([num_codes - 1])]
    )
    originals = (torch.rand(len(copies), generator=generator) * (num_codes // 2)).long()
    codebook[copies] = codebook[originals]
    return codebook


def rows_near_and_far(codebook: Tensor, rows: int, generator: torch.Generator) -> Tensor:
    """A mix of rows: exact codes, codes plus small noise (clear winners), random rows (close
    races), scaled-up random rows, and a last all-zero row (every cosine/dot score ties)."""
    picks = (torch.rand(rows, generator=generator) * codebook.shape[0]).long()
    noise = torch.randn(rows, codebook.shape[1], generator=generator)
    x = codebook[picks] + 0.05 * noise
    quarter = rows // 4
    x[:quarter] = codebook[picks[:quarter]]
    x[2 * quarter : 3 * quarter] = noise[2 * quarter : 3 * quarter]
    x[3 * quarter :] = 4 * noise[3 * quarter :]
    x[-1] = 0
    return x


def strided(x: Tensor) -> Tensor:
    """The same values in a non-contiguous layout: every second column of a wider tensor."""
    wide = x.new_zeros(*x.shape[:-1], 2 * x.shape[-1])
    wide[..., ::2] = x
    return wide[..., ::2]


def hard_inputs(
    batch_shape: tuple[int, ...],
    num_codes: int,
    dim: int,
    dtype: torch.dtype = torch.float32,
    *,
    layout_strided: bool = False,
) -> tuple[Tensor, Tensor]:
    """x (*batch_shape, dim) from :func:`rows_near_and_far` against a
    :func:`codebook_with_duplicates`, seeded by the sizes; optionally :func:`strided`."""
    generator = torch.Generator().manual_seed(num_codes * 31 + dim)
    codebook = codebook_with_duplicates(num_codes, dim, generator)
    x = rows_near_and_far(codebook, math.prod(batch_shape), generator)
    x = x.reshape(*batch_shape, dim).to(dtype)
    return strided(x) if layout_strided else x, codebook.to(dtype)


def skewed_indices(shape, num_codes: int, *, dtype=torch.int64, device="cpu", seed: int = 0):
    """Indices crowded onto the first codes (as in a collapsing codebook), many codes unused."""
    generator = torch.Generator().manual_seed(seed)
    values = (torch.rand(shape, generator=generator) ** 3 * num_codes).long()
    return values.clamp_max(num_codes - 1).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# sample_codes (issue 16)

# The chi-squared test's threshold: a correct sampler fails it once in a thousand seeds.
SAMPLING_P_VALUE = 1e-3


def sampling_probabilities64(row: Tensor, codebook: Tensor, temperature: float, metric: str):
    """softmax(-d(row, c_j) / T) over the codes, in float64: what one draw must follow."""
    distances = distances64(row.reshape(1, -1), codebook, metric)[0]
    return torch.softmax(-distances / temperature, dim=0)


def chi_squared_p_value(indices: Tensor, probabilities: Tensor) -> float:
    """The p-value of Pearson's chi-squared test that ``indices`` are independent draws from
    ``probabilities`` (K,): the upper tail of chi^2 with K - 1 degrees of freedom, from the
    regularised incomplete gamma function. Codes whose expected count is below 5 (where the
    chi-squared approximation fails) are pooled into one cell."""
    probabilities = probabilities.detach().cpu().double()
    counts = torch.bincount(indices.reshape(-1).cpu(), minlength=probabilities.shape[0]).double()
    expected = probabilities * counts.sum()
    rare = expected < 5
    observed = torch.cat([counts[~rare], counts[rare].sum().reshape(1)])
    expected = torch.cat([expected[~rare], expected[rare].sum().reshape(1)])
    keep = expected > 0
    if bool((observed[~keep] > 0).any()):
        return 0.0  # a draw of probability zero
    observed, expected = observed[keep], expected[keep]
    statistic = ((observed - expected).square() / expected).sum()
    freedom = torch.tensor(float(observed.shape[0] - 1), dtype=torch.float64)
    return float(torch.special.gammaincc(freedom / 2, statistic / 2))


def sampling_failures(run, num_codes: int = 10, dim: int = 5, rows: int = 4000) -> list[str]:
    """``run(x, codebook, temperature, metric)`` -> Sample, judged on one row repeated ``rows``
    times (independent draws, row by row): for each metric, a chi-squared test against the
    exact float64 softmax, and temperature 0 must give the nearest code."""
    failures = []
    x, codebook = random_inputs(1, num_codes, dim, seed=num_codes + dim)
    repeated = x.expand(rows, dim)
    for metric, temperature in (("l2", 4.0), ("cosine", 0.2), ("dot", 1.5)):
        drawn = run(repeated, codebook, temperature, metric)
        probabilities = sampling_probabilities64(x[0], codebook, temperature, metric)
        p_value = chi_squared_p_value(drawn.indices, probabilities)
        if p_value <= SAMPLING_P_VALUE:
            failures.append(f"{metric} T={temperature}: chi-squared p = {p_value:.2g}")
        nearest = distances64(x, codebook, metric).argmin(dim=1)
        greedy = run(repeated[:3], codebook, 0.0, metric)
        if not bool((greedy.indices.cpu() == nearest).all()):
            failures.append(f"{metric} T=0: not the nearest code")
    return failures


# ---------------------------------------------------------------------------------------------
# soft_assign_entropy (issue 16)

# Values and gradients within this of the float64 definition, relative (issue 16).
ENTROPY_TOLERANCE = 1e-4


def soft_assign_entropy_failures(
    run, x: Tensor, codebook: Tensor, tau: float, metric: str = "l2"
) -> list[str]:
    """``run(x, codebook)`` -> SoftAssignEntropy (on any device; leaves requiring grad are
    passed), against reference.soft_assign_entropy_materialised in float64: every output and
    the gradients of row entropy - 0.5 batch entropy + 0.25 p-bar . w (w a fixed ramp, so
    that every output feeds the gradient), relative error below ENTROPY_TOLERANCE (gradients
    of half-precision inputs, returned in their dtype: below its rounding unit).

    The gradients' oracle is the form with ``nearest_complement`` (plain float64 autograd loses
    the gradient of a row whose nearest code holds all but ~1e-16 of the mass); the values'
    is the plain one, which, as the forward kernels, takes log Z as the log of a sum that rounds
    such a row's 1 + q to 1 (an absolute error of q in its entropy)."""
    from wvq_kernels.reference import soft_assign_entropy_materialised

    x_leaf, codes_leaf = x.detach().clone().requires_grad_(), codebook.detach().clone()
    codes_leaf.requires_grad_()
    result = run(x_leaf, codes_leaf)
    ramp = torch.linspace(-1, 1, codebook.shape[0], dtype=torch.float64)
    loss = result.row_entropy - 0.5 * result.code_entropy
    loss = loss + 0.25 * (result.code_distribution.double() @ ramp.to(loss.device))
    loss.backward()
    x64, codes64 = x.detach().double().requires_grad_(), codebook.detach().double()
    codes64.requires_grad_()
    rows64, unit_codes = x64.reshape(-1, x.shape[-1]), codes64
    if metric == "cosine":  # 1 - cos = ||x^ - e^||^2 / 2
        rows64 = torch.nn.functional.normalize(rows64, dim=-1)
        unit_codes, tau = torch.nn.functional.normalize(codes64, dim=-1), 2 * tau
    row_entropy, mean, code_entropy = soft_assign_entropy_materialised(rows64, unit_codes, tau)
    row_stable, mean_stable, code_stable = soft_assign_entropy_materialised(
        rows64, unit_codes, tau, nearest_complement=True
    )
    (row_stable - 0.5 * code_stable + 0.25 * mean_stable @ ramp).backward()
    gradient_tolerance = max(ENTROPY_TOLERANCE, torch.finfo(x.dtype).eps)
    checks = {
        "row entropy": (result.row_entropy, row_entropy, ENTROPY_TOLERANCE),
        "code distribution": (result.code_distribution, mean, ENTROPY_TOLERANCE),
        "code entropy": (result.code_entropy, code_entropy, ENTROPY_TOLERANCE),
        "x gradient": (x_leaf.grad, x64.grad, gradient_tolerance),
        "codebook gradient": (codes_leaf.grad, codes64.grad, gradient_tolerance),
    }
    return [
        f"{name}: relative error {error:.2g} > {tolerance:g}"
        for name, (got, expected, tolerance) in checks.items()
        if not (error := relative_error(got, expected)) < tolerance
    ]
