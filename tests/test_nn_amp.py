"""VectorQuantizer under mixed precision: every variant under autocast (bf16, fp16) and as a
half-precision module trains with finite losses and gradients, keeps its statistics in float32,
and picks the float64-nearest code wherever the margin exceeds the rounding of its dtype."""

import copy

import pytest
import torch
from torch import nn

from wvq_kernels.nn import VectorQuantizer
from wvq_kernels.testing import AssignmentTruth

DIM, CODES = 6, 64

VARIANTS = {
    "vanilla": {},
    "ema": {"ema": True},
    "wasserstein": {"distribution_loss": "wasserstein"},
    "simvq": {"linear_reparam": True},
    "nsvq": {"codebook_loss": "dense", "reservoir_size": 128, "tau": 0.5},
    # decay 0.3: unused codes fall below the threshold on the first step and are refilled.
    "projected_refills": {"codebook_dim": 4, "dead_code_threshold": 0.5, "decay": 0.3},
    "ema_projected_refills": {"ema": True, "codebook_dim": 4, "dead_code_threshold": 0.5},
    "kmeans_init": {"kmeans_init": True, "ema": True},
    "sampled": {"sample_temperature": 0.5},
    "entropy": {"entropy_weight": 0.1, "entropy_tau": 0.5},
}

# How each mode runs: autocast to a dtype around an float32 module, or the module cast to it.
MODES = {
    "autocast_bf16": ("autocast", torch.bfloat16),
    "autocast_fp16": ("autocast", torch.float16),
    "module_bf16": ("module", torch.bfloat16),
    "module_fp16": ("module", torch.float16),
}

# Operand rounding of the assignment in each dtype, as a precision of wvq_kernels.testing's
# model: bf16 keeps 8 significant bits; fp16 keeps 11, as tf32, whose 2^-10 covers it.
BOUND_PRECISION = {torch.bfloat16: "bf16", torch.float16: "tf32"}

pytestmark = pytest.mark.usefixtures("one_thread")


def make(name, seed=0):
    torch.manual_seed(seed)
    return VectorQuantizer(DIM, CODES, feature_queue_size=300, **VARIANTS[name])


def spread_codes(quantizer, anchors):
    """Codes at the features of ``anchors`` (the default init is ~0, where every row ties)."""
    codes = quantizer.frozen_codes if quantizer.linear_reparam else quantizer.embedding
    with torch.no_grad():
        if quantizer.codebook_dim != DIM:
            # A projection onto the first coordinates keeps the anchors apart; a random one
            # with a bias crowds them, and few rows would be decisive.
            nn.init.eye_(quantizer.project_in.weight)
            nn.init.zeros_(quantizer.project_in.bias)
        codes.copy_(quantizer.project_in(anchors))
        if quantizer.ema:
            quantizer.embed_sum.copy_(codes)


def run(quantizer, z, mode):
    """(module, input, out) of one forward in ``mode``: autocast around the quantizer, or a
    copy cast to the dtype fed ``z`` in that dtype."""
    kind, dtype = MODES[mode]
    if kind == "autocast":
        with torch.autocast("cpu", dtype=dtype):
            return quantizer, z, quantizer(z)
    low = copy.deepcopy(quantizer).to(dtype)
    z = z.detach().to(dtype).requires_grad_(z.requires_grad)
    return low, z, low(z)


def statistics(quantizer):
    named = dict(quantizer.named_buffers())
    names = ["cluster_size", "queue.rows", "reservoir.rows"]
    names += ["embedding", "embed_sum"] if quantizer.ema else []
    return {name: named[name] for name in names if name in named}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", VARIANTS)
def test_training_step(name, mode):
    quantizer = make(name)
    z = torch.randn(4, 25, DIM, requires_grad=True)
    codes_before = quantizer.codes().detach().clone()
    trained, z, out = run(quantizer, z, mode)
    dtype = MODES[mode][1]
    assert out.quantized.dtype == dtype and out.quantized.shape == z.shape
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    (out.loss + out.quantized.float().square().mean()).backward()
    assert z.grad.dtype == z.dtype and torch.isfinite(z.grad).all()
    for parameter in trained.parameters():
        assert parameter.grad is None or parameter.grad.dtype == parameter.dtype
        assert parameter.grad is None or torch.isfinite(parameter.grad).all()
    for key, buffer in statistics(trained).items():
        assert buffer.dtype == torch.float32, key
        assert torch.isfinite(buffer).all(), key
    assert trained.skipped_nonfinite == 0
    if "refills" in name or name == "kmeans_init":
        # Refills put queued features into dead codes; k-means fits the first batch.
        assert trained.initialized
        assert not torch.equal(trained.codes().detach().float(), codes_before)
    if name == "nsvq":
        assert trained.refill_dead_codes(0.5) > 0
        assert torch.isfinite(trained.embedding).all()


@pytest.mark.parametrize("name", ["ema", "wasserstein", "nsvq", "ema_projected_refills"])
def test_half_module_keeps_statistics_bits(name):
    quantizer = make(name)
    quantizer.train()(torch.randn(3, 40, DIM))
    expected = {key: value.clone() for key, value in statistics(quantizer).items()}
    # One third is not a bf16 or fp16 value: a cast would change it.
    quantizer.cluster_size.fill_(1 / 3)
    expected["cluster_size"] = quantizer.cluster_size.clone()
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.float()):
        cast(quantizer)
        for key, buffer in statistics(quantizer).items():
            assert buffer.dtype == torch.float32 and torch.equal(buffer, expected[key]), key
    # The weights do follow the cast.
    assert all(p.dtype == torch.float32 for p in quantizer.parameters())
    assert all(p.dtype == torch.bfloat16 for p in quantizer.to(torch.bfloat16).parameters())


def features_and_codes(quantizer, z):
    """The float32 features and codes the quantizer assigns (every variant here is l2, so
    neither is normalised)."""
    with torch.no_grad():
        return quantizer.project_in(z), quantizer.codes()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", VARIANTS)
def test_low_precision_matches_float32(name, mode):
    quantizer = make(name)
    generator = torch.Generator().manual_seed(2)
    anchors = torch.randn(CODES, DIM, generator=generator)
    spread_codes(quantizer, anchors)
    quantizer.eval()
    kind, dtype = MODES[mode]
    # Rows near the codes' anchors (clear winners) and random ones (close races).
    z = torch.randn(400, DIM, generator=generator)
    picks = torch.randint(CODES, (200,), generator=generator)
    z[:200] = anchors[picks] + 0.05 * z[:200]
    low, _, out = run(quantizer, z, mode)
    # The float32 twin of what ran: the same (rounded) weights and input, in float32.
    reference = copy.deepcopy(low).float() if kind == "module" else quantizer
    z_reference = z.to(dtype).float() if kind == "module" else z
    expected = reference(z_reference)
    features, codes = features_and_codes(reference, z_reference)
    truth = AssignmentTruth(features, codes, "l2")
    precision = BOUND_PRECISION[dtype]
    assert truth.choice_failures(expected.indices, "ieee") == []
    assert truth.choice_failures(out.indices, precision) == []
    assert truth.decisive(precision).float().mean() > 0.15, "too few decisive rows to test"
    # Where the codes agree, the outputs are the float32 ones rounded to the dtype.
    same = out.indices == expected.indices
    tolerance = 2 * torch.finfo(dtype).eps
    torch.testing.assert_close(
        out.quantized[same].float(),
        expected.quantized[same].to(dtype).float(),
        rtol=tolerance,
        atol=tolerance * expected.quantized.abs().max().item(),
    )
