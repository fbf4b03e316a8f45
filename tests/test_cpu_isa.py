"""Every CPU micro-kernel this CPU can run (AVX-512, AVX2, scalar; forced with WVQ_CPU_ISA in
a subprocess, since the ISA is chosen once per process) finds the nearest code within rounding,
resolves ties to the smallest index, and keeps the bf16 semantics when vdpbf16ps is emulated."""

import pytest

from wvq_kernels.testing import check_assignment, random_inputs

pytestmark = pytest.mark.slow

SHAPES = [(257, 1000, 1), (100, 333, 12), (50, 4100, 59), (33, 70, 256)]
PRECISIONS = ("ieee", "bf16")


def _inputs_with_a_duplicated_winner(n, k, d):
    """Code k // 2 copies code 3, which row 0 equals: row 0 must go to 3."""
    x, codebook = random_inputs(n, k, d, seed=n * k + d)
    codebook[k // 2] = codebook[3]
    x[0] = codebook[3]
    return x, codebook


def test_isa_meets_the_oracle_and_ties_to_the_first_duplicate(run_on_isa):
    inputs = [_inputs_with_a_duplicated_winner(*shape) for shape in SHAPES]
    calls = [
        ("assign", (x, codebook), {"precision": precision, "backend": "cpu"})
        for x, codebook in inputs
        for precision in PRECISIONS
    ]
    results = iter(run_on_isa(calls))
    for (x, codebook), shape in zip(inputs, SHAPES, strict=True):
        for precision in PRECISIONS:
            indices, distances, _ = next(results)
            assert indices[0] == 3, (shape, precision)
            check_assignment(x, codebook, indices, distances, "l2", precision)
