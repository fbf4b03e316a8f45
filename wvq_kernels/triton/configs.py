"""Launch configurations: one small table per kernel, no autotune sweep.

Each entry was checked by the ahead-of-time gate (scripts/triton_aot_gate.py) for registers,
spills, shared memory and tensor-core instructions on sm_80 and sm_90; docs/gpu-kernels.md is
its report. Why these shapes:

- assign keeps a BLOCK_N x BLOCK_K fp32 score tile in registers next to the running minima, so
  BLOCK_N * BLOCK_K / (32 * num_warps) registers per thread go to scores alone: 64 for
  128 x 128 on 8 warps or 64 x 128 on 4. Bigger tiles spill (measured: 128 x 256 on 8 warps).
- D is consumed in BLOCK_D chunks (at least 16, the tensor-core minimum; smaller D is zero
  padded). When one chunk holds all of D the row tile stays in registers; wider D reloads its
  other chunks per code tile, and its operand tiles must be narrower so that registers hold.
- bf16 (half the bytes of fp32 operands) affords 128-row tiles on 8 warps; sm_90 also takes
  64-wide chunks, sm_80 only 32 (64 spills there).
- tf32 and tf32x3 (fp32 operands on tensor cores; x3 runs three dots) use 64-row tiles on 4
  warps, with 64-code tiles once D needs several chunks (64 x 128 spills at D = 256).
- ieee runs on FMA units, where Triton holds both operand slices in registers per thread:
  64 x 64 x 16 on 4 warps is the largest without spills, for any D.
- soft_assign (scan and accumulate) runs on FMA units only; see SOFT_ASSIGN_CONFIGS.
- assign pipelines 3 stages everywhere; shared memory stays below the opt-in limit of every GPU
  a table serves (wvq_kernels/_gpu_limits.py; the sm_80 table also serves sm_86/89, whose limit
  is the smallest), and far below it on sm_90.
"""

import contextlib
import contextvars
import os
import warnings
from typing import NamedTuple

import torch

# Read once, as triton itself does: kernels defined after import run interpreted on CPU tensors.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

ARCHS = ("sm_80", "sm_90")
# Under TRITON_INTERPRET=1 every program costs Python overhead, so blocks are large. Pretending
# to have 4 SMs makes small test shapes take the split-K path and larger ones the row-owned one.
INTERPRETER_SM_COUNT = 4


class AssignConfig(NamedTuple):
    block_n: int  # rows per program
    block_k: int  # codes per tile of the codebook stream
    block_d: int  # columns per tl.dot; D is padded to a multiple of it
    num_warps: int
    num_stages: int


# (arch, dot kind) -> [(largest D, config)], first match wins; None = any D. Dot kinds: "bf16";
# "tf32" (tf32 and tf32x3: fp32 operands on tensor cores); "ieee" (fp32 FMA, no tensor cores).
ASSIGN_CONFIGS = {
    ("sm_90", "bf16"): [
        (16, AssignConfig(128, 128, 16, 8, 3)),
        (32, AssignConfig(128, 128, 32, 8, 3)),
        (None, AssignConfig(128, 128, 64, 8, 3)),
    ],
    ("sm_90", "tf32"): [
        (16, AssignConfig(64, 128, 16, 4, 3)),
        (32, AssignConfig(64, 128, 32, 4, 3)),
        (None, AssignConfig(64, 64, 32, 4, 3)),
    ],
    ("sm_80", "bf16"): [
        (16, AssignConfig(128, 128, 16, 8, 3)),
        (None, AssignConfig(128, 128, 32, 8, 3)),
    ],
    ("sm_80", "tf32"): [
        (16, AssignConfig(64, 128, 16, 4, 3)),
        (32, AssignConfig(64, 64, 32, 4, 3)),
        (None, AssignConfig(64, 64, 16, 4, 3)),
    ],
    ("sm_90", "ieee"): [(None, AssignConfig(64, 64, 16, 4, 3))],
    ("sm_80", "ieee"): [(None, AssignConfig(64, 64, 16, 4, 3))],
}
INTERPRETER_ASSIGN = AssignConfig(256, 512, 256, 4, 1)

# assign_topk (issue 16): assign's scan with up to 64 candidates per row held in registers next
# to the score tile (fp32 score + int32 index each). Per dot kind, [(largest D, config)]; the
# same on sm_80 and sm_90 (checked by the gate on both). 8 warps: on 4, 64 candidates of 64
# rows spill at small D; tf32x3 beyond D = 32 spills on sm_80 with 32-wide chunks.
ASSIGN_TOPK_CONFIGS = {
    "bf16": [(16, AssignConfig(64, 64, 16, 8, 2)), (None, AssignConfig(64, 64, 32, 8, 2))],
    "tf32": [
        (16, AssignConfig(64, 64, 16, 8, 2)),
        (32, AssignConfig(64, 64, 32, 8, 2)),
        (None, AssignConfig(64, 64, 16, 8, 2)),
    ],
    "ieee": [(None, AssignConfig(64, 64, 16, 8, 2))],
}


