"""`wvq check`: every available backend against a float64 oracle; exit 1 on a failure."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

import wvq_kernels
from wvq_kernels.ops import ENV_BACKEND, METRICS, has_kernel
from wvq_kernels.reference import soft_assign_stats_materialised


def add_parser(commands) -> None:
    check = commands.add_parser("check", help="available backends against float64 ground truth")
    check.set_defaults(handler=run_check)


# ---------------------------------------------------------------------------------------------
# wvq check: float64 oracle


FP32_UNIT = 2.0**-24
# Relative rounding of the inputs before the products, by resolved precision.
# tf32x3 (split products) is close to fp32; 2^-20 leaves room for its dropped low-low term.
INPUT_UNIT = {"ieee": 0.0, "bf16": 2.0**-8, "tf32": 2.0**-11, "tf32x3": 2.0**-20}
# Margin over the worst-case rounding bounds below, which assume nothing about summation order.
SAFETY = 2.0


def _gamma(terms: int) -> float:
    """Worst-case relative error of a float32 sum of `terms` products (Higham's gamma_n)."""
    return terms * FP32_UNIT / (1 - terms * FP32_UNIT)


@dataclass(frozen=True)
class Case:
    name: str
    batch_shape: tuple[int, ...]
    num_codes: int
    dim: int
    dtype: torch.dtype
    strided: bool = False

    def inputs(self) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.num_codes * 31 + self.dim)
        codebook = _codebook_with_duplicates(self.num_codes, self.dim, generator)
        rows = math.prod(self.batch_shape)
        x = _rows_near_and_far(codebook, rows, generator)
        if self.strided:
            # Same values, non-contiguous layout: every second column of a wider tensor.
            wide = torch.zeros(rows, 2 * self.dim)
            wide[:, ::2] = x
            x = wide[:, ::2]
        return x.reshape(*self.batch_shape, self.dim).to(self.dtype), codebook.to(self.dtype)


