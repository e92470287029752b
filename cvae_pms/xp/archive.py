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
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from cvae_pms.atomic import atomic_path

from .covariance import (N_COEFFICIENTS, N_CORRELATIONS, band_covariance, errors_and_correlations,
                         is_positive_definite, lower_triangle_covariance)
from cvae_pms.errors import CvaePmsError

BANDS = ("bp", "rp")
#: Optional per-source columns carried in ``XPBatch.extra`` (NaN where the file lacks them).
EXTRA_COLUMNS = ("parallax", "parallax_error", "ra", "dec", "phot_g_mean_mag",
                 "bp_standard_deviation", "rp_standard_deviation",
                 "bp_n_measurements", "rp_n_measurements")
N_AVRO_COVARIANCE = N_COEFFICIENTS * (N_COEFFICIENTS + 1) // 2  # 1540

_FORMATS = {".csv": "csv", ".csv.gz": "csv", ".ecsv": "ecsv", ".ecsv.gz": "ecsv", ".fits": "fits", ".fit": "fits", ".fits.gz": "fits",
            ".fit.gz": "fits", ".vot": "votable", ".xml": "votable", ".votable": "votable",
            ".avro": "avro"}


class XPReadError(CvaePmsError):
    """A whole XP file cannot be used (not a table, empty, no readable source, unknown format)."""


class BatchRows:
    """What every batch of sources read from a file has: ``source_id``, ``error`` (per-source
    reason, '' when usable), ``extra`` columns, ``path``; and ``sampled`` (False: XP
    coefficients, :class:`XPBatch`; True: sampled flux, :class:`~cvae_pms.xp.sampled.SampledBatch`)."""

    sampled: ClassVar[bool] = False
    source_id: np.ndarray
    error: np.ndarray

    def __len__(self) -> int:
        return len(self.source_id)

    @property
    def ok(self) -> np.ndarray:
        """(n,) bool: source usable (no error message)."""
        return np.array([not e for e in self.error], dtype=bool)


@dataclass
class XPBatch(BatchRows):
    """XP coefficients and covariances of n sources from one file.

    Unusable sources keep NaN-filled arrays and a non-empty ``error`` message.
    """

    source_id: np.ndarray                 # (n,) int64
    bp_coefficients: np.ndarray           # (n, 55) float64
    rp_coefficients: np.ndarray           # (n, 55)
    bp_covariance: np.ndarray             # (n, 55, 55)
    rp_covariance: np.ndarray             # (n, 55, 55)
    bp_n_parameters: np.ndarray           # (n,) int, coefficients found (0: band missing)
    rp_n_parameters: np.ndarray           # (n,) int
    correlations_present: np.ndarray      # (n,) bool, both bands had correlations/covariances
    error: np.ndarray                     # (n,) object: '' when usable, else the reason(s)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    path: str = ""

    def select(self, mask: np.ndarray) -> "XPBatch":
        """Rows picked by a boolean mask or an index array."""
        return XPBatch(self.source_id[mask], self.bp_coefficients[mask], self.rp_coefficients[mask],
                       self.bp_covariance[mask], self.rp_covariance[mask],
                       self.bp_n_parameters[mask], self.rp_n_parameters[mask],
                       self.correlations_present[mask], self.error[mask],
                       {k: v[mask] for k, v in self.extra.items()}, self.path)

    @classmethod
    def concat(cls, batches: Sequence["XPBatch"]) -> "XPBatch":
        """Join batches row-wise; ``path`` is the first batch's (joined with ';' when they differ)."""
        if not batches:
            return _empty_batch("")
        keys = sorted(set().union(*(b.extra for b in batches)))
        extra = {k: np.concatenate([b.extra.get(k, np.full(len(b), np.nan)) for b in batches])
                 for k in keys}
        paths = list(dict.fromkeys(b.path for b in batches))
        return cls(*(np.concatenate([getattr(b, name) for b in batches]) for name in
                     ("source_id", "bp_coefficients", "rp_coefficients", "bp_covariance",
                      "rp_covariance", "bp_n_parameters", "rp_n_parameters",
                      "correlations_present", "error")),
                   extra=extra, path=";".join(paths))


