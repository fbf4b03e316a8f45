"""Comparison runner: nearest-code assignment (L2, k = 1), ours against its peers.

    python benchmarks/runner.py                     # default grid (several minutes)
    python benchmarks/runner.py --quick             # small grid, well under a minute
    python benchmarks/runner.py --rows 16384 --dims 32
    python benchmarks/runner.py --memory-check      # ours at N = K = 65,536, D = 64
    wvq bench [same arguments]                      # the same, through the CLI

For every (K, N, D) cell and provider: median wall time over repeats after one warm-up call,
GFLOP/s counted as 2*N*K*D, speed relative to the best peer (best provider that is not ours in
the same cell; > 1 means faster), peak RSS delta, and, on a sample of rows (all rows up to
1024), the mean regret (chosen squared distance minus the float64 optimum) and the share of
rows whose code is not the float64 optimum. x and the codebook are drawn from N(0, 1).

Peak RSS delta: the kernel's resident high-water mark (VmHWM) is reset through
/proc/self/clear_refs just before the cell, after freed heap memory has been returned to the
OS (malloc_trim), and read after the last repeat; the delta is VmHWM minus the RSS at the
reset. It therefore counts every page the provider touched for the first time during the cell:
temporaries, outputs and caches (not memory it reuses from an earlier cell without touching
new pages, such as a torch thread pool). Linux only; 'n/a' elsewhere.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

# Run as a script or loaded by path (the `wvq bench` command): make the sibling module importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from providers import PROVIDERS_BY_NAME, MiB, Provider, Settings, Skip  # noqa: E402

DEFAULT_CODES = [65536]
DEFAULT_ROWS = [4096, 16384]
DEFAULT_DIMS = [8, 32, 64, 256]
QUICK_ROWS = [1024]
QUICK_DIMS = [16, 64]
MEMORY_CHECK_SIZE = 65536
MEMORY_CHECK_DIM = 64
MEMORY_TARGET_MIB = 64


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


class PeakMemory:
    """Resident-memory high-water mark of this process, resettable (Linux >= 4.0)."""

    def __init__(self) -> None:
        self.base_kib = 0
        self.supported = Path("/proc/self/clear_refs").exists()
        try:
            self._malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except OSError:
            self._malloc_trim = None

    def reset(self) -> None:
        if not self.supported:
            return
        gc.collect()
        if self._malloc_trim is not None:
            self._malloc_trim(0)
        # "5" resets the peak RSS to the current RSS (proc(5), clear_refs).
        Path("/proc/self/clear_refs").write_text("5")
        self.base_kib = self._status_kib("VmRSS")

    def peak_delta_mib(self) -> float | None:
        if not self.supported:
            return None
        return (self._status_kib("VmHWM") - self.base_kib) / 1024

    @staticmethod
    def _status_kib(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"{key} missing from /proc/self/status")


def metered_steps(step, repeats: int) -> tuple[list[float], float | None]:
    """For the per-op scripts, in their measuring subprocess: one warm-up ``step()``, then
    ``repeats`` timed ones under a fresh :class:`PeakMemory`. (seconds per step, peak MiB above
    what was resident before them)."""
    step()
    meter = PeakMemory()
    meter.reset()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times, meter.peak_delta_mib()


def measured_in_subprocess(command: list[str]) -> dict:
    """Runs one measuring subprocess; its result is the JSON object on its last stdout line."""
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def make_inputs(rows: int, codes: int, dim: int, seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=generator)
    codebook = torch.randn(codes, dim, generator=generator)
    return x, codebook


def time_search(search, max_repeats: int, target_seconds: float) -> tuple[float, int, Tensor]:
    """Median ms of `search` after one warm-up call; fast calls get more repeats (at least 3)."""
    start = time.perf_counter()
    indices = search()
    warm_up = time.perf_counter() - start
    repeats = min(max_repeats, max(3, math.ceil(target_seconds / max(warm_up, 1e-9))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        search()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, repeats, indices


class RegretOracle:
    """float64 nearest codes for a fixed sample of rows, to score any provider's choice."""

    def __init__(self, x: Tensor, codebook: Tensor, sample_rows: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed + 1)
        self.rows = torch.randperm(x.shape[0], generator=generator)[:sample_rows]
        self.x = x[self.rows].double()
        self.codebook = codebook.double()
        self.optimum = self._distances(self._nearest_codes())

    def _nearest_codes(self) -> Tensor:
        # Blocks of codes keep the float64 temporaries small next to the benchmark's inputs.
        best = torch.full((self.x.shape[0],), math.inf, dtype=torch.float64)
        best_index = torch.zeros(self.x.shape[0], dtype=torch.int64)
        for start in range(0, self.codebook.shape[0], 8192):
            block = torch.cdist(self.x, self.codebook[start : start + 8192]).min(1)
            better = block.values < best
            best = torch.where(better, block.values, best)
            best_index = torch.where(better, block.indices + start, best_index)
        return best_index

    def _distances(self, codes: Tensor) -> Tensor:
        # One formula for the optimum and for every provider: same code, exactly zero regret.
        return (self.x - self.codebook[codes]).square().sum(1)

    def score(self, indices: Tensor) -> dict:
        regret = (self._distances(indices[self.rows]) - self.optimum).clamp_min(0)
        return {
            "mean_regret": regret.mean().item(),
            "max_regret": regret.max().item(),
            "suboptimal_fraction": (regret > 0).double().mean().item(),
        }


