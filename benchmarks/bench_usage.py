"""usage: ours against the pure-PyTorch reference (wvq_kernels.reference.usage), on the
package's harness.

    .venv/bin/python benchmarks/bench_usage.py                            # the default sizes, CPU
    .venv/bin/python benchmarks/bench_usage.py --sizes 262144 --device cuda
    .venv/bin/python -m pytest benchmarks/bench_usage.py                  # pytest-benchmark

Histograms of skewed indices (4 per code), many codes unused. Both return 0-dim device tensors
without a host sync. Median time per call; vs baseline = the reference's time / time.
"""

import os
import sys

import torch

import wvq_kernels as wvq
from wvq_kernels import reference
from wvq_kernels.bench import harness
from wvq_kernels.testing import skewed_indices


def _inputs(size, device):
    (codes,) = size
    counts = torch.bincount(skewed_indices(4 * codes, codes, seed=1), minlength=codes)
    return (counts.to(device),)


def _ours(inputs, backend):
    (counts,) = inputs
    if backend != "auto":
        # usage has no backend argument: WVQ_BACKEND chooses it (this process only benchmarks).
        os.environ["WVQ_BACKEND"] = backend
    return lambda: wvq.usage(counts)


def _reference(inputs, _backend):
    (counts,) = inputs
    return lambda: reference.usage(counts)


BENCH = harness.OpBenchmark(
    name="usage",
    description="usage: ours vs the PyTorch reference",
    size_names=("K",),
    sizes=((16384,), (65536,), (1 << 20,)),
    quick_sizes=((1024,),),
    make_inputs=_inputs,
    providers=(
        harness.OpProvider("ours", _ours),
        harness.OpProvider("reference", _reference, baseline=True),
    ),
    repeats=50,
)


test_usage = harness.pytest_benchmark(BENCH, BENCH.sizes[1])


if __name__ == "__main__":
    sys.exit(harness.main(BENCH, __file__))
