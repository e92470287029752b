"""Gaia XP coefficients -> calibrated sampled flux (W m^-2 nm^-1) on 336..1020 nm, in numpy.

The matrices are gaiaxpy's shipped default-sampling configuration (the ``XpSampling`` design
matrices and ``XpMerge`` weights of ``config/filters/XpFilter_v375wiv142r.xml``, read with
gaiaxpy's own loaders), so ``sampled_flux`` reproduces ``gaiaxpy.calibrate(...)`` with its
default sampling to rounding error, but vectorised over many sources at once::

    >>> from cvae_pms.xp.sampling import sampled_flux, SAMPLING_NM
    >>> flux_w_m2_nm = sampled_flux(bp_coefficients, rp_coefficients)   # (n, 343)

A missing band (a row of NaN coefficients) leaves NaN only where that band has merge weight
(BP below 642 nm, RP above 636 nm), as gaiaxpy does.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

#: Wavelengths of the default XP sampling, nm: 336, 338, ..., 1020 (343 values).
SAMPLING_NM: np.ndarray = np.arange(336.0, 1020.0 + 1.0, 2.0)
SAMPLING_NM.setflags(write=False)

N_COEFFICIENTS = 55


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a


@lru_cache(maxsize=1)
def _default_configuration() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """gaiaxpy's default design matrices (55, 343) and merge weights (343,), per band."""
    from gaiaxpy.core.config import load_xpmerge_from_xml, load_xpsampling_from_xml

    grid_nm, merge = load_xpmerge_from_xml()
    design = load_xpsampling_from_xml()
    if grid_nm.shape != SAMPLING_NM.shape or not np.allclose(grid_nm, SAMPLING_NM):
        raise RuntimeError("gaiaxpy's default XP sampling grid is not 336..1020 nm in 2 nm steps")
    return (_readonly(design["bp"]), _readonly(design["rp"]),
            _readonly(merge["bp"]), _readonly(merge["rp"]))


def design_matrices() -> tuple[np.ndarray, np.ndarray]:
    """Unmerged design matrices ``(D_bp, D_rp)``, each (55, 343), W m^-2 nm^-1 per unit coefficient."""
    d_bp, d_rp, _, _ = _default_configuration()
    return d_bp, d_rp


def merge_weights() -> tuple[np.ndarray, np.ndarray]:
    """Merge weights ``(w_bp, w_rp)``, each (343,): BP alone below 636 nm, RP alone above 642 nm."""
    _, _, w_bp, w_rp = _default_configuration()
    return w_bp, w_rp


@lru_cache(maxsize=1)
def calibration_matrices() -> tuple[np.ndarray, np.ndarray]:
    """Merged matrices ``(A_bp, A_rp)``, each (55, 343), so that ``flux = bp @ A_bp + rp @ A_rp``."""
    d_bp, d_rp, w_bp, w_rp = _default_configuration()
    return _readonly(d_bp * w_bp[None, :]), _readonly(d_rp * w_rp[None, :])


def _band_rows(values: np.ndarray, ndim: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return values with NaN rows zeroed and the (n,) mask of rows that had any NaN."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == ndim - 1:
        values = values[None]
    if values.ndim != ndim or values.shape[1] != N_COEFFICIENTS:
        raise ValueError(f"{name}: expected shape (n, {', '.join(['55'] * (ndim - 1))}), got {values.shape}")
    missing = np.isnan(values).reshape(len(values), -1).any(axis=1)
    if missing.any():
        values = np.where(missing.reshape((-1,) + (1,) * (ndim - 1)), 0.0, values)
    return values, missing


def _blank_missing(out: np.ndarray, bp_missing: np.ndarray, rp_missing: np.ndarray) -> np.ndarray:
    w_bp, w_rp = merge_weights()
    if bp_missing.any():
        out[np.ix_(bp_missing, w_bp > 0)] = np.nan
    if rp_missing.any():
        out[np.ix_(rp_missing, w_rp > 0)] = np.nan
    return out


def sampled_flux(bp: np.ndarray, rp: np.ndarray) -> np.ndarray:
    """Calibrated flux on :data:`SAMPLING_NM`.

    Args:
        bp, rp: (n, 55) or (55,) BP / RP coefficients (archive units, e-/s per basis).

    Returns:
        (n, 343) flux in W m^-2 nm^-1.
    """
    a_bp, a_rp = calibration_matrices()
    bp, bp_missing = _band_rows(bp, 2, "bp")
    rp, rp_missing = _band_rows(rp, 2, "rp")
    return _blank_missing(bp @ a_bp + rp @ a_rp, bp_missing, rp_missing)


def _propagated_variance(cov: np.ndarray, a: np.ndarray) -> np.ndarray:
    """diag(A^T C A) per source, (n, 343), via one large matrix product (no 343 x 343 matrices)."""
    n, k = cov.shape[0], cov.shape[1]
    ca = (cov.reshape(n * k, k) @ a).reshape(n, k, a.shape[1])
    return np.einsum("ik,nik->nk", a, ca)


def sampled_flux_error(bp_cov: np.ndarray, rp_cov: np.ndarray) -> np.ndarray:
    """1-sigma flux error on :data:`SAMPLING_NM`: sqrt of the diagonal of the propagated covariance.

    Args:
        bp_cov, rp_cov: (n, 55, 55) or (55, 55) coefficient covariances.

    Returns:
        (n, 343) flux error in W m^-2 nm^-1 (no 343 x 343 matrix is formed).
    """
    a_bp, a_rp = calibration_matrices()
    bp_cov, bp_missing = _band_rows(bp_cov, 3, "bp_cov")
    rp_cov, rp_missing = _band_rows(rp_cov, 3, "rp_cov")
    var = _propagated_variance(bp_cov, a_bp) + _propagated_variance(rp_cov, a_rp)
    return _blank_missing(np.sqrt(np.clip(var, 0.0, None)), bp_missing, rp_missing)


def sampled_flux_covariance(bp_cov: np.ndarray, rp_cov: np.ndarray) -> np.ndarray:
    """Full (n, 343, 343) flux covariance in (W m^-2 nm^-1)^2; 0.9 MB per source, so for small n."""
    a_bp, a_rp = calibration_matrices()
    bp_cov, bp_missing = _band_rows(bp_cov, 3, "bp_cov")
    rp_cov, rp_missing = _band_rows(rp_cov, 3, "rp_cov")
    cov = a_bp.T @ bp_cov @ a_bp + a_rp.T @ rp_cov @ a_rp
    cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))  # exactly symmetric despite rounding
    w_bp, w_rp = merge_weights()
    for missing, weight in ((bp_missing, w_bp), (rp_missing, w_rp)):
        if missing.any():
            touched = weight > 0
            sub = cov[missing]
            sub[:, touched, :] = np.nan
            sub[:, :, touched] = np.nan
            cov[missing] = sub
    return cov
