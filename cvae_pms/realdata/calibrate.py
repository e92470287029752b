"""Calibrate the built-in forward model on real stars: photosphere correction + model error.

:func:`build_correction` learns the empirical photosphere correction
(:mod:`cvae_pms.realdata.correction`) from labelled real spectra; :func:`estimate_model_error`
turns the residuals that remain into the data-driven model-error term
(:class:`cvae_pms.xp.model_error.ModelError`); :func:`calibrate` does both the way the shipped
files were made (``scripts/calibrate_forward_model.py``): the correction from all calibration
stars, the model error from *cross-fitted* residuals (a correction built on one half of the
stars, residuals of the other half, and vice versa), so the error is not underestimated by
the correction having seen the stars.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cvae_pms.physics.extinction import extinction_curve
from cvae_pms.physics.photosphere import in_table, load_table
from cvae_pms.realdata import correction as C
from cvae_pms.realdata.apogee import Library
from cvae_pms.realdata.fit import PhotosphereFit, fit_photosphere
from cvae_pms.xp.model_error import ModelError
from cvae_pms.xp.sampling import SAMPLING_NM

#: Iterations of the high-latitude colour anchor.
ANCHOR_ITERATIONS = 2
#: Stars used: labels inside the photosphere table, T_eff below this [K].
TEFF_MAX = 8000.0
#: T_eff nodes of the model-error term [K].
MODEL_ERROR_NODES = (3400.0, 3800.0, 4250.0, 4750.0, 5250.0, 5750.0, 6500.0)
#: Low-rank factors kept per node.
MODEL_ERROR_RANK = 40
#: Fractional residuals are clipped to +-this before the covariance (near-zero blue flux).
DELTA_CLIP = 0.5


def usable(lib: Library) -> np.ndarray:
    """(n,) stars with finite spectra, positive errors and labels inside the table below TEFF_MAX."""
    lab = lib.labels
    ok = in_table(lab["teff"], lab["logg"], lab["fe_h"]) & (lab["teff"] < TEFF_MAX)
    return ok & np.all(np.isfinite(lib.flux), 1) & np.all(lib.flux_error > 0, 1)


@dataclass
class Correction:
    """A learned correction: ``log10_correction`` (nT, nG, nM, nL) on the table nodes,
    ``support`` (nT, nG, nM) kernel weight of the stars, the final per-star ``fit`` and
    ``meta`` (settings, star counts)."""

    log10_correction: np.ndarray
    support: np.ndarray
    fit: PhotosphereFit
    meta: dict = field(default_factory=dict)


def build_correction(lib: Library, passes: int = 2, log: Callable[[str], None] = lambda s: None
                     ) -> Correction:
    """Learn the photosphere correction from ``lib`` (its usable stars; see module docs)."""
    lib = lib.select(usable(lib))
    t, g, m = lib.labels["teff"], lib.labels["logg"], lib.labels["fe_h"]
    tab = load_table()
    shape = (tab.teff_k.size, tab.logg.size, tab.mh.size)
    off = np.zeros(shape + (tab.wavelength_nm.size,))
    fit = fit_photosphere(lib.flux, lib.flux_error, t, g, m, correction=None)
    kept = []
    for p in range(passes):
        c, s, keep = C.estimate(t, g, m, lib.flux, fit.model, lib.flux_error)
        kept.append(int(keep.sum()))
        off += C.to_table_wavelengths(c.reshape(shape + (SAMPLING_NM.size,))) / np.log(10.0)
        fit = fit_photosphere(lib.flux, lib.flux_error, t, g, m, correction=None, log10_offset=off)
        log(f"correction pass {p + 1}: {keep.sum()} of {keep.size} stars kept")
    b = lib.galactic_latitude_deg()
    hl = np.abs(b) > C.HIGH_LATITUDE_DEG
    k_tab = extinction_curve(tab.wavelength_nm)
    for it in range(ANCHOR_ITERATIONS):   # the LSF makes one step fall short in steep SEDs
        delta = C.colour_offset(t[hl], g[hl], m[hl], fit.a0[hl])
        off += (-0.4 * delta[:, None] * k_tab[None, :]).reshape(off.shape)
        fit = fit_photosphere(lib.flux, lib.flux_error, t, g, m, correction=None,
                              log10_offset=off)
        log(f"colour anchor {it + 1}: {hl.sum()} stars at |b| > {C.HIGH_LATITUDE_DEG} deg; "
            f"node offsets {np.percentile(delta, [1, 50, 99]).round(3).tolist()} mag (1/50/99 %)")
    off = conserve_bolometric_flux(off)
    meta = {"n_stars": int(len(lib)), "n_kept_per_pass": kept, "passes": passes,
            "bolometric_flux": "conserved per node (a constant log10 offset per node)",
            "bandwidth_ln_teff_logg_mh": list(C.BANDWIDTH), "kappa": C.KAPPA,
            "n_high_latitude": int(hl.sum()), "high_latitude_deg": C.HIGH_LATITUDE_DEG,
            "a0_high_latitude": C.A0_HIGH_LATITUDE, "anchor_iterations": ANCHOR_ITERATIONS,
            "teff_max": TEFF_MAX}
    return Correction(off.astype(np.float32), s.reshape(shape).astype(np.float32), fit, meta)


def conserve_bolometric_flux(log10_correction: np.ndarray) -> np.ndarray:
    """Add a constant per node so the corrected surface flux integrates to the plain table's
    (integral over the table's wavelengths; the flux outside them is unchanged): the correction
    changes the spectral shape, never the luminosity sigma T_eff^4 of a node, which the
    accretion spot's contrast and the luminosity channel depend on."""
    tab = load_table(None)
    wl = tab.wavelength_nm
    base = 10.0 ** tab.log_flux.astype(np.float64)
    before = np.trapezoid(base, wl, axis=-1)
    after = np.trapezoid(base * 10.0 ** log10_correction, wl, axis=-1)
    return log10_correction + np.log10(before / after)[..., None]


def fractional_residuals(flux: np.ndarray, flux_error: np.ndarray, model: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """delta = real / model - 1 clipped to +-DELTA_CLIP, and its photon-noise variance (n, 343)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.clip(np.where(model > 0, flux / model - 1.0, 0.0), -DELTA_CLIP, DELTA_CLIP)
        noise = np.where(model > 0, (flux_error / model) ** 2, 0.0)
    return delta, np.minimum(noise, DELTA_CLIP ** 2)


def estimate_model_error(delta: np.ndarray, noise_var: np.ndarray, teff: np.ndarray,
                         nodes=MODEL_ERROR_NODES, rank: int = MODEL_ERROR_RANK,
                         meta: dict | None = None) -> ModelError:
    """Model-error term from fractional residuals (n, 343) of stars at T_eff (n,) [K].

    Per node: the hat-weighted second moment of ``delta`` minus the mean photon-noise variance on
    the diagonal (floored at (0.1 %)^2), eigen-decomposed; the top ``rank`` components are the
    factors, the rest of the diagonal the independent remainder.
    """
    me = ModelError(np.asarray(nodes, float), np.zeros((len(nodes), 343, 1)),
                    np.zeros((len(nodes), 343)))
    w = me.weights(teff)                                              # (n, B)
    factors, diag, counts = [], [], []
    for b in range(len(nodes)):
        wb = w[:, b]
        sw = wb.sum()
        cov = (delta * wb[:, None]).T @ delta / sw
        noise = (wb @ noise_var) / sw
        var = np.maximum(np.diag(cov) - noise, 1e-6)
        cov = cov - np.diag(np.diag(cov)) + np.diag(var)
        vals, vecs = np.linalg.eigh(cov)
        vals, vecs = vals[::-1][:rank], vecs[:, ::-1][:, :rank]
        f = vecs * np.sqrt(np.maximum(vals, 0.0))
        rest = np.maximum(var - np.sum(f ** 2, 1), 0.0)
        factors.append(f)
        diag.append(np.sqrt(rest))
        counts.append(float(sw))
    return ModelError(np.asarray(nodes, float), np.stack(factors), np.stack(diag), "empirical",
                      {**(meta or {}), "effective_stars_per_node": counts, "rank": rank,
                       "delta_clip": DELTA_CLIP})
