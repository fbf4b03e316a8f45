"""`wvq info`: versions, backends (and why one is missing), CPU ISA, threads."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

import wvq_kernels

CPU_FLAGS_OF_INTEREST = (
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_bf16",
    "avx512_vnni",
    "avx2",
    "fma",
)


def add_parser(commands) -> None:
    info = commands.add_parser("info", help="versions, backends, CPU ISA, threads")
    info.set_defaults(handler=run_info)


def run_info(_: argparse.Namespace) -> int:
    print(f"wvq_kernels  {wvq_kernels.__version__}")
    print(f"torch        {torch.__version__} ({_torch_build()})")
    print(f"python       {platform.python_version()} ({sys.executable})")
    print(f"cpu          {_processor_name()}")
    print(f"cpu flags    {' '.join(_cpu_flags()) or 'unknown'}")
    print(f"cpu ISA      {_kernel_isa()}")
    print(f"threads      {_threads()}")
    print("backends")
    for name, status in wvq_kernels.available_backends().items():
        state = "available" if status.available else "missing  "
        print(f"  {name:<10} {state}  {status.reason}")
    return 0


def _torch_build() -> str:
    cuda = torch.version.cuda
    return f"CUDA {cuda}" if cuda else "CPU build"


def _cpuinfo_field(key: str) -> str | None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return None
    for line in cpuinfo.read_text().splitlines():
        if line.split(":", 1)[0].strip() == key:
            return line.split(":", 1)[1].strip()
    return None


def _processor_name() -> str:
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    """The vector extensions the OS reports, independent of what the extension selected."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return [flag for flag in CPU_FLAGS_OF_INTEREST if flag in flags]


def _kernel_isa() -> str:
    """The code path the C++ kernels dispatch to at run time (torch.ops.wvq.cpu_isa)."""
    if not wvq_kernels.available_backends()["cpu"].available:
        return "n/a (the cpu backend is not loaded)"
    try:
        return f"{torch.ops.wvq.cpu_isa()} (selected by wvq_kernels._C at run time)"
    except (AttributeError, RuntimeError) as error:
        return f"unknown (torch.ops.wvq.cpu_isa is not available: {error})"


def _threads() -> str:
    openmp = "OpenMP" if torch.backends.openmp.is_available() else "no OpenMP"
    omp_env = os.environ.get("OMP_NUM_THREADS", "unset")
    return (
        f"torch intra-op {torch.get_num_threads()} ({openmp}), {os.cpu_count()} CPUs, "
        f"OMP_NUM_THREADS {omp_env}"
    )
