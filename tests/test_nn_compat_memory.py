"""The chunked code logits (sampling, top k, cross-entropy, diversity loss) never hold an
N×K matrix: at K = 65,536 no single operation allocates more than one block of logits, where
the materialised logits are K/chunk times larger. Measured with torch's profiler, which
records every CPU allocation of every operation, the backward's included."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from wvq_kernels.nn.code_logits import (
    BLOCK_ELEMENTS,
    cross_entropy_chunked,
    diversity_loss_chunked,
    top_codes_chunked,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS, CODES, DIM, TOP = 256, 65536, 8, 4


def largest_allocation(function) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    return max(event.cpu_memory_usage for event in profiler.events())


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_no_operation_allocates_more_than_a_block_of_logits(metric):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(ROWS, DIM, generator=generator, requires_grad=True)
    codes = torch.randn(CODES, DIM, generator=generator, requires_grad=True)
    targets = torch.randint(CODES, (ROWS,), generator=generator)

    positions = torch.arange(ROWS) % 16

    def run():
        cross_entropy_chunked(features, codes, targets, metric).backward()
        diversity_loss_chunked(features, codes, positions, 16, 10.0, metric).backward()
        top_codes_chunked(features.detach(), codes.detach(), 1, 0.5, metric)
        top_codes_chunked(features.detach(), codes.detach(), TOP, 0.0, metric)

    block = BLOCK_ELEMENTS * 4
    # One block of logits, with the running top k beside it when they are merged.
    allowed = block + ROWS * TOP * 4
    materialised = largest_allocation(lambda: torch.cdist(features, codes).logsumexp(1))
    assert materialised >= ROWS * CODES * 4 > 3 * block
    assert largest_allocation(run) <= allowed
