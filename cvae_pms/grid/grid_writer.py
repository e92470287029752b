"""Write a grid file: :class:`GridWriter` streams chunks, :func:`write_grid` writes arrays.

The file is written under a temporary sibling (:func:`cvae_pms.atomic.temporary_sibling`) and
renamed when complete, so the target never holds a half-written grid.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from cvae_pms import params as P
from cvae_pms.atomic import temporary_sibling
from cvae_pms.grid.format import (CHUNK_ROWS, DATASETS, WIDTHS, ContentHasher, GridError,
                                  normalise_meta, rows_text, write_meta_attrs)

class GridWriter:
    """Stream rows into a new grid file; the file appears at ``path`` only on a clean exit.

    Args:
        path: output grid file (.h5).
        meta: meta attributes (see module doc); missing ones get defaults.
        with_sampled_flux: also store ``sampled_flux`` (N, 343) [W m^-2 nm^-1].
        expected_rows: size hint for the HDF5 chunk layout.
        compression: HDF5 filter (``"gzip"`` or None).

    ``meta`` stays editable as ``writer.meta`` until the ``with`` block ends (e.g. to add
    statistics known only after the last chunk).
    """

    def __init__(self, path: str | os.PathLike, meta: dict, with_sampled_flux: bool = False,
                 expected_rows: int | None = None, compression: str | None = "gzip") -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise GridError(f"{self.path}: output directory {self.path.parent} does not exist")
        self.meta = dict(meta)
        self.with_sampled_flux = with_sampled_flux
        self.expected_rows = expected_rows
        self.compression = compression
        self.tmp_path = temporary_sibling(self.path)
        self.n = 0
        self.content_hash: str | None = None
        self._file: h5py.File | None = None
        self._hasher = ContentHasher()

    @property
    def _names(self) -> tuple[str, ...]:
        return DATASETS if self.with_sampled_flux else DATASETS[:3]

    def __enter__(self) -> GridWriter:
        try:
            self._file = h5py.File(self.tmp_path, "w", track_order=True)
        except OSError as exc:
            raise GridError(f"{self.path}: cannot create {self.tmp_path}: {exc}") from exc
        rows = max(1, min(CHUNK_ROWS, self.expected_rows or CHUNK_ROWS))
        for name in self._names:
            width = WIDTHS[name]
            self._file.create_dataset(
                name, shape=(0, width), maxshape=(None, width), dtype="<f8",
                chunks=(rows, width), track_times=False, compression=self.compression,
                shuffle=self.compression is not None)
        ds = self._file["params"]
        ds.attrs["names"] = list(P.NAMES)
        ds.attrs["units"] = [p.unit for p in P.PARAMS]
        ds.attrs["low"] = P.LOW
        ds.attrs["high"] = P.HIGH
        return self

    def append(self, params: np.ndarray, bp: np.ndarray, rp: np.ndarray,
               sampled_flux: np.ndarray | None = None) -> None:
        """Validate and append k rows: params (k,7) physical units, bp/rp (k,55), flux (k,343)."""
        if self._file is None:
            raise GridError(f"{self.path}: GridWriter.append outside its 'with' block")
        blocks = {"params": params, "bp_coefficients": bp, "rp_coefficients": rp}
        if self.with_sampled_flux:
            if sampled_flux is None:
                raise GridError(f"{self.path}: this grid stores sampled_flux; none given")
            blocks["sampled_flux"] = sampled_flux
        elif sampled_flux is not None:
            raise GridError(f"{self.path}: sampled_flux given but with_sampled_flux=False")
        k = None
        for name, block in blocks.items():
            block = np.asarray(block, dtype=np.float64)
            if block.ndim != 2 or block.shape[1] != WIDTHS[name]:
                raise GridError(f"{self.path}: {name} chunk has shape {block.shape}, "
                                f"expected (k, {WIDTHS[name]})")
            if k is None:
                k = block.shape[0]
            elif block.shape[0] != k:
                raise GridError(f"{self.path}: {name} chunk has {block.shape[0]} rows, "
                                f"params has {k}")
            bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
            if bad.size:
                raise GridError(f"{self.path}: {bad.size} rows with NaN/inf in {name} "
                                f"(rows {rows_text(bad, self.n)})")
            blocks[name] = block
        out = P.outside_bounds(blocks["params"])
        if out.any():
            rows = np.flatnonzero(out.any(axis=1))
            which = sorted({P.NAMES[j] for j in np.flatnonzero(out.any(axis=0))})
            raise GridError(f"{self.path}: {rows.size} rows outside the parameter bounds "
                            f"(rows {rows_text(rows, self.n)}; parameters {', '.join(which)})")
        for name, block in blocks.items():
            ds = self._file[name]
            ds.resize(self.n + k, axis=0)
            ds[self.n:self.n + k] = block
            self._hasher.update(name, block)
        self.n += k

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if self.n == 0:
                    raise GridError(f"{self.path}: no rows were written; refusing an empty grid")
                meta = normalise_meta(self.meta)
                self.content_hash = self._hasher.hexdigest(meta, self._names)
                meta["content_hash"] = self.content_hash
                write_meta_attrs(self._file.create_group("meta"), meta)
                self._file.close()
                self._file = None
                os.replace(self.tmp_path, self.path)
        except BaseException:
            self._discard()
            raise
        if exc_type is not None:
            self._discard()

    def _discard(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # the file is removed anyway
                pass
            self._file = None
        self.tmp_path.unlink(missing_ok=True)


def write_grid(path: str | os.PathLike, params: np.ndarray, bp: np.ndarray, rp: np.ndarray,
               meta: dict, sampled_flux: np.ndarray | None = None) -> str:
    """Write a whole grid at once (arrays as in :meth:`GridWriter.append`); returns its hash."""
    n = int(np.shape(params)[0])
    with GridWriter(path, meta, with_sampled_flux=sampled_flux is not None,
                    expected_rows=n) as writer:
        for start in range(0, n, 65536):
            sl = slice(start, start + 65536)
            writer.append(params[sl], bp[sl], rp[sl],
                          None if sampled_flux is None else sampled_flux[sl])
    return writer.content_hash
