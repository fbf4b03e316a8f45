"""scripts/gpu_first_run.sh and its timing driver (wvq_kernels.bench.first_run): without a GPU the
script stops at once with its documented status; the driver's report logic runs on the CPU
backends at a small K."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels.bench import first_run

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_first_run.sh"
OPS = ["assign", "code_histogram", "code_sums", "usage", "moments", "soft_assign_stats"]


@pytest.mark.skipif(
    torch.cuda.is_available() or shutil.which("nvidia-smi") is not None,
    reason="this machine may have a GPU: the script would run for minutes",
)
def test_script_without_a_gpu_says_so_and_exits_3(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done
    assert "no CUDA device" in done.stderr
    assert "exit status" in SCRIPT.read_text().lower() and "3  no CUDA device" in SCRIPT.read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_driver_without_cuda_returns_3(tmp_path):
    assert first_run.main(["--out", str(tmp_path / "report.md")]) == 3
    assert not (tmp_path / "report.md").exists()


def test_every_op_is_timed_and_routed(tmp_path):
    if not wvq.available_backends()["cpu"]:
        pytest.skip("needs the cpu backend")
    out = tmp_path / "report.md"
    arguments = ["--device", "cpu", "--codes", "64", "--backends", "cpu", "reference"]
    assert first_run.main([*arguments, "--out", str(out), "--note", "build: passed"]) == 0
    report = out.read_text()
    assert "- build: passed" in report
    routing = report.split('## Routing for `backend="auto"`')[1].split("\n## ")[0]
    rows = [line.split(" | ") for line in routing.splitlines() if line.startswith("| ")][1:]
    assert [row[0].strip("| ") for row in rows] == ["assign", "assign", *OPS[1:]]
    for row in rows:
        cpu_ms, reference_ms, fastest = float(row[2]), float(row[3]), row[4].strip(" |")
        faster = {"cpu"} if cpu_ms < reference_ms else {"reference"}
        assert fastest in (faster if cpu_ms != reference_ms else {"cpu", "reference"}), row
    for op in OPS:
        assert f"\n## {op}" in report
    assert "| PyTorch torch-materialised |" in report and "| PyTorch torch-chunked |" in report
    assert "error:" not in report and "skipped" not in report


def test_a_spent_time_budget_skips_every_cell(tmp_path):
    out = tmp_path / "report.md"
    arguments = ["--device", "cpu", "--codes", "16", "--backends", "cpu", "--budget-s", "0"]
    assert first_run.main([*arguments, "--out", str(out)]) == 0
    report = out.read_text()
    # assign: (ours, 2 peers) ieee, (ours, 1 peer) bf16; five more ops: (ours, 1 baseline).
    assert report.count("skipped: time budget spent") == 5 + 5 * 2
    assert report.count("| none |") == 7


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU-only torch")
def test_script_with_a_gpu_but_no_cuda_torch_exits_4(tmp_path):
    """A GPU (a stand-in nvidia-smi listing one) but PYTHON without a CUDA torch: status 4, and
    the message says how to make the CUDA venv."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: stand-in'\n")
    fake.chmod(0o755)
    environment = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    environment["PYTHON"] = sys.executable
    done = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, env=environment
    )
    assert done.returncode == 4, done
    assert "has no CUDA build of torch" in done.stderr and ".venv-cuda" in done.stderr
