"""wvq_kernels.nn.VectorQuantize against vector-quantize-pytorch's VectorQuantize, loaded with
the same state (the peer's state_dict, through the swap-in's key mapping): same indices (float
ties aside), outputs, losses, input gradients and EMA codebooks after a training step."""

import pytest
import torch

from wvq_kernels.nn import VectorQuantize

vqp = pytest.importorskip("vector_quantize_pytorch")

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, CODES = 16, 32
# Two codes whose float64 distances to a row differ by less than this may be chosen
# differently by the peer's float32 ‖x‖² + ‖c‖² − 2x·c and by our exact kernel.
TIE = 1e-4

CASES = {
    "default (rotation trick)": {},
    "straight-through": {"rotation_trick": False},
    "cosine": {"use_cosine_sim": True},
    "cosine straight-through": {"use_cosine_sim": True, "rotation_trick": False},
    "projection": {"codebook_dim": 8, "commitment_weight": 0.25},
    "shared heads": {"heads": 2, "codebook_dim": 8},
    "separate heads": {"heads": 2, "codebook_dim": 4, "separate_codebook_per_head": True},
    "channel first": {"channel_last": False},
    "learnable codebook": {"learnable_codebook": True, "ema_update": False},
    "orthogonal regularisation": {"orthogonal_reg_weight": 10.0},
    "affine codebook": {"affine_param": True},
}


