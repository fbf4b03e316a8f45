"""Benchmark of soft_assign_stats (NSVQ's dense loss, forward + backward to the codebook): ours
(the C++ CPU kernels) against the definition materialised by PyTorch in float32
(reference.soft_assign_stats_materialised: N x K distances, softmax and weights).

    .venv/bin/python benchmarks/bench_soft_assign.py                      # the default sizes, CPU
    .venv/bin/python benchmarks/bench_soft_assign.py --sizes 16384x65536x8 --tau 0.1
    .venv/bin/python -m pytest benchmarks/bench_soft_assign.py            # pytest-benchmark

Each (size, provider) runs in a fresh subprocess: set-up (x, a codebook requiring grad), one
warm-up step, then the resident high-water mark (VmHWM) is reset and read after the timed steps
(runner.PeakMemory): the delta is everything the steps allocate beyond their inputs. The
materialised provider is skipped, not run, where its N x K tensors would exceed
--memory-cap-mib. Linux only for the memory column.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import measured_in_subprocess, metered_steps

import wvq_kernels as wvq
from wvq_kernels.reference import soft_assign_stats_materialised

PROVIDERS = ("ours", "materialised")
DEFAULT_SIZES = ((2048, 65536, 8), (16384, 65536, 8))
LAM = 0.01
MiB = 1 << 20
# Acceptance: at N = 16384, K = 65536, D = 8 ours needs less than this beyond its inputs.
ACCEPTANCE_MIB = 64
# N x K float32 tensors alive at the materialised step's peak (measured: 5.0 at 1024 x 16384 x 8).
MATERIALISED_MATRICES = 6


def make_inputs(rows: int, codes: int, dim: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=generator) + 0.5
    codebook = torch.randn(codes, dim, generator=generator).requires_grad_()
    return x, codebook


def make_step(provider: str, x, codebook, tau: float):
    """One forward + backward of the dense loss; the codebook's gradient is reset first."""
    if provider == "ours":
        def loss():
            return wvq.soft_assign_stats(x, codebook, tau=tau, lam=LAM, backend="cpu").loss
    else:
        def loss():
            return soft_assign_stats_materialised(x, codebook, tau, LAM, torch.float32)[0]

    def step():
        codebook.grad = None
        loss().backward()

    return step


def materialised_skip_reason(rows: int, codes: int, cap_mib: float) -> str | None:
    estimate_mib = MATERIALISED_MATRICES * rows * codes * 4 / MiB
    if estimate_mib > cap_mib:
        return (f"~{MATERIALISED_MATRICES} N x K tensors = {estimate_mib:.0f} MiB > cap "
                f"{cap_mib:.0f} MiB")
    return None


def measure(provider: str, rows: int, codes: int, dim: int, tau: float, repeats: int) -> dict:
    """Runs in the provider's own process: set-up, warm-up, then the timed, metered steps."""
    x, codebook = make_inputs(rows, codes, dim)
    times, peak_delta_mib = metered_steps(make_step(provider, x, codebook, tau), repeats)
    inputs_mib = (x.numel() + codebook.numel()) * 4 / MiB
    return {"provider": provider, "median_ms": 1e3 * statistics.median(times),
            "peak_delta_mib": peak_delta_mib, "inputs_mib": inputs_mib}


def run_in_subprocess(provider: str, size: tuple[int, int, int], args) -> dict:
    rows, codes, dim = size
    command = [sys.executable, __file__, "--measure", provider, "--sizes", f"{rows}x{codes}x{dim}",
               "--tau", str(args.tau), "--repeats", str(args.repeats)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    return measured_in_subprocess(command)


def report(results: list[tuple[tuple[int, int, int], dict]], args) -> str:
    lines = [
        f"soft_assign_stats forward + backward, CPU, tau={args.tau}, lam={LAM}, "
        f"torch threads={torch.get_num_threads()}, load average={os.getloadavg()[0]:.1f}",
        f"{'N':>6} {'K':>6} {'D':>4}  {'provider':<13} {'median ms':>10} "
        f"{'peak delta MiB':>15} {'inputs MiB':>11}",
    ]
    for (rows, codes, dim), result in results:
        prefix = f"{rows:>6} {codes:>6} {dim:>4}  {result['provider']:<13}"
        if "skipped" in result:
            lines.append(f"{prefix} skipped: {result['skipped']}")
            continue
        lines.append(f"{prefix} {result['median_ms']:>10.1f} {result['peak_delta_mib']:>15.1f} "
                     f"{result['inputs_mib']:>11.1f}")
    for (rows, codes, dim), result in results:
        if (rows, codes, dim) == (16384, 65536, 8) and result["provider"] == "ours":
            verdict = "met" if result["peak_delta_mib"] < ACCEPTANCE_MIB else "NOT met"
            lines.append(f"acceptance (ours at 16384 x 65536 x 8: inputs + < {ACCEPTANCE_MIB} "
                         f"MiB): {verdict}")
    return "\n".join(lines)


def parse_size(text: str) -> tuple[int, int, int]:
    rows, codes, dim = (int(part) for part in text.split("x"))
    return rows, codes, dim


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=list(DEFAULT_SIZES),
                        metavar="NxKxD")
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--memory-cap-mib", type=float, default=6144,
                        help="skip the materialised provider above this estimated footprint")
    parser.add_argument("--measure", choices=PROVIDERS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps(measure(args.measure, *args.sizes[0], args.tau, args.repeats)))
        return 0
    results = []
    for size in args.sizes:
        for provider in PROVIDERS:
            reason = materialised_skip_reason(size[0], size[1], args.memory_cap_mib)
            if provider == "materialised" and reason:
                results.append((size, {"provider": provider, "skipped": reason}))
            else:
                results.append((size, run_in_subprocess(provider, size, args)))
    print(report(results, args))
    return 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_soft_assign(benchmark, provider):
    x, codebook = make_inputs(2048, 16384, 8)
    benchmark.group = "soft-assign N=2048 K=16384 D=8"
    benchmark.pedantic(make_step(provider, x, codebook, 1.0), rounds=3, warmup_rounds=1)


if __name__ == "__main__":
    sys.exit(main())