def run_cell(provider: Provider, x, codebook, oracle, settings, args, meter) -> Cell:
    rows, dim = x.shape
    cell = Cell(codebook.shape[0], rows, dim, provider.name, provider.precision)
    try:
        _check_slow_cap(provider, 2 * rows * codebook.shape[0] * dim, settings)
        meter.reset()
        search = provider.prepare(x, codebook, settings)
        ms, repeats, indices = time_search(search, args.repeats, args.target_seconds)
    except Skip as reason:
        cell.status = f"skipped: {reason}"
        return cell
    cell.peak_rss_delta_mib = meter.peak_delta_mib()
    cell.median_ms, cell.repeats = ms, repeats
    cell.gflops = 2 * rows * codebook.shape[0] * dim / (ms * 1e-3) / 1e9
    for key, value in oracle.score(indices).items():
        setattr(cell, key, value)
    return cell


def _check_slow_cap(provider: Provider, flop: float, settings: Settings) -> None:
    if provider.slow and flop > settings.slow_flop_cap:
        raise Skip(f"slow provider, 2NKD = {flop:.2g} > --slow-flop-cap "
                   f"{settings.slow_flop_cap:.2g}")


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
                x, codebook = make_inputs(rows, codes, dim, args.seed)
                oracle = RegretOracle(x, codebook, args.regret_rows, args.seed)
                cells = [run_cell(p, x, codebook, oracle, settings, args, meter) for p in providers]
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


# (title, width, aligned left?)
TABLE_COLUMNS = [
    ("K", 6, False), ("N", 6, False), ("D", 4, False), ("provider", 19, True),
    ("prec", 5, True), ("ms", 9, False), ("GFLOP/s", 8, False), ("vs best peer", 12, False),
    ("peak dRSS MiB", 13, False), ("mean regret", 11, False), ("subopt %", 8, False),
]


def _fit(texts: list[str]) -> str:
    return "  ".join(
        text.ljust(width) if left else text.rjust(width)
        for text, (_, width, left) in zip(texts, TABLE_COLUMNS, strict=False)
    )


def format_table(cells: list[Cell]) -> str:
    header = _fit([title for title, _, _ in TABLE_COLUMNS])
    lines = [header, "-" * len(header)]
    for previous, cell in zip([None, *cells[:-1]], cells, strict=True):
        if previous is not None and _shape(previous) != _shape(cell):
            lines.append("")
        lines.append(_table_row(cell))
    return "\n".join(lines)


def _shape(cell: Cell) -> tuple[int, int, int]:
    return cell.codes, cell.rows, cell.dim


def _table_row(cell: Cell) -> str:
    identity = [str(cell.codes), str(cell.rows), str(cell.dim), cell.provider, cell.precision]
    if cell.median_ms is None:
        return _fit(identity) + "  " + cell.status
    return _fit(identity + [
        f"{cell.median_ms:.2f}", f"{cell.gflops:.1f}", _maybe(cell.vs_best_peer, "{:.2f}x"),
        _maybe(cell.peak_rss_delta_mib, "{:.1f}"), f"{cell.mean_regret:.2e}",
        f"{100 * cell.suboptimal_fraction:.1f}",
    ])


def _maybe(value: float | None, template: str) -> str:
    return "n/a" if value is None else template.format(value)


def environment(settings: Settings) -> dict:
    import wvq_kernels

    backends = wvq_kernels.available_backends()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": _processor_name(),
        "ours_backend": _ours_backend(settings, backends),
        "cpu_isa": _cpu_isa(backends),
        "available_backends": {name: status.available for name, status in backends.items()},
    }


def _ours_backend(settings: Settings, backends: dict) -> str:
    """The backend ours ran on: DESIGN's rule for 'auto' on CPU tensors (WVQ_BACKEND first)."""
    requested = settings.backend
    if requested == "auto":
        requested = os.environ.get("WVQ_BACKEND") or "auto"
    if requested != "auto":
        return requested
    return "auto -> " + ("cpu" if backends["cpu"].available else "reference")


def _cpu_isa(backends: dict) -> str:
    if not backends["cpu"].available:
        return "n/a"
    try:
        return torch.ops.wvq.cpu_isa()
    except (AttributeError, RuntimeError):
        return "unknown"


