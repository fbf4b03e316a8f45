"""sample_codes in Triton: the assign kernel (wvq_kernels/triton/assign.py) with its SAMPLE
epilogue, which adds Gumbel noise to every score tile before the running min/argmin.

Each score becomes score / T + log E(seed, row, code) (counter_hash.gumbel_noise): the row's
two keys are hashed once per program, the noise once per (row, code) of a tile, so the draw is
a function of (seed, row, code) alone, whatever the tiles, the split-K segments (which merge
perturbed scores on packed keys exactly as assign merges scores) or the device.
"""

from torch import Tensor
from torch.library import triton_op

from wvq_kernels import _counter_hash
from wvq_kernels.triton.assign import launch_assign


def launch_sample_codes(
    x: Tensor,
    codebook: Tensor,
    temperature: float,
    seed: int,
    metric: str,
    precision: str,
    splits: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The op's body; ``splits`` forces a number of code segments (tests take both paths)."""
    # The seed's key in Python integers (the hash's operators work on them too): no tensor
    # value is read on the host, so the op traces under torch.compile.
    sample = (temperature, _counter_hash.seed_key(seed)) if temperature > 0 else None
    indices, distances, _ = launch_assign(
        x, codebook, metric, precision, False, splits=splits, sample=sample
    )
    return indices, distances


@triton_op("wvq_triton::sample_codes", mutates_args=())
def sample_codes(
    x: Tensor, codebook: Tensor, temperature: float, seed: int, metric: str, precision: str
) -> tuple[Tensor, Tensor]:
    return launch_sample_codes(x, codebook, temperature, seed, metric, precision)
