"""GPU first run: every op at K = 65,536 on each compiled backend (cuda, triton) and in plain
PyTorch, as one Markdown report from which ``auto``'s per-op routing is then set. Run by
scripts/gpu_first_run.sh after the build and the ``gpu`` tests.

    python -m wvq_kernels.bench.first_run --out bench-results/gpu-first-run.md
    python -m wvq_kernels.bench.first_run --device cpu --codes 256 --backends cpu reference

No timing code of its own: inputs and PyTorch baselines come from benchmarks/bench_<op>.py (the
OpBenchmark of each op), assign's peers from providers.py (PyTorch materialised and chunked,
ieee and bf16), and every cell is timed by harness.timed_calls (median after a warm-up, CUDA
synchronised). Cells left when --budget-s has elapsed are reported as skipped, so the run stays
inside its time box whatever the GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from wvq_kernels.bench.harness import Skip, environment, timed_calls
from wvq_kernels.bench.providers import PROVIDERS_BY_NAME, Settings
from wvq_kernels.testing import random_inputs

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
ASSIGN_DIM = 64
# Assign's PyTorch peers per precision; the first is the one the ratios are taken against.
ASSIGN_PEERS = {
    "ieee": ("torch-materialised", "torch-chunked"),
    "bf16": ("torch-chunked-bf16",),
}


def op_sizes(codes: int) -> dict[str, tuple[int, ...]]:
    """The size of each op's benchmark at K = codes, in its size_names order."""
    return {
        "code_histogram": (16 * codes, codes),  # (N, K)
        "code_sums": (codes, codes, ASSIGN_DIM),  # (N, K, D)
        "usage": (codes,),  # (K,)
        "moments": (codes, ASSIGN_DIM),  # (N, D): no codebook
        "soft_assign_stats": (codes // 32, codes, 8),  # (N, K, D) as its benchmark's first size
    }


@dataclass
class Cell:
    op: str
    size: str
    provider: str  # a backend of ours, or the PyTorch peer's name
    precision: str = ""
    ours: bool = True
    median_ms: float | None = None
    note: str = ""


class Clock:
    """The run's time box: cells started after ``budget_s`` are skipped."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.monotonic() + budget_s

    def time(self, cell: Cell, prepare: Callable[[], Callable[[], object]], repeats: int) -> Cell:
        if time.monotonic() > self.deadline:
            cell.note = "skipped: time budget spent"
            return cell
        try:
            step = prepare()
            cell.median_ms = timed_calls(step, repeats, target_seconds=1.0)[0]
        except Skip as reason:
            cell.note = f"skipped: {reason}"
        except Exception as error:  # a failing backend is a finding of the report, not a stop
            cell.note = f"error: {type(error).__name__}: {error}".splitlines()[0][:160]
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return cell


def load_benchmark(op: str):
    """benchmarks/bench_<op>.py's OpBenchmark (the directory is not a package)."""
    path = BENCHMARKS / f"bench_{op}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{op}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BENCH


def op_cells(op: str, size: tuple[int, ...], args, clock: Clock) -> list[Cell]:
    bench = load_benchmark(op)
    device = torch.device(args.device)
    label = bench.size_label(size)
    inputs = bench.make_inputs(size, device)
    cells = []
    for backend in args.backends:
        cell = Cell(op, label, backend)
        ours = partial(bench.provider("ours").prepare, inputs, backend)
        cells.append(clock.time(cell, ours, 10))
    for provider in bench.providers:
        if provider.name != "ours":
            cell = Cell(op, label, provider.name, ours=False)
            cells.append(clock.time(cell, partial(provider.prepare, inputs, "auto"), 10))
    return cells


def assign_cells(args, clock: Clock) -> list[Cell]:
    x, codebook = random_inputs(args.codes, args.codes, ASSIGN_DIM, device=args.device)
    label = f"N={args.codes} K={args.codes} D={ASSIGN_DIM}"
    cells = []
    for precision, peers in ASSIGN_PEERS.items():
        ours = PROVIDERS_BY_NAME[f"ours-{precision}"]
        for backend in args.backends:
            settings = Settings(backend=backend)
            cell = Cell("assign", label, backend, precision)
            cells.append(clock.time(cell, partial(ours.prepare, x, codebook, settings), 10))
        settings = Settings(materialise_cap_mib=args.materialise_cap_mib)
        for name in peers:
            cell = Cell("assign", label, name, precision, ours=False)
            prepare = partial(PROVIDERS_BY_NAME[name].prepare, x, codebook, settings)
            cells.append(clock.time(cell, prepare, 10))
    return cells


def _groups(cells: list[Cell]) -> dict[tuple[str, str], list[Cell]]:
    """Cells by (op, precision), in run order."""
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.op, cell.precision), []).append(cell)
    return groups


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def routing(cells: list[Cell]) -> list[tuple[str, str, dict[str, float | None], str]]:
    """(op, precision, ms per backend of ours, the fastest of them or "none")."""
    rows = []
    for (op, precision), group in _groups(cells).items():
        times = {cell.provider: cell.median_ms for cell in group if cell.ours}
        measured = {name: ms for name, ms in times.items() if ms is not None}
        fastest = min(measured, key=measured.get) if measured else "none"
        rows.append((op, precision, times, fastest))
    return rows


