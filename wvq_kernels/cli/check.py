"""`wvq check`: every available backend against the float64 oracle of wvq_kernels.testing;
exit 1 on a failure."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch

import wvq_kernels
from wvq_kernels import testing
from wvq_kernels.ops import ENV_BACKEND, METRICS, has_kernel


def add_parser(commands) -> None:
    check = commands.add_parser("check", help="available backends against float64 ground truth")
    check.set_defaults(handler=run_check)


# ---------------------------------------------------------------------------------------------
# wvq check: assignment


@dataclass(frozen=True)
class Case:
    name: str
    batch_shape: tuple[int, ...]
    num_codes: int
    dim: int
    dtype: torch.dtype
    strided: bool = False

    def inputs(self):
        return testing.hard_inputs(
            self.batch_shape, self.num_codes, self.dim, self.dtype, layout_strided=self.strided
        )


CASES = [
    Case("N=300 K=1000 D=32 fp32", (300,), 1000, 32, torch.float32),
    Case("N=3x70 K=4099 D=67 fp32 strided", (3, 70), 4099, 67, torch.float32, strided=True),
    Case("N=256 K=2048 D=8 bf16", (256,), 2048, 8, torch.bfloat16),
    Case("N=200 K=512 D=16 fp16", (200,), 512, 16, torch.float16),
]


@dataclass
class AssignTally:
    runs: int = 0
    index_checked: int = 0
    worst_regret_ratio: float = 0.0

    def add(self, truth: testing.AssignmentTruth, indices, precision: str) -> None:
        self.runs += 1
        self.index_checked += int(truth.decisive(precision).sum())
        ratio = truth.worst_regret_ratio(indices, precision)
        self.worst_regret_ratio = max(self.worst_regret_ratio, ratio)


def _compare_assignment(
    truth: testing.AssignmentTruth,
    result,
    precision: str,
    label: str,
    tally: AssignTally,
    failures: list[str],
) -> None:
    tally.add(truth, result.indices, precision)
    problems = truth.failures(result.indices, result.distances, precision)
    failures += [f"{label}: {problem}" for problem in problems]
    expected_counts = torch.bincount(result.indices.reshape(-1), minlength=len(truth.codebook))
    if result.counts is None or not torch.equal(result.counts, expected_counts):
        failures.append(f"{label}: fused histogram differs from bincount(indices)")


def _precisions(device: torch.device, dtype: torch.dtype) -> list[str]:
    # float32 'auto' is 'ieee'; for half inputs 'auto' is its own resolution, so test it too.
    precisions = ["ieee", "bf16"] if dtype == torch.float32 else ["auto", "ieee", "bf16"]
    # The tensor-core modes exist only on CUDA tensors.
    return precisions + (["tf32", "tf32x3"] if device.type == "cuda" else [])


def check_assign(backend: str, device: torch.device) -> tuple[list[str], str]:
    failures: list[str] = []
    tally = AssignTally()
    for case in CASES:
        x, codebook = case.inputs()
        for metric in METRICS:
            truth = testing.AssignmentTruth(x, codebook, metric)
            for precision in _precisions(device, x.dtype):
                label = f"{case.name} {metric} {precision}"
                run = partial(
                    wvq_kernels.assign,
                    x.to(device),
                    codebook.to(device),
                    metric=metric,
                    precision=precision,
                    histogram=True,
                    backend=backend,
                )
                result = _attempt(label, failures, run)
                if result is not None:
                    result = type(result)(*(t.cpu() for t in result))
                    _compare_assignment(truth, result, precision, label, tally, failures)
    summary = (
        f"{tally.runs} runs (cases x metrics x precisions, fused histogram): "
        f"{tally.index_checked} decisive rows index-checked, worst regret "
        f"{tally.worst_regret_ratio:.2f} of its bound"
    )
    return failures, summary


# ---------------------------------------------------------------------------------------------
# wvq check: top-k nearest codes (issue 16)

# Smaller than CASES: the truth compares every rank with every code, and the Triton
# interpreter's top-k merges run in Python.
TOPK_CASES = [
    Case("N=200 K=1000 D=32 fp32", (200,), 1000, 32, torch.float32),
    Case("N=3x40 K=4099 D=67 fp32 strided", (3, 40), 4099, 67, torch.float32, strided=True),
    Case("N=128 K=2048 D=8 bf16", (128,), 2048, 8, torch.bfloat16),
]
TOP_KS = (3, 64)


def check_assign_topk(backend: str, device: torch.device) -> tuple[list[str], str]:
    failures: list[str] = []
    runs = ranks_checked = 0
    worst = 0.0
    for case, k in ((case, k) for case in TOPK_CASES for k in TOP_KS):
        x, codebook = case.inputs()
        for metric in METRICS:
            truth = testing.TopkTruth(x, codebook, metric, k)
            for precision in _precisions(device, x.dtype):
                label = f"{case.name} k={k} {metric} {precision}"
                run = partial(
                    wvq_kernels.assign,
                    x.to(device),
                    codebook.to(device),
                    k=k,
                    metric=metric,
                    precision=precision,
                    histogram=True,
                    backend=backend,
                )
                result = _attempt(label, failures, run)
                if result is None:
                    continue
                indices, distances, counts = (t.cpu() for t in result)
                runs += 1
                ranks_checked += int(truth.decisive(precision).sum())
                worst = max(worst, truth.worst_regret_ratio(indices, precision))
                problems = truth.failures(indices, distances, precision)
                failures += [f"{label}: {problem}" for problem in problems]
                first = torch.bincount(indices[..., 0].reshape(-1), minlength=len(codebook))
                if not torch.equal(counts, first):
                    failures.append(f"{label}: fused histogram differs from the first choices")
    summary = (
        f"{runs} runs (k in {TOP_KS}, cases x metrics x precisions): {ranks_checked} decisive "
        f"ranks index-checked (order of identical codes included), worst rank regret "
        f"{worst:.2f} of its bound"
    )
    return failures, summary


# ---------------------------------------------------------------------------------------------
# wvq check: statistics ops


def check_code_histogram(backend: str, device: torch.device) -> tuple[list[str], str]:
    failures: list[str] = []
    shapes = [(5000,), (40, 125), (1,)]
    for shape in shapes:
        indices = testing.skewed_indices(shape, 777, seed=len(shape))
        label = f"indices {tuple(shape)}, K=777"
        run = partial(wvq_kernels.code_histogram, indices.to(device), 777, backend=backend)
        counts = _attempt(label, failures, run)
        expected = torch.bincount(indices.reshape(-1), minlength=777)
        if counts is not None and not torch.equal(counts.cpu(), expected):
            failures.append(f"{label}: counts differ from torch.bincount")
    return failures, f"{len(shapes)} index shapes, exact counts"


def check_code_sums(backend: str, device: torch.device) -> tuple[list[str], str]:
    failures: list[str] = []
    indices = testing.skewed_indices(4000, 300, seed=3)
    for dtype in (torch.float32, torch.bfloat16):
        x = (testing.random_rows(4000, 24, seed=7) * 10).to(dtype)
        label = f"N=4000 K=300 D=24 {str(dtype).removeprefix('torch.')}"
        run = partial(wvq_kernels.code_sums, indices.to(device), x.to(device), 300, backend=backend)
        first, second = _attempt(label, failures, run), _attempt(label, failures, run)
        if first is None or second is None:
            continue
        problems = testing.code_sums_failures(indices, x, *first)
        failures += [f"{label}: {problem}" for problem in problems]
        if not all(torch.equal(a, b) for a, b in zip(first, second, strict=True)):
            failures.append(f"{label}: two identical calls gave different sums (not deterministic)")
    return failures, (
        "fp32 and bf16 rows, counts exact, sums within float32 summation bound, bitwise repeatable"
    )


def check_usage(backend: str, device: torch.device) -> tuple[list[str], str]:
    failures: list[str] = []
    histograms = {
        "skewed": torch.bincount(testing.skewed_indices(3000, 1000, seed=5), minlength=1000),
        "all zero": torch.zeros(64, dtype=torch.int64),
        "one code": torch.tensor([0, 9, 0, 0]),
    }
    for label, counts in histograms.items():
        counts = counts.to(device)
        with _backend_env(backend):
            result = _attempt(label, failures, partial(wvq_kernels.usage, counts))
        if result is not None:
            problems = testing.usage_failures(result, counts)
            failures += [f"{label}: {problem}" for problem in problems]
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


def check_moments(backend: str, device: torch.device) -> tuple[list[str], str]:
    failures: list[str] = []
    # A large common offset: only a centred, float64 computation keeps the covariance accurate.
    x = testing.random_rows(1000, 24, seed=11).reshape(2, 500, 24) * 3 + 1000

    def whole():
        return wvq_kernels.moments(x.to(device), backend=backend)

    def merged():
        head, tail = x[0, :123], torch.cat([x[0, 123:], x[1]])
        return wvq_kernels.moments(head.to(device), backend=backend).merge(
            wvq_kernels.moments(tail.to(device), backend=backend)
        )

    for label, run in (("whole", whole), ("merged chunks", merged)):
        result = _attempt(label, failures, run)
        if result is not None:
            problems = testing.moments_failures(result, x)
            failures += [f"{label}: {problem}" for problem in problems]
    return failures, (
        f"N=1000 D=24 offset 1000, whole and merged from two chunks, within "
        f"{testing.MOMENTS_TOLERANCE:g} of float64"
    )


# ---------------------------------------------------------------------------------------------
# wvq check: soft assignment (NSVQ's dense loss)


# (batch shape, K, D, dtype, tau, lam): clear winners and close races, the clamp of the weights
# at 1 (lam = 1), small and large tau.
SOFT_ASSIGN_CASES = [
    ((3, 70), 300, 12, torch.float32, 1.0, 0.01),
    ((257,), 1000, 8, torch.bfloat16, 0.1, 0.01),
    ((200,), 64, 59, torch.float32, 10.0, 1.0),
]


def check_soft_assign_stats(backend: str, device: torch.device) -> tuple[list[str], str]:
    if not has_kernel(backend, "soft_assign_stats"):
        # Only a _C_cuda built from sources older than its CUDA kernel lacks it.
        return [], "no kernel on this backend (CUDA tensors run it on triton)"
    failures: list[str] = []
    for batch_shape, num_codes, dim, dtype, tau, lam in SOFT_ASSIGN_CASES:
        x, codebook = testing.random_inputs(
            math.prod(batch_shape), num_codes, dim, dtype=dtype, seed=num_codes + dim
        )
        x = x.reshape(*batch_shape, dim)
        label = (
            f"N={'x'.join(map(str, batch_shape))} K={num_codes} D={dim} "
            f"{str(dtype).removeprefix('torch.')} tau={tau} lam={lam}"
        )
        run = partial(
            wvq_kernels.soft_assign_stats,
            x.to(device),
            codebook.to(device),
            tau=tau,
            lam=lam,
            backend=backend,
        )
        result = _attempt(label, failures, run)
        if result is not None:
            problems = testing.soft_assign_failures(x, codebook, tau, lam, result)
            failures += [f"{label}: {problem}" for problem in problems]
    return failures, (
        f"{len(SOFT_ASSIGN_CASES)} cases (fp32/bf16, tau 0.1-10, lam up to 1): every output "
        f"within {testing.SOFT_ASSIGN_TOLERANCE:g} of float64, nearest codes as assign owes them"
    )


# ---------------------------------------------------------------------------------------------
# wvq check: sampling and entropy (issue 16)


def check_sample_codes(backend: str, device: torch.device) -> tuple[list[str], str]:
    failures: list[str] = []

    def run(x, codebook, temperature, metric):
        return wvq_kernels.sample_codes(
            x.to(device), codebook.to(device), temperature, seed=3, metric=metric, backend=backend
        )

    problems = _attempt("sampling", failures, partial(testing.sampling_failures, run))
    failures += problems or []
    return failures, (
        "every metric: draws of one row x 4000 pass a chi-squared test against the float64 "
        f"softmax (p > {testing.SAMPLING_P_VALUE:g}); T = 0 draws the nearest code"
    )


# (batch shape, K, D, dtype, tau, metric): sharp and flat softmaxes, half inputs, cosine.
ENTROPY_CASES = [
    ((3, 70), 300, 12, torch.float32, 1.0, "l2"),
    ((257,), 1000, 8, torch.bfloat16, 0.1, "l2"),
    ((200,), 64, 59, torch.float32, 50.0, "l2"),
    ((100,), 500, 16, torch.float32, 0.05, "cosine"),
]


def check_soft_assign_entropy(backend: str, device: torch.device) -> tuple[list[str], str]:
    failures: list[str] = []
    for batch_shape, num_codes, dim, dtype, tau, metric in ENTROPY_CASES:
        x, codebook = testing.random_inputs(
            math.prod(batch_shape), num_codes, dim, dtype=dtype, seed=num_codes + dim
        )
        label = (
            f"N={'x'.join(map(str, batch_shape))} K={num_codes} D={dim} "
            f"{str(dtype).removeprefix('torch.')} tau={tau} {metric}"
        )

        def run(rows, codes, tau=tau, metric=metric, batch_shape=batch_shape):
            return wvq_kernels.soft_assign_entropy(
                rows.reshape(*batch_shape, -1).to(device),
                codes.to(device),
                tau,
                metric=metric,
                backend=backend,
            )

        check = partial(testing.soft_assign_entropy_failures, run, x, codebook, tau, metric)
        problems = _attempt(label, failures, check)
        failures += [f"{label}: {problem}" for problem in problems or []]
    return failures, (
        f"{len(ENTROPY_CASES)} cases (fp32/bf16, tau 0.05-50, l2 and cosine): entropies, p-bar "
        f"and both gradients within {testing.ENTROPY_TOLERANCE:g} of float64 (bf16 gradients: "
        "within bf16 rounding)"
    )


# ---------------------------------------------------------------------------------------------
# wvq check: driver


def _attempt(label: str, failures: list[str], call: Callable):
    """The call's result, or None after recording its exception as a failure."""
    try:
        return call()
    except Exception as error:
        failures.append(f"{label}: raised {type(error).__name__}: {error}")
        return None


CHECKS = {
    "assign": check_assign,
    "assign_topk": check_assign_topk,
    "code_histogram": check_code_histogram,
    "code_sums": check_code_sums,
    "usage": check_usage,
    "moments": check_moments,
    "soft_assign_stats": check_soft_assign_stats,
    "sample_codes": check_sample_codes,
    "soft_assign_entropy": check_soft_assign_entropy,
}


def run_check(_: argparse.Namespace) -> int:
    backends = [name for name, status in wvq_kernels.available_backends().items() if status]
    print(f"checking backends {', '.join(backends)} against float64 ground truth")
    print(f"{'backend':<10} {'op':<19} {'result':<6} checked")
    all_failures = []
    for backend in backends:
        for op, check in CHECKS.items():
            failures, summary = check(backend, testing.device_for(backend))
            print(f"{backend:<10} {op:<19} {'FAIL' if failures else 'pass':<6} {summary}")
            all_failures += [f"{backend} {op}: {failure}" for failure in failures]
    for failure in all_failures:
        print(f"  FAIL {failure}")
    print(f"check: {len(all_failures)} failures" if all_failures else "check: all passed")
    return 1 if all_failures else 0
