"""An empirical correction of the PHOENIX photosphere learned from real APOGEE x XP stars.

Model: the log ratio real/model of a star's XP spectrum depends smoothly on its labels
(T_eff, log g, [M/H]). At each node of the photosphere table the correction is a
kernel-weighted *ratio of sums* over the calibration stars,

    c(lambda; node) = S / (S + kappa) * ln[ sum_i K_i f_i(lambda) / sum_i K_i m_i(lambda) ],

with ``f_i`` the real and ``m_i`` the fitted model flux (A0 and flux scale fitted per star,
:func:`cvae_pms.realdata.fit.fit_photosphere`), each divided by the model's mean over the fit
range, ``K_i`` a Gaussian kernel in (ln T_eff, log g, [M/H]) and ``S = sum_i K_i`` the local
support. Why this form (and not a regression of residual principal components):
- a ratio of sums uses every pixel, also the blue pixels of M dwarfs whose flux is near zero or
  negative in one spectrum (a mean of log ratios would have to drop them, and they hold the
  largest mismatch: real M dwarfs are ~2x brighter at 350 nm than PHOENIX);
- a kernel average is smooth in the labels by construction and cannot extrapolate: the
  shrinkage ``S / (S + kappa)`` makes the correction fade to zero where the calibration stars
  do not reach (hot spots above ~7500 K, metal-poor giants ...), as the grid needs;
- it is cheap to cross-validate (bandwidth and kappa are chosen on held-out stars).
Stars whose residual is an outlier (> 4x the median rms of their neighbourhood: binaries,
wrong labels) are dropped after the first estimate. The correction is then projected, per node,
off the flux-scale and extinction directions (constant and k(lambda)), so it changes only the
spectral shape that neither A0 nor the flux level can mimic, and A0 keeps its meaning. Two passes:
the second fits the residuals left after the first (the LSF smooths a correction applied to the
SED, so one pass under-corrects steep parts). Outside 336-1020 nm the edge value is held.
"""
from __future__ import annotations

import numpy as np

from cvae_pms.physics.extinction import extinction_curve
from cvae_pms.physics.photosphere import load_table
from cvae_pms.xp.sampling import SAMPLING_NM

#: Kernel bandwidths: ln T_eff (0.03 ~ 150 K at 5000 K), log g [dex], [M/H] [dex].
BANDWIDTH = (0.03, 0.3, 0.15)
#: Shrinkage pseudo-count of the support (stars' kernel weight).
KAPPA = 3.0


def _scaled(teff, logg, mh, bandwidth) -> np.ndarray:
    return np.stack([np.log(teff) / bandwidth[0], np.asarray(logg) / bandwidth[1],
                     np.asarray(mh) / bandwidth[2]], axis=-1)


def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Gaussian kernel matrix (na, nb) between scaled label vectors (na, 3), (nb, 3)."""
    d2 = (np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * a @ b.T)
    return np.exp(-0.5 * np.maximum(d2, 0.0))


def node_labels() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T_eff, log g, [M/H]) of every table node, each (nT*nG*nM,), in table order."""
    tab = load_table()
    t, g, m = np.meshgrid(tab.teff_k, tab.logg, tab.mh, indexing="ij")
    return t.ravel(), g.ravel(), m.ravel()


