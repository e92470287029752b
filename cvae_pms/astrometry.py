"""Parallaxes -> the luminosity channel of the features, and side tables of parallaxes.

The luminosity channel is the log10 of the absolute flux level at 10 pc,

    L10 = log10(norm_w_m2_nm) + 2 log10(d_pc / 10) = log10(norm) + 2 log10(100 / parallax_mas),

(a star at 100 pc would be 100 times brighter at 10 pc), from the observed flux
normalisation ``norm`` (mean calibrated flux over 336-1020 nm in W m^-2 nm^-1,
see :mod:`cvae_pms.features`) and the parallax (d = 1000 / parallax_mas pc).
Its uncertainty is ``2 / ln 10 * parallax_error / parallax`` (first order). A parallax is
usable when it is finite, positive, has a finite positive error and
``parallax / parallax_error >= min_over_error``; otherwise the channel is missing (flag 0).

Parallax zero point: ``zero_point_mas`` is *added* to every parallax before use,
``parallax_used = parallax + zero_point_mas``. Gaia DR3 parallaxes are too small by about
0.017 mas on average (Lindegren et al. 2021: zero point Z ~ -0.017 mas, true = observed - Z),
so ``zero_point_mas = +0.017`` corrects them globally.

Training draws parallaxes for grid spectra with :func:`ops_draw_parallax`: the grid's
coefficients are fluxes at ``reference_distance_pc``; a spectrum scaled from G0 to G lies at
``d = d_ref 10^(0.2 (G - G0))``; its observed parallax is the true one plus Gaussian noise of a
fractional error drawn log-uniformly in a configured range.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvae_pms.errors import CvaePmsError
from cvae_pms.io.tables import ASTROPY_FORMATS, table_format

LN10 = math.log(10.0)
#: Minimum parallax / parallax_error for the luminosity channel (inference default).
DEFAULT_MIN_PARALLAX_OVER_ERROR = 5.0


class AstrometryError(CvaePmsError, ValueError):
    """An astrometry table is missing, unreadable or lacks a needed column (names the file)."""


# ------------------------------------------------------------------------------ channel
def luminosity_channel(log10_norm: np.ndarray, parallax_mas: np.ndarray,
                       parallax_error_mas: np.ndarray, zero_point_mas: float = 0.0,
                       min_over_error: float = DEFAULT_MIN_PARALLAX_OVER_ERROR
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Luminosity channel of n sources (numpy).

    Args:
        log10_norm: (n,) log10 of the observed flux norm [W m^-2 nm^-1].
        parallax_mas, parallax_error_mas: (n,) parallax and its error [mas] (NaN = missing).
        zero_point_mas: added to the parallax before use (DR3: +0.017).
        min_over_error: minimum ``parallax / parallax_error`` for a usable parallax.

    Returns:
        ``(value, error, present)``: log10 absolute flux level at 10 pc [W m^-2 nm^-1] (n,),
        its 1-sigma error [dex] (n,), and a bool mask (n,); value and error are 0 where
        ``present`` is False.
    """
    lg = np.asarray(log10_norm, dtype=np.float64)
    plx = np.asarray(parallax_mas, dtype=np.float64) + float(zero_point_mas)
    err = np.asarray(parallax_error_mas, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        present = (np.isfinite(lg) & np.isfinite(plx) & np.isfinite(err) & (plx > 0)
                   & (err > 0) & (plx >= min_over_error * err))
        safe = np.where(present, plx, 1.0)
        value = np.where(present, lg + 2.0 * np.log10(100.0 / safe), 0.0)
        error = np.where(present, 2.0 / LN10 * err / safe, 0.0)
    return value, error, present


def ops_luminosity_channel(log10_norm, parallax_mas, parallax_error_mas, min_over_error: float):
    """keras.ops version of :func:`luminosity_channel` (any backend; no zero point; float32)."""
    from keras import ops
    lg = ops.cast(log10_norm, "float32")
    plx = ops.cast(parallax_mas, "float32")
    err = ops.cast(parallax_error_mas, "float32")
    present = ops.logical_and(ops.logical_and(plx > 0.0, err > 0.0), plx >= min_over_error * err)
    safe = ops.where(present, plx, 1.0)
    value = ops.where(present, lg + 2.0 * ops.log(100.0 / safe) / LN10, 0.0)
    error = ops.where(present, 2.0 / LN10 * err / safe, 0.0)
    return value, error, present


def draw_parallax(flux_factor: np.ndarray, reference_distance_pc: float, error_frac: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parallaxes [mas] of grid spectra scaled by ``flux_factor`` (n,) (numpy; ``simulate``
    and ``evaluate``).

    The grid's fluxes are at ``reference_distance_pc``, so a spectrum scaled by ``k`` lies at
    ``d = d_ref / sqrt(k)``. Returns ``(true, observed, error)`` (n,): ``1000 / d``, plus one
    Gaussian draw of ``rng`` with sigma ``error_frac x true``, and that sigma.
    """
    true = 1000.0 * np.sqrt(np.asarray(flux_factor, dtype=np.float64)) / float(
        reference_distance_pc)
    err = float(error_frac) * true
    return true, true + err * rng.standard_normal(true.shape), err


def ops_draw_parallax(g0, g, reference_distance_pc: float, frac_error_range: tuple[float, float],
                      drop_fraction: float, key):
    """Observed parallaxes [mas] of training spectra scaled from G0 to G (keras.ops).

    ``d = d_ref 10^(0.2 (G - G0))``; fractional error ``f`` log-uniform in ``frac_error_range``;
    ``parallax = 1000 / d + N(0, f 1000 / d)``, error ``f 1000 / d``. A ``drop_fraction`` of the
    rows get NaN (channel dropped, so the model learns the spectrum-only fallback).

    Returns ``(parallax_mas, parallax_error_mas)`` (n,) float32; ``key`` a stream key or seed
    (:func:`cvae_pms.backend.stream_key`).
    """
    from keras import ops

    from cvae_pms import backend
    keys = backend.split_key(key, 3)
    g0 = ops.cast(g0, "float32")
    g = ops.cast(g, "float32")
    n = (ops.shape(g)[0],)
    plx_true = 1000.0 / (float(reference_distance_pc) * ops.power(10.0, 0.2 * (g - g0)))
    lo, hi = (math.log(float(v)) for v in frac_error_range)
    frac = ops.exp(lo + (hi - lo) * backend.uniform_like(keys[0], n))
    err = frac * plx_true
    plx = plx_true + err * backend.normal(keys[1], n)
    keep = backend.uniform_like(keys[2], n) >= drop_fraction
    nan = ops.full_like(plx, float("nan"))
    return ops.where(keep, plx, nan), ops.where(keep, err, nan)


# ------------------------------------------------------------------------------ tables
@dataclass
class AstrometryTable:
    """Parallaxes of a side table, sorted by source_id for joins."""

    path: Path
    source_id: np.ndarray      # (m,) int64, sorted, unique
    parallax: np.ndarray       # (m,) float64 [mas], NaN where masked
    parallax_error: np.ndarray  # (m,) float64 [mas]

    def lookup(self, source_id: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(parallax, parallax_error, found) for the given source_ids; NaN where not found."""
        sid = np.asarray(source_id, dtype=np.int64)
        plx = np.full(sid.shape, np.nan)
        err = np.full(sid.shape, np.nan)
        if not len(self.source_id):
            return plx, err, np.zeros(sid.shape, bool)
        pos = np.minimum(np.searchsorted(self.source_id, sid), len(self.source_id) - 1)
        found = self.source_id[pos] == sid
        plx[found] = self.parallax[pos[found]]
        err[found] = self.parallax_error[pos[found]]
        return plx, err, found


def read_astrometry(path: str | os.PathLike) -> AstrometryTable:
    """Read a table with ``source_id``, ``parallax`` and ``parallax_error`` (case-insensitive).

    Formats by extension: .csv, .ecsv, .fits/.fit, .vot/.xml/.votable. Masked values become
    NaN. Raises :class:`AstrometryError` for a missing file, unknown format, missing column or
    duplicated source_id (naming the file and the first duplicate).
    """
    from astropy.table import Table
    p = Path(path)
    fmt = table_format(p)
    if fmt is None:
        raise AstrometryError(f"{p}: astrometry table must end in "
                              f"{', '.join(sorted(ASTROPY_FORMATS))}")
    if not p.is_file():
        raise AstrometryError(f"{p}: astrometry table not found")
    try:
        t = Table.read(p, format=fmt)
    except Exception as exc:  # astropy raises many types for malformed files
        raise AstrometryError(f"{p}: cannot read astrometry table: {exc}") from exc
    by_lower = {c.lower(): c for c in t.colnames}
    missing = [c for c in ("source_id", "parallax", "parallax_error") if c not in by_lower]
    if missing:
        raise AstrometryError(f"{p}: astrometry table lacks column(s) {', '.join(missing)} "
                              f"(has {', '.join(t.colnames)})")

    def col(name: str, dtype) -> np.ndarray:
        c = t[by_lower[name]]
        if dtype is np.int64:
            if hasattr(c, "mask") and np.any(c.mask):
                row = int(np.flatnonzero(c.mask)[0])
                raise AstrometryError(f"{p}: row {row}: source_id is missing")
            return np.asarray(c, dtype=np.int64)
        return np.asarray(c.filled(np.nan) if hasattr(c, "filled") else c, dtype=np.float64)

    try:
        sid = col("source_id", np.int64)
        plx, err = col("parallax", np.float64), col("parallax_error", np.float64)
    except (TypeError, ValueError) as exc:
        raise AstrometryError(f"{p}: non-numeric source_id/parallax/parallax_error: {exc}") from exc
    order = np.argsort(sid, kind="stable")
    sid, plx, err = sid[order], plx[order], err[order]
    dup = np.flatnonzero(np.diff(sid) == 0)
    if dup.size:
        raise AstrometryError(f"{p}: source_id {int(sid[dup[0]])} appears more than once "
                              f"({dup.size} duplicates)")
    return AstrometryTable(p, sid, plx, err)
