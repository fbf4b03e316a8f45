"""Distributed cost: k-means on 1 against 2 processes, and the bytes a VectorQuantizer training
step sends between ranks.

    .venv/bin/python benchmarks/bench_distributed.py            # the default sizes, minutes
    .venv/bin/python benchmarks/bench_distributed.py --quick    # a smoke run, seconds

k-means: the same global rows (N(0, 1), seeded), the same seed and iterations, fitted by one
process with 2 threads (the baseline) and by 2 gloo processes on the CPU with 1 thread each
(the machine's cores split fairly), each holding half of the rows. Time: from a barrier to the
slowest rank's end of ``kmeans_fit`` (random init included), divided by the iterations; median
over --repeats fits. ``vs baseline`` = one process's time / time.

Bytes: 2 gloo ranks, each with ROWS_PER_RANK rows, train ``VectorQuantizer`` (K = 65,536) in EMA,
W-VQ (``distribution_loss="wasserstein"``) and dead-code (``dead_code_threshold > 0``) modes;
``wvq_kernels.distributed.count_bytes`` measures what the last of STEPS training steps hands to
each collective (payload per rank). Bytes on the wire per rank follow from the ring algorithms
gloo uses: an all_gather sends (W - 1) x payload, an all_reduce about 2 (W - 1) / W x payload.
Not counted: DDP's own all-reduce of the gradients, K x D float32 for a learned codebook.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wvq_kernels import distributed as wd
from wvq_kernels import kmeans_fit
from wvq_kernels.bench import harness
from wvq_kernels.nn import VectorQuantizer
from wvq_kernels.reporting import Column, format_table

KMEANS_SIZES = ((131072, 8192, 32),)
QUICK_KMEANS_SIZES = ((4096, 64, 8),)
SIZE_NAMES = ("N", "K", "D")
ITERS = 10
SEED = 4321
THREADS = 2  # the machine's cores: 1 process x 2 threads against 2 processes x 1 thread
BYTES_CODES, BYTES_DIMS, QUICK_BYTES_DIMS = 65536, (8, 64), (8,)
ROWS_PER_RANK, STEPS, WORLD = 4096, 3, 2
MODES = {
    "EMA": {"ema": True},
    "W-VQ": {"distribution_loss": "wasserstein"},
    "dead-code": {"dead_code_threshold": 1.0},
}
TOTALLED = ("payload_bytes", "sent_per_rank_bytes")
TIMEOUT = datetime.timedelta(seconds=300)


def _init_group(rank: int, world: int, folder: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world, timeout=TIMEOUT
    )


def _global_rows(size) -> torch.Tensor:
    rows, _, dim = size
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(SEED))


def _kmeans_worker(rank: int, world: int, folder: str, size, repeats: int) -> None:
    torch.set_num_threads(THREADS // world)
    _init_group(rank, world, folder)
    x = _global_rows(size).chunk(world)[rank].clone()
    seconds = []
    for _ in range(repeats + 1):  # the first fit warms up
        dist.barrier()
        began = time.perf_counter()
        kmeans_fit(x, size[1], ITERS, seed=SEED, progress=False)
        elapsed = torch.tensor([time.perf_counter() - began], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        seconds.append(float(elapsed))
    if rank == 0:
        Path(folder, "result.json").write_text(json.dumps(seconds[1:]))
    dist.destroy_process_group()


def _bytes_worker(rank: int, world: int, folder: str, dims) -> None:
    torch.set_num_threads(1)
    _init_group(rank, world, folder)
    results = {}
    for dim in dims:
        generator = torch.Generator().manual_seed(SEED + dim)
        batches = torch.randn(STEPS, world * ROWS_PER_RANK, dim, generator=generator)
        for mode, options in MODES.items():
            torch.manual_seed(SEED)  # the same initial codebook on every rank
            module = VectorQuantizer(dim, BYTES_CODES, **options).train()
            for batch in batches:
                with wd.count_bytes() as tally:
                    # Features come from an encoder: they carry a gradient.
                    out = module(batch.chunk(world)[rank].clone().requires_grad_())
                    out.loss.backward()
            results[f"{mode} D={dim}"] = tally  # the last step's
    if rank == 0:
        Path(folder, "result.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def _spawned(worker, world: int, *args):
    folder = tempfile.mkdtemp(prefix="wvq-bench-dist-")
    mp.spawn(worker, args=(world, folder, *args), nprocs=world, join=True)
    return json.loads(Path(folder, "result.json").read_text())


def kmeans_rows(sizes, repeats: int) -> list[dict]:
    rows = []
    for size in sizes:
        cell = []
        for world in (1, 2):
            provider = f"{world} process{'es' if world > 1 else ''} x {THREADS // world} thread"
            seconds = _spawned(_kmeans_worker, world, size, repeats)
            median_ms = 1e3 * statistics.median(seconds) / ITERS
            cell.append(
                dict(zip(SIZE_NAMES, size)) | {"provider": provider, "median_ms": median_ms}
            )
        for row in cell:
            row["vs_baseline"] = cell[0]["median_ms"] / row["median_ms"]
        rows += cell
    return rows


def wire_bytes(key: str, payload: int) -> float:
    """Bytes one rank sends for this collective under gloo's ring algorithms."""
    if key.startswith("all_gather"):
        return (WORLD - 1) * payload
    return 2 * (WORLD - 1) / WORLD * payload


