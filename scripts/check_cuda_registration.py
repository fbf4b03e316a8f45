"""Imports _C (schemas) and _C_cuda built against a CUDA torch from the given directory, and fails
unless every wvq op that takes tensors has a kernel registered for the CUDA dispatch key.
Needs no GPU: loading registers the kernels; nothing runs."""

import importlib.util
import sys
from pathlib import Path

import torch

# cpu_isa takes no tensors: a CPU-only helper, not a CUDA op.
HOST_ONLY_OPS = {"cpu_isa"}


def main(build_dir: str) -> int:
    directory = Path(build_dir)
    for stem in ("_C", "_C_cuda"):  # schemas first, then the CUDA kernels
        (library,) = directory.glob(f"{stem}.*.so")
        spec = importlib.util.spec_from_file_location(f"wvq_kernels.{stem}", library)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        print(f"imported wvq_kernels.{stem} from {library}")
    ops = sorted(
        name.split("::")[1]
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("wvq::")
    )
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); wvq ops: {', '.join(ops)}")
    missing = []
    for op in ops:
        if op in HOST_ONLY_OPS:
            continue
        registered = torch._C._dispatch_has_kernel_for_dispatch_key(f"wvq::{op}", "CUDA")
        print(f"  wvq::{op:<17} CUDA kernel {'registered' if registered else 'MISSING'}")
        if not registered:
            missing.append(op)
    if missing or not ops:
        print(f"FAIL: no CUDA kernel for {missing or 'any wvq op'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
