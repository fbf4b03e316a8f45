"""VectorQuantizer under torch.distributed: 2 gloo ranks, each with half of every batch, end
with bitwise the same quantizer state, close to one process trained on the full batches.

One spawned job runs every mode, synchronised and not, and saves each rank's state_dicts; the
tests replay the single-process runs here and compare.
"""

import functools
import os
import tempfile

import torch
import torch.distributed as dist
from test_distributed import TIMEOUT, init_group, spawn

from wvq_kernels import distributed as wd
from wvq_kernels.nn import VectorQuantize, VectorQuantizer

WORLD = 2
DIM, CODES, BATCH, STEPS = 6, 16, 48, 20
# NSVQ refills dead codes from its reservoir at this step, as an epoch end would.
REFILL_STEP = 10
MODES = {
    "ema": dict(ema=True),
    "wasserstein": dict(distribution_loss="wasserstein", feature_queue_size=200),
    # A queue shorter than the run, so refills draw from a wrapped-around queue.
    "dead_code": dict(dead_code_threshold=2.0, feature_queue_size=100),
    "ema_dead_code_kmeans": dict(ema=True, dead_code_threshold=2.0, kmeans_init=True),
    "nsvq": dict(codebook_loss="dense", reservoir_size=40),
    # The batch entropy is that of the global batch's average soft assignment.
    "entropy": dict(entropy_weight=0.5, entropy_tau=2.0),
}


def batch(step: int) -> torch.Tensor:
    """Rows around well-separated centres, so that rounding seldom moves an assignment."""
    generator = torch.Generator().manual_seed(1000 + step)
    centres = 3 * torch.randn(9, DIM, generator=torch.Generator().manual_seed(7))
    picks = torch.randint(9, (BATCH,), generator=generator)
    return centres[picks] + 0.2 * torch.randn(BATCH, DIM, generator=generator)


def make_quantizer(mode: str, **sync) -> tuple[VectorQuantizer, torch.optim.Optimizer | None]:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(DIM, CODES, **MODES[mode], **sync)
    parameters = quantizer.codebook_parameters()
    optimizer = torch.optim.SGD(parameters, lr=0.5, momentum=0.9) if parameters else None
    return quantizer.train(), optimizer


def average_gradients(parameters, world: int) -> None:
    """DDP's gradient averaging, summed in rank order so that every rank gets the same bits."""
    for parameter in parameters:
        parameter.grad = wd.all_reduce_code_sums(parameter.grad) / world


def train(mode: str, rank: int = 0, world: int = 1, batches=None, **sync) -> dict:
    quantizer, optimizer = make_quantizer(mode, **sync)
    for step in range(STEPS):
        rows = batch(step)
        z = rows.chunk(world)[rank] if batches is None else batches[step]
        out = quantizer(z)
        if optimizer is not None:
            optimizer.zero_grad()
            out.loss.backward()
            if world > 1:
                average_gradients(quantizer.codebook_parameters(), world)
            optimizer.step()
        if mode == "nsvq" and step == REFILL_STEP:
            quantizer.refill_dead_codes(1.0)
    return buffers(quantizer)


def buffers(quantizer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict's tensors, copied (the extra state is a dict)."""
    state = quantizer.state_dict().items()
    return {name: value.clone() for name, value in state if isinstance(value, torch.Tensor)}


def train_compat(rank: int, world: int) -> dict:
    """VectorQuantize (vector-quantize-pytorch's interface) synchronises by default too."""
    torch.manual_seed(0)
    quantizer = VectorQuantize(DIM, CODES, kmeans_init=True, threshold_ema_dead_code=2.0)
    for step in range(STEPS):
        quantizer(batch(step).chunk(world)[rank].unsqueeze(0))
    return buffers(quantizer)


def nonfinite_step(rank: int) -> dict:
    """One EMA step where only rank 1's batch holds a NaN: no rank may change its state."""
    quantizer, _ = make_quantizer("ema_dead_code_kmeans")
    quantizer(batch(0).chunk(WORLD)[rank])
    before = buffers(quantizer)
    z = batch(1).chunk(WORLD)[rank].clone()
    if rank == 1:
        z[3, 2] = float("nan")
    quantizer(z)
    return {"before": before, "after": buffers(quantizer)}


def sampled_steps(rank: int) -> dict:
    """Sampled codes (sample_temperature) with the same rows on both ranks: each rank draws
    its own codes, yet the synchronised state stays identical."""
    torch.manual_seed(0)
    quantizer = VectorQuantizer(DIM, CODES, ema=True, sample_temperature=50.0)
    indices = [quantizer(batch(step)).indices for step in range(3)]
    return {"indices": torch.stack(indices), "state": buffers(quantizer)}


def worker(rank: int, world: int, folder: str) -> None:
    init_group(rank, world, folder, TIMEOUT)
    results = {
        "synced": {mode: train(mode, rank, world) for mode in MODES},
        "unsynced": {
            mode: train(mode, rank, world, sync_stats=False) for mode in ("ema", "dead_code")
        },
        "nonfinite": nonfinite_step(rank),
        "compat": train_compat(rank, world),
        "sampled": sampled_steps(rank),
    }
    torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


@functools.cache
def run_ranks() -> list[dict]:
    folder = tempfile.mkdtemp(prefix="wvq-nn-dist-")
    spawn(worker, WORLD, folder)
    return [torch.load(os.path.join(folder, f"rank{r}.pt")) for r in range(WORLD)]


def test_ranks_hold_identical_state_close_to_one_process():
    ranks = run_ranks()
    for mode in MODES:
        first, second = (r["synced"][mode] for r in ranks)
        single = train(mode)
        assert first.keys() == single.keys()
        for name, value in first.items():
            assert torch.equal(value, second[name]), f"{mode}: {name} differs between ranks"
            torch.testing.assert_close(
                value, single[name], rtol=1e-4, atol=1e-5, msg=f"{mode}: {name}"
            )


def test_training_moves_the_codebook_and_refills():
    ranks = run_ranks()
    for mode in MODES:
        state = ranks[0]["synced"][mode]
        initial = buffers(make_quantizer(mode)[0])
        assert not torch.equal(state["embedding"], initial["embedding"]), mode
    assert ranks[0]["synced"]["dead_code"]["generator.offset"] > 0
    assert ranks[0]["synced"]["nsvq"]["generator.offset"] > 0


def test_without_sync_the_ranks_diverge():
    ranks = run_ranks()
    for mode in ("ema", "dead_code"):
        first, second = (r["unsynced"][mode] for r in ranks)
        assert not torch.equal(first["embedding"], second["embedding"]), mode
        assert not torch.equal(first["cluster_size"], second["cluster_size"]), mode


def test_one_rank_nonfinite_batch_changes_no_rank():
    for result in run_ranks():
        before, after = result["nonfinite"]["before"], result["nonfinite"]["after"]
        for name, value in before.items():
            if name != "skipped_nonfinite":
                assert torch.equal(after[name], value), name
        assert after["skipped_nonfinite"] == before["skipped_nonfinite"] + 1


def test_vector_quantize_compat_ranks_identical_and_close_to_one_process():
    first, second = (r["compat"] for r in run_ranks())
    single = train_compat(0, 1)
    for name, value in first.items():
        assert torch.equal(value, second[name]), name
        torch.testing.assert_close(value, single[name], rtol=1e-4, atol=1e-5, msg=name)


def test_sampling_ranks_draw_independently_and_keep_identical_state():
    first, second = (r["sampled"] for r in run_ranks())
    assert not torch.equal(first["indices"], second["indices"])
    for name, value in first["state"].items():
        assert torch.equal(value, second["state"][name]), name
