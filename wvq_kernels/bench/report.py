"""`wvq bench --report`: every op's benchmark in one run, written up as a report.

    wvq bench --report                  # every op, ~15 minutes on 2 idle cores
    wvq bench --report --quick          # fewer and smaller sizes, a few minutes
    wvq bench --report --ops assign moments --out /tmp/results

Writes under --out (default bench-results/):

    report.md                   the summary table first, then one section per op
    report/<op>.csv, .json      every cell, in the per-op benchmark layout: the size columns,
                                provider, median_ms, peak_delta_mib, vs_baseline, vs_best_peer,
                                note (assign adds gflops, peak_fraction and the regret columns)
    report/<op>-<axis>.png      time and peak memory against K, N or D, one line per provider

Sizes: each op varies one axis (K, N or D) at a time around a centre size, the other axes held
there (``PLANS``). Assignment runs on the grid of wvq_kernels.bench.assign_grid (every provider
of wvq_kernels.bench.providers, in this process); every other op on its
``benchmarks/bench_<op>.py`` (harness.OpBenchmark), each (size, provider) in its own process for
its peak memory; k-means and the distributed benchmark run as their scripts. Cells that cannot
run (a peer not installed, an N x K matrix over the cap, a slow peer over its FLOP cap) keep
their row with the reason.

vs best peer: the fastest provider that is not ours in the same cell, over this one (> 1 is
faster). Fraction of peak: the assignment's GFLOP/s (2·N·K·D / time) over this machine's peak,
measured here by ``torch.ops.wvq.peak_gflops`` (register-only loops of fp32 FMAs and of bf16
pair dot products, vdpbf16ps, and on AMX tdpbf16ps tiles, on every thread): fp32 peak for ieee
providers (a screened ieee scan may pass it), the widest bf16 peak (AMX where the CPU has it) for
bf16 ones. The peak counts CPU time, the benchmarks wall time: on a loaded machine the fractions
are low by the share of the cores other processes took.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from wvq_kernels.bench import assign_grid, harness
from wvq_kernels.bench.providers import PROVIDERS_BY_NAME, Settings
from wvq_kernels.testing import random_inputs

K_LADDER = (1024, 4096, 16384, 65536, 262144, 1048576)
# Ops other than assign run every cell in a fresh process (~2-4 s each here): fewer K points.
OP_K_LADDER = (1024, 16384, 65536, 1048576)
QUICK_K_LADDER = (1024, 4096, 16384)
ASSIGN = "assign"
# The report's caps for the assignment peers, tighter than the grid's: pykeops takes 20 s a
# call at 1.4e11 FLOP here, and one 2 GiB N x K matrix already shows the materialising cost.
SLOW_FLOP_CAP = 3e10
MATERIALISE_CAP_MIB = 2048
PEAK_SECONDS = 1.0
REGRET_ROWS = 256


@dataclass(frozen=True)
class Sweep:
    """One op's sizes: each axis over its values with the other axes at the centre."""

    centre: dict[str, int]
    axes: dict[str, tuple[int, ...]]

    def sizes(self, names: Sequence[str]) -> list[tuple[int, ...]]:
        sizes = [tuple(self.centre[name] for name in names)]
        for axis, values in self.axes.items():
            for value in values:
                size = tuple(value if name == axis else self.centre[name] for name in names)
                if size not in sizes:
                    sizes.append(size)
        return sizes

    def line(self, axis: str, rows: list[dict]) -> list[dict]:
        """The rows on ``axis``'s line through the centre, in the axis's order."""
        fixed = {name: value for name, value in self.centre.items() if name != axis}
        on_line = [row for row in rows if all(row[name] == v for name, v in fixed.items())]
        return sorted(on_line, key=lambda row: row[axis])

    def centre_rows(self, rows: list[dict]) -> list[dict]:
        return [row for row in rows if all(row[n] == v for n, v in self.centre.items())]


@dataclass(frozen=True)
class Plan:
    full: Sweep
    quick: Sweep


def _soft_plan() -> Plan:
    """The fused soft ops (NSVQ loss, entropy, sampling): their benchmark's first size."""
    return Plan(
        Sweep({"N": 2048, "K": 65536, "D": 8}, {"K": OP_K_LADDER, "N": (16384,), "D": (64,)}),
        Sweep({"N": 512, "K": 4096, "D": 8}, {"K": QUICK_K_LADDER}),
    )


