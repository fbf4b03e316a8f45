"""Triton assignment beyond the backend-parametrized tests: both ways of cutting the work
(row-owned and split-K) forced on the same inputs, the packed key's order, ties across code
segments, masks at ragged sizes, precisions. Runs in the interpreter on CPU tensors; the
@pytest.mark.gpu tests need a CUDA device."""

import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels.testing import check_assignment, random_inputs

pytestmark = pytest.mark.skipif(
    not wvq.available_backends()["triton"], reason=wvq.available_backends()["triton"].reason
)

if wvq.available_backends()["triton"]:
    import triton
    import triton.language as tl

    from wvq_kernels.triton import assign as triton_assign
    from wvq_kernels.triton import configs

    @triton.jit
    def _pack_keys_kernel(scores_ptr, indices_ptr, keys_ptr, BLOCK: tl.constexpr):
        offsets = tl.arange(0, BLOCK)
        scores = tl.load(scores_ptr + offsets)
        indices = tl.load(indices_ptr + offsets)
        tl.store(keys_ptr + offsets, triton_assign._pack_key(scores, indices))


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SPLITS = [1, 3, 1000]  # row-owned; a few segments; one segment per code tile


def _block_k(d, precision="ieee"):
    kind, arch = configs.dot_kind(precision), configs.device_arch(DEVICE)
    return configs.assign_config(d, kind, arch).block_k


def test_packed_key_orders_like_score_then_index():
    scores = [
        3.5,
        -0.0,
        0.0,
        -1e-30,
        1e-30,
        -2.0,
        7e20,
        -7e20,
        0.0,
        -0.0,
        3.5,
        1.0,
        -1.0,
        2.0,
        -2.0,
        1e-45,
    ]
    indices = [4, 9, 2, 5, 6, 1, 0, 3, 8, 7, 1, 10, 11, 12, 13, 14]
    scores_t = torch.tensor(scores, dtype=torch.float32, device=DEVICE)
    indices_t = torch.tensor(indices, dtype=torch.int32, device=DEVICE)
    keys = torch.empty(16, dtype=torch.int64, device=DEVICE)
    _pack_keys_kernel[(1,)](scores_t, indices_t, keys, BLOCK=16)
    # Python compares -0.0 == 0.0, which is the rule the key must follow.
    expected = sorted(range(16), key=lambda i: (scores[i], indices[i]))
    assert keys.cpu().argsort().tolist() == expected
    assert (keys.cpu() & 0xFFFFFFFF).tolist() == indices
    zero_keys = {int(keys[i]) >> 32 for i in range(16) if scores[i] == 0.0}
    assert len(zero_keys) == 1, "-0 and +0 must pack to the same score bits"


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
@pytest.mark.parametrize("d", [1, 3, 17, 300])
def test_split_k_equals_row_owned_and_meets_the_oracle(metric, d):
    """Ragged N and K (not multiples of any block), D from 1 to two chunks of 256."""
    x, codebook = random_inputs(523, 2 * _block_k(d) + 77, d, device=DEVICE, seed=d)
    results = [
        triton_assign.launch_assign(x, codebook, metric, "ieee", True, splits=splits)
        for splits in SPLITS
    ]
    for result in results[1:]:
        for got, expected in zip(result, results[0]):
            assert torch.equal(got, expected)
    indices, distances, counts = results[0]
    check_assignment(x, codebook, indices, distances, metric, "ieee")
    assert torch.equal(counts, torch.bincount(indices, minlength=codebook.shape[0]))


@pytest.mark.parametrize("splits", SPLITS)
@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
def test_ties_across_code_segments_go_to_the_smallest_index(splits, metric):
    block_k = _block_k(16)
    x, codebook = random_inputs(300, 5 * block_k + 3, 16, device=DEVICE, seed=1)
    winner = 3 * torch.randn(16, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    # Copies in the first, middle and last code tiles, and at tile edges.
    copies = [block_k - 1, block_k, 3 * block_k + 5, 5 * block_k + 2]
    codebook[copies] = winner
    x = winner + 0.05 * x
    indices, _, counts = triton_assign.launch_assign(x, codebook, metric, "ieee", True, splits)
    assert (indices == copies[0]).all()
    assert int(counts[copies[0]]) == 300


@pytest.mark.parametrize("splits", SPLITS)
@pytest.mark.parametrize("precision", ["ieee", "bf16", "tf32", "tf32x3"])
def test_precisions_on_both_paths_meet_the_oracle(splits, precision):
    """tf32 and tf32x3 reach tl.dot as its input precision; the interpreter computes them in
    fp32, so there they meet the ieee bound, on a GPU their own."""
    x, codebook = random_inputs(400, 3 * _block_k(24, precision) + 11, 24, device=DEVICE, seed=3)
    indices, distances, _ = triton_assign.launch_assign(x, codebook, "l2", precision, False, splits)
    rounds = precision == "bf16" or DEVICE.type == "cuda"
    check_assignment(x, codebook, indices, distances, "l2", precision if rounds else "ieee")


def test_split_count_fills_the_machine():
    config = configs.AssignConfig(64, 128, 32, 4, 3)
    assert triton_assign.split_count(64 * 132, 65536, config, 132) == 1
    assert triton_assign.split_count(64 * 10, 65536, config, 132) == 14
    assert triton_assign.split_count(1, 200, config, 132) == 2  # never more than code tiles


def test_default_choice_takes_both_paths():
    """With the interpreter's pretend SM count, small N splits K and larger N owns rows."""
    config = configs.assign_config(16, "ieee", None)
    sms = configs.sm_count(torch.device("cpu"))
    few_rows = triton_assign.split_count(config.block_n, 65536, config, sms)
    many_rows = triton_assign.split_count(config.block_n * sms, 65536, config, sms)
    assert few_rows > 1 and many_rows == 1


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["tf32", "tf32x3"])
def test_tf32_modes_meet_the_oracle_on_gpu(precision):
    """tf32 keeps 10 mantissa bits of each operand, tf32x3 about 20: each meets its own
    bound (testing.INPUT_UNIT)."""
    x, codebook = random_inputs(4096, 8192, 64, device=DEVICE, seed=4)
    result = wvq.assign(x, codebook, precision=precision, backend="triton")
    check_assignment(x, codebook, result.indices, result.distances, "l2", precision)
