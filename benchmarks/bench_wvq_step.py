"""Acceptance benchmark: one W-VQ quantizer step (forward + backward), ours against a PyTorch
transcription of the reference implementation's quantizer.

    .venv/bin/python benchmarks/bench_wvq_step.py                  # N=8192, K=65,536, d=8, CPU
    .venv/bin/python benchmarks/bench_wvq_step.py --repeats 3 --threads 2
    .venv/bin/python -m pytest benchmarks/bench_wvq_step.py        # the same step, pytest-benchmark

The reference step, as the Wasserstein-VQ code does it: the full N x K fp32 distance matrix and
its argmin, a bincount whose utilization and perplexity are read with `.item()`, the 65,536-row
feature queue shifted with `torch.cat`, `torch.cov` on the queue and on the codebook, and W from
two `eigh` calls (the feature covariance's square root, then the product's eigenvalues), with
autograd through both. Ours: `wvq_kernels.nn.VectorQuantizer(distribution_loss="wasserstein")`.
Both start from the same state: the same codebook, a full queue, the same batch, and both run
forward and backward of the same loss (alpha·codebook + beta·commitment + gamma·W).

Time: median wall time over the repeats, after one warm-up step. Memory: each provider runs in a
fresh subprocess; after its set-up (inputs, codebook, full queue) and the warm-up step, the
kernel's resident high-water mark (VmHWM) is reset through /proc/self/clear_refs (after freed
heap memory is returned to the OS), and the peak is read after the timed steps: the delta is
every page the steps touched beyond the resident set-up, i.e. their temporaries. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import measured_in_subprocess, metered_steps

from wvq_kernels.nn import VectorQuantizer

ROWS, CODES, DIM, QUEUE = 8192, 65536, 8, 65536
ALPHA, BETA, GAMMA = 1.0, 0.1, 0.5
TARGET_SPEEDUP, TARGET_MEMORY_RATIO = 10.0, 20.0
PROVIDERS = ("ours", "reference")


class ReferenceQuantizer:
    """The reference quantizer step, transcribed to plain PyTorch (what the kernels replace)."""

    def __init__(self, codebook: Tensor, queue: Tensor):
        self.codebook = codebook.clone().requires_grad_()
        self.queue = queue.clone()

    def step(self, z: Tensor) -> Tensor:
        codebook = self.codebook
        distances = (z.detach().square().sum(1, keepdim=True) + codebook.square().sum(1)
                     - 2 * z.detach() @ codebook.T)
        indices = distances.argmin(1)
        quantized = codebook[indices]
        counts = torch.bincount(indices, minlength=codebook.shape[0])
        self.utilization = (counts > 0).sum().item() / codebook.shape[0]
        probabilities = counts.float() / indices.numel()
        self.perplexity = torch.exp(-(probabilities * torch.log(probabilities + 1e-10)).sum()).item()
        self.queue = torch.cat([self.queue[z.shape[0]:], z.detach()])
        distance = self._wasserstein(codebook)
        loss = (ALPHA * F.mse_loss(quantized, z.detach()) + BETA * F.mse_loss(quantized.detach(), z)
                + GAMMA * distance)
        straight_through = z + (quantized - z).detach()
        (loss + straight_through.sum()).backward()
        return indices

    def _wasserstein(self, codebook: Tensor) -> Tensor:
        scale = self.queue.std(0).max().detach()
        features, codes = self.queue / scale, codebook / scale
        mean_z, cov_z = features.mean(0), torch.cov(features.T)
        mean_c, cov_c = codes.mean(0), torch.cov(codes.T)
        values, vectors = torch.linalg.eigh(cov_z)
        root_z = vectors @ torch.diag(values.clamp_min(0).add(1e-8).sqrt()) @ vectors.T
        product_values = torch.linalg.eigh(root_z @ cov_c @ root_z).eigenvalues
        cross = product_values.clamp_min(0).add(1e-8).sqrt().sum()
        w2 = (mean_z - mean_c).square().sum() + cov_z.trace() + cov_c.trace() - 2 * cross
        return torch.sqrt(w2.clamp_min(0) + 1e-10)


class OursQuantizer:
    def __init__(self, codebook: Tensor, queue: Tensor):
        self.module = VectorQuantizer(DIM, CODES, distribution_loss="wasserstein", alpha=ALPHA,
                                      beta=BETA, gamma=GAMMA, feature_queue_size=QUEUE)
        with torch.no_grad():
            self.module.embedding.copy_(codebook)
        self.module.queue.push(queue)

    def step(self, z: Tensor) -> Tensor:
        self.module.zero_grad(set_to_none=True)
        out = self.module(z)
        (out.loss + out.quantized.sum()).backward()
        return out.indices


def make_state(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    codebook = torch.randn(CODES, DIM, generator=generator)
    queue = torch.randn(QUEUE, DIM, generator=generator) + 0.5
    z = (torch.randn(ROWS, DIM, generator=generator) + 0.5).requires_grad_()
    return codebook, queue, z


def make_provider(name: str, codebook: Tensor, queue: Tensor):
    return (OursQuantizer if name == "ours" else ReferenceQuantizer)(codebook, queue)


def measure(name: str, repeats: int) -> dict:
    """Runs in the provider's own process: set-up, warm-up, then the timed, metered steps."""
    codebook, queue, z = make_state()
    provider = make_provider(name, codebook, queue)

    def step():
        z.grad = None
        provider.step(z)

    times, peak_delta_mib = metered_steps(step, repeats)
    return {"provider": name, "median_s": statistics.median(times), "times_s": times,
            "peak_rss_delta_mib": peak_delta_mib}


