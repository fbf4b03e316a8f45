"""sample_codes: one exact draw per row from softmax(-d / T) by Gumbel-max in the assign scan.

The draws follow the exact probabilities (a chi-squared test, which a wrong temperature fails),
depend on (inputs, seed) alone (every backend, thread count, ISA and split-K cut give the same
draws), T = 0 or a vanishing T gives assign's answer, and the memory stays bounded."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import wvq_kernels as wvq
from wvq_kernels import _counter_hash, reference
from wvq_kernels.testing import (
    SAMPLING_P_VALUE,
    chi_squared_p_value,
    pair_distances64,
    random_inputs,
    sampling_failures,
    sampling_probabilities64,
    strided,
)

METRICS = ["l2", "cosine", "dot"]

if wvq.available_backends()["triton"]:
    import triton
    import triton.language as tl

    from wvq_kernels.triton.counter_hash import gumbel_noise, row_keys

    @triton.jit
    def _noise_kernel(out_ptr, seed_word, ROWS: tl.constexpr, CODES: tl.constexpr):
        rows, codes = tl.arange(0, ROWS), tl.arange(0, CODES)
        first, second = row_keys(seed_word, rows)
        noise = gumbel_noise(first, second, codes)
        tl.store(out_ptr + rows[:, None] * CODES + codes[None, :], noise)


def _one_row_many_times(num_codes: int, dim: int, rows: int, seed: int):
    """One row repeated `rows` times: every row index draws independently from the same
    distribution, which the chi-squared test compares with the exact one."""
    x, codebook = random_inputs(1, num_codes, dim, seed=seed)
    return x, x.expand(rows, dim), codebook


@pytest.mark.parametrize("metric, temperature", [("l2", 4.0), ("cosine", 0.2), ("dot", 1.5)])
def test_draws_follow_the_exact_softmax(backend, device, metric, temperature):
    row, x, codebook = _one_row_many_times(12, 5, 10_000, seed=3)
    drawn = wvq.sample_codes(
        x.to(device), codebook.to(device), temperature, seed=5, metric=metric, backend=backend
    )
    probabilities = sampling_probabilities64(row, codebook, temperature, metric)
    assert probabilities.max() < 0.9  # the test has power: several codes are likely
    p_value = chi_squared_p_value(drawn.indices, probabilities)
    assert p_value > SAMPLING_P_VALUE, p_value


def test_the_check_oracle_passes_every_backend(backend, device):
    """wvq check's judgement (testing.sampling_failures) on this backend."""

    def run(x, codebook, temperature, metric):
        return wvq.sample_codes(
            x.to(device), codebook.to(device), temperature, metric=metric, backend=backend
        )

    assert not sampling_failures(run)


def test_a_wrong_temperature_fails_the_chi_squared_test():
    """The same draws tested against T * 1.3 instead of T: the test can fail."""
    row, x, codebook = _one_row_many_times(12, 5, 20_000, seed=3)
    drawn = wvq.sample_codes(x, codebook, 4.0, seed=5)
    assert chi_squared_p_value(
        drawn.indices, sampling_probabilities64(row, codebook, 4.0, "l2")
    ) > (SAMPLING_P_VALUE)
    wrong = sampling_probabilities64(row, codebook, 4.0 * 1.3, "l2")
    assert chi_squared_p_value(drawn.indices, wrong) < SAMPLING_P_VALUE


def test_draws_over_seeds_follow_the_softmax_of_many_rows():
    """Different rows (not one repeated): each row's draws over 400 seeds, pooled into one
    chi-squared test per row, and all rows' p-values are above the threshold."""
    x, codebook = random_inputs(4, 6, 3, seed=9)
    draws = torch.stack([wvq.sample_codes(x, codebook, 2.0, seed=s).indices for s in range(400)])
    for i in range(x.shape[0]):
        probabilities = sampling_probabilities64(x[i], codebook, 2.0, "l2")
        assert chi_squared_p_value(draws[:, i], probabilities) > SAMPLING_P_VALUE / 4


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("precision", ["ieee", "bf16"])
def test_every_backend_draws_what_the_reference_draws(backend, device, metric, precision):
    x, codebook = random_inputs(700, 300, 12, seed=1)
    expected = reference.sample_codes(x, codebook, 0.7, 123, metric, precision)
    drawn = wvq.sample_codes(
        x.to(device),
        codebook.to(device),
        0.7,
        seed=123,
        metric=metric,
        precision=precision,
        backend=backend,
    )
    assert torch.equal(drawn.indices.cpu(), expected[0])
    torch.testing.assert_close(drawn.distances.cpu(), expected[1], rtol=1e-5, atol=1e-5)


