"""Astropy table formats by file suffix: the one map that every table reader and writer uses.

>>> table_format("stars.ECSV"), table_format("cat.fits.gz"), table_format("x.parquet")
('ascii.ecsv', 'fits', None)
>>> table_format("summary.vot", allowed=SUMMARY_SUFFIXES) is None
True
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

#: File suffix (lower case) -> astropy ``Table.read``/``write`` format.
ASTROPY_FORMATS = {
    ".csv": "ascii.csv", ".ecsv": "ascii.ecsv",
    ".fits": "fits", ".fit": "fits", ".fits.gz": "fits",
    ".vot": "votable", ".xml": "votable", ".votable": "votable",
}
#: Plain-text tables (CSV, ECSV).
TEXT_SUFFIXES = (".csv", ".ecsv")
#: What ``--summary`` writes and reads.
SUMMARY_SUFFIXES = (".ecsv", ".csv", ".fits")


def table_suffix(path: str | os.PathLike) -> str:
    """The lower-case suffix of ``path`` that names its format (``.fits.gz`` counts as one)."""
    name = Path(path).name.lower()
    for suffix in sorted(ASTROPY_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def table_format(path: str | os.PathLike, allowed: Sequence[str] | None = None) -> str | None:
    """Astropy format of ``path`` from its suffix; None when unknown or not in ``allowed``."""
    suffix = table_suffix(path)
    if allowed is not None and suffix not in allowed:
        return None
    return ASTROPY_FORMATS.get(suffix)
