"""Distributed k-means with the k-means++ / k-means|| starts, empty-cluster splits, objective
and progress, on real gloo process groups (2 and 3 ranks, uneven shards, one rank empty):
every rank gets the result of one process on the rows concatenated in rank order, and the
pruned steps give bitwise what the plain ones give."""

import contextlib
import functools
import io
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from test_distributed import ROW_COUNTS, TIMEOUT, global_rows, init_group, local_part, spawn

from wvq_kernels import distributed as wd
from wvq_kernels import kmeans, kmeans_fit

CODES = 10
ITERS = 4
STRANDED = 3
SPLIT_DATA_SEED = 10
INITS = ("kmeans++", "kmeans||")


def split_rows(total: int, seed: int) -> torch.Tensor:
    """Rows for the split test. A split puts the two halves of a cluster 2 epsilon apart, so
    some of its rows sit near the hyperplane between them, where the rounding of the summed
    sums could flip them (changing the counts and the objective, not only their rounding);
    these fixed rows have no such near-tie in any case tested."""
    return global_rows(total, seed + SPLIT_DATA_SEED)


def stranded_start(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """Distinct rows as centres, the last STRANDED moved far away: their clusters are empty."""
    # Not kmeans(rows, CODES, 0): on a rank, that would treat rows as the rank's share.
    start = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:CODES]]
    start[-STRANDED:] = 1e3
    return start


def checks(rank: int, counts: list[int], seed: int) -> dict:
    rows = global_rows(sum(counts), seed)
    x = local_part(rows, counts, rank)
    results = {
        init: kmeans_fit(x, CODES, ITERS, init=init, seed=seed, prune=True) for init in INITS
    }
    results |= {
        f"{init} plain": kmeans_fit(x, CODES, ITERS, init=init, seed=seed, prune=False)
        for init in INITS
    }
    results |= {f"{init} start": kmeans(x, CODES, 0, init=init, seed=seed) for init in INITS}
    for_split = split_rows(sum(counts), seed)
    start = stranded_start(for_split, seed)
    mine = local_part(for_split, counts, rank)
    results["split"] = kmeans_fit(mine, CODES, ITERS, init_codebook=start, prune=True)
    results["split plain"] = kmeans_fit(mine, CODES, ITERS, init_codebook=start, prune=False)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        kmeans_fit(x, CODES, 2, seed=seed, progress=True)
    results["progress"] = stderr.getvalue()
    with wd.count_bytes() as tally:
        wd.all_reduce_histogram(torch.zeros(CODES, dtype=torch.int64))
        wd.all_gather_rows(x)
    results["tally"] = tally
    return results


def worker(rank: int, world: int, folder: str) -> None:
    init_group(rank, world, folder, TIMEOUT)
    results = [checks(rank, counts, seed) for seed, counts in enumerate(ROW_COUNTS[world])]
    torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


@functools.cache
def run_world(world: int) -> list[list[dict]]:
    folder = tempfile.mkdtemp(prefix="wvq-kmeans-dist-")
    spawn(worker, world, folder)
    # KMeansResult tuples written by this test's worker.
    paths = [os.path.join(folder, f"rank{rank}.pt") for rank in range(world)]
    return [torch.load(path, weights_only=False) for path in paths]


def cases():
    for world in (2, 3):
        for seed, counts in enumerate(ROW_COUNTS[world]):
            yield world, seed, counts


def on_every_rank(world: int, seed: int, key: str):
    """The rank-0 result, after checking every other rank holds bitwise the same."""
    results = [ranks[seed][key] for ranks in run_world(world)]
    for rank, result in enumerate(results[1:], start=1):
        for field, first in zip(result, results[0], strict=True):
            same = torch.equal(field, first) if torch.is_tensor(first) else field == first
            assert same, f"rank {rank} differs from rank 0 in {key}"
    return results[0]


def assert_same_fit(got, expected):
    torch.testing.assert_close(got.codebook, expected.codebook, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.objective, expected.objective, rtol=1e-6, atol=0)
    assert torch.equal(got.counts, expected.counts) and got.splits == expected.splits


@pytest.mark.parametrize("init", INITS)
def test_smart_init_equals_one_process_on_the_concatenation(init):
    for world, seed, counts in cases():
        rows = global_rows(sum(counts), seed)
        # The starts only move rows, drawn with exact integer weights: bitwise the same.
        start = on_every_rank(world, seed, f"{init} start")
        assert torch.equal(start, kmeans(rows, CODES, 0, init=init, seed=seed))
        got = on_every_rank(world, seed, init)
        assert_same_fit(got, kmeans_fit(rows, CODES, ITERS, init=init, seed=seed))


def test_splits_equal_one_process_on_the_concatenation():
    for world, seed, counts in cases():
        rows = split_rows(sum(counts), seed)
        got = on_every_rank(world, seed, "split")
        expected = kmeans_fit(rows, CODES, ITERS, init_codebook=stranded_start(rows, seed))
        assert got.splits >= STRANDED
        assert_same_fit(got, expected)


@pytest.mark.parametrize("key", [*INITS, "split"])
def test_pruned_steps_equal_plain_steps_bitwise_on_every_rank(key):
    for world, seed, _ in cases():
        pruned = on_every_rank(world, seed, key)
        plain = on_every_rank(world, seed, f"{key} plain")
        assert torch.equal(pruned.codebook, plain.codebook)
        assert torch.equal(pruned.objective, plain.objective)
        assert torch.equal(pruned.counts, plain.counts) and pruned.splits == plain.splits


def test_progress_only_on_rank_zero():
    for world in (2, 3):
        ranks = run_world(world)
        lines = ranks[0][0]["progress"].splitlines()
        assert [line.split()[2] for line in lines] == ["1/2", "2/2"]
        assert all(result[0]["progress"] == "" for result in ranks[1:])


def test_count_bytes_tallies_each_collective_payload():
    for world in (2, 3):
        for rank, ranks in enumerate(run_world(world)):
            for seed, counts in enumerate(ROW_COUNTS[world]):
                padded = max(counts) * global_rows(1, 0).shape[1] * 4  # rows travel as bytes
                assert ranks[seed]["tally"] == {
                    f"all_reduce int64 ({CODES},)": [1, CODES * 8],
                    "all_gather int64 (1,)": [1, 8],
                    f"all_gather uint8 ({max(counts)}, {padded // max(counts)})": [1, padded],
                }, (world, rank, seed)