def pair(options: dict):
    torch.manual_seed(0)
    theirs = vqp.VectorQuantize(DIM, CODES, **options)
    with torch.no_grad():
        # Spread codes, so that the batch does not fall on one or two of them.
        theirs._codebook.embed.normal_()
        if options.get("use_cosine_sim"):
            # The peer keeps cosine codebooks normalised, and its distances assume it.
            theirs._codebook.embed.copy_(
                torch.nn.functional.normalize(theirs._codebook.embed, dim=-1)
            )
        theirs._codebook.embed_avg.copy_(theirs._codebook.embed)
    ours = VectorQuantize(DIM, CODES, **options)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def batch(options: dict, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (2, DIM, 24) if options.get("channel_last") is False else (2, 24, DIM)
    return torch.randn(shape, generator=generator)


def run(module, x: torch.Tensor, **kwargs):
    x = x.clone().requires_grad_()
    quantized, indices, loss = module(x, **kwargs)
    total = quantized.square().sum() + loss
    # In eval mode the peer's output carries no gradient to the input.
    if total.requires_grad:
        total.backward()
    return quantized.detach(), indices, loss.detach(), x.grad


def assert_same_choices(ours: torch.Tensor, theirs: torch.Tensor, gap: torch.Tensor) -> None:
    """Equal indices, except where the float64 distance gap between the two choices is a tie."""
    differs = ours != theirs
    assert (gap[differs] <= TIE).all(), f"{int(differs.sum())} indices differ beyond ties"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_same_indices_outputs_losses_and_gradients(options, training):
    ours, theirs = pair(options)
    ours.train(training), theirs.train(training)
    x = batch(options)
    torch.manual_seed(2)
    q_ours, i_ours, loss_ours, grad_ours = run(ours, x)
    torch.manual_seed(2)
    q_theirs, i_theirs, loss_theirs, grad_theirs = run(theirs, x)
    assert torch.equal(i_ours, i_theirs)
    torch.testing.assert_close(q_ours, q_theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_ours, loss_theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-4, atol=1e-5)
    assert (grad_ours is None) == (not training)
    # The EMA step (training) leaves the same codebook.
    torch.testing.assert_close(ours.codebook, theirs.codebook.detach(), rtol=1e-5, atol=1e-6)


def test_indices_agree_up_to_ties_at_larger_scale():
    ours, theirs = pair({})
    ours.eval(), theirs.eval()
    x = torch.randn(4, 512, DIM, generator=torch.Generator().manual_seed(3))
    i_ours, i_theirs = ours(x)[1], theirs(x)[1]
    distances = torch.cdist(x.double().reshape(-1, DIM), ours.codebook.double()).square()
    chosen = distances.gather(1, i_ours.reshape(-1, 1)).squeeze(1)
    peer_chosen = distances.gather(1, i_theirs.reshape(-1, 1)).squeeze(1)
    # Ours is the float64 optimum on every row.
    torch.testing.assert_close(chosen, distances.min(1).values, rtol=0, atol=1e-9)
    assert_same_choices(i_ours.reshape(-1), i_theirs.reshape(-1), (peer_chosen - chosen).abs())


# The peer's masked commitment loss compares the codes with the raw input rather than the
# normalised features, so the cosine case is compared without it.
MASKED_CASES = {"l2": {}, "cosine": {"use_cosine_sim": True, "commitment_weight": 0.0}}


@pytest.mark.parametrize("options", MASKED_CASES.values(), ids=MASKED_CASES.keys())
def test_masked_forward_matches_theirs(options):
    ours, theirs = pair(options)
    x, lens = batch(options), torch.tensor([10, 17])
    results = [run(module, x, lens=lens) for module in (ours, theirs)]
    (q_ours, i_ours, loss_ours, grad_ours), (q_theirs, i_theirs, loss_theirs, grad_theirs) = results
    assert torch.equal(i_ours, i_theirs)
    torch.testing.assert_close(q_ours, q_theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss_ours, loss_theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.codebook, theirs.codebook.detach(), rtol=1e-5, atol=1e-6)


def test_weighted_and_accumulated_ema_steps_match_theirs():
    ours, theirs = pair({})
    x, later = batch({}), batch({}, seed=5)
    weights = torch.tensor([1.0, 0.0] * (CODES // 2))
    for module in (ours, theirs):
        module(x, ema_update_weight=weights)
        module(later, accum_ema_update=True)
        module(x)
    torch.testing.assert_close(ours.codebook, theirs.codebook, rtol=1e-5, atol=1e-6)
    cluster_size = ours.quantizers[0].cluster_size
    torch.testing.assert_close(cluster_size, theirs._codebook.cluster_size[0])


def bridged_pair(**options):
    """Peer and swap-in with a learned codebook seen through a linear vq_bridge."""
    modules = []
    for cls in (vqp.VectorQuantize, VectorQuantize):
        torch.manual_seed(0)
        bridge = torch.nn.Linear(DIM, DIM)
        modules.append(cls(DIM, CODES, vq_bridge=bridge, **options))
    theirs, ours = modules
    with torch.no_grad():
        theirs._codebook.embed.normal_()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def sgd(parameters):
    return torch.optim.SGD(parameters, lr=0.5)


@pytest.mark.parametrize(
    "options", [{}, {"in_place_codebook_optimizer": sgd}], ids=["bridge", "bridge, in place"]
)
def test_bridged_and_in_place_optimised_codebooks_match_theirs(options):
    ours, theirs = bridged_pair(**options)
    x = batch({})
    results = [module(x, return_loss_breakdown=True) for module in (ours, theirs)]
    (q_ours, i_ours, loss_ours, parts_ours), (q_theirs, i_theirs, loss_theirs, parts_theirs) = (
        results
    )
    assert torch.equal(i_ours, i_theirs)
    torch.testing.assert_close(q_ours, q_theirs)
    torch.testing.assert_close(loss_ours, loss_theirs)
    torch.testing.assert_close(parts_ours.inplace_optimize, parts_theirs.inplace_optimize)
    # The codebook and the bridge moved alike (in place: by the optimizer inside forward).
    torch.testing.assert_close(ours.codebook, theirs.codebook)
    torch.testing.assert_close(ours.vq_bridge.weight, theirs._codebook.vq_bridge.weight)
    if options:
        assert not torch.equal(ours.vq_bridge.weight, bridged_pair()[0].vq_bridge.weight)


CROSS_ENTROPY_CASES = {
    "l2": {},
    "cosine": {"use_cosine_sim": True},
    "separate heads": {"heads": 2, "codebook_dim": 4, "separate_codebook_per_head": True},
    "learnable": {"learnable_codebook": True, "ema_update": False},
}


@pytest.mark.parametrize("options", CROSS_ENTROPY_CASES.values(), ids=CROSS_ENTROPY_CASES.keys())
def test_cross_entropy_commitment_matches_theirs(options):
    ours, theirs = pair({"commitment_use_cross_entropy_loss": True, **options})
    x, lens = batch(options), torch.tensor([24, 15])
    # Frozen: the peer's EMA step rewrites its codebook through .data before the backward,
    # which then takes the distances' gradient with the new codes; ours uses the codes the
    # forward saw.
    results = [run(module, x, lens=lens, freeze_codebook=True) for module in (ours, theirs)]
    (_, i_ours, loss_ours, grad_ours), (_, i_theirs, loss_theirs, grad_theirs) = results
    assert torch.equal(i_ours, i_theirs)
    torch.testing.assert_close(loss_ours, loss_theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-4, atol=1e-5)
    if options.get("learnable_codebook"):
        torch.testing.assert_close(
            ours.quantizers[0].embedding.grad, theirs._codebook.embed.grad[0], rtol=1e-4, atol=1e-6
        )


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("options", CROSS_ENTROPY_CASES.values(), ids=CROSS_ENTROPY_CASES.keys())
def test_loss_of_given_codes_matches_theirs(options, training):
    ours, theirs = pair(options)
    ours.train(training), theirs.train(training)
    x = batch(options)
    shape = (2, 24, 2) if options.get("heads") else (2, 24)
    codes = torch.randint(-1, CODES, shape, generator=torch.Generator().manual_seed(4))
    q_ours, loss_ours = ours(x, indices=codes)
    q_theirs, loss_theirs = theirs(x, indices=codes)
    assert q_ours.shape == q_theirs.shape
    torch.testing.assert_close(q_ours, q_theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_ours, loss_theirs, rtol=1e-5, atol=1e-6)


TOP_CASES = {
    "l2": {},
    "cosine": {"use_cosine_sim": True},
    "projection": {"codebook_dim": 8},
    "learnable": {"learnable_codebook": True, "ema_update": False},
    "channel first": {"channel_last": False},
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("options", TOP_CASES.values(), ids=TOP_CASES.keys())
def test_top_k_codes_match_theirs(options, training):
    ours, theirs = pair(options)
    ours.train(training), theirs.train(training)
    x, lens = batch(options), None if options else torch.tensor([24, 11])
    results = []
    for module in (ours, theirs):
        x_in = x.clone().requires_grad_()
        quantized, indices, loss = module(x_in, topk=3, lens=lens)
        (quantized.square().sum() + loss.sum()).backward()
        results.append((quantized.detach(), indices, loss.detach(), x_in.grad))
    (q_ours, i_ours, loss_ours, grad_ours), (q_theirs, i_theirs, loss_theirs, grad_theirs) = results
    assert torch.equal(i_ours, i_theirs)
    torch.testing.assert_close(q_ours, q_theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_ours, loss_theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-4, atol=1e-5)


DIVERSITY_CASES = {
    "l2": {},
    "cosine": {"use_cosine_sim": True},
    "shared heads": {"heads": 2, "codebook_dim": 8},
    "learnable": {"learnable_codebook": True, "ema_update": False},
}


@pytest.mark.parametrize("options", DIVERSITY_CASES.values(), ids=DIVERSITY_CASES.keys())
def test_codebook_diversity_loss_matches_theirs(options):
    weights = {"codebook_diversity_loss_weight": 0.5, "codebook_diversity_temperature": 3.0}
    ours, theirs = pair({**weights, **options})
    x = batch(options)
    # Frozen, as for the cross-entropy: the peer's backward would see its updated codebook.
    results = []
    for module in (ours, theirs):
        x_in = x.clone().requires_grad_()
        _, indices, loss, parts = module(x_in, freeze_codebook=True, return_loss_breakdown=True)
        loss.backward()
        results.append((indices, loss.detach(), parts.codebook_diversity.detach(), x_in.grad))
    (i_ours, loss_ours, div_ours, grad_ours), (i_theirs, loss_theirs, div_theirs, grad_theirs) = (
        results
    )
    assert torch.equal(i_ours, i_theirs) and div_ours < 0
    torch.testing.assert_close(div_ours, div_theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_ours, loss_theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-4, atol=1e-5)
    if options.get("learnable_codebook"):
        torch.testing.assert_close(
            ours.quantizers[0].embedding.grad, theirs._codebook.embed.grad[0], rtol=1e-4, atol=1e-6
        )


@pytest.mark.parametrize("options", [{}, {"use_cosine_sim": True}], ids=["l2", "cosine"])
def test_update_indices_matches_theirs(options):
    ours, theirs = pair(options)
    x, lens = batch(options), torch.tensor([24, 13])
    codes = ours.eval()(x)[1]
    for module in (ours, theirs):
        module.train().update_indices(x, codes, mask=torch.arange(24) < lens[:, None])
    torch.testing.assert_close(ours.codebook, theirs.codebook, rtol=1e-5, atol=1e-6)
    cluster_size = ours.quantizers[0].cluster_size
    torch.testing.assert_close(cluster_size, theirs._codebook.cluster_size[0])


LOOKUP_CASES = {
    "plain": ({}, (2, 24, DIM)),
    "separate heads": (
        {"heads": 2, "codebook_dim": 4, "separate_codebook_per_head": True},
        (2, 24, DIM),
    ),
    "shared heads": ({"heads": 2, "codebook_dim": 8}, (2, 24, DIM)),
    "image": ({"accept_image_fmap": True}, (2, DIM, 4, 6)),
    "cosine": ({"use_cosine_sim": True}, (2, 24, DIM)),
}


@pytest.mark.parametrize("options, shape", LOOKUP_CASES.values(), ids=LOOKUP_CASES.keys())
def test_codes_and_outputs_from_indices_match_theirs(options, shape):
    ours, theirs = pair(options)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    indices = ours.eval()(x)[1]
    codes = theirs.get_codes_from_indices(indices)
    assert ours.codebook.shape == theirs.codebook.shape
    if options.get("heads") and not options.get("separate_codebook_per_head"):
        # The peer leaves a shared codebook's heads apart here ((B, N, heads, d)), which its
        # own get_output_from_indices then cannot project; ours joins them, as forward does.
        codes = codes.flatten(-2)
        torch.testing.assert_close(ours.get_codes_from_indices(indices), codes)
        return
    torch.testing.assert_close(ours.get_codes_from_indices(indices), codes)
    torch.testing.assert_close(
        ours.get_output_from_indices(indices), theirs.eval().get_output_from_indices(indices)
    )


def per_token_shift(x_shape):
    """A codebook_transform_fn: each token's codebook is the codebook plus a token-dependent
    shift scaled by a learned factor, (1, K, d) -> (1, B, N, K, d)."""
    shifts = 0.3 * torch.randn(*x_shape[:2], 1, DIM, generator=torch.Generator().manual_seed(8))
    scale = torch.ones((), requires_grad=True)

    def transform(codebook):
        return codebook[:, None, None] + scale * shifts[None]

    return transform, scale


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("options", [{}, {"use_cosine_sim": True}], ids=["l2", "cosine"])
def test_implicit_per_token_codebooks_match_theirs(options, training):
    ours, theirs = pair(options)
    ours.train(training), theirs.train(training)
    x = batch(options)
    results = []
    for module in (ours, theirs):
        transform, scale = per_token_shift(x.shape)
        x_in = x.clone().requires_grad_()
        quantized, indices, loss = module(x_in, codebook_transform_fn=transform)
        (quantized.square().sum() + loss).backward()
        results.append((quantized.detach(), indices, loss.detach(), x_in.grad, scale.grad))
    for mine, reference in zip(*results):
        if isinstance(mine, torch.Tensor) and mine.dtype == torch.int64:
            assert torch.equal(mine, reference)
        else:
            torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.codebook, theirs.codebook.detach(), rtol=1e-5, atol=1e-6)
