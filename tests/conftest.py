import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

# Without a GPU the Triton kernels run in the interpreter on CPU tensors; triton reads this when
# the kernels are defined, so it must be set before wvq_kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from wvq_kernels import available_backends
from wvq_kernels.testing import device_for

# Hypothesis profiles (tests/test_properties.py, docs/testing.md): "ci" by default, reproducible
# and sized for CI; WVQ_HYPOTHESIS_PROFILE=dev for a long search, whose failures are kept in
# an ignored folder and replayed first on the next run.
settings.register_profile(
    "ci", derandomize=True, max_examples=30, deadline=None, print_blob=True, database=None
)
settings.register_profile(
    "dev",
    max_examples=600,
    deadline=None,
    print_blob=True,
    database=DirectoryBasedExampleDatabase(
        os.path.join(os.path.dirname(__file__), os.pardir, ".pytest_cache", "hypothesis")
    ),
)
settings.load_profile(os.environ.get("WVQ_HYPOTHESIS_PROFILE", "ci"))

BACKENDS = list(available_backends())
# The CPU kernels' ISA levels, narrowest first: each WVQ_CPU_ISA value and how
# torch.ops.wvq.cpu_isa() names it (avx512 with or without vdpbf16ps; amx is AVX-512 with the
# tile unit, which screens the ieee scan).
CPU_ISAS = {"scalar": "scalar", "avx2": "avx2", "avx512": "avx512", "amx": "avx512_amx"}
ISA_CHILD = """
import sys, torch, wvq_kernels
calls = torch.load(sys.argv[1])
results = [tuple(getattr(wvq_kernels, op)(*args, **kwargs)) for op, args, kwargs in calls]
torch.save(results, sys.argv[2])
print(torch.ops.wvq.cpu_isa())
"""


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def _require(backend: str) -> str:
    status = available_backends()[backend]
    if not status:
        pytest.skip(f"backend {backend!r} unavailable: {status.reason}")
    return backend


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Every backend this machine has; the others are skipped with the reason."""
    return _require(request.param)


@pytest.fixture(params=[name for name in BACKENDS if name != "reference"])
def fast_backend(request) -> str:
    """The compiled backends, for sizes the reference is too slow for."""
    return _require(request.param)


@pytest.fixture
def device(backend) -> torch.device:
    return device_for(backend)


@pytest.fixture
def fast_device(fast_backend) -> torch.device:
    return device_for(fast_backend)


@pytest.fixture
def one_thread():
    """One torch (and OpenMP) thread for the test: the machine is shared, and OpenMP threads
    fighting for two cores make small steps 30x slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=list(CPU_ISAS))
def cpu_isa(request) -> str:
    """Every ISA level of the CPU kernels that this CPU offers; wider ones are skipped with the
    reason. The extension reports the widest it dispatches to (torch.ops.wvq.cpu_isa)."""
    _require("cpu")
    widest = torch.ops.wvq.cpu_isa()
    levels = list(CPU_ISAS)
    offered = max(i for i, isa in enumerate(levels) if widest.startswith(CPU_ISAS[isa]))
    if levels.index(request.param) > offered:
        pytest.skip(f"the CPU kernels here go up to {widest}, not {request.param}")
    return request.param


@pytest.fixture
def run_isa_script(cpu_isa):
    """run(script, *arguments): ``python -c script arguments`` in a subprocess whose CPU kernels
    are forced to ``cpu_isa`` (the ISA is chosen once per process). The script prints
    torch.ops.wvq.cpu_isa() last, which must name that level."""

    def run(script: str, *arguments: str) -> None:
        environment = dict(os.environ, WVQ_CPU_ISA=cpu_isa)
        command = [sys.executable, "-c", script, *arguments]
        done = subprocess.run(command, env=environment, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().startswith(CPU_ISAS[cpu_isa]), done.stdout

    return run


@pytest.fixture
def run_on_isa(run_isa_script, tmp_path):
    """run(calls) -> [tuple(result) per call]: each (op, args, kwargs) called as
    ``wvq_kernels.<op>(*args, **kwargs)`` in a subprocess on ``cpu_isa`` (run_isa_script);
    tensors travel through torch.save."""

    def run(calls: list[tuple[str, tuple, dict]]) -> list[tuple]:
        inputs, outputs = tmp_path / "calls.pt", tmp_path / "results.pt"
        torch.save(calls, inputs)
        run_isa_script(ISA_CHILD, str(inputs), str(outputs))
        return torch.load(outputs)

    return run


@pytest.fixture
def tiny_config(tmp_path):
    """A VQ-VAE run small enough for a test: 256 random images, K = 64, 40 steps."""
    from wvq_kernels.vqvae import TrainConfig

    images = np.random.default_rng(0).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "tiny.npz", x=images)
    return TrainConfig(
        name="tiny",
        codebook_size=64,
        steps=40,
        minutes=1,
        batch_size=16,
        eval_every=20,
        checkpoint_every=20,
        eval_size=64,
        hidden=16,
        data=str(tmp_path / "tiny.npz"),
        out_dir=str(tmp_path / "runs"),
    )