PLANS: dict[str, Plan] = {
    ASSIGN: Plan(
        Sweep(
            {"K": 65536, "N": 4096, "D": 8},
            {"K": K_LADDER, "N": (1024, 4096, 16384, 65536), "D": (8, 32, 64, 256)},
        ),
        Sweep({"K": 4096, "N": 1024, "D": 8}, {"K": QUICK_K_LADDER, "N": (256,), "D": (32,)}),
    ),
    "assign_topk": Plan(
        Sweep(
            {"N": 2048, "K": 65536, "D": 32, "k": 8},
            {"K": OP_K_LADDER, "N": (16384,), "D": (8, 64)},
        ),
        Sweep({"N": 512, "K": 4096, "D": 32, "k": 8}, {"K": QUICK_K_LADDER}),
    ),
    "code_histogram": Plan(
        Sweep({"N": 1 << 20, "K": 65536}, {"K": OP_K_LADDER, "N": (65536,)}),
        Sweep({"N": 16384, "K": 4096}, {"K": QUICK_K_LADDER}),
    ),
    "code_sums": Plan(
        Sweep({"N": 65536, "K": 65536, "D": 32}, {"K": OP_K_LADDER, "N": (262144,), "D": (8,)}),
        Sweep({"N": 4096, "K": 4096, "D": 8}, {"K": QUICK_K_LADDER}),
    ),
    "usage": Plan(Sweep({"K": 65536}, {"K": OP_K_LADDER}), Sweep({"K": 4096}, {"K": (1024,)})),
    "moments": Plan(
        Sweep({"N": 262144, "D": 64}, {"N": (65536, 1 << 20), "D": (8, 256)}),
        Sweep({"N": 16384, "D": 8}, {"N": (4096,), "D": (64,)}),
    ),
    "sample_codes": _soft_plan(),
    "soft_assign_entropy": _soft_plan(),
    "soft_assign_stats": _soft_plan(),
    # The peer's training step holds ~24 bytes per (row, code) pair: 3 GiB at the largest K.
    "vq_dropin": Plan(
        Sweep({"q": 1, "N": 2048, "K": 16384, "d": 64}, {"K": (4096, 65536)}),
        Sweep({"q": 1, "N": 512, "K": 2048, "d": 16}, {"q": (2,)}),
    ),
}


@dataclass(frozen=True)
class ScriptRun:
    """A benchmark with its own command line (no harness.OpBenchmark): its arguments in a full
    and a quick report, and the size columns of the rows it writes."""

    full: tuple[str, ...]
    quick: tuple[str, ...]
    size_names: tuple[str, ...] = ("N", "K", "D")


SCRIPT_RUNS: dict[str, ScriptRun] = {
    "kmeans": ScriptRun(("--sizes", "65536x4096x8", "65536x4096x64", "--iters", "5"), ("--quick",)),
    "distributed": ScriptRun(
        ("--sizes", "65536x4096x32", "--repeats", "1"), ("--quick", "--repeats", "1")
    ),
}


@dataclass
class OpResult:
    """One op's cells (per-op layout) and what the report says about them."""

    name: str
    description: str
    size_names: tuple[str, ...]
    rows: list[dict]
    sweep: Sweep | None
    plots: list[Path] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Measuring


PEAK_KINDS = ("fp32", "bf16", "amx_bf16")


def measure_peaks(seconds: float = PEAK_SECONDS) -> dict[str, float | None]:
    """GFLOP/s of fp32 FMA, bf16 vdpbf16ps and AMX tdpbf16ps loops on torch's threads; None
    without the C++ extension or without the instructions."""
    try:
        peak = torch.ops.wvq.peak_gflops
    except (AttributeError, RuntimeError):
        return dict.fromkeys(PEAK_KINDS)
    measured = {kind: peak(kind, seconds) for kind in PEAK_KINDS}
    return {kind: None if math.isnan(value) else value for kind, value in measured.items()}


