"""Reading a posterior file: :class:`Posterior` (its rows), :func:`read_posterior`,
:func:`iter_posterior`, and the completed rows a resume skips.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from cvae_pms.io.posterior_format import PosteriorFileError, check_compatible


@dataclass
class Posterior:
    """Contents of a posterior file (or of a slice of its rows)."""

    source_id: np.ndarray
    samples: np.ndarray | None
    quantiles: np.ndarray
    status: np.ndarray
    message: np.ndarray
    input_file: np.ndarray
    ood_distance: np.ndarray
    bound_params: np.ndarray
    attrs: dict = field(default_factory=dict)
    ess: np.ndarray | None = None
    samples_raw: np.ndarray | None = None
    input_row: np.ndarray | None = None
    gof_chi2_red: np.ndarray | None = None
    gof_p: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.source_id.shape[0])


def _open(path: str | os.PathLike) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise PosteriorFileError(f"{path}: no such posterior file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise PosteriorFileError(f"{path}: not an HDF5 file ({exc})") from exc
    try:
        check_compatible(f, path)
    except Exception:
        f.close()
        raise
    return f


def _attrs(f: h5py.File) -> dict:
    out = {}
    for k, v in f.attrs.items():
        out[k] = v.decode() if isinstance(v, bytes) else v
    return out


def _rows(f: h5py.File, sl: slice, with_samples: bool) -> Posterior:
    return Posterior(
        source_id=f["source_id"][sl],
        samples=f["samples"][sl] if with_samples else None,
        quantiles=f["quantiles"][sl],
        status=f["status"][sl],
        message=f["message"].asstr()[sl],
        input_file=f["input_file"].asstr()[sl],
        ood_distance=f["ood_distance"][sl],
        bound_params=f["bound_params"][sl],
        attrs=_attrs(f),
        ess=f["ess"][sl] if "ess" in f else None,
        samples_raw=f["samples_raw"][sl] if with_samples and "samples_raw" in f else None,
        input_row=f["input_row"][sl] if "input_row" in f else None,
        gof_chi2_red=f["gof_chi2_red"][sl] if "gof_chi2_red" in f else None,
        gof_p=f["gof_p"][sl] if "gof_p" in f else None,
    )


def read_posterior(path: str | os.PathLike, samples: bool = True) -> Posterior:
    """Read all completed rows of a posterior file (``samples=False`` skips the big array)."""
    with _open(path) as f:
        return _rows(f, slice(0, int(f.attrs["n_complete"])), samples)


def iter_posterior(path: str | os.PathLike, chunk_size: int = 4096,
                   samples: bool = True) -> Iterator[Posterior]:
    """Stream the completed rows of a posterior file in chunks of ``chunk_size`` sources."""
    with _open(path) as f:
        n = int(f.attrs["n_complete"])
        for i in range(0, n, chunk_size):
            yield _rows(f, slice(i, min(i + chunk_size, n)), samples)


def completed_rows(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(input_file (n,) str, source_id (n,) int64, input_row (n,) int64 or None for files
    without it) of every completed row, in file order: what a resume skips."""
    with _open(path) as f:
        n = int(f.attrs["n_complete"])
        files = f["input_file"].asstr()[:n].astype(str)
        ids = f["source_id"][:n]
        rows = f["input_row"][:n] if "input_row" in f else None
    return files, ids, rows


def completed_keys(path: str | os.PathLike) -> set[tuple[str, int]]:
    """(input_file, source_id) of every completed row: the work a resume may skip."""
    with _open(path) as f:
        n = int(f.attrs["n_complete"])
        files = f["input_file"].asstr()[:n]
        ids = f["source_id"][:n]
    return {(str(a), int(b)) for a, b in zip(files, ids)}
