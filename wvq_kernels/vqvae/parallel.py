"""`wvq train` on several processes (torchrun or ``--nproc``): the process group, the share of
each global batch a rank trains on, DDP, and the few decisions every rank must take together.

Every rank draws the same global batch of ``batch_size`` images from the same sampler and
trains on its own contiguous share (``batch_size / world`` images). DDP averages the model's
gradients, and the quantizer synchronises its own statistics (``VectorQuantizer(sync_stats=…)``),
so every rank holds the same model as one process on the whole batch would, up to the order of
float sums. Rank 0 alone prints and writes files.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings

import torch
import torch.distributed as dist
from torch import nn

import wvq_kernels
from wvq_kernels import distributed

# A collective that waits longer than this means a rank died or took another path: fail, not
# hang. Long enough for one rank's evaluation, checkpoint save and plots while others wait.
TIMEOUT = datetime.timedelta(minutes=10)


@contextlib.contextmanager
def process_group_from_environment():
    """Initialises the default process group when launched by torchrun with more than one
    process (gloo on CPU, NCCL when CUDA is available) and destroys it on exit; a no-op in a
    single process or when the caller has already initialised torch.distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if distributed.is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if distributed.is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def check_batch_size(batch_size: int) -> None:
    if batch_size % world_size():
        raise ValueError(
            f"batch_size: expected a multiple of the {world_size()} processes, got {batch_size}"
        )


def local_share(items: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of ``items`` (shares in rank order, sizes differing by at
    most one)."""
    return torch.tensor_split(items, world_size())[rank()] if world_size() > 1 else items


def wrap(module: nn.Module) -> nn.Module:
    """DDP around ``module`` in a multi-process run, else ``module`` itself. Built anew for each
    stage, since DDP fixes at construction which parameters it reduces and the stages freeze
    different ones. Buffers are not broadcast before each forward: the quantizer keeps its own
    statistics equal on every rank (the one broadcast at construction copies equal values)."""
    if world_size() == 1:
        return module
    # The decoder's 1x1 convolution takes channels-last latents, so its (64, 8, 1, 1) weight
    # gradient has strides that differ from the bucket's only along its size-1 dimensions: the
    # same memory, which DDP warns about but copies correctly.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return nn.parallel.DistributedDataParallel(module, forward_sync_buffers=False)


def average_gradients(module: nn.Module) -> None:
    """The gradients of ``module`` averaged over ranks, for a module that DDP cannot wrap (the
    discriminator is called several times per backward, which DDP rejects)."""
    if world_size() == 1:
        return
    for parameter in module.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world_size()


def add_other_ranks_usage(quantizer, indices: torch.Tensor) -> None:
    """Adds the other ranks' rows to ``quantizer.usage_counts`` after an eval-mode forward that
    every rank ran in step (the adversarial stage's frozen quantizer). An eval-mode forward
    counts only its own rows, since it cannot know that the other ranks take part."""
    if world_size() == 1:
        return
    local = wvq_kernels.code_histogram(indices, quantizer.codebook_size)
    quantizer.usage_counts.add_(distributed.all_reduce_histogram(local) - local)


def wait_for_all() -> None:
    if world_size() > 1:
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any: ranks must leave a loop on the same
    step (a wall-clock deadline passes at slightly different times on each)."""
    if world_size() == 1:
        return flag
    flags = torch.tensor([int(flag)])
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags.item())


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of float64 ``values`` (a 1-d tensor), added in rank order so that it
    is the same on every rank and run."""
    parts = distributed.all_gather_rows(values.double().reshape(1, -1))
    return parts.sum(0)
