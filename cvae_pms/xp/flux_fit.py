"""Sampled XP flux -> BP/RP coefficients, by ridge-regularised least squares.

Grids given only as sampled flux (W m^-2 nm^-1 on 336..1020 nm, step 2 nm; 343 samples) are
turned into the coefficients the rest of cvae-pms works with, using the calibration design
matrices of :func:`cvae_pms.xp.sampling.calibration_matrices` (``flux = bp @ A_bp + rp @ A_rp``).

The stacked (110, 343) matrix has a condition number ~3e7: plain least squares fits the flux
but gives absurd coefficients (c0 negative, |c| up to ~10x c0 for model SEDs with sharp
lines). A Tikhonov (ridge) term ``lambda = RIDGE_ALPHA * s_max`` damps the directions the
sampled flux does not constrain. With RIDGE_ALPHA = 1e-4, fluxes that are themselves XP
spectra (2000 real Gaia DR3 sources) round-trip to a median 3e-4 (relative L2), and
coefficients of non-XP model SEDs stay sane (largest |c| = c0). High-order coefficients are
not recoverable from sampled flux (they differ from the archive ones by ~20 % in norm), so
the flux, not the coefficients, is the quantity that is reproduced.

Example
-------
>>> import numpy as np
>>> from cvae_pms.xp.sampling import calibration_matrices
>>> from cvae_pms.xp.flux_fit import flux_to_coefficients
>>> a_bp, a_rp = calibration_matrices()
>>> flux = np.ones((1, 55)) @ a_bp + np.ones((1, 55)) @ a_rp
>>> bp, rp, rel = flux_to_coefficients(flux)
>>> bool(rel[0] < 0.01)
True
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

#: Ridge strength relative to the largest singular value of the stacked design matrix.
RIDGE_ALPHA = 1e-4
N_COEFF = 55
N_FLUX = 343


@lru_cache(maxsize=4)
def _ridge_operator(alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(solve (343,110), design (110,343)): coefficients = flux @ solve; flux = coeff @ design."""
    from cvae_pms.xp.sampling import calibration_matrices

    a_bp, a_rp = calibration_matrices()
    design = np.vstack([np.asarray(a_bp, dtype=np.float64), np.asarray(a_rp, dtype=np.float64)])
    if design.shape != (2 * N_COEFF, N_FLUX):
        raise ValueError(f"calibration matrices have shape {design.shape}, "
                         f"expected ({2 * N_COEFF}, {N_FLUX})")
    u, s, vt = np.linalg.svd(design, full_matrices=False)  # design = u diag(s) vt
    lam = alpha * s[0]
    solve = (vt.T * (s / (s ** 2 + lam ** 2))) @ u.T
    solve.setflags(write=False)
    design.setflags(write=False)
    return solve, design


@lru_cache(maxsize=4)
def ridge_projection(alpha: float = RIDGE_ALPHA) -> np.ndarray:
    """The ridge least-squares map as a matrix P (110, 343): ``[bp, rp] = P @ flux``.

    Linear in the flux, so a flux-space perturbation ``d`` (W m^-2 nm^-1) becomes the
    coefficient perturbation ``P @ d`` and a flux covariance ``S`` the coefficient covariance
    ``P S P^T``. Rows 0-54 give BP, 55-109 RP. Read-only, cached per ``alpha``.
    """
    solve, _ = _ridge_operator(float(alpha))
    proj = np.ascontiguousarray(solve.T)
    proj.setflags(write=False)
    return proj


def flux_to_coefficients(flux: np.ndarray, alpha: float = RIDGE_ALPHA
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit BP/RP coefficients to sampled spectra.

    Args:
        flux (ndarray): (n, 343) flux [W m^-2 nm^-1] on 336..1020 nm, step 2 nm.
        alpha (float): ridge strength relative to the largest singular value.

    Returns:
        (bp, rp, rel_residual): bp and rp (n, 55) coefficients, and per spectrum
        ``||flux - calibrated|| / ||flux||`` (n,), dimensionless (NaN for an all-zero flux).
    """
    flux = np.asarray(flux, dtype=np.float64)
    if flux.ndim != 2 or flux.shape[1] != N_FLUX:
        raise ValueError(f"flux has shape {flux.shape}, expected (n, {N_FLUX})")
    solve, design = _ridge_operator(float(alpha))
    coeff = flux @ solve
    resid = flux - coeff @ design
    norm = np.linalg.norm(flux, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(norm > 0, np.linalg.norm(resid, axis=1) / norm, np.nan)
    return coeff[:, :N_COEFF], coeff[:, N_COEFF:], rel
