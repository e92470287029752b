"""Shared fixtures: paths to the real Gaia XP files in ../shared/data (skipped when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
SHARED_XP = ROOT.parent / "shared" / "data" / "real_xp"


@pytest.fixture(scope="session")
def real_xp() -> Path:
    """Folder of real Gaia DR3 XP files; skips the test when ../shared is not there."""
    if not SHARED_XP.is_dir():
        pytest.skip(f"real XP data not found at {SHARED_XP} (needs ../shared beside the project)")
    return SHARED_XP