def test_cpu_draws_do_not_depend_on_the_thread_count():
    if not wvq.available_backends()["cpu"]:
        pytest.skip("no cpu backend")
    x, codebook = random_inputs(3000, 5000, 16, seed=2)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(wvq.sample_codes(x, codebook, 3.0, seed=8, backend="cpu"))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0].indices, results[1].indices)
    assert torch.equal(results[0].distances, results[1].distances)


@pytest.mark.parametrize("splits", [1, 3])
def test_triton_draws_do_not_depend_on_the_split(splits):
    if not wvq.available_backends()["triton"]:
        pytest.skip("no triton backend")
    from wvq_kernels.triton.sample_codes import launch_sample_codes

    x, codebook = random_inputs(300, 1500, 8, seed=4)
    drawn = launch_sample_codes(x, codebook, 2.0, 77, "l2", "ieee", splits=splits)
    assert torch.equal(drawn[0], reference.sample_codes(x, codebook, 2.0, 77, "l2", "ieee")[0])


@pytest.mark.parametrize("precision", ["ieee", "bf16"])
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_triton_draws_with_the_table_configs(arch, precision):
    """The tiles a GPU would launch (configs.emulate: sample_config's narrower code tiles,
    several D chunks at D = 72, split-K at 108 SMs) draw what the reference draws."""
    if not wvq.available_backends()["triton"]:
        pytest.skip("no triton backend")
    from wvq_kernels.triton import configs
    from wvq_kernels.triton.sample_codes import launch_sample_codes

    x, codebook = random_inputs(70, 300, 72, seed=5)
    with configs.emulate(arch, 108):
        drawn = launch_sample_codes(x, codebook, 3.0, 21, "l2", precision)
    expected = reference.sample_codes(x, codebook, 3.0, 21, "l2", precision)
    assert torch.equal(drawn[0], expected[0])


def test_every_cpu_isa_draws_the_same_codes(run_on_isa):
    x, codebook = random_inputs(200, 333, 9, seed=6)
    calls = [("sample_codes", (x, codebook, 1.0), {"seed": 3, "backend": "cpu"})]
    ((indices, _),) = run_on_isa(calls)
    assert torch.equal(indices, reference.sample_codes(x, codebook, 1.0, 3, "l2", "ieee")[0])


def test_seeds_and_rows_give_different_draws(backend, device):
    _, x, codebook = _one_row_many_times(50, 4, 2000, seed=1)
    x, codebook = x.to(device), codebook.to(device)
    first = wvq.sample_codes(x, codebook, 100.0, seed=1, backend=backend).indices
    again = wvq.sample_codes(x, codebook, 100.0, seed=1, backend=backend).indices
    other = wvq.sample_codes(x, codebook, 100.0, seed=2, backend=backend).indices
    assert torch.equal(first, again)
    assert (first != other).float().mean() > 0.9  # nearly uniform over 50 codes
    assert first.unique().numel() == 50  # rows of one x draw apart


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("temperature", [0.0, 1e-30])
def test_zero_or_vanishing_temperature_is_assign(backend, device, metric, temperature):
    x, codebook = random_inputs(500, 400, 7, device=device, seed=5)
    drawn = wvq.sample_codes(x, codebook, temperature, metric=metric, backend=backend)
    nearest = wvq.assign(x, codebook, metric=metric, backend=backend)
    assert torch.equal(drawn.indices, nearest.indices)
    assert torch.equal(drawn.distances, nearest.distances)


def test_distances_are_the_drawn_codes_distances(backend, device):
    x, codebook = random_inputs(400, 250, 10, device=device, seed=7)
    drawn = wvq.sample_codes(x, codebook, 5.0, seed=4, backend=backend)
    expected = pair_distances64(x, codebook[drawn.indices], "l2")
    torch.testing.assert_close(drawn.distances.double(), expected, rtol=1e-5, atol=1e-5)


