"""Real-star calibration: the reserved split, the A0/scale fit, the photosphere correction and
the data-driven model error (cvae_pms.realdata, cvae_pms.xp.model_error)."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from cvae_pms.physics import photosphere as ph
from cvae_pms.realdata import apogee, correction as C
from cvae_pms.realdata.calibrate import conserve_bolometric_flux, estimate_model_error, usable
from cvae_pms.realdata.fit import fit_photosphere, photosphere_sed
from cvae_pms.xp.model_error import ModelError
from cvae_pms.xp.sampling import SAMPLING_NM


@pytest.fixture(scope="session")
def library():
    """The APOGEE x XP library file (downloaded into the cache once; skipped offline)."""
    try:
        return apogee.library_path(download=True)
    except apogee.LibraryError as exc:
        pytest.skip(f"APOGEE x XP library unavailable: {exc}")


def test_split_part_is_crc32_mod_4():
    ids = np.array(["2M00000002+7417074", " 2M00000019-1924498 ", b"2M00000032+5737103"],
                   dtype=object)
    want = [zlib.crc32(str(i if isinstance(i, str) else i.decode()).strip().encode()) % 4
            for i in ids]
    assert apogee.split_part(ids).tolist() == want


def test_reserved_part_cannot_be_read(tmp_path):
    for parts in ((0,), (0, 1), (4,)):
        with pytest.raises(apogee.LibraryError, match="reserved|only 1, 2, 3"):
            apogee.read_library(tmp_path / "none.fits", parts=parts)


def test_read_library_never_returns_reserved_rows(library):
    lib = apogee.read_library(library, parts=(1, 2, 3))
    assert len(lib) > 25000
    assert not np.any(apogee.split_part(lib.apogee_id) == apogee.RESERVED_PART)
    assert np.all(np.isin(lib.part, (1, 2, 3)))
    # physical units: flux * medflux of G ~ 12 stars is ~1e-17 W m^-2 nm^-1
    med = np.nanmedian(lib.flux[:, 200])
    assert 1e-19 < med < 1e-14
    test = apogee.read_library(library, parts=(apogee.TEST_PART,), in_box_only=True)
    assert np.all(test.part == 1) and np.all(apogee.in_box(test.labels["teff"],
                                                           test.labels["logg"],
                                                           test.labels["fe_h"]))


def _synthetic(n=40, seed=0, a0=None):
    rng = np.random.default_rng(seed)
    t = rng.uniform(3500, 6500, n)
    g = rng.uniform(3.0, 4.8, n)
    m = rng.uniform(-0.4, 0.4, n)
    a0 = rng.uniform(0.0, 2.0, n) if a0 is None else a0
    from cvae_pms.physics.extinction import extinction_curve
    from cvae_pms.realdata.fit import calibrated_flux_operator
    k = extinction_curve(ph.table_wavelength_nm())
    sed = photosphere_sed(t, g, m, None) * 10 ** (-0.4 * a0[:, None] * k[None])
    flux = 3e-3 * sed @ calibrated_flux_operator()
    err = 0.002 * np.abs(flux) + 1e-3 * np.abs(flux).mean(1, keepdims=True)
    return t, g, m, a0, flux + rng.normal(size=flux.shape) * err, err


def test_fit_recovers_injected_extinction_and_scale():
    t, g, m, a0, flux, err = _synthetic()
    fit = fit_photosphere(flux, err, t, g, m, correction=None)
    np.testing.assert_allclose(fit.a0, a0, atol=0.03)
    assert np.all(np.abs(fit.scale / 3e-3 - 1) < 0.03)
    assert np.all(fit.chi2_red < 3)
    # the wrong model (shifted T_eff) fits much worse
    bad = fit_photosphere(flux, err, t + 300, g, m, correction=None)
    assert np.median(bad.chi2_red) > 5 * np.median(fit.chi2_red)


def test_correction_learns_an_injected_distortion_and_fades_away_from_the_stars():
    """Stars whose real spectra carry a smooth label-dependent distortion: the kernel estimate
    at their labels recovers it (shape part), and far from every star it is zero."""
    t, g, m, a0, flux, err = _synthetic(n=300, seed=1, a0=np.zeros(300))
    bump = 0.08 * np.exp(-0.5 * ((SAMPLING_NM - 700) / 60) ** 2)   # ln distortion
    real = flux * np.exp(bump)[None] * (1 + (t[:, None] - 5000) / 1e5 * 0)
    fit = fit_photosphere(real, err, t, g, m, correction=None)
    q = (t[:5], g[:5], m[:5])
    c, s, keep = C.estimate(t, g, m, real, fit.model, err, query=q, kappa=0.0)
    # with shrinkage the estimate is the same times S / (S + kappa)
    c3, s3, _ = C.estimate(t, g, m, real, fit.model, err, query=q, kappa=3.0)
    np.testing.assert_allclose(c3, c * (s3 / (s3 + 3.0))[:, None], atol=1e-9)
    want = C.project_off(bump[None])[0]
    assert keep.mean() > 0.95
    # equal up to the flux-scale and extinction directions (which the per-star fit absorbs
    # with its own weights), and the bump's full height is there
    sel = (SAMPLING_NM >= 400) & (SAMPLING_NM <= 1000)   # the blue end of cool stars is ~0
    assert np.max(np.abs(C.project_off(c - want[None]))[:, sel]) < 0.01
    peak = np.argmin(np.abs(SAMPLING_NM - 700))
    edge = np.argmin(np.abs(SAMPLING_NM - 500))
    assert (c[:, peak] - c[:, edge]) == pytest.approx(bump[peak] - bump[edge], rel=0.2)
    far, s_far, _ = C.estimate(t, g, m, real, fit.model, err,
                               query=(np.array([11000.0]), np.array([2.0]), np.array([-1.0])))
    assert s_far[0] < 1e-6 and np.max(np.abs(far)) < 1e-6


def test_shipped_correction_conserves_bolometric_flux_and_fades_out():
    corr = ph.load_correction(ph.DEFAULT_CORRECTION)
    meta = corr["meta"]
    assert meta["parts"] == [2, 3] and meta["reserved_part_never_read"] == 0
    base = ph.load_table(None)
    tab = ph.load_table(ph.DEFAULT_CORRECTION)
    wl = base.wavelength_nm
    ratio = (np.trapezoid(10.0 ** tab.log_flux.astype(float), wl, axis=-1)
             / np.trapezoid(10.0 ** base.log_flux.astype(float), wl, axis=-1))
    np.testing.assert_allclose(ratio, 1.0, atol=2e-3)
    # hot nodes (the accretion spot's range) carry no calibration stars: shape unchanged
    hot = base.teff_k >= 10000
    c = corr["log10_correction"][hot]
    shape = c - c.mean(axis=-1, keepdims=True)
    assert np.max(np.abs(shape)) < 0.01
    # cool dwarfs are changed (real M dwarfs are far brighter than PHOENIX below 380 nm)
    f = ph.surface_flux(np.array([3500.0]), np.array([4.5]), np.array([0.0]), np.array([350.0, 750.0]))
    f0 = ph.surface_flux(np.array([3500.0]), np.array([4.5]), np.array([0.0]),
                         np.array([350.0, 750.0]), correction=None)
    assert (f[0, 0] / f[0, 1]) / (f0[0, 0] / f0[0, 1]) > 1.3


def test_conserve_bolometric_flux_is_a_constant_per_node():
    rng = np.random.default_rng(0)
    tab = ph.load_table(None)
    c = rng.normal(0, 0.05, tab.log_flux.shape)
    out = conserve_bolometric_flux(c)
    d = out - c
    np.testing.assert_allclose(d, d[..., :1] * np.ones_like(d), atol=1e-12)


def test_correction_reduces_held_out_residuals(library):
    """The shipped correction (fitted on parts 2, 3) on 300 stars of our test part: smaller
    residuals than plain PHOENIX in every T_eff bin that has stars."""
    lib = apogee.read_library(library, parts=(apogee.TEST_PART,), in_box_only=True)
    lib = lib.select(usable(lib))
    lib = lib.select(np.random.default_rng(0).choice(len(lib), 300, replace=False))
    lab = lib.labels
    args = (lib.flux, lib.flux_error, lab["teff"], lab["logg"], lab["fe_h"])
    before = C.residual_rms(lib.flux, fit_photosphere(*args, correction=None).model, None)
    after = C.residual_rms(lib.flux, fit_photosphere(*args).model, None)
    for lo, hi in ((3000, 4500), (4500, 5500), (5500, 7000)):
        b = (lab["teff"] >= lo) & (lab["teff"] < hi)
        assert np.median(after[b]) < 0.95 * np.median(before[b]), (lo, hi)


def test_model_error_estimate_recovers_a_known_covariance():
    rng = np.random.default_rng(3)
    n = 4000
    teff = rng.choice([3800.0, 6000.0], n)     # at the nodes: no mixing between them
    amp = np.where(teff < 4500, 0.06, 0.02)[:, None]
    shape = np.exp(-0.5 * ((SAMPLING_NM[:, None] - SAMPLING_NM[None]) / 20.0) ** 2)
    chol = np.linalg.cholesky(shape + 1e-6 * np.eye(343))
    noise_sd = 0.01
    delta = amp * (rng.normal(size=(n, 343)) @ chol.T) + noise_sd * rng.normal(size=(n, 343))
    me = estimate_model_error(delta, np.full((n, 343), noise_sd ** 2), teff,
                              nodes=(3800.0, 6000.0), rank=40)
    sd = np.sqrt(me.node_variance())
    assert abs(np.median(sd[0]) / 0.06 - 1) < 0.1      # noise subtracted, cool node
    assert abs(np.median(sd[1]) / 0.02 - 1) < 0.15
    # the correlation survives in the low-rank factors
    cov = me.covariance(6000.0)
    r = cov[150, 160] / np.sqrt(cov[150, 150] * cov[160, 160])
    assert r == pytest.approx(np.exp(-0.5 * (20 / 20.0) ** 2), abs=0.1)


def test_model_error_weights_and_parametric_term():
    me = ModelError.default()
    w = me.weights(np.array([1000.0, me.teff_nodes[2], 99999.0]))
    np.testing.assert_allclose(w.sum(1), 1.0)
    assert w[0, 0] == 1 and w[1, 2] == 1 and w[2, -1] == 1
    p = ModelError.parametric(0.01, 15.0)
    np.testing.assert_allclose(p.reference_fraction, 0.01, rtol=1e-5)
    v = p.variance(np.array([3000.0, 7000.0]))
    np.testing.assert_allclose(v, 1e-4, rtol=1e-5)
