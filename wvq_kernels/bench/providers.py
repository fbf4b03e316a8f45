"""Nearest-code (L2, k = 1) providers compared by the assignment benchmarks: ours and its peers.

Each provider turns (x (N, D) float32, codebook (K, D) float32) into a zero-argument callable
that returns the chosen indices as an int64 tensor (N,). Whatever can be prepared once per
codebook (a faiss index, a module holding the codebook, numpy views) is done outside that
callable, so that only the search itself is timed. Optional peers that are not importable, and
materialising peers whose N x K matrix would exceed the memory cap, report why they did not run:
nothing is installed on the fly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from wvq_kernels.bench.harness import MiB, Skip

FAISS_BLAS_THRESHOLD = 20

Search = Callable[[], Tensor]


@dataclass(frozen=True)
class Provider:
    name: str
    precision: str
    ours: bool
    prepare: Callable[[Tensor, Tensor, Settings], Search]
    # Below ~20 GFLOP/s here: skipped above Settings.slow_flop_cap, where one call takes
    # half a minute or more.
    slow: bool = False


@dataclass(frozen=True)
class Settings:
    backend: str = "auto"
    # Largest N x K float32 matrix a materialising peer may build.
    materialise_cap_mib: int = 4096
    # Temporary score block of the chunked PyTorch peers.
    chunk_mib: int = 256
    # Largest 2*N*K*D for a slow provider: the default grid's N=16384 x D=256 cell (5.5e11)
    # is the only one above it.
    slow_flop_cap: float = 2.5e11


def _ours(precision: str) -> Callable[[Tensor, Tensor, Settings], Search]:
    def prepare(x: Tensor, codebook: Tensor, settings: Settings) -> Search:
        import wvq_kernels

        return lambda: (
            wvq_kernels.assign(
                x, codebook, metric="l2", precision=precision, backend=settings.backend
            ).indices
        )

    return prepare


def _check_materialise_cap(rows: int, codes: int, settings: Settings, matrices: int = 1) -> None:
    matrix_mib = matrices * rows * codes * 4 / MiB
    if matrix_mib > settings.materialise_cap_mib:
        what = "N x K matrix" if matrices == 1 else f"{matrices} N x K matrices"
        raise Skip(f"{what} {matrix_mib:.0f} MiB > cap {settings.materialise_cap_mib} MiB")


def _l2_scores(rows: Tensor, codebook: Tensor, code_sq_norms: Tensor) -> Tensor:
    # ||x||^2 is the same for every code, so ||c||^2 - 2 x.c ranks codes like ||x - c||^2.
    return torch.addmm(code_sq_norms, rows, codebook.T, alpha=-2)


def _torch_materialised(x: Tensor, codebook: Tensor, settings: Settings) -> Search:
    _check_materialise_cap(x.shape[0], codebook.shape[0], settings)
    return lambda: _l2_scores(x, codebook, codebook.square().sum(1)).argmin(1)


def _rows_per_chunk(codes: int, settings: Settings, bytes_per_score: int = 4) -> int:
    return max(1, settings.chunk_mib * MiB // (codes * bytes_per_score))


def _torch_chunked(x: Tensor, codebook: Tensor, settings: Settings) -> Search:
    block = _rows_per_chunk(codebook.shape[0], settings)

    def search() -> Tensor:
        code_sq_norms = codebook.square().sum(1)
        return torch.cat(
            [_l2_scores(rows, codebook, code_sq_norms).argmin(1) for rows in x.split(block)]
        )

    return search


def _torch_chunked_bf16(x: Tensor, codebook: Tensor, settings: Settings) -> Search:
    """What autocast(bfloat16) does to the usual VQ distance code: the GEMM runs in bf16 and
    returns bf16 products, which are then combined with float32 norms."""
    block = _rows_per_chunk(codebook.shape[0], settings)

    def search() -> Tensor:
        code_sq_norms = codebook.square().sum(1)
        codebook_bf16 = codebook.to(torch.bfloat16)
        chosen = []
        for rows in x.split(block):
            products = rows.to(torch.bfloat16) @ codebook_bf16.T
            chosen.append((code_sq_norms - 2 * products).argmin(1))
        return torch.cat(chosen)

    return search


def _faiss_flat_l2(x: Tensor, codebook: Tensor, settings: Settings) -> Search:
    try:
        import faiss
    except ImportError as error:
        raise Skip(f"faiss not importable ({error})") from None
    # faiss runs its own OpenMP pool: give it the same number of threads as torch.
    faiss.omp_set_num_threads(torch.get_num_threads())
    # Below this many queries faiss scans sequentially; the default (128,000 in faiss-cpu 1.15)
    # would put every size we run there, 4-25x slower than its blocked search with the fused
    # k = 1 argmin. 20, the long-standing default, gives faiss its fastest path.
    faiss.cvar.distance_compute_blas_threshold = FAISS_BLAS_THRESHOLD
    index = faiss.IndexFlatL2(codebook.shape[1])
    index.add(codebook.contiguous().numpy())
    queries = x.contiguous().numpy()

    def search() -> Tensor:
        _, labels = index.search(queries, 1)
        return torch.from_numpy(labels[:, 0])

    return search


def _pykeops_argmin(x: Tensor, codebook: Tensor, settings: Settings) -> Search:
    try:
        from pykeops.torch import LazyTensor
    except ImportError as error:
        raise Skip(f"pykeops not importable ({error})") from None
    rows = LazyTensor(x.contiguous()[:, None, :])
    codes = LazyTensor(codebook.contiguous()[None, :, :])
    return lambda: ((rows - codes) ** 2).sum(-1).argmin(dim=1).view(-1).to(torch.int64)


def _vector_quantize_pytorch(x: Tensor, codebook: Tensor, settings: Settings) -> Search:
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError as error:
        raise Skip(f"vector-quantize-pytorch not importable ({error})") from None
    # Its forward builds the full N x K distance matrix and more: its peak RSS measured here
    # (eval, no grad) was about four N x K float32 matrices.
    _check_materialise_cap(x.shape[0], codebook.shape[0], settings, matrices=4)
    module = VectorQuantize(dim=codebook.shape[1], codebook_size=codebook.shape[0]).eval()
    embed = module._codebook.embed
    if embed.numel() != codebook.numel():
        raise Skip(f"unexpected codebook layout {tuple(embed.shape)}")
    with torch.no_grad():
        embed.copy_(codebook.view_as(embed))
    batch = x[None]

    def search() -> Tensor:
        with torch.no_grad():
            _, indices, _ = module(batch)
        return indices.reshape(-1).to(torch.int64)

    return search


PROVIDERS: list[Provider] = [
    Provider("ours-ieee", "ieee", True, _ours("ieee")),
    Provider("ours-bf16", "bf16", True, _ours("bf16")),
    Provider("torch-materialised", "ieee", False, _torch_materialised),
    Provider("torch-chunked", "ieee", False, _torch_chunked),
    Provider("torch-chunked-bf16", "bf16", False, _torch_chunked_bf16),
    Provider("faiss-flatl2", "ieee", False, _faiss_flat_l2),
    Provider("pykeops", "ieee", False, _pykeops_argmin, slow=True),
    Provider("vq-pytorch", "ieee", False, _vector_quantize_pytorch, slow=True),
]

PROVIDERS_BY_NAME = {provider.name: provider for provider in PROVIDERS}
