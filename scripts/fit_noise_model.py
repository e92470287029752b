"""Fit the XP noise model's background and floor per band on real Gaia DR3 XP spectra.

Data: ``xp_continuous_combined_chunk0.fits`` (2000 DR3 sources with coefficients and their
errors, no transit counts, no correlations). Every source is assumed to have 40 transits (the
file has no ``bp_n_transits``; 40 is typical of DR3 XP spectra with G < 17.65).

For each band, B (e-/s/sample), f_floor and the AR(1) correlation of neighbouring samples
are found by robust least squares on
``log(sigma_model / sigma_real)`` over all 55 coefficients of a random subset of sources, plus
(with equal total weight) the log ratio of the per-pixel flux errors (diagonal covariances
propagated through the calibration matrices, every third pixel of the band), where
``sigma_model`` is the square root of the diagonal of :func:`coefficient_covariance` evaluated at
the source's own (real) coefficients. The result, with per-G-bin median ratios (coefficients and
per-pixel flux errors at 400, 550, 800 nm) and the date, goes to
``cvae_pms/data/xp_noise_model.json``.

Usage::

    python scripts/fit_noise_model.py [--data FITS] [--n-fit 1000] [--seed 0] [--out JSON]
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import time
from pathlib import Path

import numpy as np
from astropy.table import Table
from scipy.optimize import least_squares

from cvae_pms.xp.noise import NoiseModel, coefficient_covariance
from cvae_pms.xp.photometry import g_mag
from cvae_pms.xp.sampling import (SAMPLING_NM, calibration_matrices, merge_weights, sampled_flux,
                                  sampled_flux_error)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared/data/real_xp/xp_spectral_lines/xp_continuous_combined_chunk0.fits"
DEFAULT_OUT = ROOT / "cvae_pms/data/xp_noise_model.json"
ASSUMED_TRANSITS = 40
G_BINS = np.arange(9.0, 20.0, 1.0)
MIN_FIT_BIN = 20
CHECK_NM = (400.0, 550.0, 800.0)


def load_real(path: Path) -> dict[str, np.ndarray]:
    """Coefficients and errors (n, 55) per band from the FITS table, finite rows only."""
    t = Table.read(path)
    out = {}
    for band in ("bp", "rp"):
        out[band] = np.stack([np.asarray(t[f"{band}_coeff_{i}"], float) for i in range(55)], axis=1)
        out[f"e_{band}"] = np.stack([np.asarray(t[f"e_{band}_coeff_{i}"], float) for i in range(55)], axis=1)
    ok = np.all([np.isfinite(v).all(1) for v in out.values()], axis=0)
    ok &= (out["e_bp"] > 0).all(1) & (out["e_rp"] > 0).all(1)
    return {k: v[ok] for k, v in out.items()}


def model_errors(real: dict, model: NoiseModel) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    cov_bp, cov_rp = coefficient_covariance(real["bp"], real["rp"], ASSUMED_TRANSITS, model)
    return (np.sqrt(np.diagonal(cov_bp, axis1=1, axis2=2)), np.sqrt(np.diagonal(cov_rp, axis1=1, axis2=2)),
            cov_bp, cov_rp)


FITTED = ("background_e_s", "floor_fraction", "sample_correlation")
START = {"background_e_s": 40.0, "floor_fraction": 0.02, "sample_correlation": 0.5}


def fit_band(real: dict, band: int, base: NoiseModel) -> tuple[NoiseModel, dict]:
    """Robust fit of the log of every FITTED constant for one band; returns the model and fit info."""
    name = ("bp", "rp")[band]

    def with_params(p: np.ndarray) -> NoiseModel:
        kw = {}
        for key, v in zip(FITTED, np.exp(p)):
            pair = list(getattr(base, key))
            pair[band] = float(v)
            kw[key] = tuple(pair)
        return dataclasses.replace(base, **kw)

    a = calibration_matrices()[band]
    pixels = np.flatnonzero((merge_weights()[band] >= 1.0)
                            & np.any([np.abs(SAMPLING_NM - w) <= 10.0 for w in CHECK_NM], axis=0))
    groups = [np.abs(SAMPLING_NM[pixels] - w) <= 10.0 for w in CHECK_NM]
    groups = [grp for grp in groups if grp.any()]
    a2 = a[:, pixels] ** 2
    flux = np.abs(real[name] @ a[:, pixels])
    log_flux_err_real = np.log(np.sqrt(real[f"e_{name}"] ** 2 @ a2) / flux)
    g = g_mag(real["bp"], real["rp"])
    bins = [sel for lo in G_BINS if (sel := (g >= lo) & (g < lo + 1)).sum() >= MIN_FIT_BIN]
    # the acceptance bands are 0.8-1.25 for coefficients and 1/1.5-1.5 for flux errors:
    # weight the flux residuals so that equal residuals mean equal margins.
    flux_weight = np.log(1.25) / np.log(1.5)

    def residuals(p: np.ndarray) -> np.ndarray:
        err = model_errors(real, with_params(p))[band]
        coef = np.log(err / real[f"e_{name}"])  # (n, 55)
        pix = np.log(np.sqrt(err**2 @ a2) / flux) - log_flux_err_real  # (n, n_pixels)
        # per G bin: median log ratio of the coefficient errors and of the per-pixel flux
        # errors within 10 nm of each check wavelength in the band
        out = []
        for sel in bins:
            out.append(np.median(coef[sel]))
            out += [flux_weight * np.median(pix[sel][:, grp]) for grp in groups]
        return np.asarray(out)

    p0 = np.log([START[k] for k in FITTED])
    res = least_squares(residuals, p0, diff_step=1e-3, max_nfev=80,
                        bounds=(np.log([1e-2, 1e-5, 1e-4]), np.log([1e3, 0.5, 0.95])))
    r = res.fun
    return with_params(res.x), {"nfev": int(res.nfev), "rms_binned_log_ratio": float(np.sqrt(np.mean(r**2))),
                                "max_abs_binned_log_ratio": float(np.abs(r).max())}


def binned_ratios(real: dict, model: NoiseModel) -> dict:
    """Median model/real error ratios per G bin: coefficients per band, flux at CHECK_NM."""
    e_bp, e_rp, cov_bp, cov_rp = model_errors(real, model)
    g = g_mag(real["bp"], real["rp"])
    diag_real = [np.einsum("ni,ij->nij", real[f"e_{b}"] ** 2, np.eye(55)) for b in ("bp", "rp")]
    diag_model = [np.einsum("ni,ij->nij", e ** 2, np.eye(55)) for e in (e_bp, e_rp)]
    flux = np.abs(sampled_flux(real["bp"], real["rp"]))
    fe_real = sampled_flux_error(*diag_real) / flux
    fe_model = sampled_flux_error(*diag_model) / flux
    cols = [int(np.argmin(np.abs(SAMPLING_NM - w))) for w in CHECK_NM]
    rows = []
    for lo in G_BINS:
        sel = (g >= lo) & (g < lo + 1)
        if sel.sum() < 10:
            continue
        row = {"g_lo": float(lo), "g_hi": float(lo + 1), "n": int(sel.sum()),
               "coef_ratio_bp": float(np.median(e_bp[sel] / real["e_bp"][sel])),
               "coef_ratio_rp": float(np.median(e_rp[sel] / real["e_rp"][sel]))}
        for w, c in zip(CHECK_NM, cols):
            row[f"flux_ratio_{int(w)}nm"] = float(np.median(fe_model[sel, c] / fe_real[sel, c]))
        rows.append(row)
    return {"g_bins": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n-fit", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    real = load_real(args.data)
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(real["bp"]), size=min(args.n_fit, len(real["bp"])), replace=False)
    subset = {k: v[pick] for k, v in real.items()}
    model = NoiseModel()
    info = {}
    t0 = time.perf_counter()
    for band in (0, 1):
        model, info[("bp", "rp")[band]] = fit_band(subset, band, model)
        print(("BP", "RP")[band], {k: round(getattr(model, k)[band], 5) for k in FITTED}, info[("bp", "rp")[band]])
    check = binned_ratios(real, model)
    fit = {"data": args.data.name, "n_sources": int(len(real["bp"])), "n_fit": int(len(pick)),
           "seed": args.seed, "assumed_transits": ASSUMED_TRANSITS,
           "note": "data file has no transit counts: every source assumed to have 40 transits; "
                   "real errors are diagonal only (no correlations in the file)",
           "fit_per_band": info, "residuals_all_sources": check,
           "fit_seconds": round(time.perf_counter() - t0, 1),
           "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    model = dataclasses.replace(model, fit=fit)
    for row in check["g_bins"]:
        print("G {g_lo:4.1f}-{g_hi:4.1f} n={n:4d} coef BP {coef_ratio_bp:.2f} RP {coef_ratio_rp:.2f} "
              "flux 400 {flux_ratio_400nm:.2f} 550 {flux_ratio_550nm:.2f} 800 {flux_ratio_800nm:.2f}".format(**row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f"{args.out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(model.to_dict(), indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
