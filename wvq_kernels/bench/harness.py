"""The benchmarks' shared harness, and the driver every ``benchmarks/bench_<op>.py`` runs on.

Time: the median wall time of repeated calls after one warm-up call (CUDA work is synchronised
before the clock stops). Memory: the process's resident high-water mark (VmHWM), reset through
/proc/self/clear_refs after freed heap memory is returned to the OS (malloc_trim); the delta over
the RSS at the reset counts every page touched for the first time since: temporaries, outputs,
caches. Linux only; None elsewhere. Speed targets are reported as ratios, never asserted.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

import wvq_kernels
from wvq_kernels.reporting import Column, format_table

MiB = 1 << 20
# Memory ratios count less than this as this much: below it, page and allocator granularity
# decide the number, not the code.
MEMORY_FLOOR_MIB = 1.0

Step = Callable[[], object]


class Skip(Exception):
    """A provider cannot run on this machine or at this size; the message says why."""


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


def synchronise() -> None:
    """Waits for queued CUDA work, so that the clock measures it; a no-op without CUDA."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(step: Step) -> tuple[float, object]:
    start = time.perf_counter()
    result = step()
    synchronise()
    return time.perf_counter() - start, result


def metered_steps(step: Step, repeats: int) -> tuple[list[float], float | None]:
    """One warm-up ``step()``, then ``repeats`` timed ones under a fresh :class:`PeakMemory`:
    (seconds per step, peak MiB above what was resident before them)."""
    _timed(step)
    meter = PeakMemory()
    meter.reset()
    times = [_timed(step)[0] for _ in range(repeats)]
    return times, meter.peak_delta_mib()


def timed_calls(call: Step, max_repeats: int, target_seconds: float) -> tuple[float, int, object]:
    """(median ms, repeats, the warm-up's result) of ``call``: fast calls get more repeats,
    clamp(target_seconds / warm-up time, 3, max_repeats)."""
    warm_up, result = _timed(call)
    repeats = min(max_repeats, max(3, math.ceil(target_seconds / max(warm_up, 1e-9))))
    times = [_timed(call)[0] for _ in range(repeats)]
    return statistics.median(times) * 1e3, repeats, result


def measured_in_subprocess(command: list[str]) -> dict:
    """Runs one measuring subprocess; its result is the JSON object on its last stdout line."""
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def environment(backend: str) -> dict:
    """What a result depends on besides the code: versions, threads, processor, load, ISA."""
    backends = wvq_kernels.available_backends()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "processor": _processor_name(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "backend": backend,
        "WVQ_BACKEND": os.environ.get("WVQ_BACKEND"),
        "cpu_isa": torch.ops.wvq.cpu_isa() if backends["cpu"] else "n/a",
        "available_backends": {name: status.available for name, status in backends.items()},
    }


def _processor_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor()


def write_results(rows: list[dict], meta: dict, out_dir: Path, stem: str) -> list[Path]:
    """rows as ``<stem>.csv`` and, with meta, ``<stem>.json`` in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"
    with csv_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    return [csv_path, json_path]


def bar_chart(
    path: Path,
    title: str,
    ylabel: str,
    groups: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    logy: bool = False,
) -> Path | None:
    """Grouped bars, one group per label in ``groups``, one bar per series (missing values
    leave a gap); None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    width = 0.8 / max(len(series), 1)
    figure, axes = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4.5))
    for i, (label, values) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        positions = [group + offset for group in range(len(groups))]
        axes.bar(positions, [value or 0 for value in values], width, label=label)
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels(groups, fontsize=8)
    axes.set_ylabel(ylabel)
    if logy:
        axes.set_yscale("log")
    axes.set_title(title)
    axes.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------------------
# The per-op driver


@dataclass(frozen=True)
class OpProvider:
    """One way to run an op: ``prepare(inputs, backend)`` returns the step to time (whatever
    can be done once is done there). The baseline is plain PyTorch; the others are reported
    as ratios against it."""

    name: str
    prepare: Callable[[tuple, str], Step]
    baseline: bool = False


