"""ResidualVQ and GroupedResidualVQ: parity with vector-quantize-pytorch's (the same codebooks
through the peer's state_dict give the same indices, outputs, losses and gradients), quantize
dropout, shared codebooks, feature maps at any size, declined options, mixed precision."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from test_distributed import TIMEOUT, init_group, spawn
from torch.profiler import ProfilerActivity, profile

from wvq_kernels.nn import GroupedResidualVQ, ResidualVQ

peer = pytest.importorskip("vector_quantize_pytorch")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

DIM, CODES = 16, 64


def twins(peer_class, our_class, seed=0, **options):
    """(peer, ours) with the peer's state loaded into ours."""
    torch.manual_seed(seed)
    theirs = peer_class(**options)
    ours = our_class(**options)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def batch(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def assert_same_outputs(theirs, ours):
    assert len(theirs) == len(ours)
    for peer_value, our_value in zip(theirs, ours):
        if peer_value.dtype == torch.int64:
            assert torch.equal(peer_value, our_value)
        else:
            torch.testing.assert_close(our_value, peer_value, rtol=1e-5, atol=1e-5)


RESIDUAL_CASES = {
    "plain": {},
    "projected": {"codebook_dim": 8},
    "sizes_per_layer": {"codebook_size": (32, 64, 128), "num_quantizers": None},
    "shared": {"shared_codebook": True},
    "cosine": {"use_cosine_sim": True},
}


@pytest.mark.parametrize("case", RESIDUAL_CASES)
def test_eval_matches_peer(case):
    options = {"dim": DIM, "num_quantizers": 3, "codebook_size": CODES} | RESIDUAL_CASES[case]
    theirs, ours = twins(peer.ResidualVQ, ResidualVQ, **options)
    theirs.eval(), ours.eval()
    x = batch(2, 40, DIM)
    expected = theirs(x, return_all_codes=True)
    got = ours(x, return_all_codes=True)
    assert got[1].shape == (2, 40, 3) and got[2].shape == (3,)
    assert_same_outputs(expected, got)
    torch.testing.assert_close(ours.get_output_from_indices(got[1]), got[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("quant_grad_frac", [0.0, 0.5])
def test_training_step_matches_peer(quant_grad_frac):
    """Same indices and losses, same input gradients (rotation trick) and the same EMA
    codebooks after the step."""
    options = {"dim": DIM, "num_quantizers": 3, "codebook_size": CODES}
    theirs, ours = twins(peer.ResidualVQ, ResidualVQ, quant_grad_frac=quant_grad_frac, **options)
    results = []
    for module in (theirs, ours):
        x = batch(2, 40, DIM).requires_grad_()
        quantized, indices, losses = module.train()(x)
        (quantized.square().sum() + losses.sum()).backward()
        results.append((quantized, indices, losses, x.grad))
    assert_same_outputs(*results)
    for peer_layer, our_layer in zip(theirs.layers, ours.layers):
        torch.testing.assert_close(our_layer.codebook, peer_layer.codebook, rtol=1e-5, atol=1e-6)


def test_diveq_matches_peer():
    """DiVeQ: learned codebooks, no commitment loss, the directional reparameterisation of the
    summed output; the same noise draw (the same torch seed) gives the same values and
    gradients to the input and to every codebook."""
    options = {"dim": DIM, "num_quantizers": 3, "codebook_size": CODES, "diveq": True}
    theirs, ours = twins(peer.ResidualVQ, ResidualVQ, **options)
    results = []
    for module in (theirs, ours):
        x = batch(2, 40, DIM).requires_grad_()
        torch.manual_seed(5)
        quantized, indices, losses = module.train()(x)
        (quantized.square().sum() + losses.sum()).backward()
        # The peer's codebooks carry a leading head dimension.
        codebook_gradients = [
            p.grad.reshape(CODES, DIM) for p in module.parameters() if p.grad is not None
        ]
        assert len(codebook_gradients) == 3
        results.append((quantized, indices, losses, x.grad, *codebook_gradients))
    assert_same_outputs(*results)


def test_shared_codebook_training_matches_peer():
    """The shared EMA codebook takes every layer's statistics and is recomputed once."""
    options = {"dim": DIM, "num_quantizers": 3, "codebook_size": CODES, "shared_codebook": True}
    theirs, ours = twins(peer.ResidualVQ, ResidualVQ, **options)
    x = batch(2, 40, DIM)
    assert_same_outputs(theirs.train()(x), ours.train()(x))
    assert len({id(layer) for layer in ours.layers}) == 1
    torch.testing.assert_close(
        ours.layers[0].codebook, theirs.layers[0].codebook, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "dropout",
    [
        {},
        {"quantize_dropout_cutoff_index": 1},
        {"quantize_dropout_cutoff_index": 1, "quantize_dropout_multiple_of": 2},
    ],
)
@pytest.mark.parametrize("seed", [0, 3, 7])
def test_quantize_dropout_matches_peer(dropout, seed):
    options = {"dim": DIM, "num_quantizers": 5, "codebook_size": CODES, "quantize_dropout": True}
    theirs, ours = twins(peer.ResidualVQ, ResidualVQ, **options, **dropout)
    x = batch(2, 30, DIM)
    expected = theirs.train()(x, rand_quantize_dropout_fixed_seed=seed, return_all_codes=True)
    got = ours.train()(x, rand_quantize_dropout_fixed_seed=seed, return_all_codes=True)
    assert_same_outputs(expected, got)
    kept = (got[1][0, 0] >= 0).sum()
    assert (got[1][..., kept:] == -1).all() and (got[2][kept:] == 0).all()
    assert (got[1][..., :kept] >= 0).all() and kept >= dropout.get(
        "quantize_dropout_cutoff_index", 0
    ) + 1
    # Coarse indices (only the kept layers) decode to the same output.
    ours.eval()
    torch.testing.assert_close(
        ours.get_output_from_indices(got[1][..., :kept]),
        ours.get_output_from_indices(got[1]),
    )


def test_quantize_dropout_draws_vary_and_eval_keeps_all():
    ours = ResidualVQ(dim=DIM, num_quantizers=6, codebook_size=CODES, quantize_dropout=True)
    x = batch(1, 20, DIM)
    torch.manual_seed(0)
    kept = {int((ours.train()(x)[1][0, 0] >= 0).sum()) for _ in range(20)}
    assert len(kept) > 2 and kept <= set(range(1, 7))
    assert (ours.eval()(x)[1] >= 0).all()


DROPOUT_STEPS = 8


def kept_layers_per_step(rank: int, world: int, folder: str) -> None:
    """A rank with its own torch seed: the dropout draws must still agree, or the layers'
    synchronised statistics would wait on collectives the other rank never makes."""
    init_group(rank, world, folder, TIMEOUT)
    try:
        torch.manual_seed(0)
        module = ResidualVQ(dim=DIM, num_quantizers=6, codebook_size=CODES, quantize_dropout=True)
        torch.manual_seed(100 + rank)
        kept = [
            int((module.train()(batch(1, 8, DIM, seed=step))[1][0, 0] >= 0).sum())
            for step in range(DROPOUT_STEPS)
        ]
        torch.save(kept, os.path.join(folder, f"kept{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_quantize_dropout_draws_agree_across_ranks():
    with tempfile.TemporaryDirectory() as folder:
        spawn(kept_layers_per_step, 2, folder)
        first, second = (torch.load(os.path.join(folder, f"kept{r}.pt")) for r in range(2))
    assert first == second and len(set(first)) > 1


def test_mask_matches_peer():
    options = {"dim": DIM, "num_quantizers": 3, "codebook_size": CODES}
    theirs, ours = twins(peer.ResidualVQ, ResidualVQ, **options)
    x = batch(2, 30, DIM)
    mask = torch.arange(30)[None, :] < torch.tensor([[30], [12]])
    expected, got = theirs.eval()(x, mask=mask), ours.eval()(x, mask=mask)
    assert_same_outputs(expected, got)
    assert (got[0][~mask] == 0).all() and (got[1][~mask] == -1).all()


def test_grouped_matches_peer():
    options = {"dim": DIM, "groups": 2, "num_quantizers": 3, "codebook_size": CODES}
    theirs, ours = twins(peer.GroupedResidualVQ, GroupedResidualVQ, **options)
    x = batch(2, 40, DIM)
    expected = theirs.eval()(x, return_all_codes=True)
    got = ours.eval()(x, return_all_codes=True)
    assert got[1].shape == (2, 2, 40, 3) and got[2].shape == (2, 3)
    assert [codes.shape for codes in got[3]] == [(3, 2, 40, DIM // 2)] * 2
    assert_same_outputs(expected[:3] + expected[3], got[:3] + got[3])
    torch.testing.assert_close(ours.get_output_from_indices(got[1]), got[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.codebooks, theirs.codebooks)


BEAM_CASES = {
    "plain": {"beam_size": 3},
    "score_weights": {"beam_size": 3, "beam_score_quantizer_weights": [1.0, 0.5, 2.0, 1.0]},
    "projected": {"beam_size": 2, "codebook_dim": 8},
    "cosine": {"beam_size": 3, "use_cosine_sim": True},
    "eval_beam_size": {"beam_size": 2, "eval_beam_size": 4},
    "dropout": {"beam_size": 3, "quantize_dropout": True},
}


def forward_and_backward(module, train: bool, **forward_options):
    """(quantized, indices, losses, input gradient, parameter gradients) of one step."""
    x = batch(2, 50, DIM).requires_grad_()
    quantized, indices, losses = module.train(train)(x, **forward_options)
    if not train:
        return quantized, indices, losses
    (quantized.square().sum() + losses.sum()).backward()
    gradients = [p.grad.flatten() for p in module.parameters() if p.grad is not None]
    return quantized, indices, losses, x.grad, *gradients


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("case", BEAM_CASES)
def test_beam_search_matches_peer(case, train):
    """The same kept paths, outputs, per-layer losses and gradients as the peer's search."""
    options = {"dim": DIM, "num_quantizers": 4, "codebook_size": CODES} | BEAM_CASES[case]
    theirs, ours = twins(peer.ResidualVQ, ResidualVQ, **options)
    seed = {"rand_quantize_dropout_fixed_seed": 3} if "quantize_dropout" in options else {}
    expected = forward_and_backward(theirs, train, **seed)
    got = forward_and_backward(ours, train, **seed)
    assert_same_outputs(expected, got)
    greedy = ResidualVQ(**(options | {"beam_size": None, "eval_beam_size": None}))
    greedy.load_state_dict(theirs.state_dict())
    # The search keeps a path other than the greedy one for some tokens.
    assert not torch.equal(greedy.train(train)(batch(2, 50, DIM), **seed)[1], got[1])


def test_beam_search_forward_size_and_grouped_match_peer():
    options = {"dim": DIM, "num_quantizers": 4, "codebook_size": CODES}
    theirs, ours = twins(peer.ResidualVQ, ResidualVQ, **options)
    x = batch(2, 50, DIM)
    assert_same_outputs(theirs.eval()(x, beam_size=4), ours.eval()(x, beam_size=4))
    theirs, ours = twins(
        peer.GroupedResidualVQ, GroupedResidualVQ, groups=2, beam_size=3, **options
    )
    assert_same_outputs(theirs.eval()(x), ours.eval()(x))


@pytest.mark.parametrize("shared", [False, True])
def test_beam_search_updates_every_layer_with_the_kept_path(shared):
    """Each layer's EMA step takes the kept path's codes and that layer's residual (a shared
    codebook one step per layer, then recomputed once); the codebooks are the smoothed means.
    (The peer updates only the first layer: it takes ``all_residuals[..., 0, :]`` on the
    layer axis.)"""
    decay, eps = 0.8, 1e-5
    ours = ResidualVQ(
        dim=DIM, num_quantizers=3, codebook_size=CODES, beam_size=3, shared_codebook=shared
    )
    codebooks = [layer.codebook.clone() for layer in ours.layers]
    expected = {id(layer): (torch.ones(CODES), layer.codebook.clone()) for layer in ours.layers}
    x = batch(2, 50, DIM)
    indices = ours.train()(x)[1]
    residual = x.reshape(-1, DIM)
    for layer, codebook, layer_indices in zip(ours.layers, codebooks, indices.unbind(-1)):
        layer_indices = layer_indices.reshape(-1)
        counts = torch.bincount(layer_indices, minlength=CODES).float()
        sums = torch.zeros(CODES, DIM).index_add_(0, layer_indices, residual)
        cluster_size, embed_sum = expected[id(layer)]
        expected[id(layer)] = (
            decay * cluster_size + (1 - decay) * counts,
            decay * embed_sum + (1 - decay) * sums,
        )
        residual = residual - codebook[layer_indices]
    for layer in ours.layers:
        cluster_size, embed_sum = expected[id(layer)]
        torch.testing.assert_close(layer._codebook.cluster_size.flatten(), cluster_size)
        torch.testing.assert_close(layer._codebook.embed_avg.reshape(CODES, DIM), embed_sum)
        total = cluster_size.sum()
        smoothed = (cluster_size + eps) / (total + CODES * eps) * total
        torch.testing.assert_close(layer.codebook, embed_sum / smoothed[:, None])


def test_beam_search_frozen_codebooks_stay():
    ours = ResidualVQ(dim=DIM, num_quantizers=3, codebook_size=CODES, beam_size=3)
    codebooks = ours.codebooks.clone()
    ours.train()(batch(2, 50, DIM), freeze_codebook=True)
    assert torch.equal(ours.codebooks, codebooks)


def test_beam_search_with_mask_matches_peer_and_is_per_token():
    """Padding takes no part: the peer's outputs, and the kept tokens' codes are those of a
    forward on them alone; the padding's outputs are zeros and its indices −1."""
    options = {"dim": DIM, "num_quantizers": 4, "codebook_size": CODES, "beam_size": 3}
    theirs, ours = twins(peer.ResidualVQ, ResidualVQ, **options)
    x = batch(2, 30, DIM)
    mask = torch.arange(30)[None, :] < torch.tensor([[30], [12]])
    # Training last: the peer's EMA step then moves other codebooks than ours.
    for train in (False, True):
        expected = theirs.train(train)(x, mask=mask)
        quantized, indices, losses = ours.train(train)(x, mask=mask)
        assert_same_outputs(expected, (quantized, indices, losses))
    ours.eval()
    quantized, indices, losses = ours(x, mask=mask)
    alone = ours(x[1:, :12])
    assert torch.equal(indices[1, :12], alone[1][0]) and torch.equal(quantized[1, :12], alone[0][0])
    assert (quantized[~mask] == 0).all() and (indices[~mask] == -1).all()
    assert torch.equal(indices[0], ours(x[:1])[1][0])


def test_beam_search_allocates_no_tokens_by_codes_matrix():
    """At K = 65,536 no operation of a training step (forward, backward, EMA steps) or an
    eval forward allocates more than a few codebooks' worth, where the N×K distances would
    be 16 times more. Measured with torch's profiler, which records every CPU allocation."""
    tokens, codes, dim = 512, 65536, 8
    ours = ResidualVQ(dim=dim, num_quantizers=3, codebook_size=codes, beam_size=4)
    x = batch(1, tokens, dim).requires_grad_()

    def step():
        quantized, _, losses = ours.train()(x)
        (quantized.sum() + losses.sum()).backward()
        ours.eval()(x)

    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    largest = max(event.cpu_memory_usage for event in profiler.events())
    codebook_bytes = codes * dim * 4
    assert largest <= 2 * codebook_bytes < tokens * codes * 4 / 16


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize(
    "options",
    [{}, {"quant_grad_frac": 0.5}, {"mlp_kwargs": {"depth": 2, "dim_hidden": 32}}],
    ids=["plain", "quant_grad_frac", "mlp_kwargs"],
)
def test_implicit_neural_codebook_matches_peer(options, train):
    """QINCo: the peer's MLPs load from its checkpoint and give the same codes, outputs,
    losses and gradients (to the input, the codebooks and every MLP weight); the indices
    decode to the forward's output through the chosen codes alone."""
    options = {"dim": DIM, "num_quantizers": 4, "codebook_size": CODES} | options
    theirs, ours = twins(peer.ResidualVQ, ResidualVQ, implicit_neural_codebook=True, **options)
    expected = forward_and_backward(theirs, train)
    got = forward_and_backward(ours, train)
    assert len(got) == len(expected) and len(ours.mlps) == 3
    assert_same_outputs(expected, got)
    decoded = ours.get_output_from_indices(got[1])
    torch.testing.assert_close(decoded, got[0].detach(), rtol=0, atol=1e-5)
    # The MLPs matter: the plain codebooks' sum is another output.
    plain = sum(layer.codebook[i] for layer, i in zip(ours.layers, got[1].unbind(-1)))
    assert not torch.allclose(plain, got[0].detach(), atol=1e-3)


def test_beam_search_options_checked():
    options = {"dim": DIM, "num_quantizers": 2, "codebook_size": CODES}
    with pytest.raises(TypeError, match="implicit_neural_codebook"):
        ResidualVQ(implicit_neural_codebook=True, beam_size=2, **options)
    implicit = ResidualVQ(implicit_neural_codebook=True, **options)
    with pytest.raises(TypeError, match="beam_size=2"):
        implicit(batch(1, 10, DIM), beam_size=2)
    with pytest.raises(ValueError, match="eval_beam_size"):
        ResidualVQ(eval_beam_size=2, **options)
    with pytest.raises(ValueError, match="beam_score_quantizer_weights"):
        ResidualVQ(beam_size=2, beam_score_quantizer_weights=[1.0], **options)


@pytest.mark.parametrize("layout", ["accept_image_fmap", "channel_last"])
def test_channel_first_inputs_at_any_size(layout):
    """(b, c, h, w) maps with h != c (the peer's stack needs c == h): the channel-last result,
    moved back."""
    options = {"dim": DIM, "num_quantizers": 3, "codebook_size": CODES, "codebook_dim": 8}
    flag = {"accept_image_fmap": True} if layout == "accept_image_fmap" else {"channel_last": False}
    torch.manual_seed(0)
    channel_first = ResidualVQ(**options, **flag).eval()
    channel_last = ResidualVQ(**options).eval()
    channel_last.load_state_dict(channel_first.state_dict())
    x = batch(2, DIM, 5, 7) if layout == "accept_image_fmap" else batch(2, DIM, 9)
    quantized, indices, _ = channel_first(x)
    expected = channel_last(x.movedim(1, -1))
    assert indices.shape == (*expected[1].shape[:-1], 3) and torch.equal(indices, expected[1])
    torch.testing.assert_close(quantized, expected[0].movedim(-1, 1))
    torch.testing.assert_close(channel_first.get_output_from_indices(indices), quantized)


# The ResidualVQ examples of the peer's README: (class, keywords, indices shape, losses shape),
# each on x of shape (1, 1024, 256). The shapes are the peer's actual ones (its README's
# comments still give (1, 8) losses).
README_EXAMPLES = {
    "residual": (ResidualVQ, {"num_quantizers": 8, "codebook_size": 1024}, (1, 1024, 8), (8,)),
    "diveq": (
        ResidualVQ,
        {"num_quantizers": 8, "codebook_size": 1024, "diveq": True},
        (1, 1024, 8),
        (8,),
    ),
    "shared stochastic": (
        ResidualVQ,
        {
            "num_quantizers": 8,
            "codebook_size": 1024,
            "stochastic_sample_codes": True,
            "sample_codebook_temp": 0.1,
            "shared_codebook": True,
        },
        (1, 1024, 8),
        (8,),
    ),
    "grouped": (
        GroupedResidualVQ,
        {"num_quantizers": 8, "groups": 2, "codebook_size": 1024},
        (2, 1, 1024, 8),
        (2, 8),
    ),
    "kmeans init": (
        ResidualVQ,
        {"codebook_size": 256, "num_quantizers": 4, "kmeans_init": True, "kmeans_iters": 10},
        (1, 1024, 4),
        (4,),
    ),
}


@pytest.mark.parametrize("example", README_EXAMPLES)
def test_peer_readme_examples(example):
    module_class, options, indices_shape, losses_shape = README_EXAMPLES[example]
    torch.manual_seed(0)
    module = module_class(dim=256, **options)
    x = batch(1, 1024, 256)
    quantized, indices, losses, all_codes = module(x, return_all_codes=True)
    assert quantized.shape == x.shape and torch.isfinite(quantized).all()
    assert indices.shape == indices_shape and losses.shape == losses_shape
    assert (indices >= 0).all() and (indices < options["codebook_size"]).all()
    assert torch.isfinite(losses).all()
    if module_class is ResidualVQ:
        assert all_codes.shape == (indices_shape[-1], 1, 1024, 256)


def test_peer_defaults_are_accepted_and_declined_options_give_reasons():
    defaults = {
        "implicit_neural_codebook": False,
        "mlp_kwargs": {},
        "beam_size": None,
        "eval_beam_size": None,
        "beam_score_quantizer_weights": None,
        "heads": 1,
    }
    ours = ResidualVQ(dim=DIM, num_quantizers=2, codebook_size=CODES, **defaults)
    x = batch(1, 10, DIM)
    with pytest.raises(TypeError, match=r"indices.*N×K"):
        ours(x, indices=torch.zeros(1, 10, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="heads"):
        ResidualVQ(dim=DIM, num_quantizers=2, codebook_size=CODES, heads=2)
    with pytest.raises(TypeError, match=r"shared_codebook.*threshold_ema_dead_code"):
        ResidualVQ(
            dim=DIM,
            num_quantizers=2,
            codebook_size=CODES,
            shared_codebook=True,
            threshold_ema_dead_code=2,
        )


@pytest.mark.parametrize("mode", ["autocast_bf16", "autocast_fp16", "module_bf16"])
@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize(
    "search",
    [{}, {"beam_size": 3}, {"implicit_neural_codebook": True}],
    ids=["greedy", "beam", "implicit"],
)
def test_mixed_precision_training_step(mode, grouped, search):
    torch.manual_seed(0)
    options = {"dim": DIM, "num_quantizers": 3, "codebook_size": CODES, "codebook_dim": 8}
    options |= search
    module = GroupedResidualVQ(groups=2, **options) if grouped else ResidualVQ(**options)
    x = batch(2, 30, DIM)
    if mode == "module_bf16":
        module, x = module.to(torch.bfloat16), x.to(torch.bfloat16)
    x.requires_grad_()
    dtype = torch.float16 if mode == "autocast_fp16" else torch.bfloat16
    with torch.autocast("cpu", dtype=dtype, enabled=mode.startswith("autocast")):
        quantized, indices, losses = module.train()(x)
    (quantized.float().square().mean() + losses.sum()).backward()
    assert quantized.shape == x.shape and torch.isfinite(quantized).all()
    assert torch.isfinite(losses).all() and (indices >= 0).all()
    assert x.grad.dtype == x.dtype and torch.isfinite(x.grad).all()
    for parameter in module.parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all()
    # The quantizers' EMA statistics keep float32 whatever the module's dtype.
    for name, buffer in module.named_buffers():
        if name.endswith(("cluster_size", "embed_sum")):
            assert buffer.dtype == torch.float32, name
