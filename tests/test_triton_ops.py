"""The torch.ops.wvq_triton registration: opcheck (schema, fake kernels, autograd, AOT dispatch),
torch.compile, the backend report, and the Triton-only paths of code sums and moments."""

import os
import subprocess
import sys

import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels.testing import random_rows

pytestmark = pytest.mark.skipif(
    not wvq.available_backends()["triton"], reason=wvq.available_backends()["triton"].reason
)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# The AOT-dispatch checks trace the kernels with fake tensors, which only a GPU build of the
# launch path tolerates: the interpreter reads their (absent) data.
CHECKS = (
    ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    if DEVICE.type == "cuda"
    else ("test_schema", "test_autograd_registration", "test_faketensor")
)


def _x(n=33, d=12, dtype=torch.float32):
    return random_rows(n, d, dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
@pytest.mark.parametrize("precision, dtype", [("ieee", torch.float32), ("bf16", torch.bfloat16)])
@pytest.mark.parametrize("histogram", [False, True])
def test_opcheck_assign(metric, precision, dtype, histogram):
    arguments = (_x(dtype=dtype), _x(70, dtype=dtype), metric, precision, histogram)
    torch.library.opcheck(torch.ops.wvq_triton.assign.default, arguments, test_utils=CHECKS)


def test_opcheck_histogram_sums_usage():
    indices = torch.randint(0, 50, (33,), device=DEVICE)
    ops = torch.ops.wvq_triton
    torch.library.opcheck(ops.code_histogram.default, (indices, 50), test_utils=CHECKS)
    torch.library.opcheck(ops.code_sums.default, (indices, _x(), 50), test_utils=CHECKS)
    counts = torch.tensor([0, 4, 1, 0, 9], device=DEVICE)
    torch.library.opcheck(ops.usage.default, (counts,), test_utils=CHECKS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_soft_assign_stats(dtype):
    codebook = _x(70, dtype=dtype)
    op = torch.ops.wvq_triton.soft_assign_stats.default
    torch.library.opcheck(op, (_x(dtype=dtype), codebook, 0.5, 0.01), test_utils=CHECKS)
    codebook.requires_grad_()
    torch.library.opcheck(op, (_x(dtype=dtype), codebook, 0.5, 0.01), test_utils=CHECKS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_moments(dtype):
    # As in test_opcheck.py, the AOT check is left out with gradients: it adds every output
    # into the int64 count.
    x = _x(dtype=dtype)
    torch.library.opcheck(torch.ops.wvq_triton.moments.default, (x,), test_utils=CHECKS)
    x.requires_grad_()
    torch.library.opcheck(torch.ops.wvq_triton.moments.default, (x,), test_utils=CHECKS[:3])


# ---- issue 16 ----


@pytest.mark.parametrize("metric", ["l2", "dot"])
def test_opcheck_sample_codes(metric):
    arguments = (_x(), _x(70), 0.5, 3, metric, "ieee")
    torch.library.opcheck(torch.ops.wvq_triton.sample_codes.default, arguments, test_utils=CHECKS)


def test_opcheck_soft_assign_entropy():
    op = torch.ops.wvq_triton.soft_assign_entropy.default
    torch.library.opcheck(op, (_x(), _x(70), 0.5), test_utils=CHECKS)
    torch.library.opcheck(op, (_x().requires_grad_(), _x(70), 0.5), test_utils=CHECKS)


# ---- end issue 16 ----


def test_compiled_graph_matches_eager():
    """fullgraph capture through the fake kernels everywhere; on CUDA inductor also decomposes
    the triton_ops into their kernels (wrap_triton). On CPU dynamo's eager backend only: the
    interpreter cannot trace kernels with fake tensors (see CHECKS)."""

    def step(x, codebook):
        indices, distances, counts = torch.ops.wvq_triton.assign(x, codebook, "l2", "ieee", True)
        _, mean, cov = torch.ops.wvq_triton.moments(x)
        return indices, distances.sum() + cov.trace() + mean.sum(), counts

    backend = "inductor" if DEVICE.type == "cuda" else "eager"
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    x, codebook = _x(100, 16), _x(300, 16)
    for got, expected in zip(compiled(x, codebook), step(x, codebook)):
        torch.testing.assert_close(got, expected)


def test_report_without_gpu_or_interpreter():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device makes triton available without the interpreter")
    script = (
        "import wvq_kernels as wvq\n"
        "status = wvq.available_backends()['triton']\n"
        "assert not status and 'TRITON_INTERPRET' in status.reason, status\n"
    )
    environment = {**os.environ, "TRITON_INTERPRET": "0"}
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env=environment)


def test_code_sums_hot_code_and_empty_codes():
    """One code takes most rows (a long segment), many codes none (empty segments)."""
    x = _x(5000, 40) + 100
    indices = torch.zeros(5000, dtype=torch.int64, device=DEVICE)
    indices[::7] = 9
    counts, sums = wvq.code_sums(indices, x, 600, backend="triton")
    expected = torch.zeros(600, 40, dtype=torch.float64, device=DEVICE)
    expected.index_add_(0, indices, x.double())
    assert torch.equal(counts, torch.bincount(indices, minlength=600))
    torch.testing.assert_close(sums, expected.float(), rtol=1e-7, atol=0)
    assert not sums[10:].any()


def test_moments_many_programs_match_float64():
    """More rows than one program takes: the per-program partials are merged."""
    x = _x(20000, 5) * 3 + 1e3
    result = wvq.moments(x, backend="triton")
    rows = x.double().cpu()
    torch.testing.assert_close(result.mean.cpu(), rows.mean(0), rtol=1e-12, atol=0)
    expected = torch.cov(rows.T, correction=0)
    torch.testing.assert_close(result.cov.cpu(), expected, rtol=1e-10, atol=1e-12)
