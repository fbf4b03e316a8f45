"""The CUDA kernels of csrc/cuda executed on the host through the emulation layer (csrc/emu).

scripts/cuda_emu_build.py compiles the unchanged .cu files with g++ into one library; its
extern "C" launchers are called here through ctypes on CPU tensors and held to the same float64
oracle as every backend (wvq_kernels.testing), on small odd shapes that reach the kernels'
edges: partial tiles, D not a multiple of the staged chunk, N = 0 and 1, split-K with ties
across segments, K = 65,536 with 3 rows. Workspaces start poisoned, so reading memory a kernel
never wrote shows. The emulator's own rules (warp primitives, conversions, WMMA rounding, race
and deadlock detection) are checked on the kernels of csrc/emu/selftest.cu.

WVQ_EMU_CSRC picks another csrc tree to build the kernels from, WVQ_EMU_BUILD the build folder.
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wvq_kernels import reference
from wvq_kernels.testing import (
    SOFT_ASSIGN_GPU_SHAPES,
    SOFT_ASSIGN_TOLERANCE,
    check_assignment,
    code_sums_failures,
    hard_inputs,
    moments_failures,
    random_inputs,
    relative_error,
    skewed_indices,
    usage_failures,
)

ROOT = Path(__file__).resolve().parent.parent
CSRC = Path(os.environ.get("WVQ_EMU_CSRC", ROOT / "csrc"))
BUILD = Path(os.environ.get("WVQ_EMU_BUILD", ROOT / "build" / "cuda-emu"))
BUILDER = ROOT / "scripts" / "cuda_emu_build.py"

DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
METRICS = {"l2": 0, "cosine": 1, "dot": 2}
PRECISIONS = {"ieee": 0, "tf32": 1, "bf16": 2}
POISON = 0xCD
i64, ptr, i32, f64 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_double
SIGNATURES = {
    "wvq_assign_workspace_bytes": (ctypes.c_size_t, [i64, i64, i64, i32]),
    "wvq_assign": (i32, [ptr, ptr, i32, i64, i64, i64, i32, i32, ptr, ptr, ptr, ptr, ptr, ptr]),
    "wvq_code_histogram": (i32, [ptr, i64, i64, ptr, ptr]),
    "wvq_code_sums_workspace_bytes": (ctypes.c_size_t, [i64, i64]),
    "wvq_code_sums": (i32, [ptr, ptr, ptr, ptr, i32, i64, i64, i64, ptr, ptr, ptr]),
    "wvq_usage": (i32, [ptr, i64, ptr, ptr, ptr]),
    "wvq_moments_workspace_bytes": (ctypes.c_size_t, [i64, i64]),
    "wvq_moments": (i32, [ptr, i32, i64, i64, ptr, ptr, ptr, ptr]),
    "wvq_soft_assign_workspace_bytes": (ctypes.c_size_t, [i64, i64, i64]),
    "wvq_soft_assign_stats": (
        i32,
        [ptr, ptr, i32, i64, i64, i64, f64, f64, ptr, ptr, ptr, ptr, ptr, ptr, ptr],
    ),
    "wvq_emu_reset": (i32, []),
    "wvq_emu_fault_message": (ctypes.c_char_p, []),
    "wvq_emu_set_schedule": (i32, [ctypes.c_char_p]),
    "wvq_emu_test_warp_primitives": (i32, [ptr]),
    "wvq_emu_test_conversions": (i32, [ptr, i32, ptr, ptr]),
    "wvq_emu_test_wmma": (i32, [i32, ptr, ptr, ptr, ptr]),
    "wvq_emu_test_neighbour": (i32, [ptr, i32, i32]),
    "wvq_emu_test_broken": (i32, [ptr, i32]),
}


def load_builder():
    """scripts/cuda_emu_build.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("cuda_emu_build", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_library(csrc: Path, out: Path) -> Path:
    """The emulation library for the kernels of `csrc` (built unless up to date)."""
    command = [sys.executable, str(BUILDER), "--csrc", str(csrc), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"building the CUDA emulation failed:\n{result.stdout}{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def lib():
    if shutil.which("g++") is None:
        pytest.skip("g++ is needed to build the CUDA emulation")
    library = ctypes.CDLL(str(build_library(CSRC, BUILD)))
    for name, (restype, argtypes) in SIGNATURES.items():
        function = getattr(library, name)
        function.restype, function.argtypes = restype, argtypes
    return library


@pytest.fixture(autouse=True)
def clean_emulator(lib):
    """Every test starts without a pending error, under the default schedule (alternate, or
    WVQ_EMU_SCHEDULE)."""
    default = os.environ.get("WVQ_EMU_SCHEDULE", "alternate")
    lib.wvq_emu_reset()
    schedule(lib, default)
    yield
    lib.wvq_emu_reset()
    schedule(lib, default)


def call(lib, name: str, *args) -> None:
    """Runs a launcher; a non-zero status, or a fault the status does not show, fails with the
    emulator's diagnosis."""
    status = getattr(lib, name)(*args)
    message = lib.wvq_emu_fault_message().decode()
    assert status == 0 and not message, f"{name} returned CUDA error {status}: {message}"


def address(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def workspace(num_bytes: int) -> torch.Tensor:
    """Poisoned, so that a kernel reading workspace it never wrote computes garbage."""
    return torch.full((max(num_bytes, 1),), POISON, dtype=torch.uint8)


def poisoned(shape, dtype) -> torch.Tensor:
    """An output buffer full of garbage: every element the kernels owe must be written."""
    t = torch.empty(shape, dtype=dtype)
    t.reshape(-1).view(torch.uint8).fill_(POISON)
    return t


def schedule(lib, name: str) -> None:
    assert lib.wvq_emu_set_schedule(name.encode()) == 0


# ---- the builder's source rewriting ----


def test_rewrite_turns_launches_and_shared_memory_into_calls():
    source = """\
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ __align__(128) Tiles<T, 4> tiles;
  __shared__ double scratch[kThreads][2];
  // k<<<1, 2>>>() in a comment, "<<<" in a string
  ns::k<T, (a > b)><<<dim3(x,
      y), 32, 0, stream>>>(p, "<<<");
  plain<<<1, 1>>>();
"""
    expected = """\
  unsigned char* const smem = ::wvq_emu::dynamic_shared_as<unsigned char>();
  auto& tiles = ::wvq_emu::shared_variable<Tiles<T, 4>, 128>([] {});
  auto& scratch = ::wvq_emu::shared_variable<double[kThreads][2], 0>([] {});
  // k<<<1, 2>>>() in a comment, "<<<" in a string
  ::wvq_emu::launch("ns::k<T, (a > b)>", ns::k<T, (a > b)>, dim3(x,
      y), 32, 0, stream)(p, "<<<");
  ::wvq_emu::launch("plain", plain, 1, 1)();
"""
    assert load_builder().rewrite(source) == expected


def test_rewrite_refuses_what_it_cannot_parse():
    with pytest.raises(ValueError, match="shared declaration"):
        load_builder().rewrite("__shared__ float a[4], b[4];")


# ---- the launchers, called as ops_cuda.cpp calls them ----


def assign(lib, x, codebook, metric, precision, histogram=True):
    (n, d), k = x.shape, codebook.shape[0]
    mode = PRECISIONS[precision]
    work = workspace(lib.wvq_assign_workspace_bytes(n, k, d, mode))
    indices, distances = poisoned((n,), torch.int64), poisoned((n,), torch.float32)
    counts = torch.zeros(k, dtype=torch.int64) if histogram else None
    # The largest magnitudes of x and the codebook, as ops_cuda.cpp computes them.
    largest = torch.stack([x.abs().amax() if n else torch.zeros(()), codebook.abs().amax()]).float()
    call(lib, "wvq_assign", address(x), address(codebook), DTYPES[x.dtype], n, k, d,
         METRICS[metric], mode, address(largest), address(work), address(indices),
         address(distances), address(counts), None)  # fmt: skip
    return indices, distances, counts


def code_histogram(lib, indices, num_codes):
    counts = torch.zeros(num_codes, dtype=torch.int64)
    call(lib, "wvq_code_histogram", address(indices), len(indices), num_codes, address(counts),
         None)  # fmt: skip
    return counts


def code_sums(lib, indices, x, num_codes):
    """The stable sort and the codes' starts from torch (as ops_cuda.cpp), the sums from the
    kernels."""
    (n, d), positions = x.shape, torch.arange(num_codes + 1)
    sorted_codes, row_order = torch.sort(indices, stable=True)
    code_starts = torch.searchsorted(sorted_codes, positions)
    work = workspace(lib.wvq_code_sums_workspace_bytes(n, d))
    sums = poisoned((num_codes, d), torch.float32)
    call(lib, "wvq_code_sums", address(sorted_codes), address(row_order), address(code_starts),
         address(x), DTYPES[x.dtype], n, num_codes, d, address(work), address(sums),
         None)  # fmt: skip
    return code_starts[1:] - code_starts[:-1], sums


def usage(lib, counts):
    utilization, perplexity = poisoned((), torch.float32), poisoned((), torch.float32)
    call(lib, "wvq_usage", address(counts), len(counts), address(utilization),
         address(perplexity), None)  # fmt: skip
    return utilization, perplexity


def moments(lib, x):
    n, d = x.shape
    work = workspace(lib.wvq_moments_workspace_bytes(n, d))
    mean, cov = poisoned((d,), torch.float64), poisoned((d, d), torch.float64)
    call(lib, "wvq_moments", address(x), DTYPES[x.dtype], n, d, address(work), address(mean),
         address(cov), None)  # fmt: skip
    return torch.tensor(n), mean, cov


def soft_assign(lib, x, codebook, tau, lam):
    (n, d), k = x.shape, codebook.shape[0]
    work = workspace(lib.wvq_soft_assign_workspace_bytes(n, k, d))
    outputs = [
        poisoned((), torch.float32),
        poisoned((k,), torch.float32),
        poisoned((k, d), torch.float32),
        poisoned((n,), torch.int64),
        poisoned((n,), torch.float32),
    ]
    call(lib, "wvq_soft_assign_stats", address(x), address(codebook), DTYPES[x.dtype], n, k, d,
         tau, lam, address(work), *map(address, outputs), None)  # fmt: skip
    return outputs


# ---- assignment ----

# (N, K, D): two row tiles, the last partial; D below, above and across the staged chunks and
# the WMMA k steps; D beyond the row window of 128 fp32 / 256 bf16 dimensions (restaged rows);
# one row; no rows. K = 300 with 70 rows splits the codebook into 5 segments.
ASSIGN_SHAPES = [
    (70, 300, 5),
    (70, 130, 33),
    (33, 65, 12),
    (1, 77, 59),
    (0, 10, 12),
    (40, 70, 150),
    (20, 65, 300),
]


def assign_inputs(n, k, d, dtype):
    """Duplicated codes (ties), exact, near, random and zero rows (testing.hard_inputs)."""
    if n == 0:
        return random_inputs(n, k, d, dtype=dtype)
    return hard_inputs((n,), k, d, dtype)


@pytest.mark.parametrize("n, k, d", ASSIGN_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("metric", METRICS)
def test_assign_matches_float64(lib, metric, precision, dtype, n, k, d):
    x, codebook = assign_inputs(n, k, d, dtype)
    indices, distances, counts = assign(lib, x, codebook, metric, precision)
    check_assignment(x, codebook, indices, distances, metric, precision)
    assert torch.equal(counts, torch.bincount(indices, minlength=k))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_assign_65536_codes_3_rows(lib, precision):
    """Three rows and 65,536 codes: 256 split-K segments meet in the packed-key atomicMin."""
    x, codebook = random_inputs(3, 65_536, 5, seed=1)
    indices, distances, counts = assign(lib, x, codebook, "l2", precision)
    check_assignment(x, codebook, indices, distances, "l2", precision)
    assert torch.equal(counts, torch.bincount(indices, minlength=65_536))


@pytest.mark.parametrize("order", ["alternate", "reverse", "random:7"])
@pytest.mark.parametrize("precision", ["ieee", "bf16"])
def test_assign_ties_go_to_the_smallest_index_across_segments(lib, precision, order):
    """Every code ties, across 157 segments that finish in grid, reversed or random order."""
    x, _ = random_inputs(5, 1, 16)
    codebook = x[2].repeat(20_000, 1)
    schedule(lib, order)
    indices, _, counts = assign(lib, x, codebook, "l2", precision)
    assert (indices == 0).all()
    assert counts[0] == 5 and counts.sum() == 5


@pytest.mark.parametrize("precision", ["ieee", "tf32", "bf16"])
@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
@pytest.mark.parametrize("magnitude", [1e20, 1e30, 1e-25, 1e-40])
def test_assign_extreme_magnitudes(lib, metric, precision, magnitude):
    """Norms whose squares overflow float32 and subnormal inputs (issue 13, item 9): the input
    scales of common/input_scale.h; rows equal to codes must find them."""
    generator = torch.Generator().manual_seed(0)
    codebook = torch.randn(300, 8, generator=generator) * magnitude
    chosen = [7, 3, 299, 0]
    x = torch.cat([codebook[chosen], torch.randn(30, 8, generator=generator) * magnitude])
    indices, distances, _ = assign(lib, x, codebook, metric, precision)
    check_assignment(x, codebook, indices, distances, metric, precision)
    if metric != "dot":
        assert indices[: len(chosen)].tolist() == chosen


def test_assign_without_histogram(lib):
    x, codebook = assign_inputs(70, 300, 12, torch.float32)
    indices, distances, _ = assign(lib, x, codebook, "cosine", "ieee", histogram=False)
    check_assignment(x, codebook, indices, distances, "cosine", "ieee")


def test_results_do_not_depend_on_the_schedule(lib):
    """Thread order within blocks and block order differ; the bits must not."""
    x, codebook = assign_inputs(70, 300, 33, torch.float32)

    def run(order):
        schedule(lib, order)
        return [*assign(lib, x, codebook, "l2", "tf32"), *soft_assign(lib, x, codebook, 0.5, 0.01)]

    first = run("forward")
    for order in ("reverse", "alternate", "random:1", "random:2"):
        assert all(torch.equal(a, b) for a, b in zip(first, run(order))), order


# ---- histogram, code sums, usage, moments ----


@pytest.mark.parametrize("n", [0, 1, 70, 1000])
def test_code_histogram(lib, n):
    indices = skewed_indices((n,), 77, seed=n)
    assert torch.equal(code_histogram(lib, indices, 77), torch.bincount(indices, minlength=77))


def test_code_histogram_of_a_collapsed_codebook(lib):
    """Every index the same: the warp-aggregated atomics add whole warps at once."""
    counts = code_histogram(lib, torch.full((5000,), 7, dtype=torch.int64), 40)
    expected = torch.zeros(40, dtype=torch.int64)
    expected[7] = 5000
    assert torch.equal(counts, expected)


def out_of_range(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Every 7th index replaced by -1, num_codes or num_codes + 5."""
    spoiled = indices.clone()
    outside = torch.tensor([-1, num_codes, num_codes + 5])
    spoiled[::7] = outside[torch.arange(len(spoiled[::7])) % 3]
    return spoiled


def test_code_histogram_skips_indices_out_of_range(lib):
    indices = out_of_range(skewed_indices((1000,), 77), 77)
    valid = indices[(indices >= 0) & (indices < 77)]
    assert torch.equal(code_histogram(lib, indices, 77), torch.bincount(valid, minlength=77))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "n, k, d", [(0, 5, 3), (1, 4, 5), (500, 37, 33), (300, 9, 300), (2000, 3, 12)]
)
def test_code_sums(lib, n, k, d, dtype):
    """Several pieces per code (2,000 rows, one hot code), two column blocks (D = 300); codes
    without rows must come out zero."""
    x = random_inputs(n, 1, d, dtype=dtype, seed=d)[0]
    indices = skewed_indices((n,), k, seed=k)
    counts, sums = code_sums(lib, indices, x, k)
    assert not code_sums_failures(indices, x, counts, sums)


def test_code_sums_skip_indices_out_of_range(lib):
    x = random_inputs(1000, 1, 20, seed=8)[0]
    indices = out_of_range(skewed_indices((1000,), 50, seed=8), 50)
    valid = (indices >= 0) & (indices < 50)
    counts, sums = code_sums(lib, indices, x, 50)
    assert not code_sums_failures(indices[valid], x[valid], counts, sums)


@pytest.mark.parametrize(
    "counts",
    [
        torch.tensor([0]),
        torch.tensor([5]),
        torch.tensor([3, 0, 0, 1, 0]),
        torch.zeros(300, dtype=torch.int64),
        torch.bincount(skewed_indices((20_000,), 1000), minlength=1000),
    ],
    ids=["empty-1", "one-code", "sparse", "all-zero", "skewed-1000"],
)
def test_usage(lib, counts):
    assert not usage_failures(usage(lib, counts), counts)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, d", [(1, 5), (70, 12), (5000, 33), (1500, 70)])
def test_moments(lib, n, d, dtype):
    """Thousands of rows form several chunks, merged with the Chan formula; D = 70 takes
    several covariance tiles."""
    x = (3 * random_inputs(n, 1, d, seed=n)[0] + 1).to(dtype)
    assert not moments_failures(moments(lib, x), x)


def test_moments_with_a_large_offset_match_float64(lib):
    """Rows at 1e4 with spread 1e-2: centred accumulation keeps the covariance to ~1e-12 of its
    scale, where an uncentred sum of squares would be off by ~1e-4 of it. (The absolute floor
    is relative to the diagonal: off-diagonal entries near 0 carry the same absolute error.)"""
    generator = torch.Generator().manual_seed(6)
    x = 1e4 + 1e-2 * torch.randn(20_000, 6, dtype=torch.float64, generator=generator)
    _, mean, cov = moments(lib, x)
    centred = x - x.mean(0)
    expected = centred.T @ centred / x.shape[0]
    torch.testing.assert_close(mean, x.mean(0), rtol=1e-12, atol=0)
    floor = 1e-9 * float(expected.diagonal().max())
    torch.testing.assert_close(cov, expected, rtol=1e-9, atol=floor)


# ---- soft assignment ----


def check_soft_assign(x, codebook, tau, lam, result):
    """Float outputs within SOFT_ASSIGN_TOLERANCE of float64 (on the same rounded inputs), the
    nearest codes and distances as assign owes them (as in test_cuda.py)."""
    truth = reference.soft_assign_stats(x.double(), codebook.double(), tau, lam)
    for name, got, expected in zip(("loss", "weight_sums", "weighted_sums"), result, truth):
        assert got.dtype == torch.float32 and got.shape == expected.shape
        error = relative_error(got, expected)
        assert error <= SOFT_ASSIGN_TOLERANCE, f"{name}: relative error {error:.2e}"
    check_assignment(x, codebook, result[3], result[4], "l2", "ieee")


@pytest.mark.parametrize("tau, lam", [(0.1, 0.01), (1.0, 1.0), (10.0, 0.01)])
@pytest.mark.parametrize("n, k, d", SOFT_ASSIGN_GPU_SHAPES)
def test_soft_assign_matches_float64(lib, n, k, d, tau, lam):
    x, codebook = random_inputs(n, k, d, seed=n + k + d)
    check_soft_assign(x, codebook, tau, lam, soft_assign(lib, x, codebook, tau, lam))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_soft_assign_reads_every_input_type(lib, dtype):
    x, codebook = random_inputs(777, 300, 12, dtype=dtype, seed=2)
    check_soft_assign(x, codebook, 1.0, 0.01, soft_assign(lib, x, codebook, 1.0, 0.01))


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_soft_assign_65536_codes(lib, tau):
    x, codebook = random_inputs(5, 65_536, 8, seed=5)
    check_soft_assign(x, codebook, tau, 0.01, soft_assign(lib, x, codebook, tau, 0.01))


def test_soft_assign_ties_across_code_segments(lib):
    """Copies of the winner in different scan segments: the first copy wins (weight 1), the
    others get softmax weights, in any block order."""
    x, codebook = random_inputs(40, 20_000, 16, seed=3)
    winner = 3 * torch.randn(16, generator=torch.Generator().manual_seed(4))
    copies = [1000, 7000, 13_000, 19_999]
    codebook[copies] = winner
    x = winner + 0.05 * x
    first = soft_assign(lib, x, codebook, 1.0, 0.01)
    assert (first[3] == copies[0]).all()
    check_soft_assign(x, codebook, 1.0, 0.01, first)
    schedule(lib, "reverse")
    assert all(torch.equal(a, b) for a, b in zip(first, soft_assign(lib, x, codebook, 1.0, 0.01)))


# ---- the emulator's own rules (csrc/emu/selftest.cu) ----


def to_int32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def expected_warp_primitives(t: int) -> list[int]:
    """What thread t of a 64-thread block gets from each primitive of warp_primitives_kernel."""
    lane, base = t % 32, t - t % 32
    ballot = sum(1 << b for b in range(32) if (base + b) % 3 == 0)
    return [
        (base + 3) * 10,
        t - 2 if lane % 8 >= 2 else t,
        t + 3 if lane % 16 + 3 < 16 else t,
        t ^ 5,
        to_int32(ballot),
        to_int32(0xF << (lane // 4 * 4)),
        sum(range(base, base + 32)),
        len(range(0, 64, 5)),
        int(base == 32),
        base + (lane & ~3) + ((lane + 1) & 3),
        t ^ 1,
        1,
    ]


def test_warp_primitives(lib):
    out = poisoned((64, 12), torch.int32)
    call(lib, "wvq_emu_test_warp_primitives", address(out))
    assert out.tolist() == [expected_warp_primitives(t) for t in range(64)]


def test_conversions_round_like_the_gpu(lib):
    """half and bf16: round to nearest even with denormals, as torch converts; tf32: round to
    nearest with ties away from zero, 13 low bits cleared."""
    special = [0.0, -0.0, 1.0, 65504.0, 65519.996, 65520.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26,
               2.0**-14 * (1 - 2.0**-11), 1 + 2.0**-8, 1 + 3 * 2.0**-8, 1 + 2.0**-11,
               -(1 + 2.0**-11), 1 + 3 * 2.0**-11, 1 + 2.0**-12, 3.0e38, 1e-40,
               math.inf, -math.inf]  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    random_bits = torch.randint(-(2**31), 2**31, (4000,), generator=generator, dtype=torch.int64)
    values = torch.cat([torch.tensor(special), random_bits.to(torch.int32).view(torch.float32)])
    values = values[~values.isnan()]
    bits = poisoned((len(values), 3), torch.int32)
    back = poisoned((len(values), 2), torch.float32)
    call(lib, "wvq_emu_test_conversions", address(values), len(values), address(bits),
         address(back))  # fmt: skip
    half, bf16 = values.half(), values.bfloat16()
    assert torch.equal(bits[:, 0] & 0xFFFF, half.view(torch.int16).int() & 0xFFFF)
    assert torch.equal(bits[:, 1] & 0xFFFF, bf16.view(torch.int16).int() & 0xFFFF)
    assert torch.equal(back[:, 0], half.float()) and torch.equal(back[:, 1], bf16.float())
    tf32 = bits[:, 2].view(torch.float32)
    assert (bits[:, 2] & 0x1FFF == 0)[values.isfinite()].all()
    finite = values.isfinite() & tf32.isfinite()
    # Half a tf32 step: 2^-11 relative, 2^-137 among denormals.
    allowed = (values.abs() * 2.0**-11).clamp_min(2.0**-137)
    assert ((tf32 - values).abs() <= allowed)[finite].all()
    assert tf32[12:16].tolist() == [1 + 2.0**-10, -(1 + 2.0**-10), 1 + 2.0**-9, 1.0]


def rounded(t: torch.Tensor, precision: int) -> torch.Tensor:
    """What the tensor cores multiply: tf32 drops 13 mantissa bits; bf16 and half inputs were
    rounded to nearest when the kernel stored its tiles."""
    if precision == 1:
        return (t.view(torch.int32) & ~0x1FFF).view(torch.float32).double()
    return t.to(torch.bfloat16 if precision == 2 else torch.float16).double()


@pytest.mark.parametrize("precision", [1, 2, 3], ids=["tf32", "bf16", "half"])
def test_wmma_rounds_inputs_and_accumulates_in_fp32(lib, precision):
    k = 8 if precision == 1 else 16
    generator = torch.Generator().manual_seed(precision)
    a, b = torch.randn(16, k, generator=generator), torch.randn(16, k, generator=generator)
    c = torch.randn(16, 16, generator=generator)
    d = poisoned((16, 16), torch.float32)
    call(lib, "wvq_emu_test_wmma", precision, address(a), address(b), address(c), address(d))
    expected = rounded(a, precision) @ rounded(b, precision).T + c.double()
    scale = a.abs() @ b.abs().T + c.abs()
    error = ((d - expected).abs() / scale).max()
    unrounded = ((a.double() @ b.double().T + c.double() - expected).abs() / scale).max()
    assert error < 1e-6 < unrounded / 10


@pytest.mark.parametrize("order", ["forward", "reverse", "alternate", "random:3"])
def test_a_missing_barrier_is_a_race_under_every_schedule(lib, order):
    """Each thread reads its neighbour's shared slot: right with the barrier, wrong without."""
    schedule(lib, order)
    expected = torch.arange(1, 97, dtype=torch.int32) % 96
    for barrier in (1, 0):
        out = poisoned((96,), torch.int32)
        call(lib, "wvq_emu_test_neighbour", address(out), 96, barrier)
        assert torch.equal(out, expected) == bool(barrier)


@pytest.mark.parametrize(
    "kind, diagnosis",
    [(0, "deadlock"), (1, "not in mask"), (2, "exited"), (3, "__trap")],
    ids=["divergent-barrier", "shuffle-outside-mask", "mask-with-exited-lanes", "trap"],
)
def test_broken_kernels_are_reported_not_hung(lib, kind, diagnosis):
    """A rule broken in a kernel fails the launch with a diagnosis, and the error is sticky
    (later launches fail too) until reset, as a GPU's is."""
    out = torch.zeros(64, dtype=torch.int32)
    assert lib.wvq_emu_test_broken(address(out), kind) == 719  # cudaErrorLaunchFailure
    assert diagnosis in lib.wvq_emu_fault_message().decode()
    assert lib.wvq_emu_test_neighbour(address(out), 32, 1) == 719
    lib.wvq_emu_reset()
    call(lib, "wvq_emu_test_neighbour", address(out), 32, 1)
