"""Shared fixtures and markers.

- ``real_xp``: the real Gaia XP files in ../shared/data (skipped when absent);
- ``trained_run`` / ``trained_lum_run``: one tiny trained run per session (3 epochs on the
  stand-in grid of ``helpers_infer``, OOD index built; the second with the parallax channel),
  shared by every test file that only reads it (copy it before changing it);
- marker ``gpu``: skipped unless TensorFlow sees a GPU (``slow`` is declared in setup.cfg).
"""
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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """Model dir of the session's tiny trained run (read only: copy it to change it)."""
    import helpers_infer as h
    return h.shared_run(tmp_path_factory)


@pytest.fixture(scope="session")
def trained_lum_run(tmp_path_factory) -> Path:
    """Model dir of the session's tiny luminosity-channel run (read only)."""
    import helpers_infer as h
    return h.shared_lum_run(tmp_path_factory)


def _gpu_visible() -> bool:
    import tensorflow as tf
    return bool(tf.config.list_physical_devices("GPU"))


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu``-marked tests when no GPU is visible (TensorFlow imported only if needed)."""
    gpu_items = [it for it in items if it.get_closest_marker("gpu")]
    if gpu_items and not _gpu_visible():
        skip = pytest.mark.skip(reason="needs a GPU visible to TensorFlow")
        for it in gpu_items:
            it.add_marker(skip)