def precision_peak(peaks: dict, precision: str) -> float | None:
    """The peak a provider of this precision is measured against: fp32 FMA for ieee, the
    widest bf16 unit (AMX tiles where measured, else vdpbf16ps) for bf16."""
    if precision != "bf16":
        return peaks.get("fp32")
    return peaks.get("amx_bf16") or peaks.get("bf16")


def run_assign(sweep: Sweep, providers: list[str], repeats: int, peaks: dict) -> OpResult:
    names = ("K", "N", "D")
    settings = Settings(materialise_cap_mib=MATERIALISE_CAP_MIB, slow_flop_cap=SLOW_FLOP_CAP)
    grid_args = argparse.Namespace(repeats=repeats, target_seconds=0.5)
    meter = harness.PeakMemory()
    rows = []
    for codes, size_rows, dim in sweep.sizes(names):
        x, codebook = random_inputs(size_rows, codes, dim, seed=0)
        regret = assign_grid.RegretScore(x, codebook, REGRET_ROWS, seed=0)
        cells = [
            assign_grid.run_cell(
                PROVIDERS_BY_NAME[name], x, codebook, regret, settings, grid_args, meter
            )
            for name in providers
        ]
        assign_grid.mark_best_peer(cells)
        rows += [_assign_row(cell, peaks) for cell in cells]
        _progress(ASSIGN, dict(zip(names, (codes, size_rows, dim))))
    description = "nearest-code assignment (L2, k = 1): ours against its peers (the grid)"
    result = OpResult(ASSIGN, description, names, rows, sweep)
    result.notes.append(
        f"Report caps: slow peers (pykeops, vq-pytorch) above 2·N·K·D = {SLOW_FLOP_CAP:.0e} FLOP "
        f"and materialising peers above a {MATERIALISE_CAP_MIB} MiB N x K matrix are skipped."
    )
    return result


def _assign_row(cell: assign_grid.Cell, peaks: dict) -> dict:
    peak = precision_peak(peaks, cell.precision)
    fraction = None if cell.gflops is None or not peak else cell.gflops / peak
    return {
        "K": cell.codes,
        "N": cell.rows,
        "D": cell.dim,
        "provider": cell.provider,
        "precision": cell.precision,
        "median_ms": cell.median_ms,
        "peak_delta_mib": cell.peak_rss_delta_mib,
        "vs_best_peer": cell.vs_best_peer,
        "gflops": cell.gflops,
        "peak_fraction": fraction,
        "mean_regret": cell.mean_regret,
        "suboptimal_fraction": cell.suboptimal_fraction,
        "note": "" if cell.status == "ok" else cell.status,
    }


def _progress(op: str, size: dict) -> None:
    label = " ".join(f"{name}={value}" for name, value in size.items())
    print(f"  {op} {label} done", file=sys.stderr, flush=True)