def _processor_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def write_results(cells: list[Cell], meta: dict, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [asdict(cell) for cell in cells]
    csv_path = out_dir / f"{stem}.csv"
    with csv_path.open("w", newline="") as f:
        columns = [name for name in rows[0] if name != "extra"]
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    written = [csv_path, json_path]
    plot_path = plot_results(cells, out_dir / f"{stem}.png")
    if plot_path is not None:
        written.append(plot_path)
    return written


def plot_results(cells: list[Cell], path: Path) -> Path | None:
    """Grouped bars of GFLOP/s per cell; skipped (returns None) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return None
    shapes = list(dict.fromkeys(_shape(c) for c in cells))
    providers = list(dict.fromkeys(c.provider for c in cells if c.gflops is not None))
    by_key = {(*_shape(c), c.provider): c.gflops for c in cells}
    width = 0.8 / max(len(providers), 1)
    figure, axes = plt.subplots(figsize=(max(6, 1.6 * len(shapes)), 4.5))
    for i, provider in enumerate(providers):
        heights = [by_key.get((*shape, provider)) or 0 for shape in shapes]
        positions = [s + (i - (len(providers) - 1) / 2) * width for s in range(len(shapes))]
        axes.bar(positions, heights, width, label=provider)
    axes.set_xticks(range(len(shapes)))
    axes.set_xticklabels([f"K={k}\nN={n} D={d}" for k, n, d in shapes], fontsize=8)
    axes.set_ylabel("GFLOP/s (2·N·K·D / time)")
    axes.set_title(f"Nearest-code assignment, {torch.get_num_threads()} threads")
    axes.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def memory_check(args, settings: Settings) -> int:
    """Peak extra memory of ours at N = K = 65,536, D = 64, above the resident inputs."""
    import wvq_kernels

    size, dim = MEMORY_CHECK_SIZE, MEMORY_CHECK_DIM
    x, codebook = make_inputs(size, size, dim, args.seed)
    inputs_mib = (x.nbytes + codebook.nbytes) / MiB
    meter = PeakMemory()
    if not meter.supported:
        print("memory check needs /proc/self/clear_refs (Linux)", file=sys.stderr)
        return 2
    failed = False
    backend = _ours_backend(settings, wvq_kernels.available_backends())
    print(f"memory check: N = K = {size}, D = {dim}, inputs {inputs_mib:.1f} MiB, "
          f"target: extra < {MEMORY_TARGET_MIB} MiB")
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
        print(f"  ours-{precision:<5} backend {backend}: peak extra {extra:7.1f} MiB "
              f"({seconds:.1f} s)  {verdict}")
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wvq bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"N in {QUICK_ROWS}, D in {QUICK_DIMS} (about 40 s with every peer)")
    parser.add_argument("--memory-check", action="store_true",
                        help="peak memory of ours at N = K = 65,536, D = 64 instead of the grid")
    parser.add_argument("--codes", type=int, nargs="+", default=DEFAULT_CODES, help="K values")
    parser.add_argument("--rows", type=int, nargs="+", help=f"N values (default {DEFAULT_ROWS})")
    parser.add_argument("--dims", type=int, nargs="+", help=f"D values (default {DEFAULT_DIMS})")
    parser.add_argument("--providers", nargs="+", choices=list(PROVIDERS_BY_NAME),
                        default=list(PROVIDERS_BY_NAME))
    parser.add_argument("--backend", default="auto", help="backend of ours (default auto)")
    parser.add_argument("--threads", type=int, help="torch/OpenMP threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=10, help="most timed calls per cell")
    parser.add_argument("--target-seconds", type=float, default=1.0,
                        help="timed calls per cell = clamp(target / warm-up time, 3, --repeats)")
    parser.add_argument("--regret-rows", type=int, default=1024, help="rows sampled for regret")
    parser.add_argument("--materialise-cap-mib", type=int, default=Settings.materialise_cap_mib)
    parser.add_argument("--chunk-mib", type=int, default=Settings.chunk_mib)
    parser.add_argument("--slow-flop-cap", type=float, default=Settings.slow_flop_cap,
                        help="largest 2*N*K*D at which pykeops and vq-pytorch run")
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
    providers = [PROVIDERS_BY_NAME[name] for name in args.providers]
    cells = run_grid(args, providers, settings)
    meta = environment(settings)
    print(f"ours: backend {meta['ours_backend']}, cpu ISA {meta['cpu_isa']}; "
          f"{meta['threads']} threads; {meta['processor']}")
    print(format_table(cells))
    stem = "assign-" + ("quick-" if args.quick else "") + time.strftime("%Y%m%d-%H%M%S")
    for path in write_results(cells, meta, args.out, stem):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