def run_in_subprocess(name: str, repeats: int, threads: int | None) -> dict:
    command = [sys.executable, __file__, "--measure", name, "--repeats", str(repeats)]
    if threads:
        command += ["--threads", str(threads)]
    return measured_in_subprocess(command)


def same_codes_share() -> float:
    """Share of the batch's rows on which both providers choose the same code: the two steps do
    the same work (the reference's expanded fp32 distances may differ on near-ties)."""
    codebook, queue, z = make_state()
    ours = make_provider("ours", codebook, queue).step(z)
    z.grad = None
    reference = make_provider("reference", codebook, queue).step(z)
    return (ours == reference).double().mean().item()


def report(results: dict[str, dict]) -> str:
    ours, reference = results["ours"], results["reference"]
    speedup = reference["median_s"] / ours["median_s"]
    header = (f"W-VQ step (forward + backward), N={ROWS}, K={CODES}, d={DIM}, queue={QUEUE}, "
              f"CPU, torch threads={torch.get_num_threads()}, "
              f"load average={os.getloadavg()[0]:.1f}")
    lines = [header]
    for result in (ours, reference):
        lines.append(f"  {result['provider']:<10} median {result['median_s'] * 1e3:9.1f} ms   "
                     f"peak RSS delta {result['peak_rss_delta_mib']:9.1f} MiB")
    lines.append(f"  speed-up (reference / ours): {speedup:.1f}x (target >= {TARGET_SPEEDUP:.0f}x)")
    if ours["peak_rss_delta_mib"] and reference["peak_rss_delta_mib"]:
        ratio = reference["peak_rss_delta_mib"] / ours["peak_rss_delta_mib"]
        lines.append(f"  memory ratio (reference / ours): {ratio:.1f}x "
                     f"(target >= {TARGET_MEMORY_RATIO:.0f}x)")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--measure", choices=PROVIDERS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps(measure(args.measure, args.repeats)))
        return 0
    print(f"rows on which both choose the same code: {same_codes_share():.2%}")
    results = {name: run_in_subprocess(name, args.repeats, args.threads) for name in PROVIDERS}
    print(report(results))
    return 0


def _benchmark_step(benchmark, name: str) -> None:
    codebook, queue, z = make_state()
    provider = make_provider(name, codebook, queue)

    def step():
        z.grad = None
        provider.step(z)

    benchmark.group = "wvq-step"
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)


def test_wvq_step_ours(benchmark):
    _benchmark_step(benchmark, "ours")


def test_wvq_step_reference(benchmark):
    _benchmark_step(benchmark, "reference")


if __name__ == "__main__":
    sys.exit(main())
