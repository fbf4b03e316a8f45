"""Nearest-code assignment (L2, k = 1): ours against its peers, on the package's harness.

    .venv/bin/python benchmarks/bench_assign.py --quick               # the grid of `wvq bench`
    .venv/bin/python benchmarks/bench_assign.py --gpu-check           # fused vs materialising
    .venv/bin/python -m pytest benchmarks/bench_assign.py             # pytest-benchmark
    .venv/bin/python -m pytest benchmarks/bench_assign.py -k "ours or faiss"

As a script it is `wvq bench` (wvq_kernels.bench.assign_grid: GFLOP/s, speed against the best
peer, peak memory, regret against float64; CSV/JSON/PNG under --out). As pytest-benchmark
entries: K = 65,536 and N = 4096 as in the default grid, every D of that grid, one group per
shape; on a GPU also ours against PyTorch's materialising bf16 step at N = K = 65,536, D = 64.
Providers that cannot run here are skipped with the reason.
"""

import sys

import pytest
import torch

from wvq_kernels.bench import assign_grid
from wvq_kernels.bench.harness import Skip
from wvq_kernels.bench.providers import PROVIDERS, Settings
from wvq_kernels.testing import random_inputs

CODES = 65536
ROWS = 4096
DIMS = assign_grid.DEFAULT_DIMS


@pytest.fixture(scope="module", params=DIMS, ids=lambda dim: f"D={dim}")
def inputs(request):
    return random_inputs(ROWS, CODES, request.param)


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda provider: provider.name)
def test_assign(benchmark, provider, inputs):
    x, codebook = inputs
    try:
        search = provider.prepare(x, codebook, Settings())
    except Skip as reason:
        pytest.skip(str(reason))
    benchmark.group = f"K={CODES} N={ROWS} D={x.shape[1]}"
    benchmark.extra_info["gflop"] = 2 * ROWS * CODES * x.shape[1] / 1e9
    # A few rounds after one warm-up: one call at D=256 takes a second or more for most peers.
    indices = benchmark.pedantic(search, rounds=3, warmup_rounds=1)
    assert indices.shape == (ROWS,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("step", ["ours-triton-bf16", "torch-materialised-bf16"])
def test_assign_gpu_fused_vs_materialising(benchmark, step):
    size, dim = assign_grid.GPU_CHECK_SIZE, assign_grid.GPU_CHECK_DIM
    x, codebook = (t.to("cuda", torch.bfloat16) for t in random_inputs(size, size, dim))
    run = assign_grid.fused_and_materialising(x, codebook)[step]
    benchmark.group = f"GPU bf16 K=N={size} D={dim}"
    benchmark.pedantic(lambda: (run(), torch.cuda.synchronize()), rounds=5, warmup_rounds=1)


if __name__ == "__main__":
    sys.exit(assign_grid.main())
