"""Argument checks of the public ops: each raises a ValueError or
TypeError that names the argument, the expected and the actual value, before anything runs.

The library's own callers (modules, k-means, the application) pass arguments that are valid by
construction and go through ``wvq_kernels._trusted`` instead, which checks nothing: the index
range and finiteness checks read tensor values, which would sync with the host every step.
"""

import math
import numbers
import operator

import torch
from torch import Tensor

from wvq_kernels._backends import GPU_BACKENDS

METRICS = ("l2", "cosine", "dot")
PRECISIONS = ("auto", "ieee", "bf16", "tf32", "tf32x3")
# Tensor-core modes: only GPU backends on CUDA tensors have them.
GPU_PRECISIONS = ("tf32", "tf32x3")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# moments also takes float64, so that its gradient can be checked numerically.
MOMENTS_DTYPES = (*FLOAT_DTYPES, torch.float64)
INT64_MAX = 2**63 - 1


def resolve_precision(precision: str, dtype: torch.dtype) -> str:
    """The precision ``"auto"`` stands for: bf16 for bfloat16 inputs (whose rounding to bf16 is
    then a no-op and which the CPU multiplies natively), ieee otherwise (fp16 -> fp32 is exact,
    and the CPU has no fp16 dot product). Other precisions stand for themselves."""
    if precision == "auto":
        return "bf16" if dtype == torch.bfloat16 else "ieee"
    return precision


def check_precision(precision: str, backend: str, device: torch.device) -> None:
    check_choice("precision", precision, PRECISIONS)
    if precision in GPU_PRECISIONS and (backend not in GPU_BACKENDS or device.type != "cuda"):
        raise ValueError(
            f"precision: {precision!r} is a GPU tensor-core mode; backend {backend!r} on "
            f"{device.type} tensors accepts 'auto', 'ieee' or 'bf16'"
        )


def check_choice(argument: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        expected = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{argument}: expected one of {expected}, got {value!r}")


def check_tensor(argument: str, value) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{argument}: expected a torch.Tensor, got {type(value).__name__}")


def check_float_tensor(argument: str, value, dtypes: tuple[torch.dtype, ...]) -> None:
    check_tensor(argument, value)
    if value.dtype not in dtypes:
        expected = ", ".join(str(dtype) for dtype in dtypes)
        raise TypeError(f"{argument}: expected dtype {expected}, got {value.dtype}")


def check_integer_tensor(argument: str, value) -> None:
    check_tensor(argument, value)
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"{argument}: expected an integer dtype, got {value.dtype}")


def check_rows(argument: str, value: Tensor) -> None:
    """A tensor of rows: shape (..., D) with D >= 1."""
    if value.dim() == 0 or value.shape[-1] == 0:
        raise ValueError(
            f"{argument}: expected shape (..., D) with D >= 1, got {tuple(value.shape)}"
        )


def check_codebook(codebook, x: Tensor, dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES) -> None:
    check_float_tensor("codebook", codebook, dtypes)
    if codebook.dtype != x.dtype:
        raise TypeError(f"codebook: expected dtype {x.dtype} (that of x), got {codebook.dtype}")
    if codebook.dim() != 2:
        raise ValueError(f"codebook: expected shape (K, D), got {tuple(codebook.shape)}")
    if codebook.shape[0] == 0:
        raise ValueError(f"codebook: expected K >= 1 codes, got shape {tuple(codebook.shape)}")
    if codebook.shape[1] != x.shape[-1]:
        raise ValueError(
            f"codebook: expected D = x.shape[-1] = {x.shape[-1]} columns, "
            f"got shape {tuple(codebook.shape)}"
        )
    check_same_device("x", x, "codebook", codebook)


def check_same_device(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_b}: expected device {a.device} (that of {name_a}), got {b.device}")


