"""Every CPU micro-kernel (AVX-512, AVX2, scalar; forced with WVQ_CPU_ISA in a subprocess,
since the ISA is chosen once per process) finds the nearest code within rounding, resolves
ties to the smallest index, and keeps the bf16 semantics when vdpbf16ps is emulated."""
import json
import os
import subprocess
import sys

import pytest

from wvq_kernels import available_backends

pytestmark = pytest.mark.skipif(not available_backends()["cpu"], reason="cpu backend not built")

SHAPES = [(257, 1000, 1), (100, 333, 12), (50, 4100, 59), (33, 70, 256)]

# Prints, per shape and precision, the index chosen for a row equal to a duplicated code and
# the largest regret relative to |x|^2 + |c|^2 (the scale of the rounding error).
CHILD = r"""
import json, sys, torch
import wvq_kernels
out = {"isa": torch.ops.wvq.cpu_isa(), "results": []}
for n, k, d in json.loads(sys.argv[1]):
    g = torch.Generator().manual_seed(n * k + d)
    x = torch.randn(n, d, generator=g)
    codebook = torch.randn(k, d, generator=g)
    codebook[k // 2] = codebook[3]
    x[0] = codebook[3]
    exact = torch.cdist(x.double(), codebook.double()) ** 2
    scale = (x.double() ** 2).sum(1) + (codebook.double() ** 2).sum(1).max()
    for precision in ("ieee", "bf16"):
        a = wvq_kernels.assign(x, codebook, precision=precision, backend="cpu")
        regret = exact.gather(1, a.indices[:, None])[:, 0] - exact.min(1).values
        out["results"].append({"tie": a.indices[0].item(), "regret": (regret / scale).max().item()})
print(json.dumps(out))
"""

BOUND = {"ieee": 1e-5, "bf16": 3e-2}


def run_with_isa(isa):
    env = dict(os.environ, WVQ_CPU_ISA=isa)
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(SHAPES)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_every_isa_finds_nearest_code(isa):
    report = run_with_isa(isa)
    assert report["isa"].startswith(isa)
    assert len(report["results"]) == 2 * len(SHAPES)
    for i, shape in enumerate(SHAPES):
        for p, precision in enumerate(("ieee", "bf16")):
            result = report["results"][2 * i + p]
            assert result["tie"] == 3, (isa, precision, shape)
            assert result["regret"] <= BOUND[precision], (isa, precision, shape, result)
