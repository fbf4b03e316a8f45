"""Imports _C (schemas) and _C_cuda built against a CUDA torch from the given directory, and fails
unless every op of the schema table (wvq_kernels/_schemas.py) has a kernel registered for the
CUDA dispatch key, but those of TRITON_ON_CUDA_OPS, which run their Triton kernel on CUDA
tensors. Needs no GPU: loading registers the kernels; nothing runs."""

import importlib.util
import sys
from pathlib import Path

import torch


def _load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Loaded by path: importing the package would load the in-place _C built for the CPU torch.
_TABLE = _load_by_path(
    "wvq_schemas", Path(__file__).resolve().parents[1] / "wvq_kernels" / "_schemas.py"
)
SCHEMAS = {
    op: schema for op, schema in _TABLE.SCHEMAS.items() if op not in _TABLE.TRITON_ON_CUDA_OPS
}


def main(build_dir: str) -> int:
    directory = Path(build_dir)
    for stem in ("_C", "_C_cuda"):  # schemas first, then the CUDA kernels
        (library,) = directory.glob(f"{stem}.*.so")
        _load_by_path(f"wvq_kernels.{stem}", library)
        print(f"imported wvq_kernels.{stem} from {library}")
    ops = sorted(
        name.split("::")[1]
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("wvq::")
    )
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); wvq ops: {', '.join(ops)}")
    missing = [op for op in SCHEMAS if op not in ops]
    for op in sorted(set(SCHEMAS) & set(ops)):
        registered = torch._C._dispatch_has_kernel_for_dispatch_key(f"wvq::{op}", "CUDA")
        print(f"  wvq::{op:<17} CUDA kernel {'registered' if registered else 'MISSING'}")
        if not registered:
            missing.append(op)
    if missing:
        print(f"FAIL: no CUDA kernel for {missing}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
