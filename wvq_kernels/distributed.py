"""The collectives the project needs across processes, on torch.distributed (gloo on CPU, NCCL
on GPU), and the sharded-codebook assignment built on them.

Every function takes ``process_group``: ``None`` means the world group when torch.distributed
is initialised; when it is not (or the group has one member) each function returns the local
value unchanged, so single-process code needs no branch. Every rank of the group must call the
same functions in the same order; a rank that does not (or that raises on its own bad input
before a collective) makes the others fail after the group's ``timeout`` (give every process
group one) instead of hanging.

Tensors travel on the group's device (CPU for gloo, the current CUDA device for NCCL) and come
back on the caller's device. Results are bitwise identical on every rank and do not depend on
which rank is fastest: integers are summed exactly, floats are gathered and combined in rank
order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from wvq_kernels import _trusted as kernels
from wvq_kernels import _validation as check
from wvq_kernels._backends import resolve_backend
from wvq_kernels._types import Assignment, Moments

__all__ = [
    "all_gather_moments",
    "all_gather_rows",
    "all_gather_sizes",
    "all_reduce_code_sums",
    "all_reduce_histogram",
    "assign_sharded",
    "count_bytes",
    "is_distributed",
]

# The low half of a packed assign_sharded key holds the global code index.
_INDEX_BITS = 32


# The tallies of the count_bytes blocks now open (innermost last).
_tallies: list[dict[str, list[int]]] = []


@contextlib.contextmanager
def count_bytes() -> Iterator[dict[str, list[int]]]:
    """Within the block, tallies what this process hands to the collectives of this module:
    ``{"<collective> <dtype> <shape>": [calls, payload bytes]}``, payload = the bytes of this
    rank's input tensor (what an all_gather contributes; what an all_reduce reduces). Opt-in,
    for benchmarks: the bytes on the wire follow from it and the backend's algorithm (a ring
    all_gather sends (W - 1) x payload per rank, a ring all_reduce about 2 (W - 1) / W x
    payload)."""
    tally: dict[str, list[int]] = {}
    _tallies.append(tally)
    try:
        yield tally
    finally:
        _tallies.remove(tally)


def _count(collective: str, tensor: Tensor) -> None:
    key = f"{collective} {str(tensor.dtype).removeprefix('torch.')} {tuple(tensor.shape)}"
    for tally in _tallies:
        calls_and_bytes = tally.setdefault(key, [0, 0])
        calls_and_bytes[0] += 1
        calls_and_bytes[1] += tensor.numel() * tensor.element_size()


def is_distributed(process_group=None) -> bool:
    """Whether the collectives synchronise: torch.distributed is initialised and the group
    (default: the world) has more than one member."""
    if process_group is None and not (dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size(process_group) > 1


def rank(process_group=None) -> int:
    """This process's rank in the group; 0 when nothing is distributed."""
    return dist.get_rank(process_group) if is_distributed(process_group) else 0


def _group_device(process_group) -> torch.device:
    # NCCL only moves CUDA tensors; every other backend here (gloo) moves CPU tensors.
    if dist.get_backend(process_group) == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_equal(tensor: Tensor, process_group) -> list[Tensor]:
    """all_gather of equally shaped tensors; the list is in rank order, on the group's device."""
    local = tensor.detach().to(_group_device(process_group)).contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(process_group))]
    _count("all_gather", local)
    dist.all_gather(parts, local, group=process_group)
    return parts


def all_gather_sizes(size: int, process_group=None) -> list[int]:
    """Every rank's ``size`` (a Python int), in rank order; ``[size]`` without a group."""
    if not is_distributed(process_group):
        return [size]
    parts = _gather_equal(torch.tensor([size], dtype=torch.int64), process_group)
    return [int(part) for part in parts]


def all_reduce_histogram(counts: Tensor, process_group=None) -> Tensor:
    """The sum over ranks of the integer ``counts`` (K,), exactly, as int64."""
    if not is_distributed(process_group):
        return counts
    # A copy: the in-place all_reduce must not write into the caller's tensor.
    total = counts.detach().to(_group_device(process_group), torch.int64, copy=True)
    _count("all_reduce", total)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=process_group)
    return total.to(counts.device)


