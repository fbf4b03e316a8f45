"""wvq_kernels.distributed and distributed k-means on real gloo process groups on the CPU.

One spawned job per world size (2 and 3 ranks) runs every check and saves each rank's results;
the tests compare them with one process on the concatenated rows. Spawning costs about a second
per job, so the checks are batched rather than spawned one by one.
"""

import datetime
import functools
import os
import tempfile
import time
from unittest import mock

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wvq_kernels import assign, code_histogram, code_sums, moments
from wvq_kernels import distributed as wd
from wvq_kernels.kmeans import kmeans
from wvq_kernels.testing import moments_failures

TIMEOUT = datetime.timedelta(seconds=30)
MISMATCH_TIMEOUT = datetime.timedelta(seconds=2)
D = 6
NUM_CODES = 12
KMEANS_CODES = 10
KMEANS_ITERS = 8
METRICS = ("l2", "dot", "cosine")
# Rows per rank: uneven, and one rank empty, for each world size.
ROW_COUNTS = {2: [[53, 24], [0, 61]], 3: [[41, 0, 29], [17, 38, 9]]}
# Codebook shard sizes per rank, in rank order: uneven, one with an empty shard.
SHARD_SIZES = {2: [[9, 14], [1, 20]], 3: [[4, 11, 7], [6, 0, 10]]}


def global_rows(total: int, seed: int) -> torch.Tensor:
    """Rows around a few well-separated centres, so that k-means has no near-ties for the
    rounding of distributed sums to flip."""
    generator = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(7, D, generator=generator)
    picks = torch.randint(7, (total,), generator=generator)
    return centres[picks] + 0.3 * torch.randn(total, D, generator=generator)


def global_indices(total: int, seed: int) -> torch.Tensor:
    return torch.randint(NUM_CODES, (total,), generator=torch.Generator().manual_seed(seed))


def sharded_codebook(sizes: list[int], seed: int) -> tuple[torch.Tensor, int, int]:
    """A codebook whose last code of the first shard is repeated as the first code of the
    last shard: an exact tie across a shard boundary. Returns it and both indices."""
    codebook = torch.randn(sum(sizes), D, generator=torch.Generator().manual_seed(seed))
    low, high = sizes[0] - 1, sum(sizes) - sizes[-1]
    codebook[high] = codebook[low]
    return codebook, low, high


