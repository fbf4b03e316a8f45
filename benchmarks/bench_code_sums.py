"""code_sums: ours against PyTorch's index_add_ (float32 sums) plus bincount, on the package's
harness.

    .venv/bin/python benchmarks/bench_code_sums.py                        # the default sizes, CPU
    .venv/bin/python benchmarks/bench_code_sums.py --sizes 65536x65536x64 --device cuda
    .venv/bin/python -m pytest benchmarks/bench_code_sums.py              # pytest-benchmark

Rows N(0, 1), indices skewed towards the first codes. index_add_ on a GPU adds with float atomics
in arbitrary order (not deterministic), which ours does not. Median time per call; vs baseline
= PyTorch's time / time.
"""

import sys

import torch

import wvq_kernels as wvq
from wvq_kernels.bench import harness
from wvq_kernels.testing import random_rows, skewed_indices


def _inputs(size, device):
    rows, codes, dim = size
    indices = skewed_indices(rows, codes, device=device)
    return indices, random_rows(rows, dim, device=device), codes


def _ours(inputs, backend):
    indices, x, codes = inputs
    return lambda: wvq.code_sums(indices, x, codes, backend=backend)


def _index_add(inputs, _backend):
    indices, x, codes = inputs

    def step():
        sums = torch.zeros(codes, x.shape[1], dtype=torch.float32, device=x.device)
        return torch.bincount(indices, minlength=codes), sums.index_add_(0, indices, x)

    return step


BENCH = harness.OpBenchmark(
    name="code_sums",
    description="code_sums: ours vs torch index_add_ + bincount",
    size_names=("N", "K", "D"),
    sizes=((16384, 65536, 8), (16384, 65536, 64), (262144, 4096, 64)),
    quick_sizes=((4096, 1024, 8),),
    make_inputs=_inputs,
    providers=(
        harness.OpProvider("ours", _ours),
        harness.OpProvider("torch.index_add_", _index_add, baseline=True),
    ),
)


test_code_sums = harness.pytest_benchmark(BENCH, BENCH.sizes[0])


if __name__ == "__main__":
    sys.exit(harness.main(BENCH, __file__))
