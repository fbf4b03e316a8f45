"""soft_assign_entropy: the mean row entropy, the batch code distribution and its entropy of
softmax(-d / tau), and their gradients, on every backend against the definition materialised in
float64 (reference.soft_assign_entropy_materialised); gradcheck of the reference backward; the
CPU gradient kernel against the reference's for arbitrary upstream gradients, on every ISA and
bitwise the same at 1 and 2 threads; and the memory bound at issue 16's size."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels import reference
from wvq_kernels.testing import (
    ENTROPY_TOLERANCE,
    random_inputs,
    relative_error,
    soft_assign_entropy_failures,
    strided,
)

TOLERANCE = ENTROPY_TOLERANCE
SIZES = [(1, 1), (1, 17), (257, 17), (300, 600), (64, 1000)]


def _check(backend, device, x, codebook, tau, metric="l2"):
    def run(rows, codes):
        return wvq.soft_assign_entropy(
            rows.to(device), codes.to(device), tau, metric=metric, backend=backend
        )

    problems = soft_assign_entropy_failures(run, x, codebook, tau, metric)
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("tau", [0.05, 1.0, 20.0])
@pytest.mark.parametrize("n, k", SIZES)
def test_values_and_gradients_match_float64_definition(backend, device, n, k, tau):
    x, codebook = random_inputs(n, k, 6, seed=n + k)
    _check(backend, device, x, codebook, tau)


@pytest.mark.parametrize("d", [1, 12, 59])
def test_other_dimensions(backend, device, d):
    x, codebook = random_inputs(200, 300, d, seed=d)
    _check(backend, device, x, codebook, float(d))


def test_cosine_metric(backend, device):
    x, codebook = random_inputs(200, 300, 8, seed=4)
    _check(backend, device, x, codebook, 0.1, metric="cosine")


def test_row_entropies_are_per_row_and_shaped(backend, device):
    x, codebook = random_inputs(60, 40, 5, device=device, seed=3)
    result = wvq.soft_assign_entropy(x.reshape(3, 4, 5, 5), codebook, 1.0, backend=backend)
    assert result.row_entropies.shape == (3, 4, 5)
    distances = torch.cdist(x.double().cpu(), codebook.double().cpu()).square()
    p = torch.softmax(-distances, dim=1)
    expected = -(p * p.log()).sum(dim=1)
    assert relative_error(result.row_entropies.reshape(-1), expected) < TOLERANCE
    torch.testing.assert_close(
        result.row_entropy.cpu().double(), expected.mean(), rtol=1e-5, atol=0
    )


def test_extremes_of_the_entropy(backend, device):
    """A tiny tau puts all mass on the nearest code (row entropy 0); identical codes spread it
    evenly (row entropy log K); the batch entropy of one-hot rows is that of the histogram."""
    x, codebook = random_inputs(100, 30, 4, device=device, seed=5)
    sharp = wvq.soft_assign_entropy(x, codebook, 1e-6, backend=backend)
    assert float(sharp.row_entropy) < 1e-5
    counts = torch.bincount(wvq.assign(x, codebook).indices.cpu(), minlength=30).double()
    torch.testing.assert_close(sharp.code_distribution.cpu().double(), counts / 100)
    flat = wvq.soft_assign_entropy(x, codebook[:1].expand(30, 4).contiguous(), 1.0, backend=backend)
    torch.testing.assert_close(flat.row_entropy.cpu().double(), torch.tensor(30.0).log().double())


def test_layouts_and_no_rows(backend, device):
    x, codebook = random_inputs(50, 20, 6, device=device, seed=6)
    base = wvq.soft_assign_entropy(x, codebook, 1.0, backend=backend)
    layout = wvq.soft_assign_entropy(strided(x), strided(codebook), 1.0, backend=backend)
    torch.testing.assert_close(layout.row_entropy, base.row_entropy)
    codes = codebook.clone().requires_grad_()
    empty = wvq.soft_assign_entropy(x[:0], codes, 1.0, backend=backend)
    assert float(empty.row_entropy.detach()) == 0 and float(empty.code_entropy.detach()) == 0
    assert empty.row_entropies.shape == (0,) and empty.code_distribution.shape == (20,)
    (empty.row_entropy + empty.code_entropy).backward()
    assert codes.grad is None or not codes.grad.any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(backend, device, dtype):
    x, codebook = random_inputs(100, 64, 8, dtype=dtype, seed=7)
    x_leaf = x.to(device).requires_grad_()
    result = wvq.soft_assign_entropy(x_leaf, codebook.to(device), 2.0, backend=backend)
    result.row_entropy.backward()
    assert result.row_entropy.dtype == torch.float32 and x_leaf.grad.dtype == dtype
    expected, _, _ = reference.soft_assign_entropy_materialised(x.double(), codebook.double(), 2.0)
    assert relative_error(result.row_entropy, expected) < TOLERANCE


@pytest.mark.parametrize("dim", [8, 40])
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_triton_with_the_table_configs(arch, dim):
    """The tiles a GPU would launch (configs.emulate): several scan code tiles and accumulate
    row segments, strided rows."""
    if not wvq.available_backends()["triton"]:
        pytest.skip("no triton backend")
    from wvq_kernels.triton import configs

    scan = configs.soft_assign_config("scan", dim, arch)
    x, codebook = random_inputs(3 * scan.block_n + 1, scan.block_k + 7, dim, seed=dim)
    with configs.emulate(arch, 132):
        _check("triton", torch.device("cpu"), strided(x), codebook, 0.5)


def test_gradcheck_in_float64_on_the_reference():
    """torch.autograd.gradcheck of the reference's forward with the shared blocked backward (the
    one every backend registers), in float64, on every output."""
    x, codebook = random_inputs(7, 5, 3, dtype=torch.float64, seed=8)

    def outputs(rows, codes):
        result = wvq.soft_assign_entropy(rows, codes, 0.7, backend="reference")
        return result.row_entropy, result.code_distribution, result.code_entropy

    assert torch.autograd.gradcheck(outputs, (x.requires_grad_(), codebook.requires_grad_()))


def test_cpu_takes_float64_inputs_and_matches_the_reference():
    if not wvq.available_backends()["cpu"]:
        pytest.skip("no cpu backend")
    x, codebook = random_inputs(40, 30, 3, dtype=torch.float64, seed=9)
    _check("cpu", torch.device("cpu"), x, codebook, 0.7)
    assert wvq.soft_assign_entropy(x, codebook, 0.7, backend="cpu").row_entropy.dtype == (
        torch.float64
    )


def _upstream_gradients(num_rows, num_codes, seed):
    """Arbitrary dL/dH_i and dL/dp-bar_k (not those of any particular loss)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_rows, generator=generator), torch.randn(num_codes, generator=generator)