def markdown(cells: list[Cell], args, meta: dict, elapsed_s: float) -> str:
    lines = [
        "# GPU first run",
        "",
        f"Written by `scripts/gpu_first_run.sh` (wvq_kernels.bench.first_run) on "
        f"{meta['time']}: {meta['cuda_device'] or args.device}, torch {meta['torch']}, "
        f"backends compared {', '.join(args.backends)}; K = {args.codes}; "
        f"{elapsed_s:.0f} s of timing.",
    ]
    lines += [f"- {note}" for note in args.note]
    lines += [
        "",
        "Median ms per call after a warm-up (harness.timed_calls); `vs PyTorch` = the first "
        "PyTorch peer's time / this time (> 1 is faster). Sizes per op are those of "
        "`op_sizes()`; inputs and peers those of `benchmarks/bench_<op>.py` and, for assign, "
        "`wvq_kernels/bench/providers.py`.",
        "",
        '## Routing for `backend="auto"`',
        "",
        f"| op | precision | {' | '.join(f'{name} ms' for name in args.backends)} | fastest |",
        "|---|---|" + "---|" * len(args.backends) + "---|",
    ]
    for op, precision, times, fastest in routing(cells):
        values = " | ".join(_ms(times.get(name)) for name in args.backends)
        lines.append(f"| {op} | {precision or '-'} | {values} | {fastest} |")
    for (op, precision), group in _groups(cells).items():
        peers = [cell for cell in group if not cell.ours and cell.median_ms is not None]
        baseline = peers[0].median_ms if peers else None
        title = f"{op} ({precision})" if precision else op
        lines += [
            "",
            f"## {title}: {group[0].size}",
            "",
            "| provider | median ms | vs PyTorch | note |",
            "|---|---|---|---|",
        ]
        for cell in group:
            ratio = ""
            if baseline is not None and cell.median_ms:
                ratio = f"{baseline / cell.median_ms:.2f}x"
            name = cell.provider if cell.ours else f"PyTorch {cell.provider}"
            lines.append(f"| {name} | {_ms(cell.median_ms)} | {ratio} | {cell.note} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/gpu-first-run.md"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--codes", type=int, default=65536, help="K (default 65,536)")
    parser.add_argument("--backends", nargs="+", default=["cuda", "triton"])
    parser.add_argument("--budget-s", type=float, default=180.0, help="time box of the timing")
    parser.add_argument("--materialise-cap-mib", type=int, default=32768)
    parser.add_argument("--note", action="append", default=[], help="a line for the header")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the first run times GPU kernels", file=sys.stderr)
        return 3
    started = time.monotonic()
    clock = Clock(args.budget_s)
    meta = environment(args.backends[0])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = [partial(assign_cells, args, clock)]
    runs += [partial(op_cells, op, size, args, clock) for op, size in op_sizes(args.codes).items()]
    cells = []
    for run in runs:
        cells += run()
        # Rewritten after every op: a run killed by an outer time box keeps what it measured.
        report = markdown(cells, args, meta, time.monotonic() - started)
        args.out.write_text(report)
    print(report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
