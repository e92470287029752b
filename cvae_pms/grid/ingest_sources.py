"""Readers of a user's grid table for :func:`cvae_pms.grid.ingest.ingest_table`, by format.

Each :class:`TableSource` streams the named columns in row chunks: CSV via pandas, Parquet via
pyarrow batches, FITS via memmap slices, HDF5 via dataset slices; ECSV and VOTable are read
whole by astropy. :func:`open_source` picks the reader from the file's content (magic bytes),
then its suffix. Every problem is an :class:`IngestError` naming the file.
"""
from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cvae_pms import params as P
from cvae_pms.grid.format import N_COEFF, N_FLUX, GridError

#: Array-valued spectral columns (one cell holds the whole vector).
SPECTRAL_ARRAYS = ("bp_coefficients", "rp_coefficients", "flux")
_SUFFIXES = {
    ".csv": "csv", ".txt": "csv", ".tsv": "csv", ".gz": "csv",
    ".ecsv": "ecsv", ".fits": "fits", ".fit": "fits", ".fts": "fits",
    ".parquet": "parquet", ".pq": "parquet",
    ".vot": "votable", ".xml": "votable", ".votable": "votable",
    ".h5": "hdf5", ".hdf5": "hdf5", ".he5": "hdf5",
}


class IngestError(GridError):
    """The input table cannot become a grid (message names the file, column and rows)."""




