"""VectorQuantizer's sampled codes (``sample_temperature``) and entropy regulariser
(``entropy_weight``), against the ops they run on and the materialised float64 definition."""

import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels.nn import VectorQuantizer
from wvq_kernels.reference import soft_assign_entropy_materialised
from wvq_kernels.testing import chi_squared_p_value

DIM, CODES = 6, 32


def make(seed=0, **options):
    torch.manual_seed(seed)
    quantizer = VectorQuantizer(DIM, CODES, **options)
    generator = torch.Generator().manual_seed(seed + 1)
    codes = torch.randn(CODES, DIM, generator=generator)
    with torch.no_grad():
        if quantizer.ema:
            quantizer.embed_sum.copy_(codes)
        quantizer.embedding.copy_(codes)
    return quantizer


def batches(count, rows=64, seed=5):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, DIM, generator=generator) for _ in range(count)]


# ---- sampling -------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"ema": True}], ids=["learned", "ema"])
def test_training_draws_sampled_codes_and_evaluation_the_nearest(options):
    quantizer = make(sample_temperature=4.0, **options)
    z = batches(1, rows=512)[0]
    nearest = wvq.assign(z, quantizer.embedding.detach()).indices
    drawn = quantizer(z).indices
    # A high temperature moves most rows off their nearest code, onto valid ones.
    assert (drawn != nearest).float().mean() > 0.5
    assert drawn.min() >= 0 and drawn.max() < CODES
    # The loss and statistics are those of the drawn codes.
    out = quantizer.eval()(z)
    assert torch.equal(out.indices, wvq.assign(z, quantizer.embedding.detach()).indices)


def test_the_draw_is_the_op_s_with_the_stream_s_seed():
    quantizer = make(sample_temperature=1.0)
    z = batches(1)[0]
    seed_before = quantizer.generator.seed.clone()
    offset_before = quantizer.generator.offset.clone()
    out = quantizer(z)
    assert quantizer.generator.offset == offset_before + 1
    # Any other seed gives other draws: the module's stream decides them.
    other = wvq.sample_codes(z, quantizer.embedding.detach(), 1.0, seed=int(seed_before) + 12345)
    assert not torch.equal(out.indices, other.indices)
    codes = quantizer.embedding.detach()
    torch.testing.assert_close(
        out.stats["quantization_error"], (z - codes[out.indices]).square().sum(-1).mean()
    )


def test_draws_follow_softmax_of_the_distances():
    """One row repeated: the module's draws over many steps fit softmax(-d / T) (a
    chi-squared test, which a wrong temperature fails)."""
    temperature, steps, rows = 2.0, 40, 500
    quantizer = make(sample_temperature=temperature)
    z = torch.randn(1, DIM, generator=torch.Generator().manual_seed(3)).expand(rows, DIM)
    # No optimizer: the codebook, so the distribution, stays put between steps.
    drawn = torch.cat([quantizer(z.contiguous()).indices for _ in range(steps)])
    distances = (z[:1].double() - quantizer.embedding.detach().double()).square().sum(-1)
    exact = torch.softmax(-distances / temperature, 0)
    assert chi_squared_p_value(drawn, exact) > 1e-3
    wrong = torch.softmax(-distances / (2 * temperature), 0)
    assert chi_squared_p_value(drawn, wrong) < 1e-3


def test_draws_are_determined_by_the_state_and_resume_with_it():
    first, second = make(sample_temperature=1.0), make(sample_temperature=1.0)
    data = batches(4)
    for z in data[:2]:
        first(z)
    second.load_state_dict(first.state_dict())
    for z in data[2:]:
        assert torch.equal(first(z).indices, second(z).indices)


def test_a_nonfinite_batch_does_not_advance_the_stream():
    clean, hit = make(sample_temperature=1.0), make(sample_temperature=1.0)
    z, later = batches(2)
    bad = z.clone()
    bad[7, 1] = float("nan")
    out = hit(bad)
    assert not torch.isfinite(out.loss)
    assert hit.skipped_nonfinite == 1
    assert torch.equal(hit(later).indices, clean(later).indices)
    for name, value in clean.state_dict().items():
        if isinstance(value, torch.Tensor) and name != "skipped_nonfinite":
            assert torch.equal(hit.state_dict()[name], value), name


def test_a_tiny_temperature_draws_the_nearest_code():
    quantizer = make(sample_temperature=1e-30)
    z = batches(1)[0]
    assert torch.equal(quantizer(z).indices, wvq.assign(z, quantizer.embedding.detach()).indices)


def test_sampling_with_the_dense_loss_is_refused():
    with pytest.raises(ValueError, match="sample_temperature"):
        VectorQuantizer(DIM, CODES, sample_temperature=1.0, codebook_loss="dense")
    with pytest.raises(ValueError, match="sample_temperature"):
        VectorQuantizer(DIM, CODES, sample_temperature=-1.0)


# ---- entropy --------------------------------------------------------------------------


def materialised_entropy_loss(z, codes, tau, weight, diversity):
    row, _, code = soft_assign_entropy_materialised(z, codes, tau, torch.float64)
    return weight * (row - diversity * code), row, code


@pytest.mark.parametrize("tau", [0.5, 3.0])
def test_entropy_term_and_gradients_match_the_materialised_definition(tau):
    weight, diversity = 0.7, 1.3
    options = dict(entropy_weight=weight, entropy_tau=tau, diversity_weight=diversity, beta=0.0)
    quantizer = make(alpha=0.0, **options)
    z = batches(1)[0].requires_grad_()
    out = quantizer(z)
    out.loss.backward()
    z64 = z.detach().double().requires_grad_()
    codes64 = quantizer.embedding.detach().double().requires_grad_()
    expected, row, code = materialised_entropy_loss(z64, codes64, tau, weight, diversity)
    expected.backward()
    torch.testing.assert_close(out.stats["row_entropy"].double(), row, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.stats["code_entropy"].double(), code, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(
        quantizer.embedding.grad.double(), codes64.grad, rtol=1e-4, atol=1e-7
    )


def test_entropy_regulariser_spreads_the_batch_over_more_codes():
    """Trained on the entropy term alone, the objective falls and the batch's code entropy
    rises: the codes, far from the features at first, spread over them."""
    quantizer = make(entropy_weight=1.0, entropy_tau=0.5, alpha=0.0, beta=0.0)
    z = batches(1, rows=256)[0] * 0.3
    optimizer = torch.optim.SGD(quantizer.parameters(), lr=0.5)
    first = quantizer(z).stats
    for _ in range(30):
        out = quantizer(z)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    last = quantizer(z).stats
    objective = [s["row_entropy"] - s["code_entropy"] for s in (first, last)]
    assert objective[1] < objective[0] - 0.5
    assert last["code_entropy"] > first["code_entropy"] + 0.5


def test_without_the_option_the_entropy_stats_are_zero_and_the_loss_unchanged():
    plain, weighted = make(), make(entropy_weight=0.0, entropy_tau=0.1)
    z = batches(1)[0]
    a, b = plain(z), weighted(z)
    assert a.stats["row_entropy"] == 0 and a.stats["code_entropy"] == 0
    assert torch.equal(a.loss, b.loss)


def test_entropy_with_an_ema_codebook_reaches_the_features_only():
    quantizer = make(ema=True, entropy_weight=0.5)
    z = batches(1)[0].requires_grad_()
    quantizer(z).loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
