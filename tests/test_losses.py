"""gaussian_w2 against SciPy's sqrtm in float64, its gradients against finite differences
(gradcheck) and a float64 autograd-through-sqrtm reference, and finiteness where eigenvalue
gradients usually blow up (repeated eigenvalues, rank-deficient and all-zero covariances)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from wvq_kernels import moments
from wvq_kernels.losses import gaussian_w2

METHODS = ["eigh", "newton_schulz"]


def random_gaussian(dim, generator, rank=None):
    factor = torch.randn(dim, rank or dim, generator=generator, dtype=torch.float64)
    return torch.randn(dim, generator=generator, dtype=torch.float64), factor @ factor.T / dim


def scipy_w2(mean_a, cov_a, mean_b, cov_b):
    a, b = cov_a.numpy(), cov_b.numpy()
    root_a = scipy.linalg.sqrtm(a)
    cross = np.real(scipy.linalg.sqrtm(root_a @ b @ root_a))
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(a) + np.trace(b) - 2 * np.trace(cross))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dim", [1, 2, 8, 33])
def test_value_matches_scipy(method, dim):
    g = torch.Generator().manual_seed(dim)
    a, b = random_gaussian(dim, g), random_gaussian(dim, g)
    ours = gaussian_w2(*a, *b, squared=True, method=method, eps=0.0 if method == "eigh" else 1e-12)
    assert ours.item() == pytest.approx(scipy_w2(*a, *b), rel=1e-6, abs=1e-8)


def test_distance_is_sqrt_of_squared_with_floor():
    g = torch.Generator().manual_seed(0)
    a, b = random_gaussian(4, g), random_gaussian(4, g)
    w2 = gaussian_w2(*a, *b, squared=True)
    assert gaussian_w2(*a, *b).item() == pytest.approx((w2.item() + 1e-10) ** 0.5)
    same = gaussian_w2(*a, *a, squared=True)
    assert abs(same.item()) < 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_float64(method):
    g = torch.Generator().manual_seed(1)
    (mean_a, cov_a), (mean_b, cov_b) = random_gaussian(5, g), random_gaussian(5, g)
    inputs = [t.clone().requires_grad_() for t in (mean_a, cov_a, mean_b, cov_b)]

    def w2_of_symmetric(ma, ca, mb, cb):  # gradcheck perturbs entries; keep the matrices symmetric
        return gaussian_w2(ma, (ca + ca.T) / 2, mb, (cb + cb.T) / 2, squared=True, method=method)

    assert torch.autograd.gradcheck(w2_of_symmetric, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["identity", "rank_deficient", "all_zero_codebook"])
def test_gradients_finite_on_degenerate_covariances(method, case):
    g = torch.Generator().manual_seed(2)
    dim = 8
    mean_a, cov_a = random_gaussian(dim, g)
    if case == "identity":  # every eigenvalue repeated
        cov_a, cov_b = torch.eye(dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64) * 2
    elif case == "rank_deficient":
        cov_b = random_gaussian(dim, g, rank=2)[1]
    else:
        cov_b = torch.zeros(dim, dim, dtype=torch.float64)
    cov_b = cov_b.clone().requires_grad_()
    cov_a = cov_a.clone().requires_grad_()
    loss = gaussian_w2(mean_a, cov_a, torch.zeros(dim, dtype=torch.float64), cov_b, method=method)
    loss.backward()
    assert (
        torch.isfinite(loss)
        and torch.isfinite(cov_a.grad).all()
        and torch.isfinite(cov_b.grad).all()
    )


def test_codebook_gradient_matches_closed_form():
    """∂W²/∂e_k = (2/K)(μc − μz) + (2/K) G (e_k − μc) for biased covariances,
    G = I − Σz^½ M^−½ Σz^½ (the W-VQ paper's formula, with 1/K in place of 1/(K−1) since
    moments() is the population covariance)."""
    g = torch.Generator().manual_seed(3)
    features = (
        torch.randn(4000, 3, generator=g, dtype=torch.float64)
        * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
        + 1
    )
    codes = torch.randn(50, 3, generator=g, dtype=torch.float64).requires_grad_()
    fz, fc = moments(features, backend="reference"), moments(codes, backend="reference")
    gaussian_w2(fz.mean, fz.cov, fc.mean, fc.cov, squared=True, eps=0.0).backward()
    sz = torch.from_numpy(np.real(scipy.linalg.sqrtm(fz.cov.numpy())))
    m = sz @ fc.cov.detach() @ sz
    m_inv_sqrt = torch.from_numpy(np.real(scipy.linalg.inv(scipy.linalg.sqrtm(m.numpy()))))
    gain = torch.eye(3, dtype=torch.float64) - sz @ m_inv_sqrt @ sz
    k = codes.shape[0]
    expected = (2 / k) * (fc.mean.detach() - fz.mean) + (2 / k) * (
        codes.detach() - fc.mean.detach()
    ) @ gain.T
    assert torch.allclose(codes.grad, expected, rtol=1e-6, atol=1e-9)


def test_methods_agree_and_validate():
    g = torch.Generator().manual_seed(4)
    a, b = random_gaussian(16, g), random_gaussian(16, g)
    exact = gaussian_w2(*a, *b, squared=True)
    assert gaussian_w2(*a, *b, squared=True, method="newton_schulz").item() == pytest.approx(
        exact.item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="method"):
        gaussian_w2(*a, *b, method="svd")
    with pytest.raises(ValueError, match="dimensions"):
        gaussian_w2(a[0][:3], a[1][:3, :3], *b)
