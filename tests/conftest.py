"""Shared test setup.

Triton kernels run on CPU only under the interpreter, which must be switched on before
triton is imported; on a machine with a GPU the kernels run natively.
"""

import os
from pathlib import Path

import pytest


def _cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on a 2-core machine: two workers each running torch's default intra-op
    # pool oversubscribe the cores, and small forward/backward passes then run many times
    # slower; one thread per worker uses the machine fully
    import torch
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """Path of a real dataset folder in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real dataset {name!r} not found at {path} (../shared/data is absent in a fresh clone)")
    return path
