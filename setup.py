"""Builds wvq_kernels._C (CPU, always) and, with WVQ_BUILD_CUDA=1 against a CUDA build of
torch, wvq_kernels._C_cuda as a separate object: a CPU-only install must never load CUDA."""

import glob
import os
import re

import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def cxx_standard_flag() -> str:
    """-std=c++N from CMakeLists.txt, where the sources' one C++ standard is set."""
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        found = re.search(r"^set\(WVQ_CXX_STANDARD (\d+)\)$", f.read(), re.MULTILINE)
    if found is None:
        raise SystemExit("CMakeLists.txt has no set(WVQ_CXX_STANDARD N) line")
    return f"-std=c++{found.group(1)}"


STD_FLAG = cxx_standard_flag()
CXX_FLAGS = ["-O3", STD_FLAG, "-fopenmp", "-fno-math-errno"]


def cpu_extension():
    sources = ["csrc/ops.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    return CppExtension(
        "wvq_kernels._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": CXX_FLAGS},
        extra_link_args=["-fopenmp"],
    )


# SASS for sm_80 and sm_90, and sm_90 PTX that the driver compiles for newer GPUs. An explicit
# TORCH_CUDA_ARCH_LIST wins; without one torch would target only the visible GPUs (none in CI).
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def cuda_extension():
    from torch.utils.cpp_extension import CUDAExtension

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
    sources = ["csrc/ops_cuda.cpp", *sorted(glob.glob("csrc/cuda/*.cu"))]
    missing = [s for s in sources if not os.path.exists(os.path.join(ROOT, s))]
    if missing:
        raise SystemExit(f"WVQ_BUILD_CUDA=1 but the CUDA sources are missing: {missing}")
    return CUDAExtension(
        "wvq_kernels._C_cuda",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={
            "cxx": ["-O3", STD_FLAG],
            "nvcc": ["-O3", STD_FLAG, "-Xptxas", "-v"],
        },
    )


def extensions():
    built = [cpu_extension()]
    if os.environ.get("WVQ_BUILD_CUDA") == "1":
        built.append(cuda_extension())
    return built


# An extension built against torch X loads only with torch X, so that is the runtime requirement
# (the local suffix, +cpu or +cu130, dropped: the version alone is the pin).
setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    install_requires=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
)
