"""The assignment comparison grid: nearest-code assignment (L2, k = 1), ours against its peers.

    wvq bench                                       # default grid (several minutes)
    wvq bench --quick                               # small grid, well under a minute
    wvq bench --rows 16384 --dims 32
    wvq bench --memory-check                        # ours at N = K = 65,536, D = 64
    wvq bench --gpu-check                           # fused vs materialising PyTorch on a GPU
    python benchmarks/bench_assign.py [same arguments]

For every (K, N, D) cell and provider: median wall time over repeats after one warm-up call,
GFLOP/s counted as 2*N*K*D, speed relative to the best peer (best provider that is not ours in
the same cell; > 1 means faster), peak RSS delta, and, on a sample of rows (all rows up to
1024), the mean regret (chosen squared distance minus the float64 optimum of
wvq_kernels.testing) and the share of rows whose code is not the float64 optimum. x and the
codebook are drawn from N(0, 1).

Peak RSS delta (harness.PeakMemory): reset just before the cell, read after the last repeat; it
counts every page the provider touched for the first time during the cell (not memory it reuses
from an earlier cell without touching new pages, such as a torch thread pool).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

import wvq_kernels
from wvq_kernels.bench.harness import (
    MiB,
    PeakMemory,
    Skip,
    bar_chart,
    environment,
    timed_calls,
    write_results,
)
from wvq_kernels.bench.providers import PROVIDERS_BY_NAME, Provider, Settings
from wvq_kernels.reporting import Column, format_table
from wvq_kernels.testing import AssignmentTruth, random_inputs

DEFAULT_CODES = [65536]
DEFAULT_ROWS = [4096, 16384]
DEFAULT_DIMS = [8, 32, 64, 256]
QUICK_ROWS = [1024]
QUICK_DIMS = [16, 64]
MEMORY_CHECK_SIZE = 65536
MEMORY_CHECK_DIM = 64
MEMORY_TARGET_MIB = 64
# --gpu-check: bf16 N = K = 65,536, D = 64; the fused kernel should beat PyTorch's bf16 GEMM +
# argmin (which writes an N x K matrix) by this factor.
GPU_CHECK_SIZE = 65536
GPU_CHECK_DIM = 64
GPU_TARGET_SPEEDUP = 3.0


@dataclass
class Cell:
    codes: int
    rows: int
    dim: int
    provider: str
    precision: str
    status: str = "ok"
    median_ms: float | None = None
    repeats: int = 0
    gflops: float | None = None
    vs_best_peer: float | None = None
    peak_rss_delta_mib: float | None = None
    mean_regret: float | None = None
    max_regret: float | None = None
    suboptimal_fraction: float | None = None


class RegretScore:
    """Float64 regret (wvq_kernels.testing) of any provider's choice on a fixed sample of rows."""

    def __init__(self, x: Tensor, codebook: Tensor, sample_rows: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed + 1)
        self.rows = torch.randperm(x.shape[0], generator=generator)[:sample_rows]
        self.truth = AssignmentTruth(x[self.rows], codebook, "l2")

    def score(self, indices: Tensor) -> dict:
        # The optimum and every choice by one formula: the same code has exactly zero regret.
        regret = self.truth.regret(indices[self.rows]).clamp_min(0)
        return {
            "mean_regret": regret.mean().item(),
            "max_regret": regret.max().item(),
            "suboptimal_fraction": (regret > 0).double().mean().item(),
        }


def run_cell(provider: Provider, x, codebook, regret, settings, args, meter) -> Cell:
    rows, dim = x.shape
    cell = Cell(codebook.shape[0], rows, dim, provider.name, provider.precision)
    try:
        _check_slow_cap(provider, 2 * rows * codebook.shape[0] * dim, settings)
        meter.reset()
        search = provider.prepare(x, codebook, settings)
        ms, repeats, indices = timed_calls(search, args.repeats, args.target_seconds)
    except Skip as reason:
        cell.status = f"skipped: {reason}"
        return cell
    cell.peak_rss_delta_mib = meter.peak_delta_mib()
    cell.median_ms, cell.repeats = ms, repeats
    cell.gflops = 2 * rows * codebook.shape[0] * dim / (ms * 1e-3) / 1e9
    for key, value in regret.score(indices).items():
        setattr(cell, key, value)
    return cell


def _check_slow_cap(provider: Provider, flop: float, settings: Settings) -> None:
    if provider.slow and flop > settings.slow_flop_cap:
        raise Skip(
            f"slow provider, 2NKD = {flop:.2g} > --slow-flop-cap {settings.slow_flop_cap:.2g}"
        )


def mark_best_peer(cells: list[Cell]) -> None:
    peers = [c.median_ms for c in cells if c.median_ms is not None and not _is_ours(c)]
    if not peers:
        return
    for cell in cells:
        if cell.median_ms is not None:
            cell.vs_best_peer = min(peers) / cell.median_ms


def _is_ours(cell: Cell) -> bool:
    return PROVIDERS_BY_NAME[cell.provider].ours


