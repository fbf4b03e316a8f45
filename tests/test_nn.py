"""VectorQuantizer and FeatureQueue: loss values and gradients against a float64 computation,
torch.compile, state round-trip, SimVQ decoding, dead codes, k-means init, a short training run."""

import io

import pytest
import torch

from wvq_kernels import moments
from wvq_kernels.kmeans import kmeans
from wvq_kernels.nn import FeatureQueue, VectorQuantizer

VARIANTS = {
    "vanilla": {},
    "wasserstein": {"distribution_loss": "wasserstein"},
    "ema": {"ema": True},
    "simvq": {"linear_reparam": True},
    "projected": {"codebook_dim": 4, "dead_code_threshold": 0.5},
    "cosine": {"metric": "cosine"},
    "nsvq": {"codebook_loss": "dense", "reservoir_size": 128, "tau": 0.5},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name, dim=6, codebook_size=64, seed=0, **overrides):
    torch.manual_seed(seed)
    options = {"feature_queue_size": 300, **VARIANTS[name], **overrides}
    return VectorQuantizer(dim, codebook_size, **options)


def spread_codebook(quantizer, seed=1):
    """Codes spread like the features, so that many of them win (the default init is ~0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        quantizer.embedding.copy_(torch.randn(quantizer.embedding.shape, generator=generator))


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_shapes_and_stats(name):
    quantizer = make(name)
    z = torch.randn(3, 20, 6)
    out = quantizer(z)
    assert out.quantized.shape == z.shape and out.quantized.dtype == z.dtype
    assert out.indices.shape == (3, 20) and out.indices.dtype == torch.int64
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    for key, value in out.stats.items():
        assert value.dim() == 0 and value.dtype == torch.float32, key
    # In eval mode nothing moves the codes, so decoding the indices gives the output back.
    quantizer.eval()
    out = quantizer(z)
    assert torch.allclose(quantizer.indices_to_codes(out.indices), out.quantized, atol=1e-6)


def _sqrt_psd(matrix):
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T


def reference_loss(z, codes, alpha, beta, gamma, target_cov_scale=1.0):
    """The W-VQ loss in float64 with a full distance matrix and an eigenvector matrix square
    root (the module uses assign, the moments op and an eigenvalue-only W)."""
    indices = torch.cdist(z, codes).argmin(dim=1)
    quantized = codes[indices]
    commitment = (quantized.detach() - z).square().mean()
    codebook = (quantized - z.detach()).square().mean()
    features = z.detach()
    scale = torch.cov(features.T).diagonal().max().sqrt()
    cov_z = target_cov_scale * torch.cov((features / scale).T)
    cov_c = torch.cov((codes / scale).T)
    root = _sqrt_psd(cov_z)
    w2 = (
        ((features / scale).mean(0) - (codes / scale).mean(0)).square().sum()
        + cov_z.trace()
        + cov_c.trace()
        - 2 * _sqrt_psd(root @ cov_c @ root).trace()
    )
    distance = (w2.clamp_min(0) + 1e-10).sqrt()
    return alpha * codebook + beta * commitment + gamma * distance, indices, distance


@pytest.mark.parametrize("target_cov_scale", [1.0, 0.8])
def test_wasserstein_loss_and_gradients_match_float64(target_cov_scale):
    quantizer = make(
        "wasserstein", alpha=0.7, beta=0.2, gamma=0.5, target_cov_scale=target_cov_scale
    )
    spread_codebook(quantizer)
    z = (torch.randn(80, 6) * torch.linspace(0.5, 2, 6) + 1).requires_grad_()
    out = quantizer(z)
    out.loss.backward()

    z64 = z.detach().double().requires_grad_()
    codes64 = quantizer.embedding.detach().double().requires_grad_()
    loss, indices, distance = reference_loss(z64, codes64, 0.7, 0.2, 0.5, target_cov_scale)
    loss.backward()
    assert torch.equal(out.indices, indices)
    assert out.stats["wasserstein"].item() == pytest.approx(distance.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-5)
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(
        quantizer.embedding.grad.double(), codes64.grad, rtol=1e-4, atol=1e-7
    )


def test_wasserstein_with_one_code_is_finite_and_takes_its_covariance_as_zero():
    quantizer = make("wasserstein", codebook_size=1, gamma=1.0)
    z = torch.randn(40, 6) * torch.linspace(0.5, 2, 6) + 1
    out = quantizer(z)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(quantizer.embedding.grad).all()
    # A point-mass codebook: W² = |mean_z - c|² / s² + tr(cov_z) / s².
    z64, code = z.double(), quantizer.embedding.detach().double()[0]
    cov = torch.cov(z64.T)
    variance = cov.diagonal().max()
    expected = (((z64.mean(0) - code).square().sum() + cov.trace()) / variance).sqrt()
    assert out.stats["wasserstein"].item() == pytest.approx(expected.item(), rel=1e-3)


def test_wasserstein_on_a_one_token_first_batch_is_finite_and_unscaled():
    quantizer = make("wasserstein", gamma=1.0)
    spread_codebook(quantizer)
    z = torch.randn(1, 6)
    out = quantizer(z)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(quantizer.embedding.grad).all()
    # The one feature row is a point mass with no spread to scale by: W in the raw units.
    codes = quantizer.embedding.detach().double()
    expected = ((z.double()[0] - codes.mean(0)).square().sum() + torch.cov(codes.T).trace()).sqrt()
    assert out.stats["wasserstein"].item() == pytest.approx(expected.item(), rel=1e-3)
    assert quantizer.embedding.grad.abs().max() < 1


def test_codebook_gradient_is_the_float64_one_and_the_same_bits_on_any_thread_count():
    """PyTorch's own backward of codes[indices] adds with atomics over threads once the
    gradient has 32768 elements, so its last bits depend on the thread count and timing."""
    z = torch.randn(30000, 6, generator=torch.Generator().manual_seed(5))

    def codebook_gradient(threads):
        torch.set_num_threads(threads)
        try:
            quantizer = make("vanilla", codebook_size=16)
            spread_codebook(quantizer)
            quantizer(z).loss.backward()
        finally:
            torch.set_num_threads(1)
        return quantizer.embedding.grad

    gradients = [codebook_gradient(threads) for threads in (1, 2, 2, 2)]
    assert gradients[0].dtype == torch.float32
    for gradient in gradients[1:]:
        assert torch.equal(gradient, gradients[0])
    codes64 = make("vanilla", codebook_size=16)
    spread_codebook(codes64)
    codes64 = codes64.embedding.detach().double().requires_grad_()
    loss, _, _ = reference_loss(z.double(), codes64, 1.0, 0.1, 0.0)
    loss.backward()
    torch.testing.assert_close(gradients[0].double(), codes64.grad, rtol=1e-4, atol=1e-8)


def test_vanilla_loss_has_no_distribution_term():
    quantizer = make("vanilla", alpha=1.0, beta=0.25)
    spread_codebook(quantizer)
    z = torch.randn(50, 6)
    out = quantizer(z)
    loss, _, _ = reference_loss(z.double(), quantizer.embedding.detach().double(), 1.0, 0.25, 0.0)
    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-5)
    assert out.stats["wasserstein"].item() == 0


def test_simvq_gradient_reaches_the_map_only_and_decoding_applies_it():
    quantizer = make("simvq")
    with torch.no_grad():
        quantizer.code_map.weight.copy_(torch.randn(6, 6))
        quantizer.code_map.bias.copy_(torch.randn(6))
    quantizer(torch.randn(40, 6)).loss.backward()
    assert quantizer.code_map.weight.grad.abs().sum() > 0
    assert not quantizer.frozen_codes.requires_grad
    indices = torch.tensor([[0, 5], [63, 7]])
    mapped = quantizer.frozen_codes[indices] @ quantizer.code_map.weight.T + quantizer.code_map.bias
    torch.testing.assert_close(quantizer.indices_to_codes(indices), mapped)
    assert not torch.allclose(quantizer.indices_to_codes(indices), quantizer.frozen_codes[indices])


def test_ema_codebook_moves_to_cluster_means_without_gradient():
    quantizer = make("ema", decay=0.0)
    z = torch.randn(200, 6)
    out = quantizer(z)
    assert not quantizer.embedding.requires_grad
    # decay 0: every used code becomes the mean of its rows (up to the Laplace smoothing).
    used = out.indices.unique()
    means = torch.stack([z[out.indices == code].mean(0) for code in used])
    torch.testing.assert_close(quantizer.embedding[used], means, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("sizes", [[30] * 8, [7, 99, 13, 250, 1, 64], [400, 20, 301]])
def test_queue_moments_equal_moments_recomputed_from_scratch(sizes):
    queue = FeatureQueue(300, 5, backend="cpu")
    generator = torch.Generator().manual_seed(0)
    pushed = []
    for size in sizes:
        chunk = torch.randn(size, 5, generator=generator) * 3 + 2
        queue.push(chunk)
        pushed.append(chunk)
        expected = moments(torch.cat(pushed)[-300:].double())
        assert queue.count.item() == expected.count.item()
        torch.testing.assert_close(queue.mean, expected.mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(queue.cov, expected.cov, rtol=0, atol=1e-11)


def _saved_and_loaded(state):
    # Through torch.save, as a real resume does: optimizer.load_state_dict alone would share
    # the moment tensors between both optimizers.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer)


@pytest.mark.parametrize("name", ["wasserstein", "ema", "projected", "simvq"])
def test_state_dict_round_trip_gives_identical_next_step(name):
    def train_step(module, optimizer, z):
        out = module(z)
        if optimizer is not None:
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
        return out

    def optimizer_for(module):
        parameters = list(module.parameters())
        return torch.optim.Adam(parameters, lr=0.01) if parameters else None

    batches = [torch.randn(50, 6) + step for step in range(6)]
    original = make(name)
    optimizer = optimizer_for(original)
    for z in batches[:5]:
        train_step(original, optimizer, z)
    resumed = make(name, seed=123)
    resumed.load_state_dict(_saved_and_loaded(original.state_dict()))
    resumed_optimizer = optimizer_for(resumed)
    if optimizer is not None:
        resumed_optimizer.load_state_dict(_saved_and_loaded(optimizer.state_dict()))
    expected = train_step(original, optimizer, batches[5])
    actual = train_step(resumed, resumed_optimizer, batches[5])
    assert torch.equal(actual.indices, expected.indices)
    assert torch.equal(actual.loss, expected.loss)
    for (key, value), other in zip(original.state_dict().items(), resumed.state_dict().values()):
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), key


def test_dead_codes_are_refilled_from_recent_features_deterministically():
    def run():
        quantizer = make("vanilla", dead_code_threshold=0.6, decay=0.5)
        quantizer(torch.randn(100, 6, generator=torch.Generator().manual_seed(3)) + 5)
        return quantizer

    first, second = run(), run()
    torch.testing.assert_close(first.embedding, second.embedding, rtol=0, atol=0)
    # Every code sat at the origin, far from the features: all but the winner are dead, and
    # each refilled code is one of the features.
    queued = first.queue.rows[:100]
    moved = first.embedding.abs().sum(1) > 1
    assert moved.sum() >= 60
    for code in first.embedding[moved]:
        assert (queued == code).all(1).any()


def test_dense_codebook_term_is_nsvqs_loss_in_float64():
    quantizer = make("nsvq", beta=0.0)
    spread_codebook(quantizer)
    z = torch.randn(50, 6)
    out = quantizer(z)
    codes = quantizer.embedding.detach().double().requires_grad_()
    distances = torch.cdist(z.double(), codes).square()
    winner = torch.nn.functional.one_hot(distances.argmin(1), 64).bool()
    weights = (0.01 * 64 * torch.softmax(-distances.detach() / 0.5, 1)).clamp_max(1)
    weights = torch.where(winner, 1.0, weights)
    expected = (weights * distances).sum() / (50 * 6)
    torch.testing.assert_close(out.loss.double(), expected.detach(), rtol=1e-4, atol=0)
    out.loss.backward()
    expected.backward()
    torch.testing.assert_close(quantizer.embedding.grad.double(), codes.grad, rtol=1e-4, atol=1e-7)


def test_refill_takes_distinct_reservoir_rows_for_the_dead_codes_only():
    quantizer = make("nsvq", codebook_size=32)
    spread_codebook(quantizer)
    features = torch.randn(400, 6) * 0.1 + 3  # near a few codes at most
    quantizer(features)
    before = quantizer.embedding.detach().clone()
    dead = quantizer.cluster_size < 0.001
    refilled = quantizer.refill_dead_codes(0.001)
    assert refilled.item() == dead.sum().item() > 20
    after = quantizer.embedding.detach()
    assert torch.equal(after[~dead], before[~dead])
    new_rows = after[dead]
    assert new_rows.unique(dim=0).shape[0] == new_rows.shape[0]
    for row in new_rows:
        assert (features == row).all(1).any()
    assert quantizer.reservoir.filled.item() == 0  # the next refill draws on newer features
    assert (quantizer.cluster_size[dead] >= 0.001).all()


def test_refill_without_a_reservoir_names_the_option():
    with pytest.raises(ValueError, match="reservoir_size"):
        make("vanilla").refill_dead_codes(0.1)


@pytest.mark.parametrize(
    "arguments, error, argument",
    [
        ({"codebook_size": 0}, ValueError, "codebook_size"),
        ({"codebook_size": 2.5}, TypeError, "codebook_size"),
        ({"dim": 0}, ValueError, "dim"),
        ({"codebook_dim": -1}, ValueError, "codebook_dim"),
        ({"tau": 0.0}, ValueError, "tau"),
        ({"tau": float("nan")}, ValueError, "tau"),
    ],
)
def test_construction_rejects_bad_sizes_and_temperatures(arguments, error, argument):
    options = {"dim": 6, "codebook_size": 8, **arguments}
    with pytest.raises(error, match=argument):
        VectorQuantizer(options.pop("dim"), options.pop("codebook_size"), **options)


def test_a_bad_tau_set_between_steps_raises_before_the_reservoir_changes():
    quantizer = make("nsvq")
    quantizer(torch.randn(40, 6))
    before = {key: value.clone() for key, value in quantizer.reservoir.state_dict().items()}
    offset = quantizer.generator.offset.clone()
    quantizer.tau = 0.0
    with pytest.raises(ValueError, match="tau"):
        quantizer(torch.randn(40, 6))
    for key, value in quantizer.reservoir.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(quantizer.generator.offset, offset)


def test_integer_input_is_rejected_before_any_state_changes():
    quantizer = make("wasserstein")
    with pytest.raises(TypeError, match="z: expected a floating-point dtype"):
        quantizer(torch.ones(10, 6, dtype=torch.int64))
    assert quantizer.queue.filled.item() == 0 and quantizer.usage_counts.sum().item() == 0


def test_kmeans_init_fits_the_first_training_batch():
    quantizer = make("vanilla", kmeans_init=True, codebook_size=16)
    z = torch.randn(200, 6)
    quantizer(z)
    torch.testing.assert_close(quantizer.embedding.detach(), kmeans(z, 16, 10))
    assert quantizer.get_extra_state()["initialized"]
    quantizer.embedding.data.zero_()
    quantizer(z)
    assert quantizer.embedding.abs().sum() == 0


COMPILED_VARIANTS = {
    "vanilla": "vanilla",
    "ema": "ema",
    "wasserstein": "wasserstein",
    "simvq": "simvq",
    "dead_codes": "projected",
    "nsvq": "nsvq",
}


@pytest.mark.parametrize("name", COMPILED_VARIANTS.values(), ids=COMPILED_VARIANTS.keys())
def test_compiled_training_steps_equal_eager_ones_without_graph_breaks(name):
    """fullgraph: a host sync (.item(), a data-dependent branch, a torch.Generator call)
    would be a graph break and fail. Each step runs forward, backward and an optimizer step;
    afterwards the compiled module holds the same state as the eager one."""
    eager = make(name)
    spread_codebook_of(eager)
    module = make(name)
    module.load_state_dict(eager.state_dict())
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    # An EMA codebook has no parameters: it learns in forward.
    optimizers = [
        torch.optim.SGD(list(m.parameters()) or [torch.zeros(1)], lr=0.1) for m in (eager, module)
    ]
    for step in range(3):
        z = torch.randn(40, 6) + step
        # Gradients reach the features too, as they would reach an encoder.
        z_eager, z_compiled = z.clone().requires_grad_(), z.clone().requires_grad_()
        expected, actual = eager(z_eager), compiled(z_compiled)
        assert torch.equal(actual.indices, expected.indices)
        torch.testing.assert_close(actual.loss, expected.loss)
        torch.testing.assert_close(actual.quantized, expected.quantized)
        for key in expected.stats:
            torch.testing.assert_close(actual.stats[key], expected.stats[key])
        for out, optimizer in zip((expected, actual), optimizers):
            optimizer.zero_grad()
            (out.loss + out.quantized.square().mean()).backward()
            optimizer.step()
        torch.testing.assert_close(z_compiled.grad, z_eager.grad)
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(module.state_dict()[key], value, msg=key)


def spread_codebook_of(quantizer):
    """Spread codes (so that many win) where the codebook is a per-code vector."""
    if not quantizer.linear_reparam:
        spread_codebook(quantizer)


def _train_utilization(distribution_loss, steps=300, batch=2048, shift=3.0):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(
        8, 1024, distribution_loss=distribution_loss, feature_queue_size=8192
    )
    optimizer = torch.optim.Adam(quantizer.parameters(), lr=0.02, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        out = quantizer(torch.randn(batch, 8, generator=generator) + shift)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    quantizer.eval()
    quantizer.reset_usage()
    out = quantizer(torch.randn(20000, 8, generator=generator) + shift)
    return out.stats


def test_wasserstein_keeps_codes_alive_where_vanilla_collapses():
    vanilla = _train_utilization(None)
    wasserstein = _train_utilization("wasserstein")
    assert vanilla["running_utilization"] < 0.05
    assert wasserstein["running_utilization"] > 0.8
    assert wasserstein["quantization_error"] < 0.5 * vanilla["quantization_error"]