# ---------------------------------------------------------------------------------- readers
class TableSource(abc.ABC):
    """A table on disk: its column names and an iterator over row chunks of chosen columns."""

    fmt = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] = []

    @abc.abstractmethod
    def chunks(self, names: list[str], size: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield (first row number, {column: values}) for ``size``-row blocks of ``names``."""

    def close(self) -> None:
        """Release file handles."""


class CsvSource(TableSource):
    fmt = "csv"

    def __init__(self, path: Path) -> None:
        import pandas as pd
        super().__init__(path)
        self.sep = "\t" if path.suffix.lower() == ".tsv" else ","
        try:
            self.columns = [str(c) for c in pd.read_csv(path, nrows=0, sep=self.sep).columns]
        except pd.errors.EmptyDataError as exc:
            raise IngestError(f"{path}: the file is empty (no header, no rows)") from exc
        except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
            raise IngestError(f"{path}: not a readable CSV table: {exc}") from exc

    def chunks(self, names, size):
        import pandas as pd
        arrays = [n for n in names if n in SPECTRAL_ARRAYS]
        start = 0
        try:
            reader = pd.read_csv(self.path, sep=self.sep, usecols=names, chunksize=size,
                                 dtype={n: str for n in arrays}, keep_default_na=True)
            for df in reader:
                yield start, {n: df[n].to_numpy() for n in names}
                start += len(df)
        except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
            raise IngestError(f"{self.path}: cannot parse the CSV near data row {start}+: "
                              f"{exc}") from exc


class ParquetSource(TableSource):
    fmt = "parquet"

    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        super().__init__(path)
        try:
            self.file = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise IngestError(f"{path}: not a readable Parquet file: {exc}") from exc
        self.columns = list(self.file.schema_arrow.names)

    def chunks(self, names, size):
        import pyarrow as pa
        start = 0
        for batch in self.file.iter_batches(batch_size=size, columns=names):
            out = {}
            for n in names:
                col = batch.column(n)
                if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) \
                        or pa.types.is_fixed_size_list(col.type):
                    out[n] = np.array(col.to_pylist(), dtype=object)
                else:
                    out[n] = col.to_numpy(zero_copy_only=False)
            yield start, out
            start += batch.num_rows

    def close(self) -> None:
        self.file.close()


class FitsSource(TableSource):
    fmt = "fits"

    def __init__(self, path: Path) -> None:
        from astropy.io import fits
        super().__init__(path)
        try:
            self.hdul = fits.open(path, memmap=True)
            hdus = [h for h in self.hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))]
        except (OSError, ValueError, TypeError) as exc:
            raise IngestError(f"{path}: not a readable FITS file: {exc}") from exc
        if not hdus:
            self.hdul.close()
            raise IngestError(f"{path}: FITS file has no table extension")
        self.hdu = hdus[0]
        self.columns = list(self.hdu.columns.names)

    def chunks(self, names, size):
        n = self.hdu.data.shape[0] if self.hdu.data is not None else 0
        for start in range(0, n, size):
            block = self.hdu.data[start:start + size]
            yield start, {c: np.asarray(block[c]) for c in names}

    def close(self) -> None:
        self.hdul.close()


class AstropySource(TableSource):
    """ECSV / VOTable, read whole by astropy."""

    def __init__(self, path: Path, fmt: str) -> None:
        from astropy.table import Table
        super().__init__(path)
        self.fmt = fmt
        try:
            self.table = Table.read(path, format="ascii.ecsv" if fmt == "ecsv" else "votable")
        except Exception as exc:  # astropy raises many types for malformed files
            raise IngestError(f"{path}: not a readable {fmt.upper()} table: {exc}") from exc
        self.columns = list(self.table.colnames)

    def chunks(self, names, size):
        for start in range(0, len(self.table), size):
            block = self.table[start:start + size]
            out = {}
            for c in names:
                col = block[c]
                if hasattr(col, "mask") and col.dtype.kind == "f":
                    col = col.filled(np.nan)
                out[c] = np.asarray(col)
            yield start, out


class Hdf5Source(TableSource):
    """An HDF5 file of another layout: datasets for params (N,k), bp/rp (N,55) or flux (N,343)."""

    fmt = "hdf5"

    def __init__(self, path: Path, datasets: dict, column_map: dict) -> None:
        import h5py
        super().__init__(path)
        try:
            self.h5 = h5py.File(path, "r")
        except OSError as exc:
            raise IngestError(f"{path} is not a readable HDF5 file (truncated or corrupt?): "
                              f"{exc}") from exc
        names: list[str] = []
        self.h5.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        self.ds = {}
        for key in ("params", "bp", "rp", "flux"):
            name = datasets.get(key)
            if not name:
                continue
            if name not in self.h5 or not isinstance(self.h5[name], h5py.Dataset):
                self.h5.close()
                raise IngestError(f"{path}: no dataset {name!r} (--hdf5-{key}); datasets: "
                                  f"{', '.join(names) or 'none'}")
            self.ds[key] = self.h5[name]
        if "params" not in self.ds:
            self.h5.close()
            raise IngestError(f"{path}: give the parameter dataset (--hdf5-params); "
                              f"datasets: {', '.join(names) or 'none'}")
        cols = datasets.get("param_columns") or list(P.NAMES)
        cols = [column_map.get(c, c) for c in cols]
        shape = self.ds["params"].shape
        if len(shape) != 2 or shape[1] != len(cols):
            self.h5.close()
            raise IngestError(f"{path}: dataset {datasets['params']!r} has shape {shape}, "
                              f"expected (N, {len(cols)}) for columns {', '.join(cols)}")
        self.param_cols = cols
        self.n = shape[0]
        self.columns = list(cols)
        widths = {"bp": N_COEFF, "rp": N_COEFF, "flux": N_FLUX}
        target = {"bp": "bp_coefficients", "rp": "rp_coefficients", "flux": "flux"}
        for key in ("bp", "rp", "flux"):
            if key in self.ds:
                s = self.ds[key].shape
                if len(s) != 2 or s[0] != self.n or s[1] != widths[key]:
                    self.h5.close()
                    what = "wrong number of coefficients: " if key != "flux" else ""
                    raise IngestError(f"{path}: {what}dataset {datasets[key]!r} has shape {s}, "
                                      f"expected ({self.n}, {widths[key]})")
                self.columns.append(target[key])

    def chunks(self, names, size):
        target = {"bp_coefficients": "bp", "rp_coefficients": "rp", "flux": "flux"}
        try:
            for start in range(0, self.n, size):
                p = np.asarray(self.ds["params"][start:start + size], dtype=np.float64)
                out = {c: p[:, j] for j, c in enumerate(self.param_cols) if c in names}
                for c in names:
                    if c in target:
                        out[c] = np.asarray(self.ds[target[c]][start:start + size])
                yield start, out
        except OSError as exc:
            raise IngestError(f"{self.path}: cannot read rows {start}+ (truncated or corrupt?): "
                              f"{exc}") from exc

    def close(self) -> None:
        self.h5.close()


def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.lstrip().startswith(b"# %ECSV"):
        return "ecsv"
    if b"<VOTABLE" in head:
        return "votable"
    return ""


def open_source(path: Path, hdf5_datasets: dict | None, column_map: dict) -> TableSource:
    """Open ``path`` with the reader its content (or suffix) calls for."""
    if not path.is_file():
        raise IngestError(f"{path}: input file not found")
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: the file is empty")
    fmt = _sniff(path) or _SUFFIXES.get(path.suffix.lower(), "")
    if hdf5_datasets and any(hdf5_datasets.get(k) for k in ("params", "bp", "rp", "flux")):
        return Hdf5Source(path, hdf5_datasets, column_map)
    if fmt == "hdf5" or path.suffix.lower() in (".h5", ".hdf5", ".he5"):
        raise IngestError(f"{path}: an HDF5 input needs --hdf5-params and --hdf5-bp/--hdf5-rp "
                          f"or --hdf5-flux (dataset names); a cvae-pms grid needs no ingest")
    if fmt in ("csv", ""):
        try:
            with open(path, encoding="utf-8") as fh:
                fh.read(4096)
        except UnicodeDecodeError as exc:
            raise IngestError(f"{path}: not a table (binary content of unknown format; "
                              f"expected CSV, ECSV, FITS, Parquet, VOTable or HDF5)") from exc
        return CsvSource(path)
    if fmt == "parquet":
        return ParquetSource(path)
    if fmt == "fits":
        return FitsSource(path)
    return AstropySource(path, fmt)