class RowsConfig(NamedTuple):
    """Row-streaming kernels (histogram, code sums, moments): rows and columns per tile, and
    codes side by side (code sums)."""

    block_rows: int
    block_d: int
    num_warps: int
    num_stages: int
    block_codes: int = 1


# kernel -> (GPU config, interpreter config). On the GPU: the histogram is one atomic per
# index; code sums add 8 rows of each of 16 codes per step over 32 columns (4K float64
# values on 8 warps: 16 per thread); moments fold 64-row tiles
# into a 32 x 32 block of the covariance; code norms (assign's ||c||^2) reduce 32 columns of
# 128 codes per step. The interpreter gets tiles as large as the tests.
ROWS_CONFIGS = {
    "histogram": (RowsConfig(1024, 1, 4, 1), RowsConfig(65536, 1, 1, 1)),
    "code_sums": (RowsConfig(8, 32, 8, 2, 16), RowsConfig(64, 256, 1, 1, 64)),
    "moments": (RowsConfig(64, 32, 4, 2), RowsConfig(4096, 256, 1, 1)),
    "code_norms": (RowsConfig(128, 32, 4, 1), RowsConfig(4096, 256, 1, 1)),
}


class SoftAssignConfig(NamedTuple):
    block_n: int  # rows per tile
    block_k: int  # codes per tile
    block_d: int  # columns of the weighted sums per program (accumulate only)
    num_warps: int
    num_stages: int


# kernel -> [(largest D, config)], first match wins; the same on sm_80 and sm_90, since both
# kernels run on the FMA units (distances from differences; the weighted sums' tl.dot is fp32
# ieee). Measured by the gate: the scan's distance tile, its exponentials and its min/argmin
# spill at 64 x 64 and at 32 x 128 (sm_90) on 4 warps; 16 x 256 takes 96 registers. The
# accumulate kernel also holds BLOCK_K x BLOCK_D weighted sums: 32 rows x 64 codes x 32 columns
# needs 8 warps (255 registers on 4), 32 x 32 x 64 fits 4 warps in 170-220; columns beyond
# BLOCK_D go to further programs, which recompute the distances.
SOFT_ASSIGN_CONFIGS = {
    "scan": [(None, SoftAssignConfig(16, 256, 16, 4, 2))],
    "accumulate": [
        (32, SoftAssignConfig(32, 64, 32, 8, 2)),
        (None, SoftAssignConfig(32, 32, 64, 4, 2)),
    ],
}
INTERPRETER_SOFT_ASSIGN = SoftAssignConfig(256, 512, 256, 1, 1)


