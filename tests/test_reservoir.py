"""FeatureReservoir: the chunked push equals sequential algorithm R on the same draws, the
sample is uniform over the stream, and refill draws are distinct rows."""

import torch

from wvq_kernels.nn.counter_random import CounterRandom
from wvq_kernels.nn.reservoir import FeatureReservoir


def sequential_reservoir(stream: torch.Tensor, size: int, chunk: int, seed: int) -> torch.Tensor:
    """Algorithm R one row at a time, on the uniforms the chunked push draws."""
    random = CounterRandom(seed)
    rows = torch.zeros(size, stream.shape[1])
    for start in range(0, len(stream), chunk):
        part = stream[start : start + chunk]
        uniform = random.uniform(len(part))
        for offset, row in enumerate(part):
            t = start + offset
            slot = t if t < size else int(uniform[offset] * (t + 1))
            if slot < size:
                rows[slot] = row
    return rows


def test_chunked_push_equals_sequential_algorithm():
    stream = torch.randn(500, 3)
    reservoir = FeatureReservoir(64, 3)
    generator = CounterRandom(5)
    for part in stream.split(37):
        reservoir.push(part, generator)
    assert torch.equal(reservoir.rows, sequential_reservoir(stream, 64, 37, seed=5))
    assert reservoir.filled.item() == 64 and reservoir.seen.item() == 500


def test_every_stream_row_is_equally_likely():
    stream_length, size, trials = 400, 40, 400
    hits = torch.zeros(stream_length)
    for seed in range(trials):
        reservoir = FeatureReservoir(size, 1)
        generator = CounterRandom(seed)
        for part in torch.arange(stream_length, dtype=torch.float32)[:, None].split(29):
            reservoir.push(part, generator)
        kept = reservoir.rows[:, 0].long()
        assert kept.unique().numel() == size
        hits[kept] += 1
    share = hits / trials
    # Each row is kept with probability size/length = 0.1; every quarter of the stream (early
    # rows as often as late ones) averages within 5 binomial standard errors of it.
    standard_error = (0.1 * 0.9 / (trials * stream_length / 4)) ** 0.5
    for quarter in share.chunk(4):
        assert abs(quarter.mean().item() - 0.1) < 5 * standard_error


def test_draw_distinct_permutes_filled_rows_and_clear_restarts():
    reservoir = FeatureReservoir(16, 1)
    generator = CounterRandom(0)
    reservoir.push(torch.arange(10, dtype=torch.float32)[:, None], generator)
    drawn = reservoir.draw_distinct(10, generator)[:, 0]
    assert sorted(drawn.tolist()) == list(range(10))
    assert reservoir.draw_distinct(25, generator).shape == (25, 1)
    reservoir.clear()
    assert reservoir.filled.item() == 0
    reservoir.push(torch.full((3, 1), 7.0), generator)
    assert torch.equal(reservoir.draw_distinct(4, generator), torch.full((4, 1), 7.0))
