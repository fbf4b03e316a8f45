"""DESIGN.md section 4: every bad input raises before anything runs, with a message naming the
argument, the expected and the actual value; plus backend selection."""

import subprocess
import sys

import pytest
import torch

import wvq_kernels as wvq

X = torch.randn(10, 8)
CODEBOOK = torch.randn(17, 8)
INDICES = torch.randint(0, 17, (10,))


def _with_nan(t, position):
    t = t.clone()
    t[position] = float("nan")
    return t


def _with_inf(t, position):
    t = t.clone()
    t[position] = float("inf")
    return t


# (call, exception type, fragments the message must contain: argument, expected, actual)
BAD_INPUTS = {
    "x not a tensor": (lambda b: wvq.assign(X.tolist(), CODEBOOK, backend=b), TypeError, ["x", "Tensor", "list"]),
    "x integer": (lambda b: wvq.assign(X.long(), CODEBOOK, backend=b), TypeError, ["x", "float32", "int64"]),
    "x float64": (lambda b: wvq.assign(X.double(), CODEBOOK.double(), backend=b), TypeError, ["x", "float32", "float64"]),
    "codebook integer": (lambda b: wvq.assign(X, CODEBOOK.int(), backend=b), TypeError, ["codebook", "float32", "int32"]),
    "codebook other dtype": (lambda b: wvq.assign(X, CODEBOOK.half(), backend=b), TypeError, ["codebook", "float32", "float16"]),
    "x 0-dim": (lambda b: wvq.assign(X[0, 0], CODEBOOK, backend=b), ValueError, ["x", "(..., D)", "()"]),
    "codebook 1-D": (lambda b: wvq.assign(X, CODEBOOK[0], backend=b), ValueError, ["codebook", "(K, D)", "(8,)"]),
    "codebook 3-D": (lambda b: wvq.assign(X, CODEBOOK[None], backend=b), ValueError, ["codebook", "(K, D)", "(1, 17, 8)"]),
    "D mismatch": (lambda b: wvq.assign(X, CODEBOOK[:, :5], backend=b), ValueError, ["codebook", "8", "(17, 5)"]),
    "K = 0": (lambda b: wvq.assign(X, CODEBOOK[:0], backend=b), ValueError, ["codebook", "K >= 1", "(0, 8)"]),
    "assign devices differ": (lambda b: wvq.assign(X, CODEBOOK.to("meta"), backend=b), ValueError, ["codebook", "cpu", "meta"]),
    "nan in x": (lambda b: wvq.assign(_with_nan(X, (7, 3)), CODEBOOK, backend=b), ValueError, ["x", "finite", "row 7"]),
    "nan in batched x": (lambda b: wvq.assign(_with_nan(X.reshape(2, 5, 8), (1, 2, 0)), CODEBOOK, backend=b), ValueError, ["x", "finite", "row 7"]),
    "inf in codebook": (lambda b: wvq.assign(X, _with_inf(CODEBOOK, (3, 0)), backend=b), ValueError, ["codebook", "finite", "row 3"]),
    "unknown metric": (lambda b: wvq.assign(X, CODEBOOK, metric="cos", backend=b), ValueError, ["metric", "'cosine'", "'cos'"]),
    "unknown precision": (lambda b: wvq.assign(X, CODEBOOK, precision="fp8", backend=b), ValueError, ["precision", "'ieee'", "'fp8'"]),
    "tf32 on a CPU backend": (lambda b: wvq.assign(X, CODEBOOK, precision="tf32", backend=b), ValueError, ["precision", "'tf32'", "'ieee'"]),
    "histogram float indices": (lambda b: wvq.code_histogram(INDICES.float(), 17, backend=b), TypeError, ["indices", "integer", "float32"]),
    "histogram bool indices": (lambda b: wvq.code_histogram(INDICES > 3, 17, backend=b), TypeError, ["indices", "integer", "bool"]),
    "num_codes zero": (lambda b: wvq.code_histogram(INDICES, 0, backend=b), ValueError, ["num_codes", ">= 1", "0"]),
    "num_codes negative": (lambda b: wvq.code_sums(INDICES, X, -3, backend=b), ValueError, ["num_codes", ">= 1", "-3"]),
    "num_codes float": (lambda b: wvq.code_histogram(INDICES, 17.0, backend=b), TypeError, ["num_codes", "int", "float"]),
    "index too large": (lambda b: wvq.code_histogram(INDICES.clone().index_fill_(0, torch.tensor([4]), 17), 17, backend=b), ValueError, ["indices", "[0, 17)", "17", "position 4"]),
    "index negative": (lambda b: wvq.code_sums(INDICES.clone().index_fill_(0, torch.tensor([6]), -1), X, 17, backend=b), ValueError, ["indices", "[0, 17)", "-1", "position 6"]),
    "sums indices shape": (lambda b: wvq.code_sums(INDICES[:9], X, 17, backend=b), ValueError, ["indices", "(10,)", "(9,)"]),
    "sums x integer": (lambda b: wvq.code_sums(INDICES, X.long(), 17, backend=b), TypeError, ["x", "float32", "int64"]),
    "sums float indices": (lambda b: wvq.code_sums(INDICES.double(), X, 17, backend=b), TypeError, ["indices", "integer", "float64"]),
    "sums devices differ": (lambda b: wvq.code_sums(INDICES.to("meta"), X, 17, backend=b), ValueError, ["indices", "cpu", "meta"]),
    "moments x integer": (lambda b: wvq.moments(X.int(), backend=b), TypeError, ["x", "float32", "int32"]),
    "moments x 0-dim": (lambda b: wvq.moments(X[0, 0], backend=b), ValueError, ["x", "(..., D)", "()"]),
    "moments D = 0": (lambda b: wvq.moments(X[:, :0], backend=b), ValueError, ["x", "D >= 1", "(10, 0)"]),
    "unknown backend": (lambda b: wvq.assign(X, CODEBOOK, backend="gpu"), ValueError, ["backend", "'reference'", "'gpu'"]),
    "unavailable backend": (lambda b: wvq.moments(X, backend="triton"), ValueError, ["backend", "'triton'", "not available", "not implemented"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_naming_the_argument(backend, case):
    call, exception, fragments = BAD_INPUTS[case]
    with pytest.raises(exception) as error:
        call(backend)
    for fragment in fragments:
        assert fragment in str(error.value), f"{fragment!r} missing from: {error.value}"


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
    result = wvq.assign(_with_nan(X, (7, 3)), CODEBOOK, check_finite=False, backend=backend)
    assert result.indices.shape == (10,)


def test_nothing_runs_on_an_empty_batch_with_bad_options():
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
    assert not backends["triton"] and not backends["cuda"]


def test_env_overrides_auto(monkeypatch):
    monkeypatch.setenv("WVQ_BACKEND", "no-such-backend")
    with pytest.raises(ValueError, match="WVQ_BACKEND.*no-such-backend"):
        wvq.assign(X, CODEBOOK)
    # An explicit backend is not overridden.
    assert wvq.assign(X, CODEBOOK, backend="reference").indices.shape == (10,)
    monkeypatch.setenv("WVQ_BACKEND", "cuda")
    with pytest.raises(ValueError, match="WVQ_BACKEND.*'cuda' is not available"):
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
