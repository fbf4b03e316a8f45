"""code_histogram: ours against torch.bincount, on the package's harness.

    .venv/bin/python benchmarks/bench_code_histogram.py                  # the default sizes, CPU
    .venv/bin/python benchmarks/bench_code_histogram.py --sizes 1048576x65536 --device cuda
    .venv/bin/python -m pytest benchmarks/bench_code_histogram.py        # pytest-benchmark

Indices skewed towards the first codes (as in a collapsing codebook: contention on few
counters), int64. Median time per call; vs baseline = torch.bincount time / time.
"""

import sys

import torch

import wvq_kernels as wvq
from wvq_kernels.bench import harness
from wvq_kernels.testing import skewed_indices


def _inputs(size, device):
    rows, codes = size
    return skewed_indices(rows, codes, device=device), codes


def _ours(inputs, backend):
    indices, codes = inputs
    return lambda: wvq.code_histogram(indices, codes, backend=backend)


def _bincount(inputs, _backend):
    indices, codes = inputs
    return lambda: torch.bincount(indices, minlength=codes)


BENCH = harness.OpBenchmark(
    name="code_histogram",
    description="code_histogram: ours vs torch.bincount",
    size_names=("N", "K"),
    sizes=((16384, 65536), (1 << 20, 65536), (1 << 20, 1024)),
    quick_sizes=((16384, 1024),),
    make_inputs=_inputs,
    providers=(
        harness.OpProvider("ours", _ours),
        harness.OpProvider("torch.bincount", _bincount, baseline=True),
    ),
    repeats=20,
)


test_code_histogram = harness.pytest_benchmark(BENCH, BENCH.sizes[1])


if __name__ == "__main__":
    sys.exit(harness.main(BENCH, __file__))
