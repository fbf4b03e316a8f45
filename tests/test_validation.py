"""Bad input: every bad input raises before anything runs, with a message naming the
argument, the expected and the actual value; plus backend selection."""

import subprocess
import sys

import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels._schemas import TRITON_ON_CUDA_OPS as TRITON_ON_CUDA

X = torch.randn(10, 8)
CODEBOOK = torch.randn(17, 8)
INDICES = torch.randint(0, 17, (10,))


def _with_value(t, position, value):
    t = t.clone()
    t[position] = value
    return t


def _assign(backend, x=X, codebook=CODEBOOK, **options):
    return wvq.assign(x, codebook, backend=backend, **options)


def _histogram(backend, indices=INDICES, num_codes=17):
    return wvq.code_histogram(indices, num_codes, backend=backend)


def _sums(backend, indices=INDICES, x=X, num_codes=17):
    return wvq.code_sums(indices, x, num_codes, backend=backend)


def _moments(backend, x=X):
    return wvq.moments(x, backend=backend)


def _soft(backend, x=X, codebook=CODEBOOK, tau=1.0, **options):
    return wvq.soft_assign_stats(x, codebook, tau=tau, backend=backend, **options)


def _index_set(position, value):
    return INDICES.clone().index_fill_(0, torch.tensor([position]), value)