def load_benchmark(path: Path) -> harness.OpBenchmark | None:
    """The ``BENCH`` of a benchmark script, None when it has none."""
    spec = importlib.util.spec_from_file_location(f"_wvq_report_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bench = getattr(module, "BENCH", None)
    return bench if isinstance(bench, harness.OpBenchmark) else None


def run_op(bench: harness.OpBenchmark, script: Path, sweep: Sweep | None, args) -> OpResult:
    """Every size of the op's sweep (its own default or quick sizes without a plan), each
    (size, provider) in a fresh process so that its peak memory is its own."""
    sizes = sweep.sizes(bench.size_names) if sweep else None
    argv = ["--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
    if sizes:
        argv += ["--sizes", *("x".join(map(str, size)) for size in sizes)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    op_args = harness.parse_args(bench, argv)
    in_own_processes = dataclasses.replace(bench, memory=True)
    rows = []
    for size in list(op_args.sizes):
        # One size at a time, for the progress lines.
        op_args.sizes = [size]
        rows += harness.run(in_own_processes, op_args, str(script))
        _progress(bench.name, dict(zip(bench.size_names, size)))
    add_vs_best_peer(rows, bench.size_names)
    result = OpResult(bench.name, bench.description, bench.size_names, rows, sweep)
    result.notes += bench.summary(rows) if bench.summary else []
    return result


def run_script(name: str, script: Path, args) -> OpResult:
    """A benchmark with its own command line: its rows from the JSON it writes."""
    run = SCRIPT_RUNS[name]
    with tempfile.TemporaryDirectory() as out:
        arguments = run.quick if args.quick else run.full
        command = [sys.executable, str(script), *arguments, "--out", out]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            error = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return OpResult(name, name, (), [], None, notes=[f"failed: {error}"])
        (results,) = Path(out).glob("*.json")
        rows = json.loads(results.read_text())["results"]
        add_vs_best_peer(rows, run.size_names)
        description = f"`{script.name} {' '.join(arguments)}`"
        result = OpResult(name, description, run.size_names, rows, None)
        result.notes += [line for line in done.stdout.splitlines() if "target" in line]
        for png in Path(out).glob("*.png"):
            result.plots.append(shutil.copy(png, args.report_dir / f"{name}.png"))
    _progress(name, {})
    return result


def _is_ours(provider: str) -> bool:
    return provider.startswith("ours")


def add_vs_best_peer(rows: list[dict], size_names: Sequence[str]) -> None:
    """vs_best_peer on every row: the fastest measured peer's time in the same cell over the
    row's (None when the cell has no measured peer)."""
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault(tuple(row[name] for name in size_names), []).append(row)
    for cell in cells.values():
        peers = [r["median_ms"] for r in cell if not _is_ours(r["provider"]) and r["median_ms"]]
        for row in cell:
            measured = peers and row["median_ms"]
            row["vs_best_peer"] = min(peers) / row["median_ms"] if measured else None


# ---------------------------------------------------------------------------------------------
# Writing


def plot_line(path: Path, title: str, axis: str, line: list[dict], panels: list[tuple]) -> Path:
    """One figure per (op, axis): a panel per (title, key, scale), one line per provider,
    the axis in log2 scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    providers = list(dict.fromkeys(row["provider"] for row in line))
    for ax, (panel_title, key, scale) in zip(axes[0], panels):
        for provider in providers:
            points = [(r[axis], r[key]) for r in line if r["provider"] == provider]
            points = [(x, y) for x, y in points if y is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=provider)
        ax.set_xscale("log", base=2)
        if scale == "symlog":
            # Linear below 1 MiB, where page granularity decides, logarithmic above.
            ax.set_yscale("symlog", linthresh=1.0)
            ax.set_ylim(bottom=0)
        else:
            ax.set_yscale(scale)
        ax.set_xlabel(axis)
        ax.set_title(panel_title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_op(result: OpResult, report_dir: Path) -> None:
    if result.sweep is None or not _has_matplotlib():
        return
    panels = [
        ("median ms per call", "median_ms", "log"),
        ("peak memory MiB", "peak_delta_mib", "symlog"),
    ]
    if result.name == ASSIGN:
        panels.append(("fraction of this machine's peak", "peak_fraction", "linear"))
    for axis in result.sweep.axes:
        line = result.sweep.line(axis, result.rows)
        if len({row[axis] for row in line}) < 2:
            continue
        fixed = ", ".join(f"{n}={v}" for n, v in result.sweep.centre.items() if n != axis)
        title = f"{result.name} against {axis} ({fixed}), {torch.get_num_threads()} threads"
        path = report_dir / f"{result.name}-{axis}.png"
        result.plots.append(plot_line(path, title, axis, line, panels))


def _has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


FORMATS = {
    "median_ms": "{:.2f}",
    "peak_delta_mib": "{:.1f}",
    "vs_baseline": "{:.2f}x",
    "memory_vs_baseline": "{:.1f}x",
    "vs_best_peer": "{:.2f}x",
    "gflops": "{:.1f}",
    "peak_fraction": "{:.0%}",
    "mean_regret": "{:.1e}",
    "suboptimal_fraction": "{:.2%}",
}


def _cell_text(key: str, value) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return FORMATS.get(key, "{:.4g}").format(value)
    return str(value)


def markdown_table(rows: list[dict], keys: Sequence[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_cell_text(key, row.get(key)) for key in keys) + " |")
    return "\n".join(lines)


def summary_rows(results: list[OpResult]) -> list[dict]:
    """Per op and provider of ours (every provider where none is ours): time and ratios at the
    centre (or the first size), the ratio's range over every measured size, peak memory and,
    for assign, the fraction of peak."""
    rows = []
    for result in results:
        providers = list(dict.fromkeys(row["provider"] for row in result.rows))
        ours = [name for name in providers if _is_ours(name)] or providers
        centre = _centre_rows(result)
        rows += [_summary_row(result, provider, centre) for provider in ours]
        if not result.rows:
            rows.append({"op": result.name, "cells": "; ".join(result.notes)})
    return rows


def _centre_rows(result: OpResult) -> list[dict]:
    if result.sweep is not None:
        return result.sweep.centre_rows(result.rows)
    first = _size(result, result.rows[0]) if result.rows else None
    return [row for row in result.rows if _size(result, row) == first]


def _size(result: OpResult, row: dict) -> tuple:
    return tuple(row[name] for name in result.size_names)


def _summary_row(result: OpResult, provider: str, centre: list[dict]) -> dict:
    mine = [row for row in result.rows if row["provider"] == provider]
    at_centre = next((row for row in centre if row["provider"] == provider), {})
    ratios = [row["vs_best_peer"] for row in mine if row.get("vs_best_peer") is not None]
    fractions = [row["peak_fraction"] for row in mine if row.get("peak_fraction") is not None]
    skipped = sum(1 for row in result.rows if row["median_ms"] is None)
    return {
        "op": result.name,
        "provider": provider,
        "centre": " ".join(f"{name}={at_centre[name]}" for name in result.size_names if at_centre),
        "ms": at_centre.get("median_ms"),
        "vs best peer": at_centre.get("vs_best_peer"),
        "vs best peer, all sizes": f"{min(ratios):.2f}–{max(ratios):.2f}x" if ratios else None,
        "vs baseline": at_centre.get("vs_baseline"),
        "peak MiB": at_centre.get("peak_delta_mib"),
        "fraction of peak": at_centre.get("peak_fraction"),
        "max fraction": max(fractions) if fractions else None,
        "cells": f"{len(result.rows) - skipped} run, {skipped} skipped",
    }


# Summary column -> the per-op key whose format it takes.
SUMMARY_COLUMNS = {
    "op": "op",
    "provider": "provider",
    "centre": "centre",
    "ms": "median_ms",
    "vs best peer": "vs_best_peer",
    "vs best peer, all sizes": "range",
    "vs baseline": "vs_baseline",
    "peak MiB": "peak_delta_mib",
    "fraction of peak": "peak_fraction",
    "max fraction": "peak_fraction",
    "cells": "cells",
}


def summary_table(results: list[OpResult]) -> str:
    rows = [
        {title: _cell_text(key, row.get(title)) for title, key in SUMMARY_COLUMNS.items()}
        for row in summary_rows(results)
    ]
    return markdown_table(rows, list(SUMMARY_COLUMNS))


def op_section(result: OpResult, report_dir: Path) -> str:
    lines = [f"## {result.name}", "", result.description, ""]
    if result.sweep is not None:
        centre = " ".join(f"{name}={value}" for name, value in result.sweep.centre.items())
        axes = "; ".join(f"{axis} in {list(values)}" for axis, values in result.sweep.axes.items())
        lines += [f"Centre {centre}; one axis at a time: {axes}.", ""]
    lines += [f"- {note}" for note in result.notes] + ([""] if result.notes else [])
    lines += [f"![{path.stem}]({path.relative_to(report_dir.parent)})" for path in result.plots]
    if result.rows:
        keys = [key for key in result.rows[0] if key not in ("repeats", "note")] + ["note"]
        lines += ["", markdown_table(result.rows, keys)]
    return "\n".join(lines) + "\n"


def write_report(results: list[OpResult], meta: dict, out: Path) -> Path:
    report_dir = out / "report"
    for result in results:
        if result.rows:
            harness.write_results(result.rows, meta, report_dir, result.name)
    header = [
        "# wvq_kernels benchmark report",
        "",
        f"`wvq bench --report{' --quick' if meta['quick'] else ''}` on {meta['processor']}, "
        f"{meta['threads']} threads, cpu ISA {meta['cpu_isa']}, torch {meta['torch']}; "
        f"{meta['time']}, {meta['minutes']:.1f} min, load average {meta['load_average']:.1f} at "
        f"the start and {meta['load_average_end']:.1f} at the end (absolute times grow with it; "
        "the ratios are measured side by side).",
        "",
        f"Peak of this machine, measured (torch.ops.wvq.peak_gflops, {meta['threads']} threads): "
        f"fp32 FMA {_gflops_text(meta['peak_gflops']['fp32'])}, "
        f"bf16 vdpbf16ps {_gflops_text(meta['peak_gflops']['bf16'])}, "
        f"bf16 AMX tiles {_gflops_text(meta['peak_gflops'].get('amx_bf16'))}.",
        "",
        "vs best peer: the fastest provider that is not ours in the same cell over this one "
        "(> 1: ours is faster). vs baseline: the op's PyTorch baseline likewise. Peak MiB: the "
        "resident high-water mark above the inputs. Per-op CSV/JSON in report/.",
        "",
        "## Summary",
        "",
        summary_table(results),
        "",
    ]
    sections = [op_section(result, report_dir) for result in results]
    path = out / "report.md"
    path.write_text("\n".join(header) + "\n" + "\n".join(sections))
    return path


def _gflops_text(value: float | None) -> str:
    return "not available" if value is None else f"{value:.0f} GFLOP/s"


# ---------------------------------------------------------------------------------------------
# The command


def discover(benchmarks: Path) -> dict[str, Path]:
    """Op name -> its benchmark script, assign first."""
    scripts = {
        path.stem.removeprefix("bench_"): path for path in sorted(benchmarks.glob("bench_*.py"))
    }
    return {ASSIGN: scripts.pop(ASSIGN)} | scripts


def run_one(name: str, script: Path, args, peaks: dict) -> OpResult:
    plan = PLANS.get(name)
    sweep = None if plan is None else (plan.quick if args.quick else plan.full)
    if name == ASSIGN:
        return run_assign(sweep, args.providers, args.repeats, peaks)
    if name in SCRIPT_RUNS:
        return run_script(name, script, args)
    bench = load_benchmark(script)
    if bench is None:
        return OpResult(
            name, name, (), [], None, notes=["not run: no harness BENCH, no report entry"]
        )
    return run_op(bench, script, sweep, args)


def default_benchmarks_dir() -> Path:
    # A source checkout (bootstrap.sh installs it editable): the package's parent holds benchmarks/.
    return Path(__file__).resolve().parents[2] / "benchmarks"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="wvq bench --report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer and smaller sizes (minutes)")
    parser.add_argument("--ops", nargs="+", help="only these ops (default: every benchmark)")
    parser.add_argument(
        "--providers",
        nargs="+",
        choices=list(PROVIDERS_BY_NAME),
        default=list(PROVIDERS_BY_NAME),
        metavar="PROVIDER",
        help=f"assignment providers (default: all of {', '.join(PROVIDERS_BY_NAME)})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed calls per cell, median taken (assign: at least 3, more for fast calls)",
    )
    parser.add_argument("--threads", type=int, help="torch/OpenMP threads (default: torch's)")
    parser.add_argument(
        "--benchmarks",
        type=Path,
        default=default_benchmarks_dir(),
        help="the bench_<op>.py scripts (default: benchmarks/ of this source checkout)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="report.md and report/ go here"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.benchmarks.is_dir():
        print(
            f"no benchmarks at {args.benchmarks}: run from a source checkout or pass --benchmarks",
            file=sys.stderr,
        )
        return 2
    scripts = discover(args.benchmarks)
    unknown = set(args.ops or ()) - set(scripts)
    if unknown:
        print(f"unknown ops {sorted(unknown)}; known: {list(scripts)}", file=sys.stderr)
        return 2
    args.report_dir = args.out / "report"
    args.report_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    meta = harness.environment("auto") | {"quick": args.quick, "peak_gflops": measure_peaks()}
    results = []
    for name, script in scripts.items():
        if args.ops is None or name in args.ops:
            result = run_one(name, script, args, meta["peak_gflops"])
            plot_op(result, args.report_dir)
            results.append(result)
            # Rewritten after every op: an interrupted run leaves the ops it finished.
            meta |= {
                "minutes": (time.perf_counter() - start) / 60,
                "load_average_end": os.getloadavg()[0],
            }
            path = write_report(results, meta, args.out)
    print(summary_table(results))
    print(f"wrote {path} ({meta['minutes']:.1f} min)")
    return 0
