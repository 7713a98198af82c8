"""Shared fixtures. Real data is read from ../shared/data (never copied into the project)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SRTOOL_SHARED_DATA", REPO.parent / "shared" / "data"))


def _require_shared() -> Path:
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the shared data folder, but {SHARED_DATA} is missing")
        pytest.skip(f"shared data folder {SHARED_DATA} not present (a user's checkout): real-data test skipped")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require_shared()


@pytest.fixture(scope="session")
def benchmarks_dir(shared_data: Path) -> Path:
    return shared_data / "benchmarks"


@pytest.fixture
def two_torch_threads():
    """torch sized for two cores (whatever this machine has), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
