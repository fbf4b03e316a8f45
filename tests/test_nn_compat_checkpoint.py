"""Checkpoints between vector-quantize-pytorch's VectorQuantize and the swap-in: a peer
trained a few steps, saved and loaded into ours (strictly) gives the same outputs; ours, saved
in the peer's layout, loads into the peer and gives the same outputs there."""

import io

import pytest
import torch

from wvq_kernels.nn import VectorQuantize

vqp = pytest.importorskip("vector_quantize_pytorch")

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, CODES = 16, 64

CASES = {
    "ema": {},
    "ema kmeans projection": {"kmeans_init": True, "codebook_dim": 8},
    "cosine": {"use_cosine_sim": True},
    "separate heads": {"heads": 2, "codebook_dim": 4, "separate_codebook_per_head": True},
    "layernorm projection": {"codebook_dim": 8, "layernorm_after_project_in": True},
    "learnable": {"learnable_codebook": True, "ema_update": False},
    "affine": {"affine_param": True},
}


def data(step: int) -> torch.Tensor:
    return torch.randn(2, 32, DIM, generator=torch.Generator().manual_seed(step))


def train(module, steps: int = 4):
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1) if list(module.parameters()) else None
    module.train()
    for step in range(steps):
        x = data(step).requires_grad_()
        quantized, _, loss = module(x)
        if optimizer is not None:
            optimizer.zero_grad()
            (quantized.square().mean() + loss).backward()
            optimizer.step()
    return module


def saved(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def eval_outputs(module):
    quantized, indices, _ = module.eval()(data(100))
    return quantized.detach(), indices


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_a_trained_peer_checkpoint_loads_strictly_and_gives_the_same_outputs(options):
    torch.manual_seed(0)
    theirs = train(vqp.VectorQuantize(DIM, CODES, **options))
    ours = VectorQuantize(DIM, CODES, **options)
    ours.load_state_dict(saved(theirs.state_dict()))
    assert bool(ours.initted)
    (q_ours, i_ours), (q_theirs, i_theirs) = eval_outputs(ours), eval_outputs(theirs)
    assert torch.equal(i_ours, i_theirs)
    torch.testing.assert_close(q_ours, q_theirs)


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_ours_in_the_peers_layout_loads_into_the_peer(options):
    torch.manual_seed(0)
    ours = train(VectorQuantize(DIM, CODES, **options))
    theirs = vqp.VectorQuantize(DIM, CODES, **options)
    if options.get("affine_param"):
        theirs(data(0))  # the peer registers its affine statistics on its first forward
    theirs.load_state_dict(saved(ours.peer_state_dict()))
    (q_ours, i_ours), (q_theirs, i_theirs) = eval_outputs(ours), eval_outputs(theirs)
    assert torch.equal(i_ours, i_theirs)
    torch.testing.assert_close(q_ours, q_theirs)


def test_a_peer_checkpoint_inside_a_larger_model_loads():
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(torch.nn.Linear(DIM, DIM), vqp.VectorQuantize(DIM, CODES))
    train(theirs[1])
    ours = torch.nn.Sequential(torch.nn.Linear(DIM, DIM), VectorQuantize(DIM, CODES))
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours[1].codebook, theirs[1].codebook)


def test_ours_round_trips_through_its_own_state_dict():
    torch.manual_seed(0)
    ours = train(VectorQuantize(DIM, CODES, kmeans_init=True))
    again = VectorQuantize(DIM, CODES, kmeans_init=True)
    again.load_state_dict(saved(ours.state_dict()))
    (q_ours, i_ours), (q_again, i_again) = eval_outputs(ours), eval_outputs(again)
    assert torch.equal(i_ours, i_again) and torch.equal(q_ours, q_again)


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_the_peers_codebook_internals_read_the_same(options):
    torch.manual_seed(0)
    theirs = train(vqp.VectorQuantize(DIM, CODES, **options))
    ours = VectorQuantize(DIM, CODES, **options)
    ours.load_state_dict(theirs.state_dict())
    for name in ("embed", "cluster_size", "initted"):
        torch.testing.assert_close(getattr(ours._codebook, name), getattr(theirs._codebook, name))
    if ours.ema_update:
        torch.testing.assert_close(ours._codebook.embed_avg, theirs._codebook.embed_avg)
