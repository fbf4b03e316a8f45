"""The VectorQuantize examples of vector-quantize-pytorch's README (1.31/1.32), run as written
against the swap-in: the shapes its comments give, codes from the codebook, a finite loss."""

import copy

import pytest
import torch

from wvq_kernels.nn import VectorQuantize

pytestmark = pytest.mark.usefixtures("one_thread")

# (constructor keywords, input shape, quantized shape, indices shape), one per README example.
EXAMPLES = {
    "usage": (
        {"dim": 256, "codebook_size": 512, "decay": 0.8, "commitment_weight": 1.0},
        (1, 1024, 256),
        (1, 1024),
    ),
    "rotation trick": (
        {"dim": 256, "codebook_size": 256, "rotation_trick": True},
        (1, 1024, 256),
        (1, 1024),
    ),
    "lower codebook dimension": (
        {"dim": 256, "codebook_size": 256, "codebook_dim": 16},
        (1, 1024, 256),
        (1, 1024),
    ),
    "cosine similarity": (
        {"dim": 256, "codebook_size": 256, "use_cosine_sim": True},
        (1, 1024, 256),
        (1, 1024),
    ),
    "expiring stale codes": (
        {"dim": 256, "codebook_size": 512, "threshold_ema_dead_code": 2},
        (1, 1024, 256),
        (1, 1024),
    ),
    "orthogonal regularization": (
        {
            "dim": 256,
            "codebook_size": 256,
            "accept_image_fmap": True,
            "orthogonal_reg_weight": 10,
            "orthogonal_reg_max_codes": 128,
            "orthogonal_reg_active_codes_only": False,
        },
        (1, 256, 32, 32),
        (1, 32, 32),
    ),
    "multi-headed": (
        {
            "dim": 256,
            "codebook_dim": 32,
            "heads": 8,
            "separate_codebook_per_head": True,
            "codebook_size": 8196,
            "accept_image_fmap": True,
        },
        (1, 256, 32, 32),
        (1, 32, 32, 8),
    ),
}


@pytest.mark.parametrize("options, shape, index_shape", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_readme_example(options, shape, index_shape):
    torch.manual_seed(0)
    vq = VectorQuantize(**options)
    before = copy.deepcopy(vq)  # the training forward moves the EMA codebook
    x = torch.randn(shape)
    quantized, indices, loss = vq(x)
    assert quantized.shape == shape and indices.shape == index_shape
    assert loss.shape == () and torch.isfinite(loss) and loss > 0
    assert indices.min() >= 0 and indices.max() < options["codebook_size"]
    # The training output (input without gradient) is the chosen codes, projected out.
    torch.testing.assert_close(quantized, before.get_output_from_indices(indices))


def test_readme_directional_reparam_example_is_refused_like_the_peer_does():
    """The README's DiVeQ example leaves threshold_ema_dead_code at 0, which the peer's own
    constructor refuses (an assertion); the swap-in refuses it with a ValueError."""
    options = {"dim": 256, "codebook_size": 256, "directional_reparam": True}
    with pytest.raises(ValueError, match="directional_reparam without dead-code replacement"):
        VectorQuantize(**options, directional_reparam_variance=5e-3)
    vq = VectorQuantize(**options, threshold_ema_dead_code=2)
    x = torch.randn(1, 1024, 256, requires_grad=True)
    quantized, _, _ = vq(x)
    quantized.sum().backward()
    assert quantized.shape == x.shape and torch.isfinite(x.grad).all()
