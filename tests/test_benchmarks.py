"""The benchmarks run: every benchmarks/bench_<op>.py at its smoke size prints its table and
writes CSV, JSON and a plot with each provider's ratio against its PyTorch baseline; `wvq bench`
runs the assignment grid from the package, away from the source tree; `wvq bench --report`
writes the report with its plots, its ratios and fractions of the measured peak; and the package
ships wvq_kernels.bench without `import wvq_kernels` importing it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wvq_kernels.cli import main

ROOT = Path(__file__).resolve().parents[1]
OP_SCRIPTS = sorted(
    path.name for path in (ROOT / "benchmarks").glob("bench_*.py") if path.name != "bench_assign.py"
)
# Two quick providers, one dimension, few repeats: seconds, not the minute of --quick alone.
ASSIGN_SMOKE = ["--quick", "--providers", "ours-ieee", "torch-chunked", "--dims", "8"]
ASSIGN_SMOKE += ["--repeats", "3", "--target-seconds", "0", "--regret-rows", "64"]


def _results(out: Path) -> list[dict]:
    (path,) = out.glob("*.json")
    assert len(list(out.glob("*.csv"))) == len(list(out.glob("*.png"))) == 1
    return json.loads(path.read_text())["results"]


def test_every_op_has_a_benchmark_script():
    ops = ("code_histogram", "code_sums", "usage", "moments", "soft_assign_stats")
    assert {f"bench_{op}.py" for op in ops} <= set(OP_SCRIPTS)
    assert (ROOT / "benchmarks" / "bench_assign.py").exists()


@pytest.mark.slow
@pytest.mark.parametrize("script", OP_SCRIPTS)
def test_op_script_reports_each_provider_against_its_baseline(script, tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--repeats", "2"]
    done = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "vs baseline" in done.stdout
    rows = _results(tmp_path)
    # A peer that is not installed here (faiss without the bench extras) keeps its row, with
    # the reason; every other provider is measured.
    skipped = [row for row in rows if row["median_ms"] is None]
    assert all(row["note"].startswith("skipped: ") for row in skipped)
    measured = [row for row in rows if row["median_ms"] is not None]
    assert len({row["provider"] for row in measured}) >= 2
    assert all(row["median_ms"] > 0 for row in measured)
    ratios = [row["vs_baseline"] for row in measured if row["vs_baseline"] is not None]
    # Ratios exist exactly when the baseline itself was measured.
    assert (len(ratios) == len(measured)) == (1.0 in ratios)
    assert all(ratio > 0 for ratio in ratios)


@pytest.mark.slow
def test_wvq_bench_runs_the_grid_from_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", *ASSIGN_SMOKE, "--out", "results"]) == 0
    assert "vs best peer" in capsys.readouterr().out
    rows = _results(tmp_path / "results")
    assert [row["provider"] for row in rows] == ["ours-ieee", "torch-chunked"]
    assert all(row["gflops"] > 0 and row["mean_regret"] is not None for row in rows)


@pytest.mark.slow
def test_bench_assign_script_is_the_grid(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_assign.py"), *ASSIGN_SMOKE]
    done = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(_results(tmp_path)) == 2


def test_the_wheel_ships_every_package():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "wvq_kernels").rglob("__init__.py")
    }
    assert "wvq_kernels.bench" in on_disk
    assert on_disk <= listed


def test_import_wvq_kernels_leaves_the_benchmarks_and_the_oracle_alone():
    script = (
        "import sys, wvq_kernels\n"
        "assert not {'wvq_kernels.bench', 'wvq_kernels.testing'} & set(sys.modules)\n"
        "import wvq_kernels.testing\n"
        "assert not {'pytest', 'wvq_kernels.vqvae', 'wvq_kernels.cli'} & set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_peak_gflops_measures_this_machine():
    import torch

    fp32 = torch.ops.wvq.peak_gflops("fp32", 0.05)
    bf16 = torch.ops.wvq.peak_gflops("bf16", 0.05)
    amx = torch.ops.wvq.peak_gflops("amx_bf16", 0.05)
    # One FMA loop per thread on registers: at least a scalar core's worth, under any load.
    assert fp32 > 1
    # NaN where the CPU (or WVQ_CPU_ISA) has no vdpbf16ps, a rate otherwise.
    assert bf16 != bf16 or bf16 > 1
    # The tile unit: NaN without AMX, else several times vdpbf16ps (16x16x32 per instruction).
    assert (amx != amx) == (torch.ops.wvq.cpu_isa() != "avx512_amx")
    assert amx != amx or amx > 2 * bf16
    with pytest.raises(RuntimeError, match="kind must be fp32, bf16 or amx_bf16"):
        torch.ops.wvq.peak_gflops("int8", 0.05)


def test_report_sweeps_vary_one_axis_of_each_benchmark():
    from wvq_kernels.bench import report

    scripts = report.discover(ROOT / "benchmarks")
    assert next(iter(scripts)) == report.ASSIGN
    full_k = report.PLANS[report.ASSIGN].full.axes["K"]
    assert (min(full_k), max(full_k)) == (1024, 1 << 20)
    for name, plan in report.PLANS.items():
        bench = report.load_benchmark(scripts[name]) if name != report.ASSIGN else None
        names = bench.size_names if bench else ("K", "N", "D")
        for sweep in (plan.full, plan.quick):
            assert set(sweep.centre) == set(names), name
            centre, *others = sweep.sizes(names)
            assert centre == tuple(sweep.centre[n] for n in names)
            assert len(set(others)) == len(others) and centre not in others
            assert all(sum(a != b for a, b in zip(size, centre)) == 1 for size in others)


def test_vs_best_peer_is_the_fastest_peer_over_each_row():
    from wvq_kernels.bench.report import add_vs_best_peer

    rows = [
        {"K": 1, "provider": "ours", "median_ms": 2.0},
        {"K": 1, "provider": "peer-a", "median_ms": 4.0},
        {"K": 1, "provider": "peer-b", "median_ms": 8.0},
        {"K": 2, "provider": "ours", "median_ms": 3.0},
        {"K": 2, "provider": "peer-a", "median_ms": None},
    ]
    add_vs_best_peer(rows, ("K",))
    assert [row["vs_best_peer"] for row in rows] == [2.0, 1.0, 0.5, None, None]


REPORT_QUICK = ["bench", "--report", "--quick", "--ops", "assign", "moments", "--repeats", "2"]
REPORT_QUICK += ["--providers", "ours-ieee", "ours-bf16", "torch-chunked"]


@pytest.mark.slow
def test_wvq_bench_report_writes_the_report_with_its_plots(tmp_path):
    from wvq_kernels.bench.report import PLANS

    assert main([*REPORT_QUICK, "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    summary = report.split("## Summary")[1].split("\n## ")[0]
    for op, provider in [("assign", "ours-ieee"), ("assign", "ours-bf16"), ("moments", "ours")]:
        assert f"| {op} | {provider} |" in summary
    # A plot per axis that takes two values or more, linked from the report.
    for plot in ("assign-K", "assign-N", "assign-D", "moments-N", "moments-D"):
        assert (tmp_path / "report" / f"{plot}.png").stat().st_size > 0
        assert f"(report/{plot}.png)" in report

    written = json.loads((tmp_path / "report" / "assign.json").read_text())
    rows, peaks = written["results"], written["meta"]["peak_gflops"]
    sizes = {(row["K"], row["N"], row["D"]) for row in rows}
    assert sizes == set(PLANS["assign"].quick.sizes(("K", "N", "D")))
    for size in sizes:
        cell = [row for row in rows if (row["K"], row["N"], row["D"]) == size]
        best_peer = min(row["median_ms"] for row in cell if row["provider"] == "torch-chunked")
        for row in cell:
            assert row["vs_best_peer"] == pytest.approx(best_peer / row["median_ms"])
            # bf16 against the tile unit where the machine has one, else vdpbf16ps.
            bf16_peak = peaks.get("amx_bf16") or peaks["bf16"]
            peak = bf16_peak if row["precision"] == "bf16" else peaks["fp32"]
            # No peak (a CPU without the instructions): no fraction, rather than a made-up one.
            expected = None if peak is None else pytest.approx(row["gflops"] / peak)
            assert row["peak_fraction"] == expected

    moments = json.loads((tmp_path / "report" / "moments.json").read_text())["results"]
    assert {(row["N"], row["D"]) for row in moments} == set(
        PLANS["moments"].quick.sizes(("N", "D"))
    )
    # Every cell in its own process: each has its own peak memory.
    assert all(row["peak_delta_mib"] is not None for row in moments)


FAILING_BENCH = """
import sys
import torch
from wvq_kernels.bench import harness