def next_power_of_two(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


def dot_kind(precision: str) -> str:
    return {"bf16": "bf16", "tf32": "tf32", "tf32x3": "tf32"}.get(precision, "ieee")


def assign_config(dim: int, kind: str, arch: str | None) -> AssignConfig:
    """The table entry for D = dim; arch None means the interpreter. BLOCK_D never exceeds the
    padded D, so small D does not pay for a 64-wide chunk."""
    if arch is None:
        return INTERPRETER_ASSIGN._replace(block_d=min(256, max(16, next_power_of_two(dim))))
    return _entry_for(ASSIGN_CONFIGS[(arch, kind)], dim)


def assign_topk_config(dim: int, kind: str, arch: str | None) -> AssignConfig:
    """As :func:`assign_config`, from ASSIGN_TOPK_CONFIGS."""
    if arch is None:
        return INTERPRETER_ASSIGN._replace(block_d=min(256, max(16, next_power_of_two(dim))))
    return _entry_for(ASSIGN_TOPK_CONFIGS[kind], dim)


# sample_codes runs the assign kernel with Gumbel noise on every score (two hashes and two
# logarithms): the gate measured spills on every tile holding 64 scores per thread (bf16
# 128 x 128 on 8 warps, tf32 64 x 128 on 4), none at 32 (ieee's 64 x 64 on 4 warps) except
# sm_80's bf16 tiles (12-64 bytes; at 16, 73-128 registers). Its tiles are the table's with
# BLOCK_K cut to hold at most this many scores per thread.
SAMPLE_SCORES_PER_THREAD = 32
SAMPLE_SCORES_PER_THREAD_EXCEPTIONS = {("sm_80", "bf16"): 16}


def sample_config(config: AssignConfig, arch: str, kind: str) -> AssignConfig:
    """The assign config of (arch, dot kind) for sample_codes' kernel: BLOCK_K capped (see
    above)."""
    scores = SAMPLE_SCORES_PER_THREAD_EXCEPTIONS.get((arch, kind), SAMPLE_SCORES_PER_THREAD)
    most = scores * 32 * config.num_warps // config.block_n
    return config._replace(block_k=min(config.block_k, max(16, most)))


def _entry_for(table, dim: int):
    """The first config of a [(largest D or None for any, config)] table that admits dim."""
    for largest_dim, config in table:
        if largest_dim is None or dim <= largest_dim:
            return config
    raise AssertionError("every table ends with a catch-all entry")


def rows_config(kernel: str, dim: int, arch: str | None) -> RowsConfig:
    """BLOCK_D shrinks to the padded D, but not below 16, the smallest tl.dot."""
    gpu, interpreted = ROWS_CONFIGS[kernel]
    config = interpreted if arch is None else gpu
    return config._replace(block_d=min(config.block_d, max(16, next_power_of_two(dim))))


def soft_assign_config(kernel: str, dim: int, arch: str | None) -> SoftAssignConfig:
    """The entry for D = dim ("scan" or "accumulate"); arch None means the interpreter. BLOCK_D
    shrinks to the padded D, but not below 16, the smallest tl.dot."""
    config = INTERPRETER_SOFT_ASSIGN
    if arch is not None:
        config = _entry_for(SOFT_ASSIGN_CONFIGS[kernel], dim)
    return config._replace(block_d=min(config.block_d, max(16, next_power_of_two(dim))))


class Emulated(NamedTuple):
    arch: str  # the table the launch code uses for CPU tensors: "sm_80" or "sm_90"
    sm_count: int


# Set by emulate(): CPU tensors then take a GPU table's configs (and its SM count) instead of the
# interpreter's big tiles, so that the interpreter runs exactly what that GPU would launch.
_EMULATED: contextvars.ContextVar[Emulated | None] = contextvars.ContextVar(
    "wvq_triton_emulated", default=None
)


@contextlib.contextmanager
def emulate(arch: str, sms: int):
    """Within the block, launches on CPU tensors (the interpreter) use the configs that
    device_arch would choose for a GPU of table `arch` with `sms` SMs. For tests: slow."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    token = _EMULATED.set(Emulated(arch, sms))
    try:
        yield
    finally:
        _EMULATED.reset(token)


# Compute capability major -> the table serving it. sm_86/89 run the sm_80 table (the gate holds
# it to their smaller shared memory). No table has been checked for newer GPUs yet, so they fall
# back, with a warning, to the table whose limits they share: sm_100 (228 KB shared memory,
# wgmma's successor) to sm_90's; sm_120 (consumer Blackwell, ~100 KB, mma.sync) to sm_80's.
TABLE_FOR_MAJOR = {8: "sm_80", 9: "sm_90"}
FALLBACK_FOR_MAJOR = {10: "sm_90", 12: "sm_80"}
_warned_fallbacks: set[tuple[int, int]] = set()


def table_arch(capability: tuple[int, int]) -> str:
    """The table for a GPU of compute capability (major, minor): its own, or a documented
    fallback (warned once per capability); an error below sm_80 or above any fallback."""
    major, minor = capability
    if major in TABLE_FOR_MAJOR:
        return TABLE_FOR_MAJOR[major]
    if major not in FALLBACK_FOR_MAJOR:
        raise RuntimeError(
            f"no Triton launch table for sm_{major}{minor}: tables exist for {ARCHS} "
            f"(fallbacks for majors {sorted(FALLBACK_FOR_MAJOR)})"
        )
    arch = FALLBACK_FOR_MAJOR[major]
    if capability not in _warned_fallbacks:
        _warned_fallbacks.add(capability)
        warnings.warn(
            f"wvq_kernels.triton: sm_{major}{minor} has no launch table of its own; using the "
            f"{arch} table, which the ahead-of-time gate checked for {arch} only",
            RuntimeWarning,
            stacklevel=2,
        )
    return arch


def device_arch(device: torch.device) -> str | None:
    """Which table serves this device: for CPU tensors None (the interpreter's big tiles), or
    the emulated arch inside emulate()."""
    if device.type != "cuda":
        emulated = _EMULATED.get()
        return None if emulated is None else emulated.arch
    return table_arch(torch.cuda.get_device_capability(device))


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        emulated = _EMULATED.get()
        return INTERPRETER_SM_COUNT if emulated is None else emulated.sm_count
    return torch.cuda.get_device_properties(device).multi_processor_count
