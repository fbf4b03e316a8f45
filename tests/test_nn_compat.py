"""wvq_kernels.nn.VectorQuantize as vector-quantize-pytorch's VectorQuantize: every option of the
peer accepted at its default, declined options named, and the behaviours the peer's users rely
on (masks, eval-mode loss, k-means timing, frozen and weighted EMA steps, heads, layouts)."""

import inspect

import pytest
import torch
import torch.nn.functional as F

from wvq_kernels.nn import VectorQuantize

vqp = pytest.importorskip("vector_quantize_pytorch")

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, CODES = 8, 16


def tokens(*shape, seed=0, requires_grad=False):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.requires_grad_(requires_grad)


def test_every_option_of_theirs_is_accepted_with_their_default():
    ours = inspect.signature(VectorQuantize).parameters
    theirs = inspect.signature(vqp.VectorQuantize).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    for name, parameter in theirs.items():
        assert ours[name].default == parameter.default, name
    theirs_forward = inspect.signature(vqp.VectorQuantize.forward).parameters
    ours_forward = inspect.signature(VectorQuantize.forward).parameters
    assert list(ours_forward) == list(theirs_forward)
    for name, parameter in theirs_forward.items():
        assert ours_forward[name].default == parameter.default, name


@pytest.mark.parametrize(
    "options, keywords",
    [
        ({"stochastic_sample_codes": True, "sample_codebook_temp": 0.1}, {}),
        ({}, {"ema_update_weight": torch.ones(CODES)}),
        ({"learnable_codebook": True, "ema_update": False, "eps": 1e-3}, {}),
    ],
    ids=["sampled codes", "weighted EMA", "learned codebook"],
)
def test_dead_codes_are_refilled_on_the_wrappers_ema_path(options, keywords):
    torch.manual_seed(0)
    quantizer = VectorQuantize(DIM, CODES, threshold_ema_dead_code=0.9, **options)
    with torch.no_grad():
        quantizer.quantizers[0].embedding[1:] += 100  # all codes but one are far away: dead
    x = tokens(2, 32, DIM)
    quantizer(x, **keywords)
    codes = quantizer.quantizers[0].embedding.detach()
    # Every dead code now sits on a row of the batch; the live code 0 did not move that way.
    is_a_row = (codes[:, None] == x.reshape(-1, DIM)[None]).all(-1).any(1)
    assert is_a_row[1:].all() and not is_a_row[0]
    assert (quantizer.quantizers[0].cluster_size[1:] >= 0.9).all()


def test_combinations_the_peer_refuses_are_refused():
    with pytest.raises(ValueError, match="use_cosine_sim with learnable_codebook"):
        VectorQuantize(DIM, CODES, use_cosine_sim=True, learnable_codebook=True, ema_update=False)
    with pytest.raises(ValueError, match="ema_update with learnable_codebook"):
        VectorQuantize(DIM, CODES, learnable_codebook=True)


def test_rotation_trick_is_the_default_and_straight_through_turns_it_off():
    assert VectorQuantize(DIM, CODES).rotation_trick
    assert not VectorQuantize(1, CODES).rotation_trick
    assert not VectorQuantize(DIM, CODES, straight_through=True).rotation_trick


def test_eval_loss_is_zero_and_output_is_the_codes():
    quantizer = VectorQuantize(DIM, CODES).eval()
    quantized, indices, loss = quantizer(tokens(2, 12, DIM, requires_grad=True))
    assert loss.item() == 0 and not loss.requires_grad
    assert torch.equal(quantized, quantizer.codebook[indices])
    assert torch.equal(quantized, quantizer.get_output_from_indices(indices))