def _failing(inputs, backend):
    raise RuntimeError("this peer broke")


BENCH = harness.OpBenchmark(
    name="failing",
    description="a provider that fails in its own process",
    size_names=("N",),
    sizes=((8,),),
    quick_sizes=((8,),),
    make_inputs=lambda size, device: (torch.zeros(size),),
    providers=(
        harness.OpProvider("sum", lambda inputs, backend: inputs[0].sum, baseline=True),
        harness.OpProvider("broken", _failing),
    ),
    memory=True,
    repeats=1,
)

if __name__ == "__main__":
    sys.exit(harness.main(BENCH, __file__))
"""


@pytest.mark.slow
def test_a_provider_failing_in_its_process_keeps_its_row_with_the_reason(tmp_path):
    from wvq_kernels.bench import harness
    from wvq_kernels.bench.report import load_benchmark

    script = tmp_path / "bench_failing.py"
    script.write_text(FAILING_BENCH)
    bench = load_benchmark(script)
    rows = harness.run(bench, harness.parse_args(bench, []), str(script))
    by_provider = {row["provider"]: row for row in rows}
    assert by_provider["sum"]["median_ms"] > 0
    assert by_provider["broken"]["median_ms"] is None
    assert by_provider["broken"]["note"] == "failed: RuntimeError: this peer broke"
