"""Read and write Gaia DR3 XP continuous mean spectra (coefficients + covariance) in archive formats.

Readers stream CSV, ECSV, FITS, VOTable and the Gaia datalink Avro products in chunks and return
:class:`XPBatch` objects. A problem with one source (missing band, wrong number of coefficients,
NaN, covariance not positive definite) is a per-source message in ``XPBatch.error``; a problem
with the whole file raises :class:`XPReadError` naming the file.

Sampled spectra (Gaia DR3 ``xp_sampled_mean_spectrum`` products, ``gaiaxpy.calibrate`` output
tables and the APOGEE x XP library) are read by the same :func:`iter_xp` and come as
:class:`cvae_pms.xp.sampled.SampledBatch` (``batch.sampled`` tells the two apart); their parsing
lives in :mod:`cvae_pms.xp.sampled`.

Covariances are physical: ``C = diag(e) R diag(e)`` from the archive errors ``e`` and
correlations ``R`` (gaiaxpy's construction; the archive ``*_standard_deviation`` cancels in the
flux errors), or for Avro ``covariance * standardDeviation**2`` (gaiaxpy multiplies the sampled
errors by the standard deviation for these files).

The pieces: :mod:`.batch` (the batch class, cell parsing and checks), :mod:`.layout` (which
table a file holds), :mod:`.avro` (Avro records), :mod:`.archive_write` (the writer); this
module holds the format readers and :func:`iter_xp` / :func:`read_xp`, and re-exports the
public names, so ``from cvae_pms.xp.archive import XPBatch, write_xp_table`` keeps working.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterator

import numpy as np

from .archive_write import WRITE_CHUNK, write_xp_table
from .avro import iter_avro
from .batch import (BANDS, EXTRA_COLUMNS, BatchRows, XPBatch, XPReadError,
                    assemble_coefficients, xp_format)
from .layout import APOGEE_LIBRARY, COEFFICIENTS, SAMPLED, Chunk, chunk_builder, table_layout

__all__ = ["APOGEE_LIBRARY", "BANDS", "COEFFICIENTS", "EXTRA_COLUMNS", "SAMPLED", "WRITE_CHUNK",
           "BatchRows", "XPBatch", "XPReadError", "iter_xp", "read_xp", "table_layout",
           "write_xp_table", "xp_format"]

# ----------------------------------------------------------------------------- readers
def _ecsv_delimiter(path: str) -> str:
    import gzip

    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            mt = re.match(r"#\s*delimiter:\s*'?(.)'?\s*$", line.rstrip("\n"))
            if mt:
                return mt.group(1)
    return " "


def _iter_text(path: str, fmt: str, chunk_size: int) -> Iterator[Chunk]:
    import pandas as pd

    from .sampled import text_conventions

    sep = "," if fmt == "csv" else _ecsv_delimiter(path)
    build = None
    try:
        reader = pd.read_csv(path, sep=sep, comment="#", chunksize=chunk_size, dtype=object,
                             keep_default_na=False, skipinitialspace=True)
        for chunk in reader:
            if build is None:
                layout, build = chunk_builder(list(chunk.columns), path,
                                              lambda: text_conventions(path, fmt))
            yield layout, build(lambda n: chunk[n].to_numpy(), len(chunk))
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise XPReadError(f"{path}: not a readable {fmt.upper()} table ({exc})") from None


def _iter_fits(path: str, chunk_size: int) -> Iterator[Chunk]:
    from astropy.io import fits

    from .sampled import fits_conventions

    try:
        hdul = fits.open(path, memmap=True)
    except (OSError, ValueError) as exc:
        raise XPReadError(f"{path}: not a readable FITS file ({exc})") from None
    with hdul:
        hdu = next((h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))), None)
        if hdu is None:
            raise XPReadError(f"{path}: no table extension in the FITS file")
        names = list(hdu.columns.names)
        layout, build = chunk_builder(names, path, lambda: fits_conventions(path, hdu))
        n_rows = hdu.header.get("NAXIS2", 0)
        for start in range(0, n_rows, chunk_size):
            rows = hdu.data[start:start + chunk_size]
            yield layout, build(lambda n: rows[n], len(rows))


def _iter_votable(path: str, chunk_size: int) -> Iterator[Chunk]:
    from astropy.io.votable import parse_single_table

    from .sampled import votable_conventions

    try:
        vot = parse_single_table(path)
        table = vot.to_table(use_names_over_ids=True)
    except Exception as exc:  # astropy raises many kinds for non-VOTable input
        raise XPReadError(f"{path}: not a readable VOTable ({type(exc).__name__}: {exc})") from None
    names = list(table.colnames)
    layout, build = chunk_builder(names, path, lambda: votable_conventions(path, vot))
    for start in range(0, len(table), chunk_size):
        rows = table[start:start + chunk_size]
        yield layout, build(lambda n: _votable_cells(rows[n]), len(rows))


def _votable_cells(column: Any) -> Any:
    """A VOTable column as cells: a 2-D array for fixed-length array columns, else a list."""
    if getattr(column, "ndim", 1) == 2:
        return np.ma.filled(np.ma.asarray(column, dtype=np.float64), np.nan)
    return list(column)


def iter_xp(path: str | os.PathLike, chunk_size: int = 10000) -> Iterator[BatchRows]:
    """Stream an XP file as batches of at most ``chunk_size`` sources.

    Coefficient files (``xp_continuous_mean_spectrum``) give :class:`XPBatch` chunks; sampled
    files (``xp_sampled_mean_spectrum``, ``gaiaxpy.calibrate`` output, the APOGEE x XP library)
    give :class:`cvae_pms.xp.sampled.SampledBatch` chunks (``batch.sampled`` is True); which
    one is decided from the columns (:func:`table_layout`), the APOGEE library from its FITS
    header before any row is read (it goes through :mod:`cvae_pms.realdata.apogee`, which
    never loads the reserved rows).

    Formats by extension: .csv(.gz), .ecsv(.gz), .fits/.fit/.fits.gz, .vot/.xml/.votable, .avro.
    CSV/ECSV/FITS/Avro are streamed (memory flat in the number of rows; about
    0.5 GB per 10,000 coefficient sources for the two 55 x 55 covariances, 55 MB per 10,000
    sampled ones); a VOTable is parsed whole by astropy and then sliced.

    Raises:
        XPReadError: unknown extension, missing/unreadable file, neither an XP coefficient nor
            a sampled table (the message lists the columns found), no rows.
    """
    from .sampled import assemble_sampled, is_library_file, iter_library_batches

    path = os.fspath(path)
    fmt = xp_format(path)
    if not os.path.isfile(path):
        raise XPReadError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise XPReadError(f"{path}: file is empty")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if fmt == "fits" and is_library_file(path):
        chunks: Iterator[Any] = iter_library_batches(path, chunk_size)
    else:
        chunks = {"csv": lambda: _iter_text(path, "csv", chunk_size),
                  "ecsv": lambda: _iter_text(path, "ecsv", chunk_size),
                  "fits": lambda: _iter_fits(path, chunk_size),
                  "votable": lambda: _iter_votable(path, chunk_size),
                  "avro": lambda: iter_avro(path, chunk_size)}[fmt]()
    row0 = 0
    for chunk in chunks:
        if isinstance(chunk, BatchRows):
            batch = chunk
        else:
            layout, cols = chunk
            batch = (assemble_coefficients(cols, path, row0) if layout == COEFFICIENTS
                     else assemble_sampled(cols, path, row0))
        row0 += len(batch)
        if len(batch):
            yield batch
    if row0 == 0:
        raise XPReadError(f"{path}: no sources (table has no rows)")


def read_xp(path: str | os.PathLike) -> BatchRows:
    """Read a whole XP file: the ``concat`` of :func:`iter_xp`'s batches (an :class:`XPBatch`,
    or a :class:`~cvae_pms.xp.sampled.SampledBatch` for a sampled file)."""
    batches = list(iter_xp(path))
    return type(batches[0]).concat(batches)