def _codebook_with_duplicates(num_codes: int, dim: int, generator) -> Tensor:
    """Random codes where some later codes (the last one included) copy earlier ones, so that
    exact ties occur and must go to the smallest index."""
    codebook = torch.randn(num_codes, dim, generator=generator)
    copies = torch.cat(
        [torch.arange(num_codes // 2, num_codes - 1, 7), torch.tensor([num_codes - 1])]
    )
    originals = (torch.rand(len(copies), generator=generator) * (num_codes // 2)).long()
    codebook[copies] = codebook[originals]
    return codebook


def _rows_near_and_far(codebook: Tensor, rows: int, generator) -> Tensor:
    """A mix of rows: exact codes, codes plus small noise (clear winners), random rows (close
    races), scaled-up random rows, and one all-zero row (every cosine/dot score ties)."""
    picks = (torch.rand(rows, generator=generator) * codebook.shape[0]).long()
    noise = torch.randn(rows, codebook.shape[1], generator=generator)
    x = codebook[picks] + 0.05 * noise
    quarter = rows // 4
    x[:quarter] = codebook[picks[:quarter]]
    x[2 * quarter : 3 * quarter] = noise[2 * quarter : 3 * quarter]
    x[3 * quarter :] = 4 * noise[3 * quarter :]
    x[-1] = 0
    return x


CASES = [
    Case("N=300 K=1000 D=32 fp32", (300,), 1000, 32, torch.float32),
    Case("N=3x70 K=4099 D=67 fp32 strided", (3, 70), 4099, 67, torch.float32, strided=True),
    Case("N=256 K=2048 D=8 bf16", (256,), 2048, 8, torch.bfloat16),
    Case("N=200 K=512 D=16 fp16", (200,), 512, 16, torch.float16),
]


def _float64_scores(x: Tensor, codebook: Tensor, metric: str) -> Tensor:
    """Exact-enough scores (N, K) in float64: squared L2, 1 - cos, or -x.c."""
    if metric == "l2":
        return torch.cdist(x, codebook, compute_mode="donot_use_mm_for_euclid_dist").square()
    if metric == "cosine":
        return 1 - _unit_rows(x) @ _unit_rows(codebook).T
    return -(x @ codebook.T)


def _unit_rows(t: Tensor) -> Tensor:
    norms = t.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, t / norms, torch.zeros_like(t))


def _first_identical_code(codebook: Tensor) -> Tensor:
    """For every code, the smallest index of a code equal to it."""
    _, group = torch.unique(codebook, dim=0, return_inverse=True)
    first = torch.full((int(group.max()) + 1,), codebook.shape[0], dtype=torch.int64)
    first.scatter_reduce_(0, group, torch.arange(codebook.shape[0]), reduce="amin")
    return first[group]


class AssignOracle:
    """float64 truth for one (input, metric): optimal distance, expected index (ties to the
    smallest index among identical codes), and the gap to the best *different* code."""

    def __init__(self, x: Tensor, codebook: Tensor, metric: str) -> None:
        self.metric = metric
        self.x = x.reshape(-1, x.shape[-1]).double()
        self.codebook = codebook.double()
        self.scores = _float64_scores(self.x, self.codebook, metric)
        self.optimum, best = self.scores.min(dim=1)
        first_identical = _first_identical_code(self.codebook)
        self.expected = first_identical[best]
        same_code = first_identical[None, :] == self.expected[:, None]
        self.gap = self.scores.masked_fill(same_code, math.inf).min(dim=1).values - self.optimum
        # An all-zero row ties every code under cosine and dot: index 0 is the only answer.
        self.zero_rows = (self.x == 0).all(dim=1)
        if metric != "l2":
            self.expected = torch.where(self.zero_rows, 0, self.expected)
            self.gap = torch.where(self.zero_rows, math.inf, self.gap)

    def score_bound(self, precision: str) -> Tensor:
        """Per row, a bound on the float32 error of one score, from input rounding (bf16/tf32)
        and accumulation over D; two scores may each be that far off."""
        dim = self.x.shape[1]
        rounding = _gamma(dim + 4) + 2 * INPUT_UNIT[precision]
        if self.metric == "cosine":
            return torch.full_like(self.optimum, 3 * (rounding + _gamma(dim + 4)))
        x_norm = self.x.norm(dim=1)
        code_norm = self.codebook.norm(dim=1).max()
        if self.metric == "l2":
            return rounding * (code_norm**2 + 2 * x_norm * code_norm)
        return rounding * x_norm * code_norm

    def distance_bound(self, chosen: Tensor) -> Tensor:
        """Bound on the float32 recomputation of the chosen code's distance from the inputs."""
        dim = self.x.shape[1]
        x_norm, code_norm = self.x.norm(dim=1), self.codebook[chosen].norm(dim=1)
        if self.metric == "l2":
            return 2 * _gamma(dim + 3) * (x_norm + code_norm) ** 2
        if self.metric == "cosine":
            return torch.full_like(x_norm, 6 * _gamma(dim + 4))
        return 2 * _gamma(dim) * x_norm * code_norm


@dataclass
class AssignTally:
    runs: int = 0
    index_checked: int = 0
    worst_regret_ratio: float = 0.0


def _compare_assignment(oracle: AssignOracle, result, precision: str, label: str,
                        tally: AssignTally, failures: list[str]) -> None:
    indices = result.indices.reshape(-1)
    tolerance = SAFETY * 2 * oracle.score_bound(precision)
    regret = oracle.scores.gather(1, indices[:, None])[:, 0] - oracle.optimum
    tally.runs += 1
    tally.worst_regret_ratio = max(tally.worst_regret_ratio, float((regret / tolerance).max()))
    if (regret > tolerance).any():
        row = int((regret - tolerance).argmax())
        failures.append(f"{label}: regret {float(regret[row]):.3g} > bound "
                        f"{float(tolerance[row]):.3g} in row {row}")
    decisive = oracle.gap > tolerance
    tally.index_checked += int(decisive.sum())
    wrong = decisive & (indices != oracle.expected)
    if wrong.any():
        row = int(wrong.nonzero()[0, 0])
        failures.append(f"{label}: {int(wrong.sum())} wrong indices, first row {row}: "
                        f"{int(indices[row])} instead of {int(oracle.expected[row])}")
    _compare_distances(oracle, result, indices, label, failures)
    expected_counts = torch.bincount(indices, minlength=len(oracle.codebook))
    if result.counts is None or not torch.equal(result.counts, expected_counts):
        failures.append(f"{label}: fused histogram differs from bincount(indices)")


def _compare_distances(oracle: AssignOracle, result, indices: Tensor, label: str,
                       failures: list[str]) -> None:
    distances = result.distances.reshape(-1)
    if distances.dtype != torch.float32 or indices.dtype != torch.int64:
        failures.append(f"{label}: dtypes {indices.dtype}, {distances.dtype} "
                        "instead of int64, float32")
        return
    truth = oracle.scores.gather(1, indices[:, None])[:, 0]
    if oracle.metric != "dot":
        truth = truth.clamp_min(0)
    error = (distances.double() - truth).abs()
    bound = SAFETY * oracle.distance_bound(indices)
    if (error > bound).any() or (oracle.metric != "dot" and (distances < 0).any()):
        row = int((error - bound).argmax())
        failures.append(f"{label}: distance {float(distances[row]):.6g} vs float64 "
                        f"{float(truth[row]):.6g} in row {row} (bound {float(bound[row]):.2g})")


def _precisions(device: torch.device, dtype: torch.dtype) -> list[str]:
    # float32 'auto' is 'ieee'; for half inputs 'auto' is its own resolution, so test it too.
    precisions = ["ieee", "bf16"] if dtype == torch.float32 else ["auto", "ieee", "bf16"]
    # The tensor-core modes exist only on CUDA tensors.
    return precisions + (["tf32", "tf32x3"] if device.type == "cuda" else [])


def _resolved(precision: str, dtype: torch.dtype) -> str:
    if precision != "auto":
        return precision
    return "bf16" if dtype == torch.bfloat16 else "ieee"


def check_assign(backend: str, device: torch.device) -> tuple[list[str], str]:
    failures: list[str] = []
    tally = AssignTally()
    for case in CASES:
        x, codebook = case.inputs()
        for metric in METRICS:
            oracle = AssignOracle(x, codebook, metric)
            for precision in _precisions(device, x.dtype):
                label = f"{case.name} {metric} {precision}"
                result = _attempt(label, failures, partial(
                    wvq_kernels.assign, x.to(device), codebook.to(device), metric=metric,
                    precision=precision, histogram=True, backend=backend))
                if result is not None:
                    result = type(result)(*(t.cpu() for t in result))
                    _compare_assignment(oracle, result, _resolved(precision, x.dtype), label,
                                        tally, failures)
    summary = (f"{tally.runs} runs (cases x metrics x precisions, fused histogram): "
               f"{tally.index_checked} decisive rows index-checked, worst regret "
               f"{tally.worst_regret_ratio:.2f} of its bound")
    return failures, summary


# ---------------------------------------------------------------------------------------------
# wvq check: statistics ops


def _skewed_indices(count: int, num_codes: int, seed: int) -> Tensor:
    """Indices crowded onto the first codes (as in a collapsing codebook), many codes unused."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, generator=generator) ** 3 * num_codes).long().clamp_max(num_codes - 1)


def check_code_histogram(backend: str, device: torch.device) -> tuple[list[str], str]:
    failures: list[str] = []
    shapes = [(5000,), (40, 125), (1,)]
    for shape in shapes:
        indices = _skewed_indices(math.prod(shape), 777, seed=len(shape)).reshape(shape)
        label = f"indices {tuple(shape)}, K=777"
        counts = _attempt(label, failures, partial(
            wvq_kernels.code_histogram, indices.to(device), 777, backend=backend))
        expected = torch.bincount(indices.reshape(-1), minlength=777)
        if counts is not None and not torch.equal(counts.cpu(), expected):
            failures.append(f"{label}: counts differ from torch.bincount")
    return failures, f"{len(shapes)} index shapes, exact counts"


def check_code_sums(backend: str, device: torch.device) -> tuple[list[str], str]:
    failures: list[str] = []
    for dtype in (torch.float32, torch.bfloat16):
        generator = torch.Generator().manual_seed(7)
        x = (torch.randn(4000, 24, generator=generator) * 10).to(dtype)
        indices = _skewed_indices(4000, 300, seed=3)
        label = f"N=4000 K=300 D=24 {str(dtype).removeprefix('torch.')}"
        run = partial(wvq_kernels.code_sums, indices.to(device), x.to(device), 300, backend=backend)
        first, second = _attempt(label, failures, run), _attempt(label, failures, run)
        if first is None or second is None:
            continue
        counts, sums = (t.cpu() for t in first)
        _compare_code_sums(indices, x, counts, sums, label, failures)
        if not all(torch.equal(a, b) for a, b in zip(first, second, strict=True)):
            failures.append(f"{label}: two identical calls gave different sums (not deterministic)")
    return failures, ("fp32 and bf16 rows, counts exact, sums within float32 summation bound, "
                      "bitwise repeatable")


def _compare_code_sums(indices, x, counts, sums, label: str, failures: list[str]) -> None:
    if not torch.equal(counts, torch.bincount(indices, minlength=300)):
        failures.append(f"{label}: counts differ from torch.bincount")
    rows = x.double()
    truth = torch.zeros(300, rows.shape[1], dtype=torch.float64).index_add_(0, indices, rows)
    magnitude = torch.zeros_like(truth).index_add_(0, indices, rows.abs())
    bound = SAFETY * (_gamma(len(indices)) * magnitude + FP32_UNIT * truth.abs())
    if sums.dtype != torch.float32 or ((sums.double() - truth).abs() > bound).any():
        failures.append(f"{label}: sums ({sums.dtype}) differ from float64 index_add "
                        "beyond the bound")


def check_usage(backend: str, device: torch.device) -> tuple[list[str], str]:
    failures: list[str] = []
    histograms = {
        "skewed": torch.bincount(_skewed_indices(3000, 1000, seed=5), minlength=1000),
        "all zero": torch.zeros(64, dtype=torch.int64),
        "one code": torch.tensor([0, 9, 0, 0]),
    }
    for label, counts in histograms.items():
        with _backend_env(backend):
            result = _attempt(label, failures, partial(wvq_kernels.usage, counts.to(device)))
        if result is None:
            continue
        expected = _usage_float64(counts)
        for name, got, want in zip(("utilization", "perplexity"), result, expected, strict=True):
            if got.dim() != 0 or not math.isclose(float(got), want, rel_tol=1e-5, abs_tol=1e-7):
                failures.append(f"{label}: {name} {got} instead of {want:.6g} (0-dim)")
    return failures, f"{len(histograms)} histograms (incl. empty), against float64"


@contextmanager
def _backend_env(backend: str):
    """usage() has no backend argument: choose it through WVQ_BACKEND."""
    previous = os.environ.get(ENV_BACKEND)
    os.environ[ENV_BACKEND] = backend
    try:
        yield
    finally:
        if previous is None:
            del os.environ[ENV_BACKEND]
        else:
            os.environ[ENV_BACKEND] = previous


def _usage_float64(counts: Tensor) -> tuple[float, float]:
    counts = counts.double()
    probabilities = counts / max(float(counts.sum()), 1.0)
    entropy = -float(torch.special.xlogy(probabilities, probabilities).sum())
    return float((counts > 0).double().mean()), math.exp(entropy)


def check_moments(backend: str, device: torch.device) -> tuple[list[str], str]:
    failures: list[str] = []
    generator = torch.Generator().manual_seed(11)
    # A large common offset: only a centred, float64 computation keeps the covariance accurate.
    x = torch.randn(2, 500, 24, generator=generator) * 3 + 1000
    truth = _moments_float64(x.reshape(-1, 24))
    def whole():
        return wvq_kernels.moments(x.to(device), backend=backend)

    def merged():
        head, tail = x[0, :123], torch.cat([x[0, 123:], x[1]])
        return wvq_kernels.moments(head.to(device), backend=backend).merge(
            wvq_kernels.moments(tail.to(device), backend=backend))

    for label, run in (("whole", whole), ("merged chunks", merged)):
        _compare_moments(label, _attempt(label, failures, run), truth, x, failures)
    return failures, "N=1000 D=24 offset 1000, whole and merged from two chunks, against float64"


def _moments_float64(rows: Tensor) -> tuple[int, Tensor, Tensor]:
    rows = rows.double()
    mean = rows.mean(0)
    centred = rows - mean
    return rows.shape[0], mean, centred.T @ centred / rows.shape[0]


def _compare_moments(label: str, result, truth, x: Tensor, failures: list[str]) -> None:
    if result is None:
        return
    count, mean, cov = (t.cpu() for t in result)
    scale = float(x.abs().max())
    if int(count) != truth[0]:
        failures.append(f"{label}: count {int(count)} instead of {truth[0]}")
    # float64 accumulation of centred rows is ~1e-13 off here; float32 or uncentred float64
    # sums of squares are orders of magnitude further.
    for name, got, want, bound in (("mean", mean, truth[1], 1e-10 * scale),
                                   ("cov", cov, truth[2], 1e-10 * scale**2)):
        error = float((got.double() - want).abs().max())
        if got.dtype != torch.float64 or error > bound:
            failures.append(f"{label}: {name} ({got.dtype}) off by {error:.3g} > {bound:.3g}")


# ---------------------------------------------------------------------------------------------
# wvq check: soft assignment (NSVQ's dense loss)


# (batch shape, K, D, dtype, tau, lam): clear winners and close races, the clamp of the weights
# at 1 (lam = 1), small and large tau.
SOFT_ASSIGN_CASES = [
    ((3, 70), 300, 12, torch.float32, 1.0, 0.01),
    ((257,), 1000, 8, torch.bfloat16, 0.1, 0.01),
    ((200,), 64, 59, torch.float32, 10.0, 1.0),
]
# Norm-wise relative error allowed on every float output against float64.
SOFT_ASSIGN_TOLERANCE = 1e-4


def check_soft_assign_stats(backend: str, device: torch.device) -> tuple[list[str], str]:
    if not has_kernel(backend, "soft_assign_stats"):
        # Only a _C_cuda built from sources older than its CUDA kernel lacks it.
        return [], "no kernel on this backend (CUDA tensors run it on triton)"
    failures: list[str] = []
    for batch_shape, num_codes, dim, dtype, tau, lam in SOFT_ASSIGN_CASES:
        generator = torch.Generator().manual_seed(num_codes + dim)
        x = torch.randn(*batch_shape, dim, generator=generator).to(dtype)
        codebook = torch.randn(num_codes, dim, generator=generator).to(dtype)
        label = (f"N={'x'.join(map(str, batch_shape))} K={num_codes} D={dim} "
                 f"{str(dtype).removeprefix('torch.')} tau={tau} lam={lam}")
        result = _attempt(label, failures, partial(
            wvq_kernels.soft_assign_stats, x.to(device), codebook.to(device), tau=tau, lam=lam,
            backend=backend))
        if result is not None:
            rows = x.reshape(-1, dim).double()
            truth = soft_assign_stats_materialised(rows, codebook.double(), tau, lam)
            _compare_soft_assign(result, truth, rows, codebook.double(), label, failures)
    return failures, (f"{len(SOFT_ASSIGN_CASES)} cases (fp32/bf16, tau 0.1-10, lam up to 1): "
                      f"every output within {SOFT_ASSIGN_TOLERANCE:g} of float64")


def _compare_soft_assign(result, truth, rows: Tensor, codebook: Tensor, label: str,
                         failures: list[str]) -> None:
    loss, weight_sums, weighted_sums, _, best = truth
    for name, got, expected in (("loss", result.loss, loss),
                                ("weight_sums", result.weight_sums, weight_sums),
                                ("weighted_sums", result.weighted_sums, weighted_sums),
                                ("distances", result.distances.reshape(-1), best)):
        got = got.detach().cpu()
        error = float((got.double() - expected).norm() / expected.norm().clamp_min(1e-300))
        if got.dtype != torch.float32 or error > SOFT_ASSIGN_TOLERANCE:
            failures.append(f"{label}: {name} ({got.dtype}) relative error {error:.2g}")
    # Near-ties may go either way: the chosen code must be as near as the nearest.
    chosen = (rows - codebook[result.indices.reshape(-1).cpu()]).square().sum(1)
    if ((chosen - best).abs() > 1e-5 * (1 + best)).any():
        failures.append(f"{label}: a chosen code is farther than the nearest one")


# ---------------------------------------------------------------------------------------------
# wvq check: driver


def _attempt(label: str, failures: list[str], call: Callable):
    """The call's result, or None after recording its exception as a failure."""
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - any exception of a backend is a check failure
        failures.append(f"{label}: raised {type(error).__name__}: {error}")
        return None


CHECKS = {
    "assign": check_assign,
    "code_histogram": check_code_histogram,
    "code_sums": check_code_sums,
    "usage": check_usage,
    "moments": check_moments,
    "soft_assign_stats": check_soft_assign_stats,
}


def _device_of(backend: str) -> torch.device:
    """Where a backend's inputs live: Triton without a GPU runs CPU tensors (TRITON_INTERPRET=1,
    the only way it is available then)."""
    on_gpu = backend == "cuda" or (backend == "triton" and torch.cuda.is_available())
    return torch.device("cuda" if on_gpu else "cpu")


def run_check(_: argparse.Namespace) -> int:
    backends = [name for name, status in wvq_kernels.available_backends().items() if status]
    print(f"checking backends {', '.join(backends)} against float64 ground truth")
    print(f"{'backend':<10} {'op':<17} {'result':<6} checked")
    all_failures = []
    for backend in backends:
        for op, check in CHECKS.items():
            failures, summary = check(backend, _device_of(backend))
            print(f"{backend:<10} {op:<17} {'FAIL' if failures else 'pass':<6} {summary}")
            all_failures += [f"{backend} {op}: {failure}" for failure in failures]
    for failure in all_failures:
        print(f"  FAIL {failure}")
    print(f"check: {len(all_failures)} failures" if all_failures else "check: all passed")
    return 1 if all_failures else 0
