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
fresh subprocess (wvq_kernels.bench.harness); the peak is read after the timed steps, beyond
the resident set-up (inputs, codebook, full queue): the steps' temporaries. Linux only. The
targets (speed-up, memory ratio) are reported, not asserted.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import Tensor

from wvq_kernels.bench import harness
from wvq_kernels.nn import VectorQuantizer

ROWS, CODES, DIM, QUEUE = 8192, 65536, 8, 65536
ALPHA, BETA, GAMMA = 1.0, 0.1, 0.5
TARGET_SPEEDUP, TARGET_MEMORY_RATIO = 10.0, 20.0


class ReferenceQuantizer:
    """The reference quantizer step, transcribed to plain PyTorch (what the kernels replace)."""

    def __init__(self, codebook: Tensor, queue: Tensor):
        self.codebook = codebook.clone().requires_grad_()
        self.queue = queue.clone()

    def step(self, z: Tensor) -> Tensor:
        codebook = self.codebook
        distances = (
            z.detach().square().sum(1, keepdim=True)
            + codebook.square().sum(1)
            - 2 * z.detach() @ codebook.T
        )
        indices = distances.argmin(1)
        quantized = codebook[indices]
        counts = torch.bincount(indices, minlength=codebook.shape[0])
        self.utilization = (counts > 0).sum().item() / codebook.shape[0]
        probabilities = counts.float() / indices.numel()
        self.perplexity = torch.exp(
            -(probabilities * torch.log(probabilities + 1e-10)).sum()
        ).item()
        self.queue = torch.cat([self.queue[z.shape[0] :], z.detach()])
        distance = self._wasserstein(codebook)
        loss = (
            ALPHA * F.mse_loss(quantized, z.detach())
            + BETA * F.mse_loss(quantized.detach(), z)
            + GAMMA * distance
        )
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
        self.module = VectorQuantizer(
            codebook.shape[1],
            codebook.shape[0],
            distribution_loss="wasserstein",
            alpha=ALPHA,
            beta=BETA,
            gamma=GAMMA,
            feature_queue_size=queue.shape[0],
        )
        with torch.no_grad():
            self.module.embedding.copy_(codebook)
        self.module.queue.push(queue)

    def step(self, z: Tensor) -> Tensor:
        self.module.zero_grad(set_to_none=True)
        out = self.module(z)
        (out.loss + out.quantized.sum()).backward()
        return out.indices


def make_state(size, device) -> tuple[Tensor, Tensor, Tensor]:
    """(codebook, a full queue of QUEUE features, the batch z) for size (N, K, d)."""
    rows, codes, dim = size
    generator = torch.Generator().manual_seed(0)
    codebook = torch.randn(codes, dim, generator=generator)
    queue = torch.randn(QUEUE, dim, generator=generator) + 0.5
    z = torch.randn(rows, dim, generator=generator) + 0.5
    return codebook.to(device), queue.to(device), z.to(device).requires_grad_()


def _provider(quantizer):
    def prepare(state, _backend):
        codebook, queue, z = state
        model = quantizer(codebook, queue)

        def step():
            z.grad = None
            return model.step(z)

        return step

    return prepare


def same_codes_share(size) -> float:
    """Share of the batch's rows on which both providers choose the same code: the two steps do
    the same work (the reference's expanded fp32 distances may differ on near-ties)."""
    state = make_state(size, torch.device("cpu"))
    ours = _provider(OursQuantizer)(state, "auto")()
    reference = _provider(ReferenceQuantizer)(state, "auto")()
    return (ours == reference).double().mean().item()


def _targets(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        if row["provider"] != "ours":
            continue
        size = tuple(row[name] for name in BENCH.size_names)
        lines += [
            f"{BENCH.size_label(size)}: both choose the same code on "
            f"{same_codes_share(size):.2%} of the rows",
            f"  speed-up {_times(row['vs_baseline'])} (target >= {TARGET_SPEEDUP:.0f}x), memory "
            f"ratio {_times(row['memory_vs_baseline'])} (target >= {TARGET_MEMORY_RATIO:.0f}x)",
        ]
    return lines


def _times(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.1f}x"


BENCH = harness.OpBenchmark(
    name="wvq_step",
    description=f"W-VQ step (forward + backward, queue {QUEUE}): ours vs the reference",
    size_names=("N", "K", "d"),
    sizes=((ROWS, CODES, DIM),),
    quick_sizes=((1024, 4096, DIM),),
    make_inputs=make_state,
    providers=(
        harness.OpProvider("ours", _provider(OursQuantizer)),
        harness.OpProvider("reference", _provider(ReferenceQuantizer), baseline=True),
    ),
    memory=True,
    repeats=5,
    summary=_targets,
)


test_wvq_step = harness.pytest_benchmark(BENCH, BENCH.sizes[0])


if __name__ == "__main__":
    sys.exit(harness.main(BENCH, __file__))