def _empty_batch(path: str) -> XPBatch:
    n = N_COEFFICIENTS
    return XPBatch(np.zeros(0, np.int64), np.zeros((0, n)), np.zeros((0, n)), np.zeros((0, n, n)),
                   np.zeros((0, n, n)), np.zeros(0, int), np.zeros(0, int), np.zeros(0, bool),
                   np.zeros(0, object), {k: np.zeros(0) for k in EXTRA_COLUMNS}, path)


# ----------------------------------------------------------------------------- format detection
def xp_format(path: str | os.PathLike) -> str:
    """Format name ('csv', 'ecsv', 'fits', 'votable', 'avro') from the file extension."""
    name = Path(path).name.lower()
    for ext in sorted(_FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return _FORMATS[ext]
    raise XPReadError(f"{path}: unknown XP file format (extension); expected one of "
                      f"{', '.join(sorted(_FORMATS))}")


# ----------------------------------------------------------------------------- value parsing
_MISSING_STRINGS = {"", "--", "nan", "null", "none", "()", "[]"}
_NULL = re.compile(r"\bnull\b", re.IGNORECASE)


def _as_values(value: Any) -> np.ndarray | None:
    """One cell -> 1-D float array, or None when the cell is empty/missing."""
    if value is None:
        return None
    if isinstance(value, (bytes, str)):
        text = value.decode() if isinstance(value, bytes) else value
        text = text.strip().strip("()[]").strip()
        if text.lower() in _MISSING_STRINGS:
            return None
        try:                                # the common case: plain numbers
            return np.array(text.split(","), dtype=np.float64)
        except ValueError:
            pass
        text = _NULL.sub("nan", text)       # archive nulls inside an array
        try:
            return np.array(text.split(","), dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f"cannot parse array cell: {exc}") from None
    if isinstance(value, float) and math.isnan(value):
        return None
    if np.ma.is_masked(value) and np.ndim(value) == 0:
        return None
    arr = np.ma.asarray(value)
    if arr.ndim == 0:
        return None
    arr = arr.astype(np.float64).filled(np.nan)
    if arr.size == 0 or np.isnan(arr).all():
        return None
    return arr.ravel()


def _as_scalar(value: Any) -> float:
    try:
        if value is None or np.ma.is_masked(value):
            return math.nan
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# ----------------------------------------------------------------------------- batch assembly
def _fill(cells: Sequence[Any], width: int, what: str, errors: list[list[str]],
          required: bool) -> tuple[np.ndarray, np.ndarray]:
    """Cells -> (m, width) array (NaN rows where unusable) and (m,) lengths (0: missing)."""
    m = len(cells)
    out = np.full((m, width), np.nan)
    lengths = np.zeros(m, dtype=int)
    for i, cell in enumerate(cells):
        try:
            values = _as_values(cell)
        except ValueError as exc:
            errors[i].append(f"{what}: {exc}")
            continue
        if values is None:
            if required:
                errors[i].append(f"{what} missing")
            continue
        lengths[i] = len(values)
        if len(values) != width:
            errors[i].append(f"{what}: {len(values)} values, expected {width}")
            continue
        out[i] = values
    return out, lengths


def parse_source_ids(values: Sequence[Any], row0: int) -> tuple[np.ndarray, list[list[str]]]:
    """source_id cells -> (m,) int64 (0 where unparsable) and per-row error lists (the reason)."""
    values = np.asarray(values)
    errors: list[list[str]] = [[] for _ in range(len(values))]
    sid = np.zeros(len(values), dtype=np.int64)
    for i, s in enumerate(values):
        try:
            sid[i] = int(s)
        except (TypeError, ValueError, OverflowError):
            errors[i].append(f"row {row0 + i}: source_id {s!r} is not an integer")
    return sid, errors


def extra_columns(cols: Mapping[str, Any], m: int) -> dict[str, np.ndarray]:
    """The :data:`EXTRA_COLUMNS` of a chunk as (m,) float64 (NaN where the file lacks them)."""
    return {name: (np.full(m, np.nan) if cols.get(name) is None
                   else np.array([_as_scalar(v) for v in cols[name]], dtype=np.float64))
            for name in EXTRA_COLUMNS}


def _assemble(cols: Mapping[str, Any], path: str, row0: int) -> XPBatch:
    """Raw chunk columns -> validated XPBatch.

    ``cols`` holds ``source_id`` and, per band ``b``, either ``b_coefficients`` (+ ``b_coefficient_errors``,
    optional ``b_coefficient_correlations``) or ``b_coefficients`` + ``b_coefficient_covariances``
    (Avro: lower triangle with diagonal, times ``b_standard_deviation**2``); optional
    ``b_n_parameters`` and any of :data:`EXTRA_COLUMNS`.
    """
    sid, errors = parse_source_ids(cols["source_id"], row0)
    m = len(sid)
    out: dict[str, np.ndarray] = {}
    has_corr = np.ones(m, dtype=bool)
    for band in BANDS:
        B = band.upper()
        coeff, n_found = _fill(cols[f"{band}_coefficients"], N_COEFFICIENTS, f"{B} coefficients",
                               errors, required=False)
        missing = n_found == 0
        for i in np.flatnonzero(missing):
            if not any(e.startswith(f"{B} coefficients") for e in errors[i]):
                errors[i].append(f"{B} band missing")
        band_bad = np.array([any(e.startswith(B) for e in errs) for errs in errors], dtype=bool)
        n_par = cols.get(f"{band}_n_parameters")
        if n_par is not None:
            n_par = np.array([_as_scalar(v) for v in n_par], dtype=np.float64)
            clash = ~band_bad & np.isfinite(n_par) & (n_par != n_found)
            for i in np.flatnonzero(clash):
                errors[i].append(f"{B} n_parameters {int(n_par[i])} but {n_found[i]} coefficients")
        nan_coeff = ~band_bad & np.isnan(coeff).any(axis=1)
        for i in np.flatnonzero(nan_coeff):
            errors[i].append(f"NaN in {B} coefficients")
        live = ~band_bad
        if f"{band}_coefficient_covariances" in cols:
            tri, _ = _fill([c if live[i] else None for i, c in enumerate(cols[f"{band}_coefficient_covariances"])],
                           N_AVRO_COVARIANCE, f"{B} covariance", errors, required=False)
            std = np.array([_as_scalar(v) for v in cols.get(f"{band}_standard_deviation", [1.0] * m)],
                           dtype=np.float64)
            std = np.where(np.isfinite(std), std, 1.0)
            cov = lower_triangle_covariance(np.nan_to_num(tri, nan=0.0)) * (std**2)[:, None, None]
            cov[np.isnan(tri).any(axis=1)] = np.nan
            corr_here = np.isfinite(tri).all(axis=1)
            for i in np.flatnonzero(live & np.isnan(tri).all(axis=1)):
                if not any(e.startswith(f"{B} covariance") for e in errors[i]):
                    errors[i].append(f"{B} covariance missing")
            for i in np.flatnonzero(live & np.isnan(tri).any(axis=1) & ~np.isnan(tri).all(axis=1)):
                errors[i].append(f"NaN in {B} covariance")
        else:
            err, _ = _fill([c if live[i] else None for i, c in enumerate(cols[f"{band}_coefficient_errors"])],
                           N_COEFFICIENTS, f"{B} coefficient errors", errors, required=False)
            for i in np.flatnonzero(live & np.isnan(err).all(axis=1)):
                if not any(e.startswith(f"{B} coefficient errors") for e in errors[i]):
                    errors[i].append(f"{B} coefficient errors missing")
            bad_err = live & np.isfinite(err).all(axis=1) & (err <= 0).any(axis=1)
            for i in np.flatnonzero(bad_err):
                errors[i].append(f"{B} coefficient errors not positive")
            for i in np.flatnonzero(live & np.isnan(err).any(axis=1) & ~np.isnan(err).all(axis=1)):
                errors[i].append(f"NaN in {B} coefficient errors")
            corr_cells = cols.get(f"{band}_coefficient_correlations")
            if corr_cells is None:
                cov = band_covariance(err, None)
                corr_here = np.zeros(m, dtype=bool)
            else:
                corr, n_corr = _fill([c if live[i] else None for i, c in enumerate(corr_cells)],
                                     N_CORRELATIONS, f"{B} coefficient correlations", errors,
                                     required=False)
                corr_here = n_corr == N_CORRELATIONS
                for i in np.flatnonzero(corr_here & np.isnan(corr).any(axis=1)):
                    errors[i].append(f"NaN in {B} coefficient correlations")
                cov = band_covariance(err, np.where(np.isnan(corr), 0.0, corr))
                cov[~corr_here] = band_covariance(err[~corr_here], None)
        has_corr &= corr_here
        out[f"{band}_coefficients"] = coeff
        out[f"{band}_covariance"] = cov
        out[f"{band}_n_parameters"] = n_found
    # positive definiteness of every band that is otherwise fine
    for band in BANDS:
        B = band.upper()
        fine = np.array([not any(e.startswith(B) or e.startswith(f"NaN in {B}") for e in errs)
                         for errs in errors], dtype=bool)
        idx = np.flatnonzero(fine)
        cov = out[f"{band}_covariance"]
        pd_ok = is_positive_definite(cov if fine.all() else cov[idx])
        for i in idx[~pd_ok]:
            errors[i].append(f"{B} covariance not positive definite")
    message = np.array(["; ".join(e) for e in errors], dtype=object)
    bad = message != ""
    for key in ("bp_coefficients", "rp_coefficients", "bp_covariance", "rp_covariance"):
        out[key][bad] = np.nan
    extra = extra_columns(cols, m)
    return XPBatch(sid, out["bp_coefficients"], out["rp_coefficients"], out["bp_covariance"],
                   out["rp_covariance"], out["bp_n_parameters"], out["rp_n_parameters"],
                   has_corr & ~bad, message, extra, path)


# ----------------------------------------------------------------------------- layouts
_PER_VALUE = {"coeff": (r"^{b}_coeff_(\d+)$",),
              "err": (r"^e_{b}_coeff_(\d+)$", r"^{b}_coeff_err_(\d+)$", r"^{b}_coeff_error_(\d+)$")}


def _per_value_columns(names: Sequence[str], band: str, kind: str) -> list[str] | None:
    """Names of one-column-per-coefficient columns (``bp_coeff_0..54``, ``e_bp_coeff_0..54``), in order."""
    for pattern in _PER_VALUE[kind]:
        rx = re.compile(pattern.format(b=band), re.IGNORECASE)
        found = {int(mt.group(1)): n for n in names if (mt := rx.match(n))}
        if found:
            return [found[k] for k in sorted(found)]
    return None


#: Layouts :func:`table_layout` tells apart.
COEFFICIENTS, SAMPLED, APOGEE_LIBRARY = "coefficients", "sampled", "apogee_library"


def _shown_columns(names: Sequence[str], k: int = 12) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > k else ""
    return ", ".join(names[:k]) + more


def table_layout(names: Sequence[str], path: str) -> str:
    """What a table holds, from its column names: :data:`COEFFICIENTS` (``source_id`` and per
    band ``b_coefficients`` or ``b_coeff_0..54``; wins when a table also has flux columns: the
    coefficients carry the correlations) or :data:`SAMPLED` (``source_id``, ``flux``,
    ``flux_error``). Anything else raises :class:`XPReadError` naming the file and its columns;
    so do the APOGEE library's columns (``apogee_id`` + ``medflux``: that file is read only
    through :mod:`cvae_pms.realdata.apogee`, see :func:`iter_xp`)."""
    lower = {n.lower() for n in names}
    if "apogee_id" in lower and "medflux" in lower:
        raise XPReadError(f"{path}: looks like the APOGEE x XP library (apogee_id, medflux) but "
                          "is not its FITS file; it is read only from FITS through "
                          "cvae_pms.realdata.apogee (columns: " + _shown_columns(names) + ")")
    if "source_id" not in lower:
        raise XPReadError(f"{path}: not an XP table: no 'source_id' column (columns: "
                          f"{_shown_columns(names)})")
    has = {band: f"{band}_coefficients" in lower
           or _per_value_columns(names, band, "coeff") is not None for band in BANDS}
    if all(has.values()):
        return COEFFICIENTS
    if "flux" in lower:
        if "xp" in lower:
            raise XPReadError(f"{path}: gaiaxpy.convert output (internally calibrated BP and RP "
                              "spectra in e-/s, column 'xp'), not absolute sampled flux: use "
                              "gaiaxpy.calibrate, or the coefficient file itself (columns: "
                              f"{_shown_columns(names)})")
        if "flux_error" not in lower:
            raise XPReadError(f"{path}: sampled spectra without a 'flux_error' column (the "
                              f"per-pixel errors are needed; columns: {_shown_columns(names)})")
        return SAMPLED
    for band in BANDS:
        if not has[band] and any(has.values()):
            raise XPReadError(f"{path}: not an XP table: no '{band}_coefficients' or "
                              f"'{band}_coeff_0..54' columns (columns: {_shown_columns(names)})")
    raise XPReadError(f"{path}: not an XP table: neither XP coefficients ('bp_coefficients' + "
                      "'rp_coefficients', or 'bp_coeff_0..54' + 'rp_coeff_0..54') nor sampled "
                      f"spectra ('flux' + 'flux_error'); columns found: {_shown_columns(names)}")


def _columns_from_table(get, names: Sequence[str], m: int) -> dict[str, Any]:
    """Build raw chunk columns from a column getter ``get(name) -> sequence of m cells``."""
    by_lower = {n.lower(): n for n in names}
    cols: dict[str, Any] = {"source_id": get(by_lower["source_id"])}
    for band in BANDS:
        per_coeff = _per_value_columns(names, band, "coeff")
        if f"{band}_coefficients" in by_lower:
            for key in ("coefficients", "coefficient_errors", "coefficient_correlations"):
                name = by_lower.get(f"{band}_{key}")
                if name is not None:
                    cols[f"{band}_{key}"] = get(name)
            if f"{band}_coefficient_errors" not in cols:
                cols[f"{band}_coefficient_errors"] = [None] * m
        else:
            cols[f"{band}_coefficients"] = np.column_stack([np.ma.filled(np.ma.asarray(get(n), float), np.nan)
                                                            for n in per_coeff])
            per_err = _per_value_columns(names, band, "err")
            cols[f"{band}_coefficient_errors"] = (
                np.column_stack([np.ma.filled(np.ma.asarray(get(n), float), np.nan) for n in per_err])
                if per_err else [None] * m)
        name = by_lower.get(f"{band}_n_parameters")
        if name is not None:
            cols[f"{band}_n_parameters"] = get(name)
    for extra in EXTRA_COLUMNS:
        name = by_lower.get(extra)
        if name is not None:
            cols[extra] = get(name)
    return cols


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


Chunk = tuple[str, dict[str, Any]]   # (layout, raw columns) yielded by the format readers


def _builder(names: Sequence[str], path: str, conventions: Callable[[], dict[str, float]]
             ) -> tuple[str, Callable[[Callable[[str], Any], int], dict[str, Any]]]:
    """(layout, build(get, m) -> raw chunk columns) for a table with columns ``names``.

    ``conventions()`` (unit factors, after the sampling-grid check) is asked once, and only
    for sampled tables."""
    layout = table_layout(names, path)
    if layout == COEFFICIENTS:
        return layout, lambda get, m: _columns_from_table(get, names, m)
    from .sampled import sampled_columns
    conv = conventions()
    return layout, lambda get, m: sampled_columns(get, names, conv)


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
                layout, build = _builder(list(chunk.columns), path,
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
        layout, build = _builder(names, path, lambda: fits_conventions(path, hdu))
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
    layout, build = _builder(names, path, lambda: votable_conventions(path, vot))
    for start in range(0, len(table), chunk_size):
        rows = table[start:start + chunk_size]
        yield layout, build(lambda n: _votable_cells(rows[n]), len(rows))


def _votable_cells(column: Any) -> Any:
    """A VOTable column as cells: a 2-D array for fixed-length array columns, else a list."""
    if getattr(column, "ndim", 1) == 2:
        return np.ma.filled(np.ma.asarray(column, dtype=np.float64), np.nan)
    return list(column)


_AVRO_MAP = {"source_id": ("sourceId",),
             "{b}_coefficients": ("{b}Spec", "solution", "parameters"),
             "{b}_coefficient_covariances": ("{b}Spec", "solution", "covariance"),
             "{b}_n_parameters": ("{b}Spec", "solution", "numberOfParameters"),
             "{b}_standard_deviation": ("{b}Spec", "solution", "standardDeviation"),
             "{b}_n_measurements": ("{b}Spec", "solution", "numberOfMeasurements")}


def _avro_get(record: Mapping[str, Any], keys: Sequence[str]) -> Any:
    value: Any = record
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _iter_avro(path: str, chunk_size: int) -> Iterator[dict[str, Any]]:
    import fastavro

    with open(path, "rb") as fh:
        try:
            reader = fastavro.reader(fh)
        except Exception as exc:  # fastavro raises ValueError/SchemaParseException etc.
            raise XPReadError(f"{path}: not a readable Avro file ({type(exc).__name__}: {exc})") from None
        records: list[dict[str, Any]] = []
        build = None
        for record in reader:
            if build is None:
                build = _avro_builder(record, path)
            records.append(record)
            if len(records) == chunk_size:
                yield build(records)
                records = []
        if records:
            yield build(records)


def _avro_builder(record: Mapping[str, Any], path: str
                  ) -> Callable[[list[dict[str, Any]]], Chunk]:
    """How to turn Avro records like ``record`` into chunks: Gaia datalink continuous
    spectra (sourceId, bpSpec, rpSpec) or gaiaxpy's sampled output (source_id, flux, ...)."""
    if "sourceId" in record and ("bpSpec" in record or "rpSpec" in record):
        return lambda records: (COEFFICIENTS, _avro_columns(records))
    if "source_id" in record and "flux" in record:
        from .sampled import avro_conventions
        layout, build = _builder(list(record), path, lambda: avro_conventions(path))
        if layout == SAMPLED:
            return lambda records: (layout, build(lambda n: [r.get(n) for r in records],
                                                  len(records)))
    raise XPReadError(f"{path}: Avro records have no sourceId/bpSpec/rpSpec (Gaia XP "
                      "continuous mean spectra) nor source_id/flux/flux_error (gaiaxpy sampled "
                      f"output); fields found: {_shown_columns(list(record))}")


def _avro_columns(records: list[dict[str, Any]]) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    for band in BANDS:
        for key, keys in _AVRO_MAP.items():
            name = key.format(b=band)
            cols[name] = [_avro_get(r, [k.format(b=band) for k in keys]) for r in records]
    return cols


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
                  "avro": lambda: _iter_avro(path, chunk_size)}[fmt]()
    row0 = 0
    for chunk in chunks:
        if isinstance(chunk, BatchRows):
            batch = chunk
        else:
            layout, cols = chunk
            batch = (_assemble(cols, path, row0) if layout == COEFFICIENTS
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


# ----------------------------------------------------------------------------- writer
#: Sources formatted and written per chunk by :func:`write_xp_table`.
WRITE_CHUNK = 256


def _format_rows(values: np.ndarray, bracket: bool = True) -> list[str]:
    """(m, k) floats -> archive cells '[v0,v1,...]' (repr precision); '' for all-NaN rows."""
    out = []
    for row in values:
        if np.isnan(row).all():
            out.append("")
        else:
            out.append("[" + ",".join(repr(float(v)) for v in row) + "]")
    return out


def write_xp_table(path: str | os.PathLike, data: XPBatch | Mapping[str, Any]) -> Path:
    """Write XP spectra in the Gaia archive layout (.csv or .ecsv by extension), atomically.

    Columns: ``source_id, bp/rp_n_parameters, bp/rp_standard_deviation, bp/rp_coefficients,
    bp/rp_coefficient_errors, bp/rp_coefficient_correlations`` then the extra columns. Errors are
    ``sqrt(diag(cov))`` and correlations the strict lower triangle of the correlation matrix in
    Gaia order. Both :func:`read_xp` and ``gaiaxpy.calibrate`` read the result.

    Args:
        path: output file ending in .csv or .ecsv; written to a temporary sibling, then renamed.
        data: an :class:`XPBatch` (only usable sources are written), or a mapping with
            ``source_id`` (n,), ``bp_coefficients``/``rp_coefficients`` (n, 55),
            ``bp_covariance``/``rp_covariance`` (n, 55, 55), optional
            ``bp_standard_deviation``/``rp_standard_deviation`` (n,) (1.0 when absent) and
            ``extra`` (dict name -> (n,) array). A band row of NaN is written as missing.

    Returns:
        The path written.
    """
    import pandas as pd

    path = Path(path)
    fmt = xp_format(path)
    if fmt not in ("csv", "ecsv"):
        raise XPReadError(f"{path}: write_xp_table writes .csv or .ecsv, not {fmt}")
    if not path.parent.is_dir():
        raise XPReadError(f"{path}: output directory {path.parent} does not exist")
    if isinstance(data, XPBatch):
        batch = data.select(data.ok)
        cols: dict[str, Any] = {"source_id": batch.source_id, "extra": dict(batch.extra)}
        for band in BANDS:
            cols[f"{band}_coefficients"] = getattr(batch, f"{band}_coefficients")
            cols[f"{band}_covariance"] = getattr(batch, f"{band}_covariance")
            cols[f"{band}_standard_deviation"] = cols["extra"].pop(f"{band}_standard_deviation", None)
    else:
        cols = dict(data)
    sid = np.asarray(cols["source_id"], dtype=np.int64)
    n = len(sid)
    bands = {}
    for band in BANDS:
        std = cols.get(f"{band}_standard_deviation")
        bands[band] = (
            np.asarray(cols[f"{band}_coefficients"], dtype=np.float64).reshape(n, N_COEFFICIENTS),
            np.asarray(cols[f"{band}_covariance"], dtype=np.float64).reshape(
                n, N_COEFFICIENTS, N_COEFFICIENTS),
            np.ones(n) if std is None else np.where(np.isfinite(np.asarray(std, float)), std, 1.0))
    # extra columns: decided once for the whole table (an all-NaN float column is left out)
    extra = {name: np.asarray(v) for name, v in (cols.get("extra") or {}).items()
             if not (np.asarray(v).dtype.kind == "f" and np.isnan(np.asarray(v)).all())}

    def frame(sl: slice) -> Any:
        """The archive rows of sources ``sl`` as a DataFrame (text cells built per chunk)."""
        m = len(sid[sl])
        out: dict[str, Any] = {"source_id": sid[sl]}
        body: dict[str, Any] = {}
        for band in BANDS:
            coeff, cov, std = (a[sl] for a in bands[band])
            missing = np.isnan(coeff).any(axis=1) | np.isnan(cov).reshape(m, -1).any(axis=1)
            errors, corr = errors_and_correlations(np.where(missing[:, None, None], np.nan, cov))
            out[f"{band}_n_parameters"] = pd.array(
                [None if miss else N_COEFFICIENTS for miss in missing], dtype="Int64")
            body[f"{band}_standard_deviation"] = np.where(missing, np.nan, std)
            body[f"{band}_coefficients"] = _format_rows(np.where(missing[:, None], np.nan, coeff))
            body[f"{band}_coefficient_errors"] = _format_rows(errors)
            body[f"{band}_coefficient_correlations"] = _format_rows(corr)
        out.update(body)
        out.update({name: values[sl] for name, values in extra.items()})
        return pd.DataFrame(out)

    # Streamed in chunks of WRITE_CHUNK sources: the text of a row with correlations is ~50 kB,
    # so building all rows at once took ~2.5 GB for 2000 sources.
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        for k, lo in enumerate(range(0, max(n, 1), WRITE_CHUNK)):
            table = frame(slice(lo, lo + WRITE_CHUNK))
            if k == 0 and fmt == "ecsv":
                fh.write(_ecsv_header(table))
            table.to_csv(fh, index=False, header=k == 0, float_format="%.17g")
    return path


def _ecsv_header(table: Any) -> str:
    """ECSV 1.0 header with ',' delimiter; array columns as strings with a float64 subtype."""
    lines = ["# %ECSV 1.0", "# ---", "# delimiter: ','", "# datatype:"]
    for name in table.columns:
        kind = table[name].dtype.kind
        if name.endswith(("_coefficients", "_coefficient_errors", "_coefficient_correlations")):
            lines += [f"# - {{name: {name}, datatype: string, subtype: 'float64[null]'}}"]
        elif name == "source_id" or kind in "iu" or str(table[name].dtype) == "Int64":
            lines += [f"# - {{name: {name}, datatype: int64}}"]
        elif kind == "f":
            lines += [f"# - {{name: {name}, datatype: float64}}"]
        else:
            lines += [f"# - {{name: {name}, datatype: string}}"]
    lines.append("# schema: astropy-2.0")
    return "\n".join(lines) + "\n"
