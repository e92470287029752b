"""Atomic writers for diagnostic results: JSON, tables (CSV/ECSV) and figures.

Each writes a temporary sibling of the target and renames it (:mod:`cvae_pms.atomic`), so a
killed run never leaves a half-written result behind.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from astropy.table import Table

from cvae_pms.atomic import atomic_path, write_text_atomic
from cvae_pms.io.json_ready import json_ready
from cvae_pms.io.tables import TEXT_SUFFIXES, table_format


def write_json(path: str | os.PathLike, obj: dict) -> Path:
    """Write ``obj`` as indented JSON (NaN -> null) atomically."""
    return write_text_atomic(path, json.dumps(json_ready(obj), indent=1, allow_nan=False) + "\n")


def write_table(table: Table, path: str | os.PathLike) -> Path:
    """Write an astropy table; format from the suffix (.csv or .ecsv)."""
    path = Path(path)
    fmt = table_format(path, TEXT_SUFFIXES)
    if fmt is None:
        raise ValueError(f"{path}: a result table must end in .csv or .ecsv")
    with atomic_path(path) as tmp:
        table.write(tmp, format=fmt, overwrite=True)
    return path


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure (format from the suffix) atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path
