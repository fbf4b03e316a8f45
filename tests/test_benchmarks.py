"""The benchmarks run: every benchmarks/bench_<op>.py at its smoke size prints its table and
writes CSV, JSON and a plot with each provider's ratio against its PyTorch baseline; `wvq bench`
runs the assignment grid from the package, away from the source tree; and the package ships
wvq_kernels.bench without `import wvq_kernels` importing it."""

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