def run_grid(args, providers: list[Provider], settings: Settings) -> list[Cell]:
    meter = PeakMemory()
    results = []
    for codes in args.codes:
        for rows in args.rows:
            for dim in args.dims:
                x, codebook = random_inputs(rows, codes, dim, seed=args.seed)
                regret = RegretScore(x, codebook, args.regret_rows, args.seed)
                cells = [run_cell(p, x, codebook, regret, settings, args, meter) for p in providers]
                mark_best_peer(cells)
                for cell in cells:
                    print(_progress_line(cell), file=sys.stderr, flush=True)
                results.extend(cells)
    return results


def _progress_line(cell: Cell) -> str:
    where = f"K={cell.codes} N={cell.rows} D={cell.dim} {cell.provider}"
    if cell.median_ms is None:
        return f"  {where}: {cell.status}"
    return f"  {where}: {cell.median_ms:.1f} ms"


TABLE_COLUMNS = [
    Column("K", "codes", 6),
    Column("N", "rows", 6),
    Column("D", "dim", 4),
    Column("provider", "provider", 19, left=True),
    Column("prec", "precision", 5, left=True),
    Column("ms", "median_ms", 9, "{:.2f}"),
    Column("GFLOP/s", "gflops", 8, "{:.1f}"),
    Column("vs best peer", "vs_best_peer", 12, "{:.2f}x"),
    Column("peak dRSS MiB", "peak_rss_delta_mib", 13, "{:.1f}"),
    Column("mean regret", "mean_regret", 11, "{:.2e}"),
    Column("subopt %", "suboptimal_percent", 8, "{:.1f}"),
    Column("note", "note", 0, left=True),
]


def table_rows(cells: list[Cell]) -> list[dict]:
    return [asdict(cell) | _table_extras(cell) for cell in cells]


def _table_extras(cell: Cell) -> dict:
    fraction = cell.suboptimal_fraction
    return {
        "suboptimal_percent": None if fraction is None else 100 * fraction,
        "note": "" if cell.status == "ok" else cell.status,
    }


def format_cells(cells: list[Cell]) -> str:
    return format_table(TABLE_COLUMNS, table_rows(cells), group=_shape)


def _shape(row: dict) -> tuple[int, int, int]:
    return row["codes"], row["rows"], row["dim"]


def grid_environment(settings: Settings) -> dict:
    meta = environment(settings.backend)
    meta["ours_backend"] = _ours_backend(settings, wvq_kernels.available_backends())
    return meta


def _ours_backend(settings: Settings, backends: dict) -> str:
    """The backend ours ran on: the rule of 'auto' for CPU tensors (WVQ_BACKEND first)."""
    requested = settings.backend
    if requested == "auto":
        requested = os.environ.get("WVQ_BACKEND") or "auto"
    if requested != "auto":
        return requested
    return "auto -> " + ("cpu" if backends["cpu"].available else "reference")


def plot_cells(cells: list[Cell], path: Path) -> Path | None:
    """Grouped bars of GFLOP/s per (K, N, D); None without matplotlib."""
    rows = [asdict(cell) for cell in cells]
    shapes = list(dict.fromkeys(_shape(row) for row in rows))
    providers = list(dict.fromkeys(row["provider"] for row in rows if row["gflops"] is not None))
    by_key = {(*_shape(row), row["provider"]): row["gflops"] for row in rows}
    series = {name: [by_key.get((*shape, name)) for shape in shapes] for name in providers}
    labels = [f"K={k}\nN={n} D={d}" for k, n, d in shapes]
    title = f"Nearest-code assignment, {torch.get_num_threads()} threads"
    return bar_chart(path, title, "GFLOP/s (2·N·K·D / time)", labels, series)


def memory_check(args, settings: Settings) -> int:
    """Peak extra memory of ours at N = K = 65,536, D = 64, above the resident inputs."""
    size, dim = MEMORY_CHECK_SIZE, MEMORY_CHECK_DIM
    x, codebook = random_inputs(size, size, dim, seed=args.seed)
    inputs_mib = (x.nbytes + codebook.nbytes) / MiB
    meter = PeakMemory()
    if not meter.supported:
        print("memory check needs /proc/self/clear_refs (Linux)", file=sys.stderr)
        return 2
    failed = False
    backend = _ours_backend(settings, wvq_kernels.available_backends())
    print(
        f"memory check: N = K = {size}, D = {dim}, inputs {inputs_mib:.1f} MiB, "
        f"target: extra < {MEMORY_TARGET_MIB} MiB"
    )
    for precision in ("ieee", "bf16"):
        # A tiny call first, so that one-off set-up (thread pools, lazy loading) is not counted.
        wvq_kernels.assign(x[:8], codebook[:8], precision=precision, backend=settings.backend)
        meter.reset()
        start = time.perf_counter()
        wvq_kernels.assign(x, codebook, precision=precision, backend=settings.backend)
        seconds = time.perf_counter() - start
        extra = meter.peak_delta_mib()
        verdict = "PASS" if extra < MEMORY_TARGET_MIB else "FAIL"
        failed |= verdict == "FAIL"
        print(
            f"  ours-{precision:<5} backend {backend}: peak extra {extra:7.1f} MiB "
            f"({seconds:.1f} s)  {verdict}"
        )
    return 1 if failed else 0


