"""soft_assign_entropy (mean row entropy and batch code entropy of softmax(-d / tau), forward +
backward to x and the codebook): ours against the definition materialised by PyTorch in float32
(reference.soft_assign_entropy_materialised: N x K distances and log-softmax, autograd), on the
package's harness.

    .venv/bin/python benchmarks/bench_soft_assign_entropy.py               # the default sizes
    .venv/bin/python benchmarks/bench_soft_assign_entropy.py --sizes 16384x65536x8
    .venv/bin/python -m pytest benchmarks/bench_soft_assign_entropy.py     # pytest-benchmark

tau = 1; the loss is row entropy - batch entropy (LFQ / MAGVIT-2 style). Each (size, provider)
runs in a fresh process; the materialised provider is skipped where its N x K tensors would
exceed MEMORY_CAP_MIB. Acceptance: at N = 16384, K = 65536, D = 8 ours needs less than
ACCEPTANCE_MIB beyond its inputs (reported, not asserted).
"""

import sys

import torch

import wvq_kernels as wvq
from wvq_kernels.bench import harness
from wvq_kernels.reference import soft_assign_entropy_materialised
from wvq_kernels.testing import random_inputs

TAU = 1.0
ACCEPTANCE_SIZE, ACCEPTANCE_MIB = (16384, 65536, 8), 64
# N x K float32 tensors alive at the materialised step's peak (distances, log-softmax,
# probabilities and their gradients).
MATERIALISED_MATRICES = 6
MEMORY_CAP_MIB = 6144


def _inputs(size, device):
    rows, codes, dim = size
    x, codebook = random_inputs(rows, codes, dim, device=device)
    return x.requires_grad_(), codebook.requires_grad_()


def _step(x, codebook, terms):
    """One forward + backward of row entropy - batch entropy; gradients reset first."""

    def step():
        x.grad = codebook.grad = None
        row_entropy, code_entropy = terms()
        (row_entropy - code_entropy).backward()

    return step


def _ours(inputs, backend):
    x, codebook = inputs

    def terms():
        result = wvq.soft_assign_entropy(x, codebook, TAU, backend=backend)
        return result.row_entropy, result.code_entropy

    return _step(x, codebook, terms)


def _materialised(inputs, _backend):
    x, codebook = inputs
    estimate_mib = MATERIALISED_MATRICES * x.shape[0] * codebook.shape[0] * 4 / harness.MiB
    if estimate_mib > MEMORY_CAP_MIB:
        raise harness.Skip(
            f"~{MATERIALISED_MATRICES} N x K tensors = {estimate_mib:.0f} MiB > cap "
            f"{MEMORY_CAP_MIB} MiB"
        )

    def terms():
        row_entropy, _, code_entropy = soft_assign_entropy_materialised(
            x, codebook, TAU, torch.float32
        )
        return row_entropy, code_entropy

    return _step(x, codebook, terms)


BENCH = harness.OpBenchmark(
    name="soft_assign_entropy",
    description=f"soft_assign_entropy forward + backward (tau={TAU}): ours vs PyTorch "
    "materialised in float32",
    size_names=("N", "K", "D"),
    sizes=((2048, 65536, 8), ACCEPTANCE_SIZE),
    quick_sizes=((512, 4096, 8),),
    make_inputs=_inputs,
    providers=(
        harness.OpProvider("ours", _ours),
        harness.OpProvider("materialised", _materialised, baseline=True),
    ),
    memory=True,
    repeats=3,
    summary=harness.memory_acceptance(("N", "K", "D"), ACCEPTANCE_SIZE, ACCEPTANCE_MIB),
)


test_soft_assign_entropy = harness.pytest_benchmark(BENCH, (2048, 16384, 8))


if __name__ == "__main__":
    sys.exit(harness.main(BENCH, __file__))