def bytes_table(tallies: dict) -> tuple[str, list[dict]]:
    rows = []
    for case, tally in tallies.items():
        parts = [
            {"case": case, "collective": key, "calls": calls, "payload_bytes": payload}
            | {"sent_per_rank_bytes": round(wire_bytes(key, payload))}
            for key, (calls, payload) in sorted(tally.items())
        ]
        total = {"case": case, "collective": "total", "calls": None}
        total |= {key: sum(part[key] for part in parts) for key in TOTALLED}
        rows += [*parts, total]
    columns = [
        Column("mode", "case", 14, left=True),
        Column("collective dtype shape", "collective", 34, left=True),
        Column("calls", "calls", 5),
        Column("payload bytes", "payload_bytes", 13, "{:,}"),
        Column("sent/rank bytes", "sent_per_rank_bytes", 15, "{:,}"),
    ]
    return format_table(columns, rows, group=lambda row: [row["case"]]), rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="distributed k-means time and bytes per step")
    parser.add_argument("--sizes", type=_size, nargs="+", help="k-means NxKxD")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="timed k-means fits")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    args.sizes = args.sizes or list(QUICK_KMEANS_SIZES if args.quick else KMEANS_SIZES)
    args.dims = QUICK_BYTES_DIMS if args.quick else BYTES_DIMS
    return args


def _size(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("x"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = kmeans_rows(args.sizes, args.repeats)
    table, byte_rows = bytes_table(_spawned(_bytes_worker, WORLD, args.dims))
    meta = harness.environment("auto") | {"iters": ITERS, "bytes_per_step": byte_rows}
    columns = [Column(name, name, 7) for name in SIZE_NAMES]
    columns += [
        Column("provider", "provider", 22, left=True),
        Column("ms / iteration", "median_ms", 14, "{:.1f}"),
        Column("vs baseline", "vs_baseline", 11, "{:.2f}x"),
    ]
    print(f"distributed k-means, {ITERS} iterations; load {meta['load_average']:.1f}")
    print(format_table(columns, rows, group=lambda row: [row[n] for n in SIZE_NAMES]))
    print(
        f"\nbytes per VectorQuantizer training step, K={BYTES_CODES}, {WORLD} ranks x "
        f"{ROWS_PER_RANK} rows (the last of {STEPS} steps)"
    )
    print(table)
    stem = f"distributed-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = harness.write_results(rows, meta, args.out, stem)
    labels = [" ".join(f"{n}={row[n]}" for n in SIZE_NAMES) for row in rows[::2]]
    series = {
        provider: [row["median_ms"] for row in rows if row["provider"] == provider]
        for provider in dict.fromkeys(row["provider"] for row in rows)
    }
    title = "distributed k-means, ms per iteration (gloo, CPU)"
    paths.append(harness.bar_chart(args.out / f"{stem}.png", title, "ms", labels, series))
    for path in filter(None, paths):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    sys.exit(main())
