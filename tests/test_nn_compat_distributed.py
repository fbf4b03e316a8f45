"""VectorQuantize's own EMA path under torch.distributed (2 gloo ranks, each with half of every
batch): weighted EMA steps, dead-code refills and synchronised affine statistics leave every
rank with bitwise the same state, close to one process on the full batches; sync_kmeans=False
fits each rank's own rows."""

import functools
import os
import tempfile

import torch
import torch.distributed as dist
from test_distributed import TIMEOUT, init_group, spawn

from wvq_kernels.nn import VectorQuantize

WORLD = 2
DIM, CODES, BATCH, STEPS = 6, 16, 48, 6
MODES = {
    "weighted ema, dead codes": {"threshold_ema_dead_code": 2.0},
    "affine, synchronised": {"affine_param": True, "sync_affine_param": True},
}
WEIGHTS = torch.tensor([1.0, 0.5] * (CODES // 2))


def batch(step: int) -> torch.Tensor:
    """Rows around well-separated centres, so that rounding seldom moves an assignment."""
    generator = torch.Generator().manual_seed(2000 + step)
    centres = 3 * torch.randn(9, DIM, generator=torch.Generator().manual_seed(7))
    picks = torch.randint(9, (BATCH,), generator=generator)
    return centres[picks] + 0.2 * torch.randn(BATCH, DIM, generator=generator)


def tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = module.state_dict().items()
    return {name: value.clone() for name, value in state if isinstance(value, torch.Tensor)}


def train(options: dict, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    quantizer = VectorQuantize(DIM, CODES, kmeans_init=True, **options)
    for step in range(STEPS):
        rows = batch(step).chunk(world)[rank][None]
        quantizer(rows, ema_update_weight=WEIGHTS)
    return tensors(quantizer)


def own_kmeans(rank: int, world: int) -> torch.Tensor:
    quantizer = VectorQuantize(DIM, CODES, kmeans_init=True, sync_kmeans=False).eval()
    quantizer(batch(0).chunk(world)[rank][None])
    return quantizer.codebook.clone()


def kmeans_with_an_empty_rank(rank: int, world: int) -> torch.Tensor:
    """Synchronised k-means where the last rank's first batch is all padding."""
    quantizer = VectorQuantize(DIM, CODES, kmeans_init=True).eval()
    rows = batch(0)[None]
    quantizer(rows, mask=torch.full(rows.shape[:2], rank < world - 1))
    return quantizer.codebook.clone()


def worker(rank: int, world: int, folder: str) -> None:
    init_group(rank, world, folder, TIMEOUT)
    results = {name: train(options, rank, world) for name, options in MODES.items()}
    results["own kmeans"] = own_kmeans(rank, world)
    results["empty rank kmeans"] = kmeans_with_an_empty_rank(rank, world)
    torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


@functools.cache
def run_ranks() -> list[dict]:
    folder = tempfile.mkdtemp(prefix="wvq-compat-dist-")
    spawn(worker, WORLD, folder)
    return [torch.load(os.path.join(folder, f"rank{r}.pt")) for r in range(WORLD)]


def test_ranks_hold_identical_state_close_to_one_process():
    ranks = run_ranks()
    for mode, options in MODES.items():
        first, second = (r[mode] for r in ranks)
        single = train(options)
        assert first.keys() == single.keys()
        for name, value in first.items():
            assert torch.equal(value, second[name]), f"{mode}: {name} differs between ranks"
            torch.testing.assert_close(
                value, single[name], rtol=1e-4, atol=1e-5, msg=f"{mode}: {name}"
            )


def test_unsynchronised_kmeans_fits_each_ranks_rows():
    ranks = run_ranks()
    for rank, result in enumerate(ranks):
        torch.testing.assert_close(result["own kmeans"], own_kmeans(rank, WORLD))
    assert not torch.equal(ranks[0]["own kmeans"], ranks[1]["own kmeans"])


def test_a_rank_without_rows_takes_part_in_the_synchronised_kmeans():
    first, second = (r["empty rank kmeans"] for r in run_ranks())
    assert torch.equal(first, second)
    # The fit of the other rank's rows alone, as one process makes it (here, rank 0's part).
    torch.testing.assert_close(first, kmeans_with_an_empty_rank(0, WORLD))
