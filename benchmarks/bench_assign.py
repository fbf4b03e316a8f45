"""pytest-benchmark microbenchmarks of nearest-code assignment, one group per shape.

    .venv/bin/python -m pytest benchmarks/bench_assign.py                      # all providers
    .venv/bin/python -m pytest benchmarks/bench_assign.py -k "ours or faiss"   # a subset
    .venv/bin/python -m pytest benchmarks/bench_assign.py --benchmark-json=out.json

K = 65,536 and N = 4096 as in the runner's default grid; every D of that grid. Providers that
cannot run here (not importable, over the memory cap) are skipped with the reason. For the full
comparison table (GFLOP/s, memory, regret) use benchmarks/runner.py.
"""

import pytest
import torch
from providers import PROVIDERS, Settings, Skip

CODES = 65536
ROWS = 4096
DIMS = [8, 32, 64, 256]


@pytest.fixture(scope="module", params=DIMS, ids=lambda dim: f"D={dim}")
def inputs(request):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, request.param, generator=generator)
    codebook = torch.randn(CODES, request.param, generator=generator)
    return x, codebook


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