def test_training_loss_is_the_weighted_commitment_with_its_breakdown():
    quantizer = VectorQuantize(DIM, CODES, commitment_weight=0.25)
    x = tokens(2, 12, DIM, requires_grad=True)
    codebook = quantizer.codebook.clone()
    _, indices, loss, breakdown = quantizer(x, return_loss_breakdown=True)
    commitment = F.mse_loss(codebook[indices], x.detach())
    torch.testing.assert_close(breakdown.commitment, commitment)
    torch.testing.assert_close(loss, 0.25 * commitment)
    assert breakdown.orthogonal_reg.item() == 0 and breakdown._fields == (
        "commitment",
        "codebook_diversity",
        "orthogonal_reg",
        "inplace_optimize",
    )


def test_mask_keeps_padding_out_of_every_statistic_and_the_loss():
    torch.manual_seed(0)
    masked, alone = VectorQuantize(DIM, CODES), VectorQuantize(DIM, CODES)
    alone.load_state_dict(masked.state_dict())
    x, lens = tokens(2, 10, DIM), torch.tensor([4, 7])
    mask = torch.arange(10) < lens[:, None]
    padded = x.clone()
    padded[~mask] = 1e3  # would drag any code it reached
    quantized, indices, loss = masked(padded, lens=lens)
    kept_q, kept_i, kept_loss = alone(x[mask][None])
    assert torch.equal(indices[mask], kept_i[0]) and (indices[~mask] == -1).all()
    torch.testing.assert_close(quantized[mask], kept_q[0])
    assert (quantized[~mask] == 0).all()
    torch.testing.assert_close(loss, kept_loss)
    for name, value in masked.state_dict().items():
        torch.testing.assert_close(value, alone.state_dict()[name], msg=name)


def test_masked_padding_can_return_the_input():
    quantizer = VectorQuantize(DIM, CODES, return_zeros_for_masked_padding=False)
    x, mask = tokens(1, 6, DIM), torch.tensor([[True, True, False, True, False, False]])
    quantized = quantizer(x, mask=mask)[0]
    assert torch.equal(quantized[~mask], x[~mask])


def test_kmeans_init_runs_on_the_first_forward_in_eval_too():
    quantizer = VectorQuantize(DIM, CODES, kmeans_init=True, kmeans_iters=3).eval()
    assert not quantizer.initted
    x = tokens(1, 64, DIM)
    quantized, indices, _ = quantizer(x)
    assert quantizer.initted
    # The codes are now centroids of the batch: each used code is the mean of its rows.
    used = indices.unique()
    error = (quantized - x).square().sum(-1).mean()
    assert error < x.square().sum(-1).mean() / 2 and used.numel() > CODES // 2


def test_frozen_codebook_keeps_its_state_in_training():
    quantizer = VectorQuantize(DIM, CODES, freeze_codebook=True)
    state = quantizer.state_dict().items()
    before = {k: v.clone() for k, v in state if torch.is_tensor(v) and "usage" not in k}
    quantizer(tokens(2, 12, DIM))
    quantizer(tokens(2, 12, DIM, seed=1), freeze_codebook=True)
    for name, value in before.items():
        assert torch.equal(quantizer.state_dict()[name], value), name
    quantizer(tokens(2, 12, DIM), freeze_codebook=False)
    assert not torch.equal(quantizer.codebook, before["quantizers.0.embedding"])


