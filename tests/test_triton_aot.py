"""The configuration table and the ahead-of-time gate's own logic. The gate itself (every
config, both archs) runs from .ci/run: scripts/triton_aot_gate.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from wvq_kernels.triton import configs

GATE_PATH = Path(__file__).resolve().parent.parent / "scripts" / "triton_aot_gate.py"


def _run_with_gate(body: str) -> None:
    """Runs ``body`` with the gate module loaded as ``gate``, in a subprocess: the gate compiles
    real kernels (no TRITON_INTERPRET), which this session's interpreted ones cannot be."""
    script = (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('gate', {str(GATE_PATH)!r})\n"
        "gate = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(gate)\n" + body
    )
    environment = {**os.environ, "TRITON_INTERPRET": "0"}
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, env=environment)


@pytest.mark.parametrize("arch", configs.ARCHS)
@pytest.mark.parametrize("kind", ["ieee", "tf32", "bf16"])
def test_every_dimension_has_a_tensor_core_sized_config(arch, kind):
    for dim in (1, 8, 16, 17, 32, 33, 64, 65, 256, 1000):
        config = configs.assign_config(dim, kind, arch)
        assert config.block_d >= 16 and config.block_n >= 16 and config.block_k >= 16


def test_one_config_compiles_to_wgmma_without_spills():
    _run_with_gate(
        "cases = [c for c in gate.all_cases()\n"
        "         if (c.kernel, c.arch, c.variant) == ('assign', 'sm_90', 'bf16 D=32 row-owned')]\n"
        "assert len(cases) == 1\n"
        "gate.all_cases = lambda: cases\n"
        "result = gate.compile_case(0)\n"
        "assert not gate.problems(cases[0], result), result\n"
        "assert result.instruction == 'wgmma', result\n"
    )


def test_roofline_estimate_meets_10x_for_bf16_up_to_d64():
    _run_with_gate(
        "for case in gate.all_cases():\n"
        "    if (case.kernel, case.arch, case.precision) == ('assign', 'sm_90', 'bf16'):\n"
        "        ours, baseline = gate.estimate_ms(case)\n"
        "        assert baseline > ours\n"
        "        assert case.dim > 64 or baseline >= 10 * ours, (case.variant, ours, baseline)\n"
    )