@dataclass(frozen=True)
class OpBenchmark:
    """An op's benchmark: its sizes (named by ``size_names``), inputs and providers.
    ``memory``: every (size, provider) runs in a fresh process and reports its peak memory.
    ``summary``: extra report lines (acceptance targets) from the result rows."""

    name: str
    description: str
    size_names: tuple[str, ...]
    sizes: tuple[tuple[int, ...], ...]
    quick_sizes: tuple[tuple[int, ...], ...]
    make_inputs: Callable[[tuple[int, ...], torch.device], tuple]
    providers: tuple[OpProvider, ...]
    memory: bool = False
    repeats: int = 10
    summary: Callable[[list[dict]], list[str]] | None = None

    def provider(self, name: str) -> OpProvider:
        return next(provider for provider in self.providers if provider.name == name)

    def size_label(self, size: Sequence[int]) -> str:
        return " ".join(f"{name}={value}" for name, value in zip(self.size_names, size))


def memory_acceptance(
    size_names: tuple[str, ...], size: tuple[int, ...], limit_mib: float, provider: str = "ours"
) -> Callable[[list[dict]], list[str]]:
    """An OpBenchmark ``summary``: whether ``provider`` at ``size`` stayed below ``limit_mib``
    beyond its inputs (reported, not asserted)."""

    def summary(rows: list[dict]) -> list[str]:
        wanted = dict(zip(size_names, size))
        found = [
            row for row in rows if row["provider"] == provider and wanted.items() <= row.items()
        ]
        if not found or found[0]["peak_delta_mib"] is None:
            return []
        verdict = "met" if found[0]["peak_delta_mib"] < limit_mib else "NOT met"
        shape = "x".join(map(str, size))
        return [f"acceptance ({provider} at {shape}: inputs + < {limit_mib} MiB): {verdict}"]

    return summary


def measure(bench: OpBenchmark, provider: str, size: tuple[int, ...], args) -> dict:
    """Set-up, warm-up, then the timed and metered steps, in this process."""
    try:
        inputs = bench.make_inputs(size, torch.device(args.device))
        step = bench.provider(provider).prepare(inputs, args.backend)
    except Skip as reason:
        return {"median_ms": None, "peak_delta_mib": None, "note": f"skipped: {reason}"}
    times, peak_delta_mib = metered_steps(step, args.repeats)
    return {"median_ms": 1e3 * statistics.median(times), "peak_delta_mib": peak_delta_mib}


def _measure_in_own_process(bench: OpBenchmark, provider: str, size, args, script) -> dict:
    command = [sys.executable, script, "--measure", provider, "--sizes", _size_text(size)]
    command += ["--repeats", str(args.repeats), "--backend", args.backend]
    command += ["--device", args.device]
    if args.threads:
        command += ["--threads", str(args.threads)]
    try:
        return measured_in_subprocess(command)
    except subprocess.CalledProcessError as error:
        # One provider failing at one size (a peer's own error, the OOM killer) leaves the
        # other cells of the run standing: its row says why.
        last_line = (error.stderr or "").strip().splitlines()[-1:] or [f"exit {error.returncode}"]
        return {"median_ms": None, "peak_delta_mib": None, "note": f"failed: {last_line[0]}"}


def _size_text(size: Sequence[int]) -> str:
    return "x".join(map(str, size))


def _parse_size(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("x"))


def run(bench: OpBenchmark, args, script: str) -> list[dict]:
    """One row per (size, provider), with the ratios against the size's baseline."""
    rows = []
    for size in args.sizes:
        for provider in bench.providers:
            if bench.memory:
                measured = _measure_in_own_process(bench, provider.name, size, args, script)
            else:
                measured = measure(bench, provider.name, size, args)
                # Not alone in its process, the high-water mark also holds earlier cells' pages.
                measured["peak_delta_mib"] = None
            row = dict(zip(bench.size_names, size)) | {"provider": provider.name}
            rows.append(row | {"note": ""} | measured)
        _add_ratios(bench, rows[-len(bench.providers) :])
    return rows


def _add_ratios(bench: OpBenchmark, rows: list[dict]) -> None:
    """vs_baseline: baseline time / time (> 1 is faster); memory_vs_baseline likewise, with
    less than MEMORY_FLOOR_MIB counted as that much (pages and allocator blocks)."""
    baseline = next(row for row in rows if bench.provider(row["provider"]).baseline)
    for row in rows:
        row["vs_baseline"] = _ratio(baseline["median_ms"], row["median_ms"], 0.0)
        row["memory_vs_baseline"] = _ratio(
            baseline["peak_delta_mib"], row["peak_delta_mib"], MEMORY_FLOOR_MIB
        )


