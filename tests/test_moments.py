import os
import subprocess
import sys

import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels.testing import moments64, moments_failures, relative_error


def _assert_matches_float64(result, x):
    problems = moments_failures(result, x)
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n, d", [(2, 1), (1000, 3), (5000, 64), (300, 256)])
def test_moments_match_float64(backend, device, dtype, n, d):
    generator = torch.Generator().manual_seed(n + d)
    mixing = torch.randn(d, d, generator=generator) / d**0.5
    x = (torch.randn(n, d, generator=generator) @ mixing + 0.5).to(device=device, dtype=dtype)
    _assert_matches_float64(wvq.moments(x, backend=backend), x)


def test_large_common_offset_keeps_float64_accuracy(backend, device):
    """mean 1e4, std 1e-2 in float32: E[xx^T] - mu mu^T cancels 1e8 against 1e8 and loses
    everything in float32; centred accumulation keeps the covariance to float64 accuracy."""
    generator = torch.Generator().manual_seed(7)
    x = (1e4 + 1e-2 * torch.randn(20000, 8, generator=generator)).to(device)
    naive = x.T @ x / x.shape[0] - torch.outer(x.mean(0), x.mean(0))
    assert relative_error(naive, moments64(x)[2]) > 1e-2, "the naive formula fails on this input"
    _assert_matches_float64(wvq.moments(x, backend=backend), x)


def test_batch_dims_and_non_contiguous_inputs_match_float64(backend, device):
    base = torch.randn(4, 60, 20, device=device)
    x = base[:, ::2, ::2]
    assert not x.is_contiguous()
    before = x.clone()
    result = wvq.moments(x, backend=backend)
    assert torch.equal(x, before)
    _assert_matches_float64(result, x)


def test_no_rows_give_zeros_and_one_row_its_mean_and_zero_cov(backend, device):
    empty = wvq.moments(torch.empty(0, 5, device=device), backend=backend)
    assert int(empty.count) == 0
    assert torch.equal(empty.mean.cpu(), torch.zeros(5, dtype=torch.float64))
    assert torch.equal(empty.cov.cpu(), torch.zeros(5, 5, dtype=torch.float64))
    row = torch.randn(1, 5, device=device)
    single = wvq.moments(row, backend=backend)
    assert int(single.count) == 1
    assert torch.equal(single.mean.cpu(), row[0].double().cpu())
    assert not single.cov.any()


@pytest.mark.parametrize("seed", range(4))
def test_merge_of_random_splits_equals_whole(backend, device, seed):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(3000, 6, generator=generator) * 3 + 5).to(device)
    cuts = sorted(torch.randint(0, 3001, (4,), generator=generator).tolist())  # empty parts too
    parts = [x[start:stop] for start, stop in zip([0, *cuts], [*cuts, 3000])]
    merged = wvq.moments(parts[0], backend=backend)
    for part in parts[1:]:
        merged = merged.merge(wvq.moments(part, backend=backend))
    whole = wvq.moments(x, backend=backend)
    assert int(merged.count) == 3000
    torch.testing.assert_close(merged.mean, whole.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.cov, whole.cov, rtol=1e-12, atol=1e-12)


def test_merge_of_empty_parts_is_empty(backend, device):
    empty = wvq.moments(torch.empty(0, 3, device=device), backend=backend)
    merged = empty.merge(empty)
    assert int(merged.count) == 0
    assert torch.isfinite(merged.mean).all() and torch.isfinite(merged.cov).all()
    assert not merged.cov.any()


def test_sample_cov_equals_torch_cov(backend, device):
    x = torch.randn(50, 4, device=device, dtype=torch.float64)
    expected = torch.cov(x.T, correction=1)
    torch.testing.assert_close(wvq.moments(x, backend=backend).sample_cov(), expected)


def test_gradient_passes_gradcheck_in_float64(backend, device):
    x = torch.randn(2, 5, 3, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: wvq.moments(t, backend=backend)[1:], (x,))


def test_gradient_keeps_the_input_dtype_and_matches_float64(backend, device):
    x = torch.randn(40, 3, device=device, requires_grad=True)
    result = wvq.moments(x, backend=backend)
    (result.mean.sum() + result.cov.square().sum()).backward()
    assert x.grad.dtype == torch.float32 and x.grad.shape == x.shape
    reference = x.detach().double().requires_grad_()
    truth = wvq.moments(reference, backend="reference")
    (truth.mean.sum() + truth.cov.square().sum()).backward()
    torch.testing.assert_close(x.grad.double(), reference.grad, rtol=1e-5, atol=1e-6)


STRIDED_PAST_2_31 = """
import torch, wvq_kernels as wvq
# Column c sits at element c * 2**30: column 2 is at 2**31, past int32. torch.empty only
# reserves the 6 GiB; the few pages written and read are all that becomes resident.
storage = torch.empty(3 * 2**30 + 64, dtype=torch.float16)
x = storage.as_strided((64, 4), (1, 2**30))
x.copy_(torch.randn(64, 4, generator=torch.Generator().manual_seed(0)).half())
result = wvq.moments(x, backend="triton")
expected = wvq.moments(x.contiguous(), backend="reference")
assert torch.allclose(result.mean, expected.mean, rtol=1e-12, atol=0), (result.mean, expected)
assert torch.allclose(result.cov, expected.cov, rtol=1e-12, atol=1e-15), (result.cov, expected)
"""


def test_triton_column_offsets_past_2_to_the_31_elements():
    """Issue 12: the column offset cols * stride_xd was int32 (stride_xd < 2**31 is passed as
    int32), so a strided x whose last column lies past 2**31 elements read from a wrapped,
    negative offset. Run in the interpreter, in a child process: the wrapped read can crash."""
    if not wvq.available_backends()["triton"]:
        pytest.skip("no triton backend")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = subprocess.run(
        [sys.executable, "-c", STRIDED_PAST_2_31], env=env, capture_output=True, timeout=300
    )
    assert child.returncode == 0, child.stderr.decode()[-2000:]
