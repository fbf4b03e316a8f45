import os

import pytest
import torch

# Without a GPU the Triton kernels run in the interpreter on CPU tensors; triton reads this when
# the kernels are defined, so it must be set before wvq_kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from wvq_kernels import available_backends  # noqa: E402

BACKENDS = list(available_backends())
GPU_BACKENDS = ("triton", "cuda")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")


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


def _device_for(backend: str) -> torch.device:
    """Where a backend's inputs live. Triton runs on CPU tensors under TRITON_INTERPRET=1."""
    on_gpu = backend in GPU_BACKENDS and torch.cuda.is_available()
    return torch.device("cuda" if on_gpu else "cpu")


@pytest.fixture
def device(backend) -> torch.device:
    return _device_for(backend)


@pytest.fixture
def fast_device(fast_backend) -> torch.device:
    return _device_for(fast_backend)