def _cpu_gradients(x, codebook, tau, grad_entropy, grad_mean):
    return torch.ops.wvq.soft_assign_entropy_backward(x, codebook, tau, grad_entropy, grad_mean)


@pytest.mark.parametrize("tau", [0.1, 3.0])
@pytest.mark.parametrize("n, k, d", [(1, 1, 3), (70, 300, 7), (600, 1100, 16)])
def test_cpu_gradient_kernel_matches_the_reference_gradients(n, k, d, tau):
    """The kernel against reference.soft_assign_entropy_grad (float64) for random upstream
    gradients, each on its own and together (a zero one is what autograd's None becomes)."""
    if not wvq.available_backends()["cpu"]:
        pytest.skip("no cpu backend")
    x, codebook = random_inputs(n, k, d, seed=n + d)
    grad_entropy, grad_mean = _upstream_gradients(n, k, seed=d)
    for upstream in [
        (grad_entropy, torch.zeros(k)),
        (torch.zeros(n), grad_mean),
        (grad_entropy, grad_mean),
    ]:
        got = _cpu_gradients(x, codebook, tau, *upstream)
        expected = reference.soft_assign_entropy_grad(
            x.double(), codebook.double(), tau, *(g.double() for g in upstream)
        )
        for name, a, b in zip(("x", "codebook"), got, expected, strict=True):
            assert a.dtype == torch.float32 and a.shape == b.shape
            assert relative_error(a, b) < TOLERANCE, name


def test_cpu_gradients_do_not_depend_on_the_thread_count():
    """Several row segments and code ranges (fixed by N, K and D), run on 1 and 2 threads:
    the gradients are bitwise equal."""
    if not wvq.available_backends()["cpu"]:
        pytest.skip("no cpu backend")
    x, codebook = random_inputs(1000, 3000, 5, seed=11)
    upstream = _upstream_gradients(1000, 3000, seed=12)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(_cpu_gradients(x, codebook, 0.5, *upstream))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)


