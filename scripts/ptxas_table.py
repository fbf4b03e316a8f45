"""Reads the build log of the CUDA kernels (nvcc -Xptxas -v, through CMake and ninja) from
stdin, prints one row per (file, kernel, arch) with registers, shared memory and spills, and
exits 1 on any spill, on shared memory over the arch's opt-in limit, or on a .cu file that was
not compiled for every required arch."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

REQUIRED_ARCHS = ("sm_80", "sm_90")


def _load_gpu_limits():
    """wvq_kernels/_gpu_limits.py by file path: importing the package would need torch, which the
    Python running this script need not have."""
    path = Path(__file__).resolve().parent.parent / "wvq_kernels" / "_gpu_limits.py"
    spec = importlib.util.spec_from_file_location("_gpu_limits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_limits = _load_gpu_limits()

SOURCE = re.compile(r"(?:-o |object )\S*?([\w-]+\.cu)\.o")
ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\w+)'")
SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
USAGE = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def demangle(names: list[str]) -> list[str]:
    output = subprocess.run(
        ["c++filt"], check=True, input="\n".join(names), capture_output=True, text=True
    )
    short = [
        re.sub(r"wvq::cuda::\(anonymous namespace\)::", "", line)
        for line in output.stdout.splitlines()
    ]
    return [re.sub(r"\(.*\)$", "", line) for line in short]


def parse(log: str) -> list[dict]:
    rows, source, current = [], "?", None
    for line in log.splitlines():
        if match := SOURCE.search(line):
            source = Path(match.group(1)).name
        elif match := ENTRY.search(line):
            current = {
                "file": source,
                "kernel": match.group(1),
                "arch": match.group(2),
                "spill_stores": 0,
                "spill_loads": 0,
                "registers": 0,
                "smem": 0,
            }
            rows.append(current)
        elif current and (match := SPILLS.search(line)):
            current["spill_stores"], current["spill_loads"] = map(int, match.groups())
        elif current and (match := USAGE.search(line)):
            current["registers"] = int(match.group(1))
            current["smem"] = int(match.group(2) or 0)
    return rows


def main() -> int:
    rows = parse(sys.stdin.read())
    if not rows:
        print("ptxas_table: no ptxas resource lines in the log (was -Xptxas -v passed?)")
        return 1
    for row, name in zip(rows, demangle([row["kernel"] for row in rows])):
        row["kernel"] = name
    print(f"{'file':<14} {'arch':<7} {'regs':>5} {'smem B':>8} {'spill st/ld':>12}  kernel")
    failures = []
    for row in sorted(rows, key=lambda r: (r["file"], r["kernel"], r["arch"])):
        spills = f"{row['spill_stores']}/{row['spill_loads']}"
        print(
            f"{row['file']:<14} {row['arch']:<7} {row['registers']:>5} {row['smem']:>8} "
            f"{spills:>12}  {row['kernel']}"
        )
        if row["spill_stores"] or row["spill_loads"]:
            failures.append(f"{row['kernel']} spills on {row['arch']}")
        if row["smem"] > gpu_limits.shared_memory_limit(row["arch"]):
            failures.append(f"{row['kernel']} uses {row['smem']} B smem on {row['arch']}")
    for source in sorted({row["file"] for row in rows}):
        archs = {row["arch"] for row in rows if row["file"] == source}
        failures += [f"{source} not compiled for {a}" for a in REQUIRED_ARCHS if a not in archs]
    sources = sorted(p.name for p in Path("csrc/cuda").glob("*.cu"))
    failures += [
        f"{s} missing from the build log" for s in sources if s not in {r["file"] for r in rows}
    ]
    print(f"{len(rows)} kernel builds over {len(sources)} .cu files")
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
