"""A training batch with a NaN or an Inf in its features changes no quantizer state: the run
afterwards is bitwise the run that never saw it, and the batch is counted and visible in the
loss."""

import pytest
import torch

from wvq_kernels.nn import VectorQuantizer

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = {
    "vanilla": {},
    "ema": {"ema": True},
    "wasserstein_queue": {"distribution_loss": "wasserstein", "feature_queue_size": 100},
    # A queue shorter than the batch: each push replaces the whole queue.
    "wasserstein_short_queue": {"distribution_loss": "wasserstein", "feature_queue_size": 30},
    "dead_codes": {"dead_code_threshold": 0.5, "decay": 0.5, "feature_queue_size": 100},
    "ema_dead_codes": {"ema": True, "dead_code_threshold": 0.5, "feature_queue_size": 100},
    "nsvq_reservoir": {"codebook_loss": "dense", "reservoir_size": 64, "tau": 0.5},
    "kmeans_init": {"kmeans_init": True},
}


def make(name):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(6, 32, **VARIANTS[name])
    if isinstance(quantizer.embedding, torch.nn.Parameter):
        with torch.no_grad():
            quantizer.embedding.copy_(
                torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
            )
    return quantizer


def clean_batch(step):
    return torch.randn(40, 6, generator=torch.Generator().manual_seed(100 + step)) + step


def bad_batch(value):
    z = clean_batch(50)
    z[7, 2] = value
    return z


def run(name, schedule):
    """Trains on the schedule (a step number: that clean batch; a float: a batch holding that
    value); returns the module and the outputs of the clean steps."""
    quantizer = make(name)
    optimizer = torch.optim.SGD(list(quantizer.parameters()) or [torch.zeros(1)], lr=0.1)
    outputs = []
    for item in schedule:
        if isinstance(item, float):
            out = quantizer(bad_batch(item))
            # The caller sees it and skips the optimizer step.
            assert not torch.isfinite(out.loss)
            continue
        z = clean_batch(item).requires_grad_()
        out = quantizer(z)
        optimizer.zero_grad()
        (out.loss + out.quantized.square().mean()).backward()
        optimizer.step()
        outputs.append((out, z.grad))
    if quantizer.reservoir is not None:
        outputs.append(quantizer.refill_dead_codes(0.3))
    return quantizer, outputs


@pytest.mark.parametrize("name", VARIANTS)
def test_a_nonfinite_batch_changes_no_state_and_later_steps_are_bitwise_unchanged(name):
    bad = [float("nan"), float("inf"), -float("inf")]
    # The first batch bad as well: k-means init and fresh queues must wait for a finite one.
    expected_module, expected = run(name, [0, 1, 2, 3])
    actual_module, actual = run(name, [bad[0], 0, 1, bad[1], bad[2], 2, 3])
    assert actual_module.skipped_nonfinite.item() == 3
    assert expected_module.skipped_nonfinite.item() == 0
    expected_state, actual_state = expected_module.state_dict(), actual_module.state_dict()
    assert expected_state.keys() == actual_state.keys()
    for key, value in expected_state.items():
        if key != "skipped_nonfinite" and isinstance(value, torch.Tensor):
            assert torch.equal(actual_state[key], value), key
    if expected_module.reservoir is not None:
        assert torch.equal(actual.pop(), expected.pop())  # refilled codes
    for (out, grad), (out_expected, grad_expected) in zip(actual, expected, strict=True):
        assert torch.equal(out.indices, out_expected.indices)
        assert torch.equal(out.loss, out_expected.loss)
        assert torch.equal(out.quantized, out_expected.quantized)
        assert torch.equal(grad, grad_expected)
        for key, value in out_expected.stats.items():
            if key != "skipped_nonfinite":
                assert torch.equal(out.stats[key], value), key
    assert actual[-1][0].stats["skipped_nonfinite"] == 3.0


def test_the_unchanged_state_includes_the_queue_reservoir_and_random_stream():
    quantizer = make("nsvq_reservoir")
    quantizer(clean_batch(0))
    before = {
        key: value.clone()
        for key, value in quantizer.state_dict().items()
        if isinstance(value, torch.Tensor)
    }
    out = quantizer(bad_batch(float("nan")))
    assert torch.isnan(out.loss)
    assert out.stats["skipped_nonfinite"].dtype == torch.float32
    for key, value in before.items():
        if key != "skipped_nonfinite":
            assert torch.equal(quantizer.state_dict()[key], value), key
    assert quantizer.skipped_nonfinite.item() == 1


def test_evaluation_does_not_count_a_nonfinite_batch_as_usage():
    quantizer = make("vanilla").eval()
    quantizer(bad_batch(float("nan")))
    assert quantizer.usage_counts.sum().item() == 0
    assert quantizer.skipped_nonfinite.item() == 0  # it counts training batches


def test_refill_never_copies_a_nonfinite_reservoir_row():
    quantizer = make("nsvq_reservoir")
    quantizer(clean_batch(0) * 0.01 + 5)  # far from the codes: nearly all dead
    quantizer.reservoir.rows[:, 0] = float("nan")  # e.g. loaded from a corrupt state_dict
    before = quantizer.embedding.detach().clone()
    assert quantizer.refill_dead_codes(0.3).item() == 0
    assert torch.equal(quantizer.embedding.detach(), before)