ISA_GRADIENTS = """
import sys, torch
import wvq_kernels
x, codebook, grad_entropy, grad_mean = torch.load(sys.argv[1])
gradients = torch.ops.wvq.soft_assign_entropy_backward(x, codebook, 0.5, grad_entropy, grad_mean)
torch.save(gradients, sys.argv[2])
print(torch.ops.wvq.cpu_isa())
"""


def test_every_cpu_isa_computes_the_gradients(run_isa_script, tmp_path):
    x, codebook = random_inputs(300, 700, 9, seed=13)
    upstream = _upstream_gradients(300, 700, seed=14)
    torch.save((x, codebook, *upstream), tmp_path / "inputs.pt")
    run_isa_script(ISA_GRADIENTS, str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt"))
    got = torch.load(tmp_path / "out.pt")
    expected = reference.soft_assign_entropy_grad(
        x.double(), codebook.double(), 0.5, *(g.double() for g in upstream)
    )
    for a, b in zip(got, expected, strict=True):
        assert relative_error(a, b) < TOLERANCE


def test_every_cpu_isa_matches_float64(run_on_isa):
    x, codebook = random_inputs(300, 700, 9, seed=10)
    calls = [("soft_assign_entropy", (x, codebook, 0.5), {"backend": "cpu"})]
    ((row_entropy, mean, code_entropy, _),) = run_on_isa(calls)
    expected = reference.soft_assign_entropy_materialised(x.double(), codebook.double(), 0.5)
    for got, want in zip((row_entropy, mean, code_entropy), expected, strict=True):
        assert relative_error(got, want) < TOLERANCE


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"tau": 0.0}, ValueError, "tau"),
        ({"tau": float("inf")}, ValueError, "tau"),
        ({"metric": "dot"}, ValueError, "metric"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    x, codebook = random_inputs(5, 4, 3)
    arguments = {"tau": 1.0, **kwargs}
    with pytest.raises(error, match=message):
        wvq.soft_assign_entropy(x, codebook, arguments.pop("tau"), **arguments)


def test_backward_under_aot_autograd(fast_backend, fast_device):
    """The fake kernel and the registered gradient trace with torch.compile (fullgraph;
    without the finiteness check, a data-dependent branch)."""
    if fast_device.type == "cpu" and fast_backend == "triton":
        pytest.skip("the interpreter cannot run kernels on fake tensors (see test_triton_ops.py)")

    def loss(x, codebook):
        result = wvq.soft_assign_entropy(x, codebook, 0.5, backend=fast_backend, check_finite=False)
        return result.row_entropy - result.code_entropy

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    x, codebook = random_inputs(100, 70, 8, device=fast_device, seed=9)
    x.requires_grad_()
    codebook.requires_grad_()
    eager = torch.autograd.grad(loss(x, codebook), (x, codebook))
    traced = torch.autograd.grad(compiled(x, codebook), (x, codebook))
    for got, expected in zip(traced, eager, strict=True):
        torch.testing.assert_close(got, expected)


PEAK = """
import sys, torch, wvq_kernels as wvq
from wvq_kernels.bench.harness import PeakMemory
backward_rows = int(sys.argv[1])
generator = torch.Generator().manual_seed(0)
x = torch.randn(16384, 8, generator=generator).requires_grad_()
codebook = torch.randn(65536, 8, generator=generator).requires_grad_()
wvq.soft_assign_entropy(x[:8], codebook[:64], 1.0, backend="cpu")
peak = PeakMemory()
peak.reset()
result = wvq.soft_assign_entropy(x, codebook, 1.0, backend="cpu")
forward = peak.peak_delta_mib()
peak.reset()
result = wvq.soft_assign_entropy(x[:backward_rows], codebook, 1.0, backend="cpu")
(result.row_entropy - result.code_entropy).backward()
print(forward, peak.peak_delta_mib())
"""
# The gradients (as large as the inputs) are outputs, and count.
INPUT_MIB = (16384 + 65536) * 8 * 4 / 2**20


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs clear_refs")
def test_cpu_forward_and_backward_memory_is_bounded():
    """Issue 16's size: N = 16,384, K = 65,536, D = 8 under 64 MiB beyond the inputs (and
    their gradients), forward and the CPU kernel's backward; the N x K float64 probabilities
    would take 8 GiB."""
    if not wvq.available_backends()["cpu"]:
        pytest.skip("no cpu backend")
    child = subprocess.run(
        [sys.executable, "-c", PEAK, "16384"],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    forward, backward = map(float, child.stdout.split())
    assert forward < 64 and backward < 64 + INPUT_MIB, child.stdout