def sharded_rows(total: int, codebook: torch.Tensor, low: int, seed: int) -> torch.Tensor:
    """Random rows, every third one close to the duplicated code."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(total, D, generator=generator)
    rows[::3] = codebook[low] + 0.05 * torch.randn(len(rows[::3]), D, generator=generator)
    return rows


def local_part(rows: torch.Tensor, counts: list[int], rank: int) -> torch.Tensor:
    start = sum(counts[:rank])
    return rows[start : start + counts[rank]]


def init_group(rank: int, world: int, folder: str, timeout: datetime.timedelta) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/init",
        rank=rank,
        world_size=world,
        timeout=timeout,
    )


def collective_checks(rank: int, counts: list[int], seed: int) -> dict:
    total = sum(counts)
    x = local_part(global_rows(total, seed), counts, rank)
    indices = local_part(global_indices(total, seed), counts, rank)
    histogram = code_histogram(indices, NUM_CODES)
    local_histogram = histogram.clone()
    return {
        "rows": wd.all_gather_rows(x),
        "rows_bf16": wd.all_gather_rows(x.bfloat16()),
        "histogram": wd.all_reduce_histogram(histogram),
        # Evaluated after the all-reduce: the caller's tensor is not written into.
        "histogram_input_kept": torch.equal(histogram, local_histogram),
        "sums": wd.all_reduce_code_sums(code_sums(indices, x, NUM_CODES)[1]),
        "moments": wd.all_gather_moments(moments(x)),
        "kmeans_start": kmeans(x, KMEANS_CODES, 0, seed=seed),
        "kmeans": kmeans(x, KMEANS_CODES, KMEANS_ITERS, seed=seed),
        # More codes than rows: the initial codes are drawn with replacement.
        "kmeans_replace": kmeans(x, total + 5, 2, seed=seed),
    }


def sharded_checks(rank: int, world: int, sizes: list[int], seed: int) -> dict:
    codebook, low, _ = sharded_codebook(sizes, seed)
    counts = ROW_COUNTS[world][0]
    x = local_part(sharded_rows(sum(counts), codebook, low, seed), counts, rank)
    shard = local_part(codebook, sizes, rank)
    results = {m: wd.assign_sharded(x, shard, metric=m) for m in METRICS}
    results["batched"] = wd.assign_sharded(x.unsqueeze(0), shard)
    return results


def worker(rank: int, world: int, folder: str) -> None:
    init_group(rank, world, folder, TIMEOUT)
    results = {
        "distributed": wd.is_distributed(),
        "collectives": [
            collective_checks(rank, c, seed) for seed, c in enumerate(ROW_COUNTS[world])
        ],
        "sharded": [
            sharded_checks(rank, world, s, seed) for seed, s in enumerate(SHARD_SIZES[world])
        ],
    }
    try:
        kmeans(torch.empty(0, D), 4, 1)
    except ValueError as error:
        results["all_empty_error"] = str(error)
    torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


def spawn(function, world: int, folder: str) -> None:
    # The ranks run CPU kernels only: without TRITON_INTERPRET (set by conftest.py) their import
    # of wvq_kernels skips Triton, seconds per process on this machine.
    with mock.patch.dict(os.environ):
        os.environ.pop("TRITON_INTERPRET", None)
        mp.spawn(function, args=(world, folder), nprocs=world, join=True)


@functools.cache
def run_world(world: int) -> list[dict]:
    folder = tempfile.mkdtemp(prefix="wvq-dist-")
    spawn(worker, world, folder)
    # These files hold the ranks' Moments and Assignment tuples, written by this test.
    paths = [os.path.join(folder, f"rank{rank}.pt") for rank in range(world)]
    return [torch.load(path, weights_only=False) for path in paths]


def same_on_every_rank(results: list, key) -> torch.Tensor:
    first = key(results[0])
    for rank, result in enumerate(results[1:], start=1):
        assert torch.equal(key(result), first), f"rank {rank} differs from rank 0"
    return first


def test_is_distributed_and_no_op_without_a_group():
    counts = torch.tensor([3, 0, 2])
    assert not wd.is_distributed()
    assert wd.all_reduce_histogram(counts) is counts
    assert wd.all_gather_sizes(5) == [5]
    x, codebook = global_rows(40, 0), torch.randn(9, D)
    alone = wd.assign_sharded(x, codebook, metric="dot")
    assert torch.equal(alone.indices, assign(x, codebook, metric="dot").indices)
    with pytest.raises(TypeError, match="codebook_shard"):
        wd.assign_sharded(x, codebook.double())
    with pytest.raises(ValueError, match="codebook_shard"):
        wd.assign_sharded(x, codebook[:0])
    assert all(run_world(world)[0]["distributed"] for world in (2, 3))


def test_rows_gathered_in_rank_order_bit_for_bit():
    for world in (2, 3):
        results = run_world(world)
        for i, counts in enumerate(ROW_COUNTS[world]):
            expected = global_rows(sum(counts), i)
            for result in results:
                assert torch.equal(result["collectives"][i]["rows"], expected)
                assert torch.equal(result["collectives"][i]["rows_bf16"], expected.bfloat16())


def test_histogram_all_reduce_is_exact():
    for world in (2, 3):
        for i, counts in enumerate(ROW_COUNTS[world]):
            got = same_on_every_rank(
                run_world(world), lambda r, i=i: r["collectives"][i]["histogram"]
            )
            expected = code_histogram(global_indices(sum(counts), i), NUM_CODES)
            assert got.dtype == torch.int64 and torch.equal(got, expected)
            assert all(r["collectives"][i]["histogram_input_kept"] for r in run_world(world))


def test_code_sums_identical_on_every_rank_and_close_to_one_process():
    for world in (2, 3):
        for i, counts in enumerate(ROW_COUNTS[world]):
            got = same_on_every_rank(run_world(world), lambda r, i=i: r["collectives"][i]["sums"])
            total = sum(counts)
            _, expected = code_sums(global_indices(total, i), global_rows(total, i), NUM_CODES)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_moments_merge_equals_one_process():
    for world in (2, 3):
        for i, counts in enumerate(ROW_COUNTS[world]):
            results = run_world(world)
            for field in range(3):
                same_on_every_rank(
                    results, lambda r, i=i, f=field: r["collectives"][i]["moments"][f]
                )
            merged = results[0]["collectives"][i]["moments"]
            assert moments_failures(merged, global_rows(sum(counts), i)) == []


def test_kmeans_equals_one_process_on_the_concatenation():
    for world in (2, 3):
        for i, counts in enumerate(ROW_COUNTS[world]):
            results = run_world(world)
            rows = global_rows(sum(counts), i)
            # The initial draw moves rows without arithmetic: exactly the same codes.
            start = same_on_every_rank(results, lambda r, i=i: r["collectives"][i]["kmeans_start"])
            assert torch.equal(start, kmeans(rows, KMEANS_CODES, 0, seed=i))
            got = same_on_every_rank(results, lambda r, i=i: r["collectives"][i]["kmeans"])
            expected = kmeans(rows, KMEANS_CODES, KMEANS_ITERS, seed=i)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            assert not torch.equal(got, start)
            got = same_on_every_rank(results, lambda r, i=i: r["collectives"][i]["kmeans_replace"])
            expected = kmeans(rows, sum(counts) + 5, 2, seed=i)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_kmeans_with_no_rows_anywhere_fails_on_every_rank():
    for world in (2, 3):
        assert all("no" in result.get("all_empty_error", "") for result in run_world(world))


def test_assign_sharded_equals_assign_on_the_whole_codebook():
    for world in (2, 3):
        results = run_world(world)
        counts = ROW_COUNTS[world][0]
        for i, sizes in enumerate(SHARD_SIZES[world]):
            codebook, low, high = sharded_codebook(sizes, i)
            rows = sharded_rows(sum(counts), codebook, low, i)
            for metric in METRICS:
                expected = assign(rows, codebook, metric=metric)
                got = [r["sharded"][i][metric] for r in results]
                assert all(part.counts is None for part in got)
                torch.testing.assert_close(
                    torch.cat([part.indices for part in got]), expected.indices, rtol=0, atol=0
                )
                torch.testing.assert_close(
                    torch.cat([part.distances for part in got]), expected.distances, rtol=0, atol=0
                )
            # The tie across the shard boundary goes to the smaller global index.
            tied = torch.cat([r["sharded"][i]["l2"].indices for r in results])[::3]
            assert (tied == low).all() and high != low
            batched = torch.cat([r["sharded"][i]["batched"].indices for r in results], dim=1)
            assert torch.equal(batched, assign(rows, codebook).indices.unsqueeze(0))


def mismatched_worker(rank: int, world: int, folder: str) -> None:
    """Rank 1 skips the collective rank 0 makes, then waits until rank 0 has reported."""
    init_group(rank, world, folder, MISMATCH_TIMEOUT)
    report = os.path.join(folder, "report.pt")
    if rank == 0:
        began = time.monotonic()
        try:
            wd.all_reduce_histogram(torch.ones(4, dtype=torch.int64))
            outcome = "returned"
        except RuntimeError as error:
            outcome = f"raised {error}"
        torch.save((outcome, time.monotonic() - began), report)
    else:
        deadline = time.monotonic() + 30
        while not os.path.exists(report) and time.monotonic() < deadline:
            time.sleep(0.1)


def test_a_mismatched_rank_fails_within_its_timeout():
    folder = tempfile.mkdtemp(prefix="wvq-dist-")
    spawn(mismatched_worker, 2, folder)
    outcome, seconds = torch.load(os.path.join(folder, "report.pt"))
    assert outcome.startswith("raised") and "timed out" in outcome.lower(), outcome
    limit = MISMATCH_TIMEOUT.total_seconds()
    assert limit <= seconds < limit + 5