def all_reduce_code_sums(sums: Tensor, process_group=None) -> Tensor:
    """The sum over ranks of per-code float sums (K, D), in the dtype of ``sums``.

    Gathered, then added in rank order in float64 and rounded once. A SUM all-reduce of floats
    depends on the order the backend adds in (gloo does not promise one, nor does NCCL across
    topologies), which could differ between runs or, in principle, between ranks; here every
    rank does the same additions on the same values, so the result is bitwise the same on every
    rank and run. Costs world_size x K x D floats of transient memory."""
    if not is_distributed(process_group):
        return sums
    total = torch.zeros(sums.shape, dtype=torch.float64, device=_group_device(process_group))
    for part in _gather_equal(sums, process_group):
        total += part.double()
    return total.to(sums.device, sums.dtype)


def all_reduce_sum(values: Tensor, process_group=None) -> Tensor:
    """``all_reduce_code_sums``, differentiable: the gradient of each rank's ``values`` is the
    sum over ranks of the gradients of the result, as for a loss of the global batch that every
    rank computes (DDP then averages what reaches the parameters)."""
    if not is_distributed(process_group):
        return values
    return _SumOverRanks.apply(values, process_group)


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, process_group) -> Tensor:
        ctx.process_group = process_group
        return all_reduce_code_sums(values, process_group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return all_reduce_code_sums(grad.contiguous(), ctx.process_group), None


def all_gather_moments(local: Moments, process_group=None) -> Moments:
    """The moments of the union of every rank's rows: each rank's (count, mean, cov) gathered
    and merged with the Chan formula in rank order, so every rank gets bitwise the same result.
    Gradients flow into the calling rank's own ``local`` moments."""
    if not is_distributed(process_group):
        return local
    rank = dist.get_rank(process_group)
    fields = zip(*(_gather_equal(field, process_group) for field in local), strict=True)
    parts = [Moments(*(field.to(local.mean.device) for field in part)) for part in fields]
    parts[rank] = local
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    return merged


def all_gather_rows(rows: Tensor, process_group=None) -> Tensor:
    """Every rank's rows (N_r, D), concatenated in rank order; N_r may differ and be 0.

    Rows travel as raw bytes, so any dtype arrives bit for bit, whatever dtypes the backend
    can reduce."""
    if not is_distributed(process_group):
        return rows
    sizes = all_gather_sizes(rows.shape[0], process_group)
    return _gather_rows(rows, sizes, process_group)


def _gather_rows(rows: Tensor, sizes: list[int], process_group) -> Tensor:
    # all_gather needs equal shapes: pad every rank's block to the largest, then cut.
    width = rows.shape[1]
    as_bytes = rows.detach().contiguous().view(torch.uint8)
    padded = torch.zeros(max(sizes), as_bytes.shape[1], dtype=torch.uint8, device=rows.device)
    padded[: rows.shape[0]] = as_bytes
    parts = _gather_equal(padded, process_group)
    blocks = [part[:size] for part, size in zip(parts, sizes, strict=True)]
    return torch.cat(blocks).view(rows.dtype).reshape(-1, width).to(rows.device)


def _ordered_int32(values: Tensor) -> Tensor:
    """Float32 -> int32 with the same order (for finite values): non-negative floats already
    order like their bits; negative ones order backwards, so their magnitude bits are flipped.
    Adding +0.0 first folds -0 into +0, which compare equal as floats."""
    bits = (values.float() + 0.0).view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _float_from_ordered(ordered: Tensor) -> Tensor:
    # The flip is its own inverse on negative values.
    return torch.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered).view(torch.float32)


def _pack(distances: Tensor, indices: Tensor) -> Tensor:
    """One int64 per row ordering like (distance, index): the ordered distance in the signed
    high half, the index in the (non-negative) low half."""
    return (_ordered_int32(distances).to(torch.int64) << _INDEX_BITS) | indices


def _unpack(keys: Tensor) -> tuple[Tensor, Tensor]:
    indices = keys & ((1 << _INDEX_BITS) - 1)
    distances = _float_from_ordered((keys >> _INDEX_BITS).to(torch.int32))
    return indices, distances