def _normalised(flux: np.ndarray, model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sel = (SAMPLING_NM >= 400) & (SAMPLING_NM <= 1000)
    norm = np.mean(model[:, sel], axis=1, keepdims=True)
    return flux / norm, model / norm


def ratio_of_sums(k: np.ndarray, flux: np.ndarray, model: np.ndarray,
                  kappa: float = KAPPA) -> tuple[np.ndarray, np.ndarray]:
    """Shrunk log ratio (nq, 343) at query points with kernel rows ``k`` (nq, n), and the support
    S (nq,). ``flux``/``model`` (n, 343) as returned by :func:`_normalised`."""
    s = k.sum(1)
    num = k @ flux
    den = k @ model
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where((num > 0) & (den > 0), num / den, 1.0)
    return (s / (s + kappa))[:, None] * np.log(ratio), s


def residual_rms(flux: np.ndarray, model: np.ndarray, flux_error: np.ndarray) -> np.ndarray:
    """Per-star rms of (real - model) / model over 400-1000 nm (n,)."""
    sel = (SAMPLING_NM >= 400) & (SAMPLING_NM <= 1000)
    return np.sqrt(np.mean(((flux - model) / model)[:, sel] ** 2, axis=1))


def project_off(c: np.ndarray, law: str = "G23", r_v: float = 3.1) -> np.ndarray:
    """Remove from each correction row (nq, 343) [ln] its least-squares part along the constant
    and the extinction curve ln-direction (-0.4 ln10 k(lambda)), fitted over 400-1000 nm (the
    range the A0 and scale fits see) and subtracted at every wavelength."""
    k = extinction_curve(SAMPLING_NM, law, r_v)
    basis = np.stack([np.ones_like(k), -0.4 * np.log(10.0) * k], axis=1)     # (343, 2)
    sel = (SAMPLING_NM >= 400) & (SAMPLING_NM <= 1000)
    coef, *_ = np.linalg.lstsq(basis[sel], c[:, sel].T, rcond=None)
    return c - (basis @ coef).T


def to_table_wavelengths(c343: np.ndarray) -> np.ndarray:
    """Correction rows on SAMPLING_NM (..., 343) -> the table's wavelengths (..., nL); the edge
    values are held outside 336-1020 nm."""
    wl = load_table().wavelength_nm
    flat = c343.reshape(-1, SAMPLING_NM.size)
    out = np.stack([np.interp(wl, SAMPLING_NM, row) for row in flat])
    return out.reshape(c343.shape[:-1] + (wl.size,))


def estimate(teff, logg, mh, flux, model, flux_error, query=None, bandwidth=BANDWIDTH,
             kappa: float = KAPPA, clip: float = 4.0, project: bool = True
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass: ln correction (nq, 343) at ``query`` labels (default: the table nodes), support
    (nq,), and the mask of stars kept after outlier rejection (n,)."""
    f, m = _normalised(np.asarray(flux, float), np.asarray(model, float))
    stars = _scaled(teff, logg, mh, bandwidth)
    q = _scaled(*(node_labels() if query is None else query), bandwidth)
    # Outliers: a star far worse than its label neighbours (same kernel, leave-one-in).
    k_ss = kernel(stars, stars)
    c_star, _ = ratio_of_sums(k_ss, f, m, kappa)
    rms = residual_rms(f, m * np.exp(c_star), flux_error)
    local = (k_ss @ rms) / k_ss.sum(1)
    del k_ss
    keep = rms < clip * local
    c, s = ratio_of_sums(kernel(q, stars[keep]), f[keep], m[keep], kappa)
    if project:
        c = project_off(c)
    return c, s, keep


#: Stars at |b| above this [deg] anchor the model's colours (their extinction is small).
HIGH_LATITUDE_DEG = 40.0
#: Assumed mean A0 of those stars [mag] (E(B-V) ~ 0.01-0.05 above |b| = 40 deg).
A0_HIGH_LATITUDE = 0.03


def colour_offset(teff, logg, mh, a0_fit, query=None, bandwidth=BANDWIDTH, kappa: float = KAPPA
                  ) -> np.ndarray:
    """Kernel-averaged excess ``A0_fit - A0_HIGH_LATITUDE`` [mag] of high-latitude stars at the
    query labels (nq,), shrunk to 0 where they are sparse: the model's colour error expressed as
    a spurious extinction. The correction adds ``-0.4 delta k(lambda)`` in log10 flux."""
    stars = _scaled(teff, logg, mh, bandwidth)
    q = _scaled(*(node_labels() if query is None else query), bandwidth)
    k = kernel(q, stars)
    s = k.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(s > 0, k @ (np.asarray(a0_fit) - A0_HIGH_LATITUDE) / s, 0.0)
    return s / (s + kappa) * mean
