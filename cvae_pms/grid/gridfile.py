"""The grid file: an HDF5 file of parameter vectors and their Gaia XP coefficients.

Layout (format version 1, spec in ``grids/README.md``):

- ``params`` (N, 7) float64, physical units, attributes ``names``, ``units``, ``low``, ``high``;
- ``bp_coefficients``, ``rp_coefficients`` (N, 55) float64;
- optional ``sampled_flux`` (N, 343) float64, W m^-2 nm^-1 on 336..1020 nm, step 2 nm;
- group ``meta`` with attributes (format_version, creator, created_utc, param_table,
  forward_model, random_seed, reference_distance_pc, source, content_hash, ...).

Files are written under a temporary sibling (:func:`cvae_pms.atomic.temporary_sibling`) and
renamed at the end, so ``path`` never holds a half-written grid.

Example
-------
>>> import numpy as np, tempfile, os
>>> from cvae_pms.grid.gridfile import write_grid, open_grid
>>> p = np.array([[4000.0, 4.0, 0.0, -8.0, 0.01, 0.6, 1.0]])
>>> path = os.path.join(tempfile.mkdtemp(), "g.h5")
>>> content_hash = write_grid(path, p, np.ones((1, 55)), np.ones((1, 55)), meta={"source": "doc"})
>>> len(content_hash)
64
>>> with open_grid(path) as g:
...     g.n, g.meta["source"]
(1, 'doc')
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cvae_pms import params as P
from cvae_pms.grid.format import (DATASETS, FLUX_WAVELENGTH_NM, FORMAT_VERSION, JSON_META, N_COEFF,
                                  N_FLUX, UNHASHED_META, WIDTHS, ContentHasher, GridError,
                                  canonical_meta_json, read_meta_attrs, rows_text)
from cvae_pms.grid.grid_writer import GridWriter, write_grid

__all__ = ["FORMAT_VERSION", "N_COEFF", "N_FLUX", "FLUX_WAVELENGTH_NM", "DATASETS", "WIDTHS",
           "UNHASHED_META", "JSON_META", "GridError", "canonical_meta_json", "GridWriter",
           "write_grid", "Grid", "open_grid", "validate_grid", "duplicate_rows", "grid_summary"]


class Grid:
    """A readable grid file (see :func:`open_grid`). Close it, or use it in a ``with`` block."""

    def __init__(self, path: Path, handle: h5py.File, meta: dict, n: int) -> None:
        self.path = path
        self._h5 = handle
        self.meta = meta
        self.n = n

    def __enter__(self) -> Grid:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying HDF5 file."""
        self._h5.close()

    def __repr__(self) -> str:
        return f"Grid({str(self.path)!r}, n={self.n})"

    @property
    def has_sampled_flux(self) -> bool:
        return "sampled_flux" in self._h5

    @property
    def reference_distance_pc(self) -> float | None:
        """Distance [pc] at which the fluxes are absolute; None for normalised grids."""
        d = self.meta.get("reference_distance_pc")
        try:
            d = float(d)
        except (TypeError, ValueError):
            return None
        return None if math.isnan(d) else d

    @property
    def content_hash(self) -> str:
        return str(self.meta.get("content_hash", ""))

    def _read(self, name: str, idx: Any = None) -> np.ndarray:
        try:
            ds = self._h5[name]
            if idx is None:
                return ds[()]
            if isinstance(idx, slice):
                return ds[idx]
            idx = np.asarray(idx)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            idx = np.where(idx < 0, idx + self.n, idx).astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= self.n):
                raise GridError(f"{self.path}: row index out of range 0..{self.n - 1}")
            uniq, inverse = np.unique(idx, return_inverse=True)
            data = ds[uniq] if uniq.size else np.empty((0, ds.shape[1]), dtype=ds.dtype)
            return data[inverse.ravel()]
        except (OSError, KeyError) as exc:
            raise GridError(f"{self.path}: cannot read {name} "
                            f"(truncated or corrupt?): {exc}") from exc

    @property
    def params(self) -> np.ndarray:
        """All parameter vectors (N, 7), physical units."""
        return self._read("params")

    def coefficients(self, idx: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """BP and RP coefficients (n, 55) each, of rows ``idx`` (all rows when None)."""
        return self._read("bp_coefficients", idx), self._read("rp_coefficients", idx)

    def sampled_flux(self, idx: Any = None) -> np.ndarray:
        """Sampled flux (n, 343) [W m^-2 nm^-1] on :data:`FLUX_WAVELENGTH_NM`."""
        if not self.has_sampled_flux:
            raise GridError(f"{self.path}: this grid has no sampled_flux dataset")
        return self._read("sampled_flux", idx)

    def read(self, idx: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(params, bp, rp) of rows ``idx`` (slice, integer array or boolean mask)."""
        bp, rp = self.coefficients(idx)
        return self._read("params", idx), bp, rp

    def iter_chunks(self, chunk_size: int = 65536
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (start_row, params, bp, rp) blocks of at most ``chunk_size`` rows."""
        for start in range(0, self.n, chunk_size):
            sl = slice(start, min(start + chunk_size, self.n))
            p, bp, rp = self.read(sl)
            yield start, p, bp, rp


def open_grid(path: str | os.PathLike) -> Grid:
    """Open a grid file and check its structure and parameter table (not every value).

    Raises:
        GridError: missing file, not HDF5 / truncated / corrupt, missing datasets, shape
            mismatches, another format version, or another parameter table.
    """
    path = Path(path)
    if not path.is_file():
        raise GridError(f"{path}: grid file not found")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise GridError(f"{path} is not a readable HDF5 file (truncated or corrupt?): "
                        f"{exc}") from exc
    try:
        missing = [n for n in DATASETS[:3] if n not in h5]
        if missing or "meta" not in h5:
            raise GridError(f"{path}: not a cvae-pms grid: missing "
                            f"{', '.join(missing + ([] if 'meta' in h5 else ['meta group']))}"
                            f" (has {', '.join(h5.keys()) or 'nothing'})")
        meta = read_meta_attrs(h5["meta"])
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise GridError(f"{path}: grid format version {version!r}; this cvae-pms reads "
                            f"version {FORMAT_VERSION}")
        n = h5["params"].shape[0]
        for name in DATASETS:
            if name not in h5:
                continue
            shape = h5[name].shape
            if len(shape) != 2 or shape != (n, WIDTHS[name]):
                raise GridError(f"{path}: dataset {name} has shape {shape}, "
                                f"expected ({n}, {WIDTHS[name]})")
        try:
            P.check_table(meta.get("param_table", {}), str(path))
        except P.ParameterTableMismatch as exc:
            raise GridError(str(exc)) from exc
    except GridError:
        h5.close()
        raise
    except (OSError, KeyError, ValueError) as exc:
        h5.close()
        raise GridError(f"{path} is not a readable HDF5 file (truncated or corrupt?): "
                        f"{exc}") from exc
    return Grid(path, h5, meta, n)


def validate_grid(path: str | os.PathLike, full: bool = True, chunk_size: int = 65536) -> None:
    """Check every value of a grid; raise :class:`GridError` naming the first problem found.

    Checks: NaN/inf in any dataset, rows outside the parameter bounds (count, first rows,
    parameters), duplicate parameter rows, and (``full``) the content hash. Streams in chunks;
    the duplicate check holds the (N, 7) parameters in memory (56 bytes per row).
    """
    with open_grid(path) as grid:
        hasher = ContentHasher()
        names = tuple(n for n in DATASETS if n != "sampled_flux" or grid.has_sampled_flux)
        problems: list[str] = []
        bad_finite: dict[str, list[int]] = {}
        out_rows: list[np.ndarray] = []
        out_params: set[str] = set()
        for start in range(0, grid.n, chunk_size):
            sl = slice(start, min(start + chunk_size, grid.n))
            for name in names:
                block = grid._read(name, sl)
                hasher.update(name, block)
                bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
                if bad.size:
                    bad_finite.setdefault(name, []).extend((bad + start).tolist())
                if name == "params":
                    out = P.outside_bounds(block) & np.isfinite(block)
                    if out.any():
                        out_rows.append(np.flatnonzero(out.any(axis=1)) + start)
                        out_params |= {P.NAMES[j] for j in np.flatnonzero(out.any(axis=0))}
        for name, rows in bad_finite.items():
            problems.append(f"{len(rows)} rows with NaN/inf in {name} (rows "
                            f"{rows_text(np.array(rows))})")
        if out_rows:
            rows = np.concatenate(out_rows)
            problems.append(f"{rows.size} rows outside the parameter bounds (rows "
                            f"{rows_text(rows)}; parameters {', '.join(sorted(out_params))})")
        dup = duplicate_rows(grid.params)
        if dup.size:
            problems.append(f"{dup.size} duplicate parameter rows (rows {rows_text(dup)})")
        if full:
            actual = hasher.hexdigest(grid.meta, names)
            if actual != grid.content_hash:
                problems.append(f"content hash mismatch: stored {grid.content_hash}, "
                                f"computed {actual} (file modified after writing?)")
        if problems:
            raise GridError(f"{grid.path}: " + "; ".join(problems))


def duplicate_rows(params: np.ndarray) -> np.ndarray:
    """Indices of rows (n, k) that repeat an earlier row exactly (sorted)."""
    a = np.ascontiguousarray(params, dtype=np.float64) + 0.0  # -0.0 -> 0.0
    keys = a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).ravel()
    _, first = np.unique(keys, return_index=True)
    mask = np.ones(a.shape[0], dtype=bool)
    mask[first] = False
    return np.flatnonzero(mask)


def grid_summary(path: str | os.PathLike) -> dict:
    """Summary for ``grid info``: count, per-parameter min/max/5/50/95 %, version, hash, meta."""
    with open_grid(path) as grid:
        p = grid.params
        per_param = {}
        for j, par in enumerate(P.PARAMS):
            col = p[:, j]
            q5, q50, q95 = (np.percentile(col, [5, 50, 95]) if col.size
                            else (math.nan,) * 3)
            per_param[par.name] = {
                "unit": par.unit, "min": float(np.min(col)), "max": float(np.max(col)),
                "q05": float(q5), "q50": float(q50), "q95": float(q95),
                "low": par.low, "high": par.high,
            }
        return {
            "path": str(grid.path),
            "count": grid.n,
            "format_version": grid.meta.get("format_version"),
            "content_hash": grid.content_hash,
            "reference_distance_pc": grid.reference_distance_pc,
            "has_sampled_flux": grid.has_sampled_flux,
            "params": per_param,
            "meta": grid.meta,
        }