def assign_sharded(
    x: Tensor,
    codebook_shard: Tensor,
    *,
    process_group=None,
    metric: str = "l2",
    precision: str = "auto",
    backend: str = "auto",
) -> Assignment:
    """:func:`wvq_kernels.assign` against a codebook split across ranks: rank r holds the rows
    [offset_r, offset_r + K_r) of the global codebook (shards in rank order, K_r may differ and
    be 0 on some ranks). Every rank passes its own rows ``x`` (..., D) and gets, for each, the
    global index of the nearest code and its distance (counts is None).

    Every rank's rows are gathered and scored against the local shard; each row's best
    (distance, global index) is packed into one int64 key and the keys are reduced with MIN.
    Memory: all ranks' rows and one key per row, never rows x codes. Ties: shards are compared
    by the float32 distances ``assign`` reports, so codes at exactly equal reported distance go
    to the smallest global index (within a shard ``assign``'s own rule has chosen already).
    """
    backend = _check_sharded(x, codebook_shard, metric, precision, backend)
    if not is_distributed(process_group):
        if codebook_shard.shape[0] == 0:
            raise ValueError("codebook_shard: expected K >= 1 codes without a process group")
        return kernels.assign(
            x, codebook_shard, metric=metric, precision=precision, backend=backend
        )
    rows = x.detach().reshape(-1, x.shape[-1])
    # One collective for both sizes of every rank.
    local_sizes = torch.tensor([codebook_shard.shape[0], rows.shape[0]], dtype=torch.int64)
    sizes = _gather_equal(local_sizes, process_group)
    shard_sizes, row_counts = ([int(part[i]) for part in sizes] for i in range(2))
    if sum(shard_sizes) == 0 or sum(shard_sizes) >= 2**_INDEX_BITS:
        raise ValueError(
            f"codebook_shard: expected 1 to 2**32 - 1 codes in all, got {sum(shard_sizes)}"
        )
    rank = dist.get_rank(process_group)
    everyone = _gather_rows(rows, row_counts, process_group)
    offset = sum(shard_sizes[:rank])
    keys = _shard_keys(everyone, codebook_shard, offset, metric, precision, backend)
    keys = keys.to(_group_device(process_group))
    _count("all_reduce", keys)
    dist.all_reduce(keys, op=dist.ReduceOp.MIN, group=process_group)
    start = sum(row_counts[:rank])
    indices, distances = _unpack(keys[start : start + rows.shape[0]].to(x.device))
    return Assignment(indices.reshape(x.shape[:-1]), distances.reshape(x.shape[:-1]), None)


def _check_sharded(x, shard, metric, precision, backend) -> str:
    """assign's checks, with an empty shard allowed; all local, before any collective."""
    check.check_float_tensor("x", x, check.FLOAT_DTYPES)
    check.check_rows("x", x)
    check.check_float_tensor("codebook_shard", shard, check.FLOAT_DTYPES)
    if shard.dtype != x.dtype:
        raise TypeError(f"codebook_shard: expected dtype {x.dtype} (that of x), got {shard.dtype}")
    if shard.dim() != 2 or shard.shape[1] != x.shape[-1]:
        raise ValueError(
            f"codebook_shard: expected shape (K_r, {x.shape[-1]}), got {tuple(shard.shape)}"
        )
    check.check_same_device("x", x, "codebook_shard", shard)
    check.check_choice("metric", metric, check.METRICS)
    backend = resolve_backend(backend, x.device)
    check.check_precision(precision, backend, x.device)
    check.check_finite("x", x)
    check.check_finite("codebook_shard", shard)
    return backend


def _shard_keys(rows, shard, offset, metric, precision, backend) -> Tensor:
    """Each row's packed (distance, global index) key against this rank's shard; an empty shard
    gives every row the largest key, which loses every MIN."""
    if shard.shape[0] == 0:
        return torch.full((rows.shape[0],), 2**63 - 1, dtype=torch.int64, device=rows.device)
    local = kernels.assign(rows, shard, metric=metric, precision=precision, backend=backend)
    return _pack(local.distances, local.indices + offset)