# id: (op, arguments, exception type, fragments of the message: argument, expected, actual)
BAD_INPUTS = {
    "x not a tensor": (_assign, dict(x=X.tolist()), TypeError, ["x", "Tensor", "list"]),
    "x integer": (_assign, dict(x=X.long()), TypeError, ["x", "float32", "int64"]),
    "x float64": (
        _assign,
        dict(x=X.double(), codebook=CODEBOOK.double()),
        TypeError,
        ["x", "float32", "float64"],
    ),
    "codebook integer": (
        _assign,
        dict(codebook=CODEBOOK.int()),
        TypeError,
        ["codebook", "float32", "int32"],
    ),
    "codebook other dtype": (
        _assign,
        dict(codebook=CODEBOOK.half()),
        TypeError,
        ["codebook", "float32", "float16"],
    ),
    "x 0-dim": (_assign, dict(x=X[0, 0]), ValueError, ["x", "(..., D)", "()"]),
    "codebook 1-D": (
        _assign,
        dict(codebook=CODEBOOK[0]),
        ValueError,
        ["codebook", "(K, D)", "(8,)"],
    ),
    "codebook 3-D": (
        _assign,
        dict(codebook=CODEBOOK[None]),
        ValueError,
        ["codebook", "(K, D)", "(1, 17, 8)"],
    ),
    "D mismatch": (
        _assign,
        dict(codebook=CODEBOOK[:, :5]),
        ValueError,
        ["codebook", "8", "(17, 5)"],
    ),
    "K = 0": (_assign, dict(codebook=CODEBOOK[:0]), ValueError, ["codebook", "K >= 1", "(0, 8)"]),
    "assign devices differ": (
        _assign,
        dict(codebook=CODEBOOK.to("meta")),
        ValueError,
        ["codebook", "cpu", "meta"],
    ),
    "nan in x": (
        _assign,
        dict(x=_with_value(X, (7, 3), float("nan"))),
        ValueError,
        ["x", "finite", "row 7"],
    ),
    "nan in batched x": (
        _assign,
        dict(x=_with_value(X.reshape(2, 5, 8), (1, 2, 0), float("nan"))),
        ValueError,
        ["x", "finite", "row 7"],
    ),
    "inf in codebook": (
        _assign,
        dict(codebook=_with_value(CODEBOOK, (3, 0), float("inf"))),
        ValueError,
        ["codebook", "finite", "row 3"],
    ),
    "unknown metric": (_assign, dict(metric="cos"), ValueError, ["metric", "'cosine'", "'cos'"]),
    "unknown precision": (
        _assign,
        dict(precision="fp8"),
        ValueError,
        ["precision", "'ieee'", "'fp8'"],
    ),
    "tf32 on a CPU backend": (
        _assign,
        dict(precision="tf32"),
        ValueError,
        ["precision", "'tf32'", "'ieee'"],
    ),
    "histogram float indices": (
        _histogram,
        dict(indices=INDICES.float()),
        TypeError,
        ["indices", "integer", "float32"],
    ),
    "histogram bool indices": (
        _histogram,
        dict(indices=INDICES > 3),
        TypeError,
        ["indices", "integer", "bool"],
    ),
    "num_codes zero": (_histogram, dict(num_codes=0), ValueError, ["num_codes", ">= 1", "0"]),
    "num_codes negative": (_sums, dict(num_codes=-3), ValueError, ["num_codes", ">= 1", "-3"]),
    "num_codes float": (_histogram, dict(num_codes=17.0), TypeError, ["num_codes", "int", "float"]),
    "index too large": (
        _histogram,
        dict(indices=_index_set(4, 17)),
        ValueError,
        ["indices", "[0, 17)", "17", "position 4"],
    ),
    "index negative": (
        _sums,
        dict(indices=_index_set(6, -1)),
        ValueError,
        ["indices", "[0, 17)", "-1", "position 6"],
    ),
    "sums indices shape": (
        _sums,
        dict(indices=INDICES[:9]),
        ValueError,
        ["indices", "(10,)", "(9,)"],
    ),
    "sums x integer": (_sums, dict(x=X.long()), TypeError, ["x", "float32", "int64"]),
    "sums float indices": (
        _sums,
        dict(indices=INDICES.double()),
        TypeError,
        ["indices", "integer", "float64"],
    ),
    "sums devices differ": (
        _sums,
        dict(indices=INDICES.to("meta")),
        ValueError,
        ["indices", "cpu", "meta"],
    ),
    "sums nan in x": (
        _sums,
        dict(x=_with_value(X, (4, 1), float("nan"))),
        ValueError,
        ["x", "finite", "row 4"],
    ),
    "sums inf in batched x": (
        _sums,
        dict(
            indices=INDICES.reshape(2, 5),
            x=_with_value(X.reshape(2, 5, 8), (1, 3, 2), -float("inf")),
        ),
        ValueError,
        ["x", "finite", "row 8"],
    ),
    "num_codes beyond int64": (
        _histogram,
        dict(num_codes=2**64),
        ValueError,
        ["num_codes", "2**63 - 1", str(2**64)],
    ),
    "moments inf in x": (
        _moments,
        dict(x=_with_value(X, (6, 0), float("inf"))),
        ValueError,
        ["x", "finite", "row 6"],
    ),
    "moments nan in float64 x": (
        _moments,
        dict(x=_with_value(X.double(), (2, 7), float("nan"))),
        ValueError,
        ["x", "finite", "row 2"],
    ),
    "moments x integer": (_moments, dict(x=X.int()), TypeError, ["x", "float32", "int32"]),
    "moments x 0-dim": (_moments, dict(x=X[0, 0]), ValueError, ["x", "(..., D)", "()"]),
    "moments D = 0": (_moments, dict(x=X[:, :0]), ValueError, ["x", "D >= 1", "(10, 0)"]),
    "soft x integer": (_soft, dict(x=X.long()), TypeError, ["x", "float32", "int64"]),
    "soft D mismatch": (
        _soft,
        dict(codebook=CODEBOOK[:, :5]),
        ValueError,
        ["codebook", "8", "(17, 5)"],
    ),
    "soft K = 0": (
        _soft,
        dict(codebook=CODEBOOK[:0]),
        ValueError,
        ["codebook", "K >= 1", "(0, 8)"],
    ),
    "soft devices differ": (
        _soft,
        dict(codebook=CODEBOOK.to("meta")),
        ValueError,
        ["codebook", "cpu", "meta"],
    ),
    "soft nan in codebook": (
        _soft,
        dict(codebook=_with_value(CODEBOOK, (3, 0), float("nan"))),
        ValueError,
        ["codebook", "finite", "row 3"],
    ),
    "tau zero": (_soft, dict(tau=0.0), ValueError, ["tau", "> 0.0", "0.0"]),
    "tau negative": (_soft, dict(tau=-2), ValueError, ["tau", "> 0.0", "-2.0"]),
    "tau nan": (_soft, dict(tau=float("nan")), ValueError, ["tau", "finite", "nan"]),
    "tau inf": (_soft, dict(tau=float("inf")), ValueError, ["tau", "finite", "inf"]),
    "tau string": (_soft, dict(tau="1"), TypeError, ["tau", "real number", "str"]),
    "tau 0-dim tensor negative": (
        _soft,
        dict(tau=torch.tensor(-1.5)),
        ValueError,
        ["tau", "> 0.0", "-1.5"],
    ),
    "tau 1-D tensor": (_soft, dict(tau=torch.ones(1)), TypeError, ["tau", "real number", "Tensor"]),
    "tau complex tensor": (
        _soft,
        dict(tau=torch.tensor(1 + 1j)),
        TypeError,
        ["tau", "real number", "Tensor"],
    ),
    "lam negative": (_soft, dict(lam=-0.1), ValueError, ["lam", ">= 0.0", "-0.1"]),
    "lam inf": (_soft, dict(lam=float("inf")), ValueError, ["lam", "finite", "inf"]),
    "lam bool": (_soft, dict(lam=True), TypeError, ["lam", "real number", "bool"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_naming_the_argument(backend, case):
    call, arguments, exception, fragments = BAD_INPUTS[case]
    with pytest.raises(exception) as error:
        call(backend, **arguments)
    for fragment in fragments:
        assert fragment in str(error.value), f"{fragment!r} missing from: {error.value}"


@pytest.mark.parametrize(
    "requested, fragments",
    [
        ("gpu", ["backend", "'reference'", "'gpu'"]),
        ("cuda", ["backend", "'cuda'", "not available"]),
    ],
)
def test_bad_backend(requested, fragments):
    with pytest.raises(ValueError) as error:
        wvq.assign(X, CODEBOOK, backend=requested)
    for fragment in fragments:
        assert fragment in str(error.value)


@pytest.mark.parametrize(
    "counts, exception, fragments",
    [
        (torch.ones(4), TypeError, ["counts", "integer", "float32"]),
        (torch.ones(2, 3, dtype=torch.int64), ValueError, ["counts", "(K,)", "(2, 3)"]),
        (torch.ones(0, dtype=torch.int64), ValueError, ["counts", "K >= 1", "(0,)"]),
    ],
)
def test_bad_usage_counts(counts, exception, fragments):
    with pytest.raises(exception) as error:
        wvq.usage(counts)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_check_finite_off_skips_the_scan(backend):
    x = _with_value(X, (7, 3), float("nan"))
    result = wvq.assign(x, CODEBOOK, check_finite=False, backend=backend)
    assert result.indices.shape == (10,)


def test_check_finite_off_skips_the_scan_of_code_sums_and_moments(backend):
    x = _with_value(X, (7, 3), float("nan"))
    counts, sums = wvq.code_sums(INDICES, x, 17, backend=backend, check_finite=False)
    assert int(counts.sum()) == 10 and sums[INDICES[7]].isnan().any()
    stats = wvq.moments(x, backend=backend, check_finite=False)
    assert stats.mean[3].isnan()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_tau_and_lam_as_0_dim_tensors_equal_their_values(backend, dtype):
    as_tensors = _soft(backend, tau=torch.tensor(2, dtype=dtype), lam=torch.tensor(0, dtype=dtype))
    as_numbers = _soft(backend, tau=2.0, lam=0.0)
    assert torch.equal(as_tensors.loss, as_numbers.loss)
    assert torch.equal(as_tensors.weight_sums, as_numbers.weight_sums)


GAUSSIAN = (torch.zeros(3), torch.eye(3), torch.ones(3), 2 * torch.eye(3))


@pytest.mark.parametrize(
    "options, exception, fragments",
    [
        (dict(eps=-1), ValueError, ["eps", ">= 0.0", "-1.0"]),
        (dict(eps=float("nan")), ValueError, ["eps", "finite", "nan"]),
        (dict(eps="1e-8"), TypeError, ["eps", "real number", "str"]),
        (dict(method="newton_schulz", iterations=-3), ValueError, ["iterations", ">= 1", "-3"]),
        (dict(method="newton_schulz", iterations=0), ValueError, ["iterations", ">= 1", "0"]),
        (dict(method="newton_schulz", iterations=2.5), TypeError, ["iterations", "int", "float"]),
        (dict(iterations=True), TypeError, ["iterations", "int", "bool"]),
    ],
)
def test_gaussian_w2_bad_options(options, exception, fragments):
    with pytest.raises(exception) as error:
        wvq.gaussian_w2(*GAUSSIAN, **options)
    for fragment in fragments:
        assert fragment in str(error.value), f"{fragment!r} missing from: {error.value}"


def test_gaussian_w2_accepts_zero_eps_and_a_0_dim_tensor_eps():
    exact = wvq.gaussian_w2(*GAUSSIAN, squared=True, eps=0)
    # |1|^2 * 3 + 3 + 6 - 2 * 3 sqrt(2): the closed form for these isotropic Gaussians.
    assert abs(float(exact) - (12 - 6 * 2**0.5)) < 1e-12
    with_tensor = wvq.gaussian_w2(*GAUSSIAN, squared=True, eps=torch.tensor(0.0))
    assert torch.equal(exact, with_tensor)


def test_validation_precedes_the_empty_batch_shortcut():
    """Validation comes first even when there is nothing to compute."""
    with pytest.raises(ValueError, match="metric"):
        wvq.assign(X[:0], CODEBOOK, metric="manhattan")


def test_available_backends_report():
    backends = wvq.available_backends()
    assert set(backends) == {"reference", "cpu", "triton", "cuda"}
    for status in backends.values():
        assert isinstance(status, wvq.BackendStatus)
        assert bool(status) == status.available and status.reason
    assert backends["reference"]
    # Triton runs on CPU tensors here: tests/conftest.py sets TRITON_INTERPRET=1.
    assert backends["triton"], backends["triton"].reason
    assert not backends["cuda"]


def test_env_overrides_auto(monkeypatch):
    monkeypatch.setenv("WVQ_BACKEND", "no-such-backend")
    with pytest.raises(ValueError, match=r"WVQ_BACKEND.*no-such-backend"):
        wvq.assign(X, CODEBOOK)
    # An explicit backend is not overridden.
    assert wvq.assign(X, CODEBOOK, backend="reference").indices.shape == (10,)
    monkeypatch.setenv("WVQ_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"WVQ_BACKEND.*'cuda' is not available"):
        wvq.moments(X)


def test_import_without_the_extension():
    """A missing or broken _C leaves a working reference-only package."""
    script = (
        "import sys; sys.modules['wvq_kernels._C'] = None\n"
        "import torch, wvq_kernels as wvq\n"
        "status = wvq.available_backends()['cpu']\n"
        "assert not status and 'wvq_kernels._C' in status.reason, status\n"
        "result = wvq.assign(torch.randn(5, 3), torch.randn(4, 3), histogram=True)\n"
        "assert int(result.counts.sum()) == 5\n"
        "try:\n"
        "    wvq.assign(torch.randn(5, 3), torch.randn(4, 3), backend='cpu')\n"
        "except ValueError as error:\n"
        "    assert 'wvq_kernels._C' in str(error)\n"
        "else:\n"
        "    raise AssertionError('backend=cpu should be refused')\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_finite_check_finds_every_kind_in_every_dtype_and_layout(dtype, value):
    """The scan is a min/max reduction over the tensor as it lies: NaN and both infinities,
    in a non-contiguous view, must still be found and the row named."""
    x = torch.randn(8, 12, dtype=dtype)
    x[5, 9] = value
    codebook = torch.randn(4, 8, dtype=dtype)
    with pytest.raises(ValueError, match="row 9 of x"):
        wvq.assign(x.T, codebook)
    with pytest.raises(ValueError, match="row 9 of x"):
        wvq.moments(x.T)


ZERO_WIDTH_DIRECT_CALLS = {
    "assign": lambda x, c, i: torch.ops.wvq.assign(x, c, "l2", "ieee", True),
    "code_sums": lambda x, c, i: torch.ops.wvq.code_sums(i, x, 3),
    "moments": lambda x, c, i: torch.ops.wvq.moments(x),
    "soft_assign_stats": lambda x, c, i: torch.ops.wvq.soft_assign_stats(x, c, 1.0, 1.0),
}


@pytest.mark.parametrize("op", sorted(ZERO_WIDTH_DIRECT_CALLS))
def test_direct_op_calls_reject_zero_width_rows(op):
    """torch.ops.wvq is called directly by opcheck and torch.compile, past the Python checks;
    D = 0 killed the process with a floating point exception in the cpu assign."""
    if not wvq.available_backends()["cpu"]:
        pytest.skip("no cpu backend")
    x, codebook = torch.zeros(4, 0), torch.zeros(3, 0)
    indices = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="D must be at least 1"):
        ZERO_WIDTH_DIRECT_CALLS[op](x, codebook, indices)


def test_auto_routes_each_op_to_its_preferred_gpu_backend(monkeypatch):
    """No GPU here: the availability is faked, the routing table is what is tested."""
    from wvq_kernels import _backends

    available = _backends.BackendStatus(True, "faked")
    statuses = {**_backends.BACKEND_STATUS, "triton": available, "cuda": available}
    monkeypatch.setattr(_backends, "BACKEND_STATUS", statuses)
    monkeypatch.setattr(_backends, "_CUDA_KERNELS", frozenset(_backends.SCHEMAS))
    monkeypatch.delenv(_backends.ENV_BACKEND, raising=False)
    gpu = torch.device("cuda")
    assert _backends.resolve_backend("auto", gpu, "assign") == "triton"
    for op in ("code_histogram", "code_sums", "usage", "moments", "soft_assign_stats"):
        assert _backends.resolve_backend("auto", gpu, op) == "cuda", op
    # Ops with no CUDA kernel run Triton's under auto; an explicit "cuda" is refused.
    monkeypatch.setattr(_backends, "_CUDA_KERNELS", frozenset(_backends.SCHEMAS) - TRITON_ON_CUDA)
    for op in sorted(TRITON_ON_CUDA):
        assert _backends.resolve_backend("auto", gpu, op) == "triton", op
        with pytest.raises(ValueError, match=f"no kernel for {op}.*'triton'"):
            _backends.resolve_backend("cuda", gpu, op)
    monkeypatch.setattr(_backends, "_CUDA_KERNELS", frozenset({"assign"}))
    assert _backends.resolve_backend("auto", gpu, "moments") == "triton"
    statuses["triton"] = _backends.BackendStatus(False, "faked")
    assert _backends.resolve_backend("auto", gpu, "assign") == "cuda"