def fused_and_materialising(x: Tensor, codebook: Tensor) -> dict:
    """The GPU comparison's two steps on bf16 CUDA tensors: ours (Triton) and PyTorch's bf16
    GEMM with float32 norms and an argmin over the N x K matrix it writes."""

    def fused():
        return wvq_kernels.assign(x, codebook, backend="triton", check_finite=False).indices

    def materialising():
        scores = codebook.float().square().sum(1) - 2 * (x @ codebook.T).float()
        return scores.argmin(dim=1)

    return {"ours-triton-bf16": fused, "torch-materialised-bf16": materialising}


def gpu_check(args) -> int:
    """Ours against materialising PyTorch at bf16 N = K = 65,536, D = 64 on a GPU: the
    speed-up is reported beside its target, never asserted."""
    if not torch.cuda.is_available():
        print("gpu check needs a CUDA device", file=sys.stderr)
        return 2
    x, codebook = random_inputs(GPU_CHECK_SIZE, GPU_CHECK_SIZE, GPU_CHECK_DIM, seed=args.seed)
    x, codebook = x.to("cuda", torch.bfloat16), codebook.to("cuda", torch.bfloat16)
    steps = fused_and_materialising(x, codebook)
    timings = {}
    for name, step in steps.items():
        timings[name] = timed_calls(step, args.repeats, args.target_seconds)[0]
        print(f"  {name:<24} {timings[name]:9.2f} ms")
    speedup = timings["torch-materialised-bf16"] / timings["ours-triton-bf16"]
    print(
        f"gpu check: N = K = {GPU_CHECK_SIZE}, D = {GPU_CHECK_DIM}, bf16, "
        f"{torch.cuda.get_device_name()}: speed-up {speedup:.1f}x "
        f"(target >= {GPU_TARGET_SPEEDUP:.0f}x)"
    )
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wvq bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"N in {QUICK_ROWS}, D in {QUICK_DIMS} (about 40 s with every peer)",
    )
    parser.add_argument(
        "--memory-check",
        action="store_true",
        help="peak memory of ours at N = K = 65,536, D = 64 instead of the grid",
    )
    parser.add_argument(
        "--gpu-check",
        action="store_true",
        help="ours vs materialising PyTorch, bf16 N = K = 65,536, D = 64, GPU",
    )
    parser.add_argument("--codes", type=int, nargs="+", default=DEFAULT_CODES, help="K values")
    parser.add_argument("--rows", type=int, nargs="+", help=f"N values (default {DEFAULT_ROWS})")
    parser.add_argument("--dims", type=int, nargs="+", help=f"D values (default {DEFAULT_DIMS})")
    parser.add_argument(
        "--providers", nargs="+", choices=list(PROVIDERS_BY_NAME), default=list(PROVIDERS_BY_NAME)
    )
    parser.add_argument("--backend", default="auto", help="backend of ours (default auto)")
    parser.add_argument("--threads", type=int, help="torch/OpenMP threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=10, help="most timed calls per cell")
    parser.add_argument(
        "--target-seconds",
        type=float,
        default=1.0,
        help="timed calls per cell = clamp(target / warm-up time, 3, --repeats)",
    )
    parser.add_argument("--regret-rows", type=int, default=1024, help="rows sampled for regret")
    parser.add_argument("--materialise-cap-mib", type=int, default=Settings.materialise_cap_mib)
    parser.add_argument("--chunk-mib", type=int, default=Settings.chunk_mib)
    parser.add_argument(
        "--slow-flop-cap",
        type=float,
        default=Settings.slow_flop_cap,
        help="largest 2*N*K*D at which pykeops and vq-pytorch run",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    args.rows = args.rows or (QUICK_ROWS if args.quick else DEFAULT_ROWS)
    args.dims = args.dims or (QUICK_DIMS if args.quick else DEFAULT_DIMS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(args.backend, args.materialise_cap_mib, args.chunk_mib, args.slow_flop_cap)
    if args.memory_check:
        return memory_check(args, settings)
    if args.gpu_check:
        return gpu_check(args)
    providers = [PROVIDERS_BY_NAME[name] for name in args.providers]
    cells = run_grid(args, providers, settings)
    meta = grid_environment(settings)
    print(
        f"ours: backend {meta['ours_backend']}, cpu ISA {meta['cpu_isa']}; "
        f"{meta['threads']} threads; {meta['processor']}"
    )
    print(format_cells(cells))
    stem = "assign-" + ("quick-" if args.quick else "") + time.strftime("%Y%m%d-%H%M%S")
    paths = write_results(table_rows(cells), meta, args.out, stem)
    paths.append(plot_cells(cells, args.out / f"{stem}.png"))
    for path in filter(None, paths):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