def test_ema_update_weight_zero_leaves_codes_and_one_is_the_plain_step():
    torch.manual_seed(0)
    weighted, plain = VectorQuantize(DIM, CODES), VectorQuantize(DIM, CODES)
    plain.load_state_dict(weighted.state_dict())
    before = weighted.codebook.clone()
    weights = torch.tensor([1.0, 0.0] * (CODES // 2))
    x = tokens(4, 32, DIM)
    weighted(x, ema_update_weight=weights)
    plain(x)
    kept = ~weights.bool()
    torch.testing.assert_close(weighted.codebook[kept], before[kept], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weighted.codebook[~kept], plain.codebook[~kept])


def test_manual_ema_update_waits_for_update_ema():
    quantizer = VectorQuantize(DIM, CODES, manual_ema_update=True)
    before = quantizer.codebook.clone()
    quantizer(tokens(2, 12, DIM))
    assert torch.equal(quantizer.codebook, before)
    quantizer.update_ema()
    assert not torch.equal(quantizer.codebook, before)


def test_eps_is_the_laplace_smoothing_of_the_ema_codebook():
    quantizer = VectorQuantize(DIM, CODES, eps=0.5)
    quantizer(tokens(2, 12, DIM))
    core = quantizer.quantizers[0]
    sizes, total = core.cluster_size, core.cluster_size.sum()
    smoothed = (sizes + 0.5) / (total + CODES * 0.5) * total
    torch.testing.assert_close(quantizer.codebook, core.embed_sum / smoothed[:, None])


@pytest.mark.parametrize("separate", [False, True], ids=["shared", "separate"])
def test_heads_quantize_each_slice_with_its_codebook(separate):
    quantizer = VectorQuantize(
        DIM, CODES, heads=2, codebook_dim=DIM // 2, separate_codebook_per_head=separate
    ).eval()
    x = tokens(2, 5, DIM)
    quantized, indices, _ = quantizer(x)
    assert indices.shape == (2, 5, 2)
    features = quantizer.project_in(x).unflatten(-1, (2, DIM // 2))
    codebooks = quantizer.codebook if separate else quantizer.codebook.expand(2, -1, -1)
    for head in range(2):
        distances = torch.cdist(features[:, :, head], codebooks[head])
        assert torch.equal(indices[..., head], distances.argmin(-1))
    torch.testing.assert_close(quantized, quantizer.get_output_from_indices(indices))


@pytest.mark.parametrize(
    "options, shape, index_shape",
    [
        ({"accept_image_fmap": True}, (2, DIM, 3, 4), (2, 3, 4)),
        ({"accept_3d_fmap": True}, (1, DIM, 2, 3, 4), (1, 2, 3, 4)),
        ({"channel_last": False}, (2, DIM, 7), (2, 7)),
        ({}, (3, DIM), (3,)),
    ],
    ids=["image", "video", "channel-first", "one token"],
)
def test_layouts_give_the_peers_shapes_and_codes(options, shape, index_shape):
    quantizer = VectorQuantize(DIM, CODES, **options).eval()
    x = tokens(*shape)
    quantized, indices, _ = quantizer(x)
    assert quantized.shape == x.shape and indices.shape == index_shape
    torch.testing.assert_close(quantized, quantizer.get_output_from_indices(indices))
    channel_last = x.movedim(1, -1) if options else x
    distances = torch.cdist(channel_last.reshape(-1, DIM), quantizer.codebook)
    assert torch.equal(indices.reshape(-1), distances.argmin(-1))


def test_cosine_codebook_property_returns_unit_rows_and_setter_sets_them():
    quantizer = VectorQuantize(DIM, CODES, use_cosine_sim=True)
    torch.testing.assert_close(quantizer.codebook.norm(dim=-1), torch.ones(CODES))
    codes = F.normalize(torch.randn(CODES, DIM), dim=-1)
    quantizer.codebook = codes
    torch.testing.assert_close(quantizer.codebook, codes)


def test_learnable_codebook_gets_the_commitment_gradient():
    quantizer = VectorQuantize(DIM, CODES, learnable_codebook=True, ema_update=False)
    (parameter,) = quantizer.codebook_parameters()
    x = tokens(2, 12, DIM)
    _, indices, loss = quantizer(x)
    loss.backward()
    codes = parameter.detach()[indices]
    expected = torch.zeros_like(parameter).index_add_(
        0, indices.reshape(-1), (2 * (codes - x) / x.numel()).reshape(-1, DIM)
    )
    torch.testing.assert_close(parameter.grad, expected)


def test_orthogonal_regulariser_equals_the_cosine_matrix_form():
    quantizer = VectorQuantize(DIM, CODES, orthogonal_reg_weight=10.0)
    _, _, loss, breakdown = quantizer(tokens(2, 12, DIM), return_loss_breakdown=True)
    unit = F.normalize(quantizer.quantizers[0].embedding.detach().double(), dim=-1)
    expected = (unit @ unit.T).square().sum() / CODES**2 - 1 / CODES
    torch.testing.assert_close(breakdown.orthogonal_reg.double(), expected)
    torch.testing.assert_close(loss, breakdown.commitment + 10 * breakdown.orthogonal_reg)
    loss.backward()
    assert quantizer.quantizers[0].embedding.grad.abs().sum() > 0


def test_directional_reparam_moves_the_codebook_by_the_output_gradient():
    torch.manual_seed(0)
    quantizer = VectorQuantize(DIM, CODES, directional_reparam=True, threshold_ema_dead_code=1)
    x = tokens(2, 12, DIM, requires_grad=True)
    quantized, indices, loss = quantizer(x)
    assert loss.item() == 0
    codes = quantizer.codebook.detach()[indices]
    # The value is the code up to the direction noise (variance 5e-3).
    assert ((quantized - codes).norm(dim=-1) / (codes - x).norm(dim=-1)).max() < 0.5
    quantized.sum().backward()
    assert quantizer.codebook_parameters()[0].grad.abs().sum() > 0 and x.grad is not None


def test_sync_update_v_scales_the_output_gradient_not_the_value():
    options = {"learnable_codebook": True, "ema_update": False, "rotation_trick": False}
    torch.manual_seed(0)
    plain = VectorQuantize(DIM, CODES, **options)
    synced = VectorQuantize(DIM, CODES, sync_update_v=0.5, **options)
    synced.load_state_dict(plain.state_dict())
    x = tokens(2, 12, DIM, requires_grad=True)
    q_plain, q_synced = plain(x)[0], synced(x)[0]
    torch.testing.assert_close(q_plain, q_synced)
    q_plain.sum().backward()
    grad_plain = x.grad.clone()
    x.grad = None
    q_synced.sum().backward()
    torch.testing.assert_close(x.grad, 1.5 * grad_plain)


def test_stochastic_codes_are_sampled_in_training_and_nearest_in_eval():
    torch.manual_seed(0)
    quantizer = VectorQuantize(DIM, CODES, stochastic_sample_codes=True, sample_codebook_temp=10.0)
    x = tokens(4, 64, DIM)
    nearest = torch.cdist(x, quantizer.codebook.expand(4, -1, -1)).argmin(-1)
    before = quantizer.quantizers[0].cluster_size.clone()
    _, indices, _ = quantizer(x)
    assert (indices != nearest).float().mean() > 0.5
    # The EMA step counts the sampled codes.
    counts = torch.bincount(indices.reshape(-1), minlength=CODES).float()
    expected = before * quantizer.decay + counts * (1 - quantizer.decay)
    torch.testing.assert_close(quantizer.quantizers[0].cluster_size, expected)
    quantizer.eval()
    nearest = torch.cdist(x, quantizer.codebook.expand(4, -1, -1)).argmin(-1)
    assert torch.equal(quantizer(x)[1], nearest)
    # A zero temperature on the call turns sampling off in training too.
    assert torch.equal(
        quantizer.train()(x, sample_codebook_temp=0.0, freeze_codebook=True)[1], nearest
    )


@pytest.mark.parametrize(
    "options, shape, index_shape",
    [({"accept_image_fmap": True}, (2, DIM, 3, 4), (2, 3, 4)), ({}, (3, DIM), (3,))],
    ids=["image", "one token"],
)
def test_top_k_adds_a_code_axis_in_the_peers_place(options, shape, index_shape):
    quantizer = VectorQuantize(DIM, CODES, **options).eval()
    x = tokens(*shape)
    quantized, indices, loss = quantizer(x, topk=3)
    assert indices.shape == loss.shape == (*index_shape, 3)
    channel = 1 if options else -1
    assert quantized.shape == ((*x.shape, 3) if options else (3, 3, DIM))
    codes = quantizer.codebook[indices].movedim(-1, channel)
    torch.testing.assert_close(quantized, codes)
    # Best first: the first of the k is the nearest code.
    assert torch.equal(indices[..., 0], quantizer(x)[1])


MIXED_PRECISION_OPTIONS = {
    "ema": {},
    "projection": {"codebook_dim": 4},
    "sampled": {"stochastic_sample_codes": True},
    "learned": {"learnable_codebook": True, "ema_update": False},
    "cross-entropy": {"commitment_use_cross_entropy_loss": True},
}


@pytest.mark.parametrize("precision", ["autocast bf16", "bf16 module"])
@pytest.mark.parametrize(
    "options", MIXED_PRECISION_OPTIONS.values(), ids=MIXED_PRECISION_OPTIONS.keys()
)
def test_training_step_in_bfloat16_is_finite(options, precision):
    torch.manual_seed(0)
    quantizer = VectorQuantize(DIM, CODES, **options)
    x = tokens(2, 12, DIM)
    if precision == "bf16 module":
        quantizer, x = quantizer.to(torch.bfloat16), x.bfloat16()
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "autocast bf16"):
        quantized, indices, loss = quantizer(x)
    (quantized.float().square().sum() + loss).backward()
    assert quantized.dtype == x.dtype or precision == "autocast bf16"
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert indices.min() >= 0 and indices.max() < CODES


def test_diversity_loss_with_separate_codebooks_is_declined():
    with pytest.raises(TypeError, match="codebook_diversity_loss_weight > 0 with separate"):
        VectorQuantize(
            DIM,
            CODES,
            heads=2,
            codebook_dim=4,
            separate_codebook_per_head=True,
            codebook_diversity_loss_weight=1.0,
        )


@pytest.mark.parametrize(
    "options",
    [{}, {"commitment_use_cross_entropy_loss": True}, {"codebook_diversity_loss_weight": 1.0}],
    ids=["mse", "cross-entropy", "diversity"],
)
def test_a_fully_masked_batch_gives_padding_and_a_zero_loss(options):
    quantizer = VectorQuantize(DIM, CODES, **options)
    x = tokens(2, 5, DIM, requires_grad=True)
    quantized, indices, loss = quantizer(x, mask=torch.zeros(2, 5, dtype=torch.bool))
    assert (quantized == 0).all() and (indices == -1).all() and loss.item() == 0


def test_update_indices_is_the_update_of_a_training_forward():
    torch.manual_seed(0)
    trained, updated = VectorQuantize(DIM, CODES), VectorQuantize(DIM, CODES)
    updated.load_state_dict(trained.state_dict())
    x = tokens(2, 12, DIM)
    _, indices, _ = trained(x)
    updated.update_indices(x, indices)
    torch.testing.assert_close(updated.codebook, trained.codebook)
    for name in ("cluster_size", "embed_sum"):
        torch.testing.assert_close(
            getattr(updated.quantizers[0], name), getattr(trained.quantizers[0], name)
        )


def test_expire_codes_refills_dead_codes_from_the_given_rows():
    torch.manual_seed(0)
    quantizer = VectorQuantize(DIM, CODES, threshold_ema_dead_code=2.0)
    rows = tokens(40, DIM)
    quantizer.eval().expire_codes_(rows)  # outside training: nothing
    assert not (quantizer.codebook[:, None] == rows[None]).all(-1).any()
    quantizer.train().expire_codes_(rows)
    # Every code was dead (cluster sizes start at 1): each is now one of the rows.
    assert (quantizer.codebook[:, None] == rows[None]).all(-1).any(1).all()


def test_per_token_codebooks_refuse_what_needs_every_codes_logit():
    quantizer = VectorQuantize(DIM, CODES, commitment_use_cross_entropy_loss=True)
    with pytest.raises(TypeError, match="codebook_transform_fn with commitment_use_cross"):
        quantizer(tokens(2, 5, DIM), codebook_transform_fn=lambda codes: codes)
    with pytest.raises(TypeError, match="codebook_transform_fn with topk"):
        VectorQuantize(DIM, CODES)(tokens(2, 5, DIM), topk=2, codebook_transform_fn=abs)
