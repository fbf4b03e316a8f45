"""Finite inputs at the edges of float32's range (issue 13, item 9): norms whose squares overflow,
subnormal values, and NSVQ distances far beyond the softmax's comfortable range. Every backend
must still pick the code the float64 oracle picks and report what float32 can hold."""

import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels.testing import check_assignment, relative_error, soft_assign_truth

# Largest magnitudes around and beyond what |c|^2 survives in float32 (~1.8e19), and below the
# smallest normal float32 (~1.2e-38).
MAGNITUDES = [1e20, 1e30, 1e-25, 1e-40]


def _codebook(magnitude: float, num_codes: int = 50, dim: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(num_codes, dim, generator=generator) * magnitude


@pytest.mark.parametrize("precision", ["ieee", "bf16"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_a_row_equal_to_a_code_picks_that_code(backend, metric, precision, magnitude):
    """l2 used to return index 0 and distance inf above ~1.8e19 (|c|^2 overflowed); the
    reference's cosine normalised vectors near 1e-25 or 1e20 to zero."""
    codebook = _codebook(magnitude)
    chosen = [7, 3, 49, 0]
    x = codebook[chosen].clone()
    result = wvq.assign(x, codebook, metric=metric, precision=precision, backend=backend)
    assert result.indices.tolist() == chosen
    if metric == "l2":
        assert result.distances.tolist() == [0.0] * len(chosen)
    else:
        assert (result.distances <= 1e-6).all(), result.distances


# dot's reported distance -x.c is a float32 sum whose terms overflow above ~1.8e19 (inf - inf
# is NaN): its large magnitudes stop where the products still fit, yet above 2^32 (scaled).
ORACLE_CASES = [
    *((metric, magnitude) for metric in ("l2", "cosine") for magnitude in MAGNITUDES),
    *(("dot", magnitude) for magnitude in (1e15, 1e-25, 1e-40)),
]


@pytest.mark.parametrize("precision", ["ieee", "bf16"])
@pytest.mark.parametrize("metric, magnitude", ORACLE_CASES)
def test_extreme_magnitudes_against_the_oracle(backend, metric, precision, magnitude):
    codebook = _codebook(magnitude, num_codes=300)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=generator) * magnitude
    result = wvq.assign(x, codebook, metric=metric, precision=precision, backend=backend)
    check_assignment(x, codebook, result.indices, result.distances, metric, precision)


@pytest.mark.parametrize("precision", ["ieee", "bf16"])
def test_subnormal_rows_against_normal_codes_keep_their_dot_products(backend, precision):
    """-x.c of a subnormal x and codes near 1 is a subnormal float32 that orders the codes; the
    cpu bf16 kernel (vdpbf16ps treats subnormal inputs as zero) saw all scores as 0."""
    codebook = _codebook(1.0, num_codes=40)
    x = codebook[[5, 17]] * 1e-39
    result = wvq.assign(x, codebook, metric="dot", precision=precision, backend=backend)
    check_assignment(x, codebook, result.indices, result.distances, "dot", precision)
    expected = (-(x.double() @ codebook.double().T)).argmin(dim=1)
    assert torch.equal(result.indices, expected)


@pytest.mark.parametrize("magnitude", [1e15, 1e17, 1e18])
def test_soft_assign_loss_stays_finite_while_distances_are(backend, magnitude):
    """The cpu loss carried its terms scaled by 2^26 and overflowed above distances of 2^97
    (|x - e| ~ 4e14), though every distance and the loss fit in float32."""
    generator = torch.Generator().manual_seed(2)
    codebook = torch.randn(40, 6, generator=generator) * magnitude
    x = torch.randn(30, 6, generator=generator) * magnitude
    result = wvq.soft_assign_stats(x, codebook, tau=1.0, lam=0.5, backend=backend)
    truth = soft_assign_truth(x, codebook, 1.0, 0.5)
    assert torch.isfinite(result.loss)
    assert relative_error(result.loss, truth[0]) < 1e-5
