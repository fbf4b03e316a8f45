"""GPU limits that the kernels' launch configurations must respect: the one table behind the
Triton configurations (wvq_kernels/triton/configs.py), the Triton ahead-of-time gate
(scripts/triton_aot_gate.py) and the ptxas table of the CUDA build (scripts/ptxas_table.py).

It imports nothing, so that scripts run by a Python without torch can load it by file path."""

# Shared memory a thread block may opt into, in bytes, per compute capability (CUDA C++
# Programming Guide, "Technical Specifications per Compute Capability").
OPT_IN_SHARED_MEMORY = {
    "sm_80": 166_912,  # A100
    "sm_86": 101_376,  # RTX 30 series, A40
    "sm_89": 101_376,  # RTX 40 series, L40
    "sm_90": 232_448,  # H100
}


def _capability(arch: str) -> tuple[int, int]:
    """(major, minor) of "sm_86"."""
    return divmod(int(arch.removeprefix("sm_")), 10)


def shared_memory_limit(arch: str) -> int:
    """The opt-in shared memory of every GPU that runs code built for `arch` ("sm_80", "sm_90a"),
    that is the smallest of their limits. Code for sm_XY also runs on each later sm_XZ of the same
    major version, so sm_80 code gets the limit of sm_86/89; code for the arch-specific sm_XYa
    runs on sm_XY alone."""
    major, minor = _capability(arch.removesuffix("a"))
    runs_on = [
        limit
        for gpu, limit in OPT_IN_SHARED_MEMORY.items()
        if _capability(gpu)[0] == major
        and (_capability(gpu)[1] == minor if arch.endswith("a") else _capability(gpu)[1] >= minor)
    ]
    if not runs_on:
        raise ValueError(f"no shared memory limit known for {arch}: add it to OPT_IN_SHARED_MEMORY")
    return min(runs_on)
