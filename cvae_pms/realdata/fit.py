"""The built-in photosphere against real XP spectra: A0 + flux-scale fits and residuals.

For a star with labels (T_eff, log g, [M/H]) the model is the (optionally corrected)
photosphere with no accretion (log Mdot at the box floor, ff = 0, so the spot and slab vanish),
reddened by A0 with the G23 law and seen through the XP instrument operator:
``m(A0) = T (F_phot 10^(-0.4 A0 k))`` with ``T`` the linear SED -> calibrated-flux map
(:func:`cvae_pms.xp.instrument.coefficient_operator` then gaiaxpy's design matrices). For each A0
on a grid the best flux scale is analytic (weighted least squares), the chi^2 minimum is refined
with a parabola, and the residual is evaluated at the refined A0.

Weights ``1 / (err^2 + (floor * flux)^2)`` on ``FIT_RANGE_NM``: the floor (1 %) stops the
bright red pixels of cool stars from dominating through their tiny photon errors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvae_pms.physics.extinction import extinction_curve
from cvae_pms.physics.photosphere import DEFAULT_CORRECTION, surface_flux, table_wavelength_nm
from cvae_pms.xp.sampling import SAMPLING_NM

#: Wavelengths used to fit A0 and the flux scale [nm].
FIT_RANGE_NM = (400.0, 1000.0)
#: Fractional error floor of the fit weights.
WEIGHT_FLOOR = 0.01
#: A0 grid of the fit [mag]. Negative values are allowed: a fitted A0 < 0 means the model is
#: redder than the star (what the colour anchor of the correction needs to see). A0 at either
#: end is reported as a bound (``a0_at_edge``).
A0_GRID = np.arange(-1.0, 6.0 + 1e-9, 0.05)


def calibrated_flux_operator() -> np.ndarray:
    """(m, 343): SED on the photosphere table wavelengths -> noise-free calibrated XP flux."""
    from cvae_pms.xp.instrument import coefficient_operator
    from cvae_pms.xp.sampling import calibration_matrices

    op, _ = coefficient_operator(table_wavelength_nm())
    a_bp, a_rp = calibration_matrices()
    return op.T @ np.vstack([a_bp, a_rp])


@dataclass
class PhotosphereFit:
    """Per-star result (n,): fitted ``a0`` [mag], ``scale`` (flux ratio real/model),
    ``chi2_red`` on the fit range, ``a0_at_edge`` (A0 at the grid's top); ``model`` (n, 343)
    the scaled model flux at the fitted A0 [W m^-2 nm^-1]."""

    a0: np.ndarray
    scale: np.ndarray
    chi2_red: np.ndarray
    a0_at_edge: np.ndarray
    model: np.ndarray


def photosphere_sed(teff: np.ndarray, logg: np.ndarray, mh: np.ndarray,
                    correction: str | None = DEFAULT_CORRECTION,
                    log10_offset: np.ndarray | None = None) -> np.ndarray:
    """Surface flux (n, m) on the table wavelengths at the labels [W m^-2 nm^-1], with a named
    correction and/or an extra log10 offset table (nT, nG, nM, m) interpolated at the labels."""
    from cvae_pms.physics.photosphere import interpolate_nodes
    sed = surface_flux(teff, logg, mh, correction=correction)
    if log10_offset is not None:
        sed = sed * 10.0 ** interpolate_nodes(log10_offset, teff, logg, mh)
    return sed


def fit_photosphere(flux: np.ndarray, flux_error: np.ndarray, teff: np.ndarray,
                    logg: np.ndarray, mh: np.ndarray, correction: str | None = DEFAULT_CORRECTION,
                    chunk: int = 256, law: str = "G23", r_v: float = 3.1,
                    log10_offset: np.ndarray | None = None) -> PhotosphereFit:
    """Fit A0 and the flux scale of the no-accretion model to real spectra.

    Args:
        flux, flux_error: (n, 343) real XP sampled flux and error [W m^-2 nm^-1].
        teff [K], logg [dex], mh [dex]: (n,) labels (inside the photosphere table).
        correction: photosphere correction name (None: the plain PHOENIX table).
        chunk: stars per vectorised block.
        log10_offset: optional extra correction on the table nodes (see :func:`photosphere_sed`).
    """
    flux = np.asarray(flux, np.float64)
    err = np.asarray(flux_error, np.float64)
    n = flux.shape[0]
    t_op = calibrated_flux_operator()
    k = extinction_curve(table_wavelength_nm(), law, r_v)
    ext = 10.0 ** (-0.4 * A0_GRID[:, None] * k[None, :])             # (nA, m)
    sel = (SAMPLING_NM >= FIT_RANGE_NM[0]) & (SAMPLING_NM <= FIT_RANGE_NM[1])
    out = PhotosphereFit(np.empty(n), np.empty(n), np.empty(n), np.zeros(n, bool),
                         np.empty((n, SAMPLING_NM.size)))
    for lo in range(0, n, chunk):
        sl = slice(lo, min(lo + chunk, n))
        sed = photosphere_sed(teff[sl], logg[sl], mh[sl], correction, log10_offset)  # (c, m)
        f, e = flux[sl][:, sel], err[sl][:, sel]
        w = 1.0 / (e ** 2 + (WEIGHT_FLOOR * np.abs(f)) ** 2)
        m = np.einsum("cm,am,mp->cap", sed, ext, t_op[:, sel], optimize=True)  # (c, nA, p)
        swm = np.einsum("cp,cap->ca", w * f, m)
        smm = np.einsum("cp,cap->ca", w, m * m)
        chi2 = np.einsum("cp->c", w * f * f)[:, None] - swm ** 2 / smm
        j = np.clip(np.argmin(chi2, axis=1), 1, A0_GRID.size - 2)
        r = np.arange(j.size)
        c0, c1, c2 = chi2[r, j - 1], chi2[r, j], chi2[r, j + 1]
        den = c0 - 2 * c1 + c2
        shift = np.where(den > 0, 0.5 * (c0 - c2) / np.where(den > 0, den, 1.0), 0.0)
        a0 = A0_GRID[j] + np.clip(shift, -1, 1) * (A0_GRID[1] - A0_GRID[0])
        model = (sed * 10.0 ** (-0.4 * a0[:, None] * k[None, :])) @ t_op       # (c, 343)
        mf = model[:, sel]
        s = np.sum(w * f * mf, 1) / np.sum(w * mf * mf, 1)
        out.a0[sl], out.scale[sl] = a0, s
        out.chi2_red[sl] = np.sum(w * (f - s[:, None] * mf) ** 2, 1) / (sel.sum() - 2)
        jmin = np.argmin(chi2, axis=1)
        out.a0_at_edge[sl] = (jmin == 0) | (jmin == A0_GRID.size - 1)
        out.model[sl] = s[:, None] * model
    return out


def log_residuals(flux: np.ndarray, flux_error: np.ndarray, model: np.ndarray,
                  min_snr: float = 5.0, clip: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Natural-log ratio real/model (n, 343) and its validity mask.

    A pixel is valid where the real flux is above ``min_snr`` times its error and the model is
    positive; ratios are clipped to +-``clip`` (a factor 4.5) so single bad pixels cannot
    dominate averages. Invalid pixels are 0 in the returned ratio.
    """
    flux, err, model = (np.asarray(a, np.float64) for a in (flux, flux_error, model))
    valid = (flux > min_snr * err) & (model > 0) & np.isfinite(flux) & (err > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(valid, np.log(np.where(valid, flux / np.where(model > 0, model, 1.0), 1.0)),
                     0.0)
    return np.clip(r, -clip, clip), valid
