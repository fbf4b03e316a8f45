"""wvq_kernels.nn.VectorQuantize against vector-quantize-pytorch's VectorQuantize: same
constructor arguments, same return types, shapes and dtypes."""

import inspect

import pytest
import torch

from wvq_kernels.nn import VectorQuantize

vqp = pytest.importorskip("vector_quantize_pytorch")

OPTIONS = [
    {},
    {"codebook_dim": 4, "decay": 0.9, "commitment_weight": 0.25},
    {"kmeans_init": True, "threshold_ema_dead_code": 2},
    {"use_cosine_sim": True},
]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_constructor_arguments_are_theirs():
    ours = inspect.signature(VectorQuantize).parameters
    theirs = inspect.signature(vqp.VectorQuantize).parameters
    ours_from_theirs = [name for name in ours if name != "backend"]
    assert set(ours_from_theirs) <= set(theirs)
    # Same positional order for the arguments both take positionally.
    assert list(ours)[:3] == list(theirs)[:3] == ["dim", "codebook_size", "codebook_dim"]
    for name in ours_from_theirs:
        if theirs[name].default is not inspect.Parameter.empty:
            assert ours[name].default == theirs[name].default, name


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("training", [True, False])
def test_outputs_match_theirs_in_type_shape_and_dtype(options, training):
    torch.manual_seed(0)
    x = torch.randn(2, 48, 16, requires_grad=True)
    ours = VectorQuantize(16, 32, **options).train(training)
    theirs = vqp.VectorQuantize(16, 32, **options).train(training)
    ours_out, theirs_out = ours(x), theirs(x)
    assert type(ours_out) is type(theirs_out) and len(ours_out) == len(theirs_out) == 3
    for mine, reference in zip(ours_out, theirs_out):
        assert type(mine) is type(reference)
        assert mine.shape == reference.shape and mine.dtype == reference.dtype
    indices = ours_out[1]
    assert (
        ours.get_output_from_indices(indices).shape == theirs.get_output_from_indices(indices).shape
    )
    assert ours.codebook.shape == theirs.codebook.shape


def test_commit_loss_and_gradient_are_the_straight_through_commitment():
    torch.manual_seed(0)
    quantizer = VectorQuantize(8, 32, commitment_weight=0.25).eval()
    x = torch.randn(2, 20, 8, requires_grad=True)
    quantized, _, commit_loss = quantizer(x)
    expected = 0.25 * (quantized.detach() - x.detach()).square().mean()
    assert commit_loss.item() == pytest.approx(expected.item(), rel=1e-6)
    quantized.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))
