"""Mutation trial of the CUDA emulation tests: each mutation breaks one kernel of a copy of csrc
(a removed barrier, a wrong index), the emulation library is built from the copy and
tests/test_cuda_emulation.py must then fail. Exits non-zero when a mutation survives; a
mutation whose pattern the kernels no longer contain is reported and left out.

    python scripts/cuda_emu_trial.py [--csrc DIR] [--work DIR] [NAME ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name: (file under csrc, text, replacement, pytest -k selection). Each text occurs once.
MUTATIONS = {
    "assign-barrier-per-chunk": (
        "cuda/assign.cu",
        "next_width, tile_ends, next_tile % 2);\n    __syncthreads();\n",
        "next_width, tile_ends, next_tile % 2);\n",
        "assign_matches_float64 and l2",
    ),
    "assign-barrier-after-restaging": (
        "cuda/assign.cu",
        "window_width(next_chunk), magnitude, tiles);\n      __syncthreads();\n",
        "window_width(next_chunk), magnitude, tiles);\n",
        "assign_matches_float64 and l2",
    ),
    "assign-row-column-index": (
        "cuda/assign.cu",
        "to_float(x[row * dim + column])",
        "to_float(x[row * dim + column + 1])",
        "assign_matches_float64 and l2",
    ),
    "soft-assign-barrier-after-weights": (
        "cuda/soft_assign.cu",
        "store_weights(values, tiles);  // the last read of the previous weights preceded a "
        "barrier\n    __syncthreads();\n",
        "store_weights(values, tiles);\n",
        "soft_assign_matches_float64",
    ),
    "block-sum-barrier": (
        "cuda/device_utils.cuh",
        "  scratch[threadIdx.x] = value;\n  __syncthreads();\n",
        "  scratch[threadIdx.x] = value;\n",
        "usage or soft_assign_matches_float64",
    ),
    "moments-means-barrier": (
        "cuda/moments.cu",
        "  lane_sums[row_lane][column_lane] = sum;\n  __syncthreads();\n",
        "  lane_sums[row_lane][column_lane] = sum;\n",
        "moments",
    ),
    "moments-lane-index": (
        "cuda/moments.cu",
        "total += lane_sums[lane][column_lane];",
        "total += lane_sums[row_lane][column_lane];",
        "moments",
    ),
}


def run_trial(name: str, csrc: Path, work: Path) -> str:
    """'caught' (tests failed, or crashed), 'SURVIVED', 'BUILD FAILED', 'NO TESTS' or 'not
    applicable'; prints the tests' failure summary."""
    relative, text, replacement, selection = MUTATIONS[name]
    copy = work / name / "csrc"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(csrc, copy)
    source = (copy / relative).read_text()
    if source.count(text) != 1:
        return "not applicable"
    (copy / relative).write_text(source.replace(text, replacement))
    env = dict(os.environ, WVQ_EMU_CSRC=str(copy), WVQ_EMU_BUILD=str(work / name / "build"))
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
    command += [str(ROOT / "tests" / "test_cuda_emulation.py"), "-k", selection]
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    summary = [line for line in result.stdout.splitlines() if line.startswith(("E ", "FAILED"))]
    print("\n".join(f"    {line[:160]}" for line in summary[:3]))
    if "building the CUDA emulation failed" in result.stdout:
        return "BUILD FAILED"
    if result.returncode == 5:
        return "NO TESTS"
    return "caught" if result.returncode != 0 else "SURVIVED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csrc", type=Path, default=os.environ.get("WVQ_EMU_CSRC", ROOT / "csrc"))
    parser.add_argument("--work", type=Path, default=None, help="kept; default: a temporary one")
    parser.add_argument("names", nargs="*", help=f"of {', '.join(MUTATIONS)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.names) - set(MUTATIONS)
    if unknown:
        parser.error(f"unknown mutations {', '.join(sorted(unknown))}")
    survived, applied = [], 0
    with tempfile.TemporaryDirectory(prefix="wvq-emu-trial-") as temporary:
        work = args.work or Path(temporary)
        for name in args.names or MUTATIONS:
            print(f"== {name}: {MUTATIONS[name][0]}", flush=True)
            verdict = run_trial(name, Path(args.csrc).resolve(), work)
            print(f"   {verdict}", flush=True)
            survived += [name] if verdict in ("SURVIVED", "BUILD FAILED", "NO TESTS") else []
            applied += verdict != "not applicable"
    if applied == 0:
        sys.exit("no mutation applies to these kernels: update MUTATIONS")
    if survived:
        sys.exit(f"mutations the emulation tests did not catch: {', '.join(survived)}")


if __name__ == "__main__":
    main()
