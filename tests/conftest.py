from __future__ import annotations

import os
from pathlib import Path

import pytest

# CI lays shared/ beside the checkout; DMVPN_VECTORS overrides.
VECTORS = Path(
    os.environ.get("DMVPN_VECTORS", Path(__file__).resolve().parents[2] / "shared" / "vectors")
)


@pytest.fixture(scope="session")
def vectors() -> Path:
    if not VECTORS.is_dir():
        pytest.fail(f"test vectors not found at {VECTORS} (set DMVPN_VECTORS)")
    return VECTORS
