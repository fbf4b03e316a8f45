"""Acceptance benchmark of the drop-ins: ``wvq_kernels.nn.VectorQuantize`` and ``ResidualVQ``
against vector-quantize-pytorch's, one training step (forward + backward) each, side by side.

    .venv/bin/python benchmarks/bench_vq_dropin.py --repeats 1     # K=65,536, d=64
    .venv/bin/python benchmarks/bench_vq_dropin.py --quick          # a smoke run

Sizes are (q, N, K, d): q = 1 is ``VectorQuantize``, q > 1 a ``ResidualVQ`` of q quantizers,
both with the peer's defaults (EMA codebook, rotation trick) in training mode. The input is
``(N / T, T, d)`` with T = min(N, 1024) tokens per sequence, and the step is
``(quantized.square().mean() + losses.sum()).backward()``. Both start from the same codebooks
(the peer's, copied into ours through the ``codebook`` setter).

The peer's training step holds the float32 N×K distances, an int64 one-hot N×K matrix and its
float32 copy at once, ~24 bytes per (row, code) pair: 24 GiB at N = 16,384, K = 65,536 (the
acceptance size), more than a 24 GiB machine has. A peer cell that would not fit in 80% of the
available memory is skipped with that reason (the default sizes add N = 8,192, 12 GiB, where
both run). Each (size, provider) runs in a fresh subprocess (wvq_kernels.bench.harness): run
the default sizes with ``--repeats 1``, one warm-up and one timed step per cell. Time: median
wall time; memory: the resident-memory high-water mark of the timed steps above the set-up.
The targets (speed-up, memory ratio) are reported, not asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from wvq_kernels.bench import harness
from wvq_kernels.nn import ResidualVQ, VectorQuantize

SEQUENCE = 1024
# The peer's training step holds about this much per (row, code) pair at once (the float32
# distances, an int64 one-hot and its float32 copy), measured at N = 1,024 and 2,048, K = 65,536:
# 1.55 and 3.09 GiB.
PEER_BYTES_PER_PAIR = 24
TARGET_SPEEDUP, TARGET_MEMORY_RATIO = 10.0, 20.0


def make_inputs(size, device) -> tuple:
    """(the size, the input batch (N / T, T, d) requiring grad, the seed of the codebooks)."""
    _, rows, _, dim = size
    sequence = min(rows, SEQUENCE)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows // sequence, sequence, dim, generator=generator)
    return size, x.to(device).requires_grad_(), 0


def _build(module_classes, size, seed, **options):
    """The module of ``size`` from (VectorQuantize, ResidualVQ) classes, seeded."""
    vector_quantize, residual_vq = module_classes
    quantizers, _, codes, dim = size
    torch.manual_seed(seed)
    if quantizers == 1:
        return vector_quantize(dim=dim, codebook_size=codes, **options)
    return residual_vq(dim=dim, num_quantizers=quantizers, codebook_size=codes, **options)


def _layers(module) -> list:
    return list(module.layers) if hasattr(module, "layers") else [module]


def _peer_classes():
    try:
        from vector_quantize_pytorch import ResidualVQ as PeerResidualVQ
        from vector_quantize_pytorch import VectorQuantize as PeerVectorQuantize
    except ImportError as missing:
        raise harness.Skip(f"vector-quantize-pytorch is not installed ({missing})") from None
    return PeerVectorQuantize, PeerResidualVQ


def _training_step(module, x):
    module.train()

    def step():
        x.grad = None
        quantized, indices, losses = module(x)
        (quantized.square().mean() + losses.sum()).backward()
        return indices

    return step


def _available_bytes() -> int | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return None
    fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines())
    return int(fields["MemAvailable"].split()[0]) * 1024


def _check_peer_fits(size) -> None:
    """Skips a size whose N×K matrices would not fit in memory, rather than let the kernel's
    out-of-memory killer end the peer (or a neighbour)."""
    _, rows, codes, _ = size
    needed, available = PEER_BYTES_PER_PAIR * rows * codes, _available_bytes()
    if available is not None and needed > 0.8 * available:
        raise harness.Skip(
            f"the peer would need ~{needed / 2**30:.0f} GiB for its N×K matrices, "
            f"{available / 2**30:.0f} GiB available"
        )


def prepare_peer(inputs, _backend):
    size, x, seed = inputs
    _check_peer_fits(size)
    return _training_step(_build(_peer_classes(), size, seed), x)


def prepare_ours(inputs, backend):
    size, x, seed = inputs
    # The peer's initial codebooks, so that both quantize against the same codes.
    peer = _build(_peer_classes(), size, seed)
    ours = _build((VectorQuantize, ResidualVQ), size, seed, backend=backend)
    with torch.no_grad():
        for our_layer, peer_layer in zip(_layers(ours), _layers(peer)):
            our_layer.codebook = peer_layer.codebook
    del peer
    return _training_step(ours.to(x.device), x)


def _targets(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        if row["provider"] != "ours":
            continue
        quantizers = row["q"]
        module = "VectorQuantize" if quantizers == 1 else f"ResidualVQ ({quantizers} quantizers)"
        lines.append(
            f"{module}: speed-up {_times(row['vs_baseline'])} (target >= {TARGET_SPEEDUP:.0f}x), "
            f"memory ratio {_times(row['memory_vs_baseline'])} "
            f"(target >= {TARGET_MEMORY_RATIO:.0f}x)"
        )
    return lines


def _times(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.1f}x"


BENCH = harness.OpBenchmark(
    name="vq_dropin",
    description="VectorQuantize / ResidualVQ training step: ours vs vector-quantize-pytorch",
    size_names=("q", "N", "K", "d"),
    sizes=(
        (1, 16384, 65536, 64),
        (4, 16384, 65536, 64),
        (1, 8192, 65536, 64),
        (4, 8192, 65536, 64),
    ),
    quick_sizes=((1, 512, 2048, 16), (2, 512, 2048, 16)),
    make_inputs=make_inputs,
    providers=(
        harness.OpProvider("ours", prepare_ours),
        harness.OpProvider("peer", prepare_peer, baseline=True),
    ),
    memory=True,
    repeats=3,
    summary=_targets,
)


if __name__ == "__main__":
    sys.exit(harness.main(BENCH, __file__))
