"""moments: ours against torch.mean + torch.cov, on the package's harness.

    .venv/bin/python benchmarks/bench_moments.py                          # the default sizes, CPU
    .venv/bin/python benchmarks/bench_moments.py --sizes 1048576x64 --device cuda
    .venv/bin/python -m pytest benchmarks/bench_moments.py                # pytest-benchmark

Rows N(0, 1) + 3 in float32. The baseline computes what W-VQ's reference code does, in float32
(torch.cov centres once; no float64 accumulation), ours in float64 with Chan merges. Each
(size, provider) runs in a fresh process for its peak memory. Median time per call; vs baseline
= PyTorch's time / time.
"""

import sys

import torch

import wvq_kernels as wvq
from wvq_kernels.bench import harness
from wvq_kernels.testing import random_rows


def _inputs(size, device):
    rows, dim = size
    return (random_rows(rows, dim, device=device) + 3,)


def _ours(inputs, backend):
    (x,) = inputs
    return lambda: wvq.moments(x, backend=backend)


def _torch_cov(inputs, _backend):
    (x,) = inputs
    return lambda: (x.mean(0), torch.cov(x.T, correction=0))


BENCH = harness.OpBenchmark(
    name="moments",
    description="moments: ours vs torch.mean + torch.cov",
    size_names=("N", "D"),
    sizes=((65536, 8), (65536, 64), (1 << 20, 8)),
    quick_sizes=((4096, 8),),
    make_inputs=_inputs,
    providers=(
        harness.OpProvider("ours", _ours),
        harness.OpProvider("torch.cov", _torch_cov, baseline=True),
    ),
    memory=True,
)


test_moments = harness.pytest_benchmark(BENCH, BENCH.sizes[1])


if __name__ == "__main__":
    sys.exit(harness.main(BENCH, __file__))