def check_num_codes(num_codes) -> int:
    if isinstance(num_codes, bool):
        raise TypeError("num_codes: expected an int, got bool")
    try:
        num_codes = operator.index(num_codes)
    except TypeError:
        raise TypeError(f"num_codes: expected an int, got {type(num_codes).__name__}") from None
    if num_codes <= 0:
        raise ValueError(f"num_codes: expected num_codes >= 1, got {num_codes}")
    # The kernels take num_codes as int64; a larger Python int would fail in the dispatcher
    # with a message that names no argument.
    if num_codes > INT64_MAX:
        raise ValueError(f"num_codes: expected num_codes <= 2**63 - 1, got {num_codes}")
    return num_codes


def check_real(argument: str, value, lowest: float, inclusive: bool) -> float:
    """A finite real number above ``lowest`` (or equal to it when ``inclusive``); a real-valued
    0-dim tensor counts as its value (reading it syncs with the host, as the public ops may)."""
    if (
        isinstance(value, Tensor)
        and value.dim() == 0
        and not (value.dtype.is_complex or value.dtype == torch.bool)
    ):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{argument}: expected a real number, got {type(value).__name__}")
    value = float(value)
    bound = f">= {lowest}" if inclusive else f"> {lowest}"
    if not math.isfinite(value) or value < lowest or (value == lowest and not inclusive):
        raise ValueError(f"{argument}: expected a finite number {bound}, got {value}")
    return value


def check_count(argument: str, value, lowest: int) -> int:
    """An int (not a bool) >= ``lowest``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{argument}: expected an int, got {type(value).__name__}")
    if value < lowest:
        raise ValueError(f"{argument}: expected an int >= {lowest}, got {value}")
    return int(value)


# The most codes assign(..., k=...) returns per row on every backend: the Triton kernel keeps
# each row's candidates in registers.
MAX_TOP_K = 64


def check_top_k(k, num_codes: int) -> int:
    """k for assign's top-k: an int (not a bool) in [1, min(MAX_TOP_K, K)]."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k: expected an int or None, got {type(k).__name__}")
    if not 1 <= k <= MAX_TOP_K:
        raise ValueError(f"k: expected 1 <= k <= {MAX_TOP_K}, got {k}")
    if k > num_codes:
        raise ValueError(f"k: expected k <= K = {num_codes} codes, got {k}")
    return int(k)


def check_seed(value) -> int:
    """An int (not a bool) that fits int64, the kernels' seed type."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"seed: expected an int, got {type(value).__name__}")
    if not -(2**63) <= value <= INT64_MAX:
        raise ValueError(f"seed: expected an int in [-2**63, 2**63), got {value}")
    return int(value)


def check_index_range(indices: Tensor, num_codes: int) -> None:
    flat_indices = indices.reshape(-1)
    if flat_indices.numel() == 0:
        return
    # Compared as Python ints: num_codes cast into a narrow index dtype would wrap.
    low, high = (int(value) for value in torch.aminmax(flat_indices))
    if low >= 0 and high < num_codes:
        return
    wide = flat_indices.to(torch.int64)
    position = int(((wide < 0) | (wide >= num_codes)).nonzero()[0, 0])
    raise ValueError(
        f"indices: expected values in [0, {num_codes}), "
        f"got {int(wide[position])} at flat position {position}"
    )


def check_finite(argument: str, values: Tensor) -> None:
    values = values.detach()
    if values.numel() == 0:
        return
    # Every value is finite exactly when the minimum and maximum are (both propagate NaN): one
    # reduction with no per-element scratch, where torch.isfinite(values).all() allocated a
    # bool per element and its float temporaries (with the copy of a non-contiguous input,
    # ~1.75x the input at the peak).
    low, high = torch.aminmax(values)
    if bool(torch.isfinite(low) & torch.isfinite(high)):
        return
    # Finding the row costs a full-size mask, but only on the way to raising.
    rows = values.reshape(-1, values.shape[-1])
    bad_row = int((~torch.isfinite(rows)).any(dim=1).nonzero()[0, 0])
    raise ValueError(
        f"{argument}: expected finite values (check_finite=True), got a non-finite value "
        f"in row {bad_row} of {argument}.reshape(-1, D)"
    )