def test_batch_shapes_layouts_and_no_rows(backend, device):
    x, codebook = random_inputs(60, 30, 6, device=device, seed=8)
    flat = wvq.sample_codes(x, codebook, 1.0, seed=2, backend=backend)
    shaped = wvq.sample_codes(x.reshape(3, 4, 5, 6), codebook, 1.0, seed=2, backend=backend)
    assert shaped.indices.shape == (3, 4, 5) and shaped.distances.shape == (3, 4, 5)
    assert torch.equal(shaped.indices.reshape(-1), flat.indices)
    layout = wvq.sample_codes(strided(x), strided(codebook), 1.0, seed=2, backend=backend)
    assert torch.equal(layout.indices, flat.indices)
    empty = wvq.sample_codes(x[:0], codebook, 1.0, backend=backend)
    assert empty.indices.shape == (0,) and empty.distances.shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_draw_from_their_float32_values(backend, device, dtype):
    x, codebook = random_inputs(300, 200, 8, device=device, dtype=dtype, seed=9)
    drawn = wvq.sample_codes(x, codebook, 1.0, seed=6, backend=backend)
    precision = wvq.resolve_precision("auto", dtype)
    expected = reference.sample_codes(x.cpu(), codebook.cpu(), 1.0, 6, "l2", precision)
    assert torch.equal(drawn.indices.cpu(), expected[0])


def test_counter_words_match_between_triton_and_pytorch():
    """The Triton noise of a (rows, codes) tile equals the PyTorch one to float rounding of
    the logarithms (the words themselves are integers, equal by construction)."""
    if not wvq.available_backends()["triton"]:
        pytest.skip("no triton backend")
    from wvq_kernels.triton import counter_hash

    for seed in (0, -3, 2**40 + 5):
        seed_word = _counter_hash.seed_key(torch.tensor(seed))
        out = torch.empty(16, 64)
        _noise_kernel[(1,)](out, counter_hash.signed_word(int(seed_word)), ROWS=16, CODES=64)
        first, second = _counter_hash.row_keys(seed_word, torch.arange(16))
        expected = _counter_hash.gumbel_noise(
            _counter_hash.code_words(first, second, torch.arange(64))
        )
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_noise_is_standard_gumbel():
    """-noise over many words has the Gumbel mean (Euler's gamma) and variance (pi^2 / 6)."""
    seed_word = _counter_hash.seed_key(torch.tensor(1))
    first, second = _counter_hash.row_keys(seed_word, torch.arange(100))
    gumbel = -_counter_hash.gumbel_noise(
        _counter_hash.code_words(first, second, torch.arange(4000))
    )
    assert abs(gumbel.double().mean() - 0.5772156649) < 0.005
    assert abs(gumbel.double().var() - torch.pi**2 / 6) < 0.01


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"temperature": "1"}, TypeError, "temperature"),
        ({"seed": True}, TypeError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"seed": 2**64}, ValueError, "seed"),
        ({"metric": "l1"}, ValueError, "metric"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    x, codebook = random_inputs(5, 4, 3)
    arguments = {"temperature": 1.0, **kwargs}
    with pytest.raises(error, match=message):
        wvq.sample_codes(x, codebook, arguments.pop("temperature"), **arguments)


def test_traces_whole_under_torch_compile(fast_backend, fast_device):
    """The fake kernel and the seed's key computed without reading a tensor: fullgraph capture
    (without the finiteness check, a data-dependent branch)."""
    if fast_device.type == "cpu" and fast_backend == "triton":
        pytest.skip("the interpreter cannot run kernels on fake tensors (see test_triton_ops.py)")

    def draw(x, codebook):
        return wvq.sample_codes(
            x, codebook, 0.5, seed=9, backend=fast_backend, check_finite=False
        ).indices

    compiled = torch.compile(draw, backend="aot_eager", fullgraph=True)
    x, codebook = random_inputs(100, 70, 8, device=fast_device, seed=9)
    assert torch.equal(compiled(x, codebook), draw(x, codebook))


PEAK = """
import sys, torch, wvq_kernels as wvq
from wvq_kernels.bench.harness import PeakMemory
generator = torch.Generator().manual_seed(0)
x = torch.randn(16384, 8, generator=generator)
codebook = torch.randn(65536, 8, generator=generator)
wvq.sample_codes(x[:8], codebook[:64], 1.0, backend="cpu")
peak = PeakMemory()
peak.reset()
wvq.sample_codes(x, codebook, 1.0, seed=1, backend="cpu")
print(peak.peak_delta_mib())
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs clear_refs")
def test_cpu_memory_beyond_inputs_is_bounded():
    """Issue 16's size: N = 16,384 rows over K = 65,536 codes (an N x K float32 matrix would
    be 4 GiB) in under 64 MiB beyond the inputs."""
    if not wvq.available_backends()["cpu"]:
        pytest.skip("no cpu backend")
    child = subprocess.run(
        [sys.executable, "-c", PEAK], capture_output=True, text=True, timeout=600, check=True
    )
    assert float(child.stdout) < 64, child.stdout
