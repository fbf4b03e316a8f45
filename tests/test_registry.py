"""Every op of the schema table is complete: both namespaces define it with the table's schema,
and it has a reference function, a trusted internal call, a public wrapper, a test file and a
benchmark script (docs/adding-an-op.md lists the same places)."""

from pathlib import Path

import pytest
import torch

import wvq_kernels
from wvq_kernels import _trusted, reference
from wvq_kernels._schemas import CPU_GRADIENT_OPS, HOST_ONLY_OPS, SCHEMAS

ROOT = Path(__file__).resolve().parents[1]
OPS = sorted(SCHEMAS)


def _namespace_ops(namespace: str) -> set[str]:
    prefix = f"{namespace}::"
    return {
        name.removeprefix(prefix)
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith(prefix)
    }


def _require(backend: str) -> None:
    status = wvq_kernels.available_backends()[backend]
    if not status:
        pytest.skip(f"backend {backend!r} unavailable: {status.reason}")


def test_the_cpp_library_defines_exactly_the_table():
    _require("cpu")
    assert _namespace_ops("wvq") == set(SCHEMAS) | set(HOST_ONLY_OPS) | set(CPU_GRADIENT_OPS)


@pytest.mark.parametrize("op", sorted(CPU_GRADIENT_OPS))
def test_cpu_gradient_op_schema_equals_the_table(op):
    _require("cpu")
    schema = str(getattr(torch.ops.wvq, op).default._schema)
    assert schema == f"wvq::{op}{CPU_GRADIENT_OPS[op]}"


def test_the_triton_namespace_defines_exactly_the_table():
    _require("triton")
    assert _namespace_ops("wvq_triton") == set(SCHEMAS)


@pytest.mark.parametrize("namespace, backend", [("wvq", "cpu"), ("wvq_triton", "triton")])
@pytest.mark.parametrize("op", OPS)
def test_schema_equals_the_table(namespace, backend, op):
    _require(backend)
    schema = str(getattr(torch.ops, namespace).__getattr__(op).default._schema)
    assert schema == f"{namespace}::{op}{SCHEMAS[op]}"


@pytest.mark.parametrize("op", OPS)
def test_op_has_reference_trusted_call_and_public_wrapper(op):
    assert callable(getattr(reference, op))
    assert callable(getattr(_trusted, op))
    assert callable(getattr(wvq_kernels, op)) and op in wvq_kernels.__all__


@pytest.mark.parametrize("op", OPS)
def test_op_has_a_test_file_and_a_benchmark(op):
    assert (ROOT / "tests" / f"test_{op}.py").is_file()
    assert (ROOT / "benchmarks" / f"bench_{op}.py").is_file()