def _ratio(baseline: float | None, value: float | None, floor: float) -> float | None:
    if baseline is None or value is None:
        return None
    return max(baseline, floor) / max(value, floor)


def report(bench: OpBenchmark, rows: list[dict]) -> str:
    columns = [Column(name, name, 7) for name in bench.size_names]
    width = max(len(provider.name) for provider in bench.providers)
    columns += [
        Column("provider", "provider", width, left=True),
        Column("median ms", "median_ms", 10, "{:.3f}"),
        Column("vs baseline", "vs_baseline", 11, "{:.2f}x"),
    ]
    if bench.memory:
        columns += [
            Column("peak dRSS MiB", "peak_delta_mib", 13, "{:.1f}"),
            Column("memory vs baseline", "memory_vs_baseline", 18, "{:.1f}x"),
        ]
    columns.append(Column("note", "note", 0, left=True))
    table = format_table(columns, rows, group=lambda row: [row[n] for n in bench.size_names])
    return "\n".join([table, *(bench.summary(rows) if bench.summary else [])])


def plot(bench: OpBenchmark, rows: list[dict], path: Path) -> Path | None:
    sizes = list(dict.fromkeys(tuple(row[name] for name in bench.size_names) for row in rows))
    by_key = {(tuple(row[n] for n in bench.size_names), row["provider"]): row for row in rows}
    series = {
        provider.name: [by_key[size, provider.name]["median_ms"] for size in sizes]
        for provider in bench.providers
    }
    labels = [bench.size_label(size).replace(" ", "\n", 1) for size in sizes]
    title = f"{bench.description}, {torch.get_num_threads()} threads"
    return bar_chart(path, title, "median ms per call", labels, series, logy=True)


def parse_args(bench: OpBenchmark, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=bench.description)
    sizes_help = f"{'x'.join(bench.size_names)} (default {[_size_text(s) for s in bench.sizes]})"
    parser.add_argument("--sizes", type=_parse_size, nargs="+", help=sizes_help)
    parser.add_argument("--quick", action="store_true", help="the smallest sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=bench.repeats, help="timed calls")
    parser.add_argument("--backend", default="auto", help="backend of ours (default auto)")
    parser.add_argument("--device", default="cpu", help="where the inputs live (cpu, cuda)")
    parser.add_argument("--threads", type=int, help="torch/OpenMP threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    names = [provider.name for provider in bench.providers]
    parser.add_argument("--measure", choices=names, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = args.sizes or list(bench.quick_sizes if args.quick else bench.sizes)
    return args


def main(bench: OpBenchmark, script: str, argv: list[str] | None = None) -> int:
    """The command line of ``benchmarks/bench_<op>.py``: measure, print the table, write
    ``<op>-<time>.csv/.json/.png`` under --out. ``script`` is the file a measuring subprocess
    runs (the caller's ``__file__``)."""
    args = parse_args(bench, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps(measure(bench, args.measure, args.sizes[0], args)))
        return 0
    rows = run(bench, args, script)
    meta = environment(args.backend)
    print(f"{bench.description}; {meta['threads']} threads, load {meta['load_average']:.1f}")
    print(report(bench, rows))
    stem = f"{bench.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    paths = write_results(rows, meta, args.out, stem)
    paths.append(plot(bench, rows, args.out / f"{stem}.png"))
    for path in filter(None, paths):
        print(f"wrote {path}")
    return 0


def pytest_benchmark(bench: OpBenchmark, size: tuple[int, ...]):
    """A pytest-benchmark test of every provider at ``size`` on the CPU, grouped by size:
    ``test_<op> = pytest_benchmark(BENCH, size)`` in a benchmark script."""
    import pytest

    @pytest.mark.parametrize("provider", [provider.name for provider in bench.providers])
    def test(benchmark, provider):
        inputs = bench.make_inputs(size, torch.device("cpu"))
        try:
            step = bench.provider(provider).prepare(inputs, "auto")
        except Skip as reason:
            pytest.skip(str(reason))
        benchmark.group = f"{bench.name} {bench.size_label(size)}"
        benchmark.pedantic(step, rounds=3, warmup_rounds=1)

    return test
