"""The SED -> XP coefficient operator: round trip, absolute scale, linearity, batching, bad input
(speed is measured in benchmarks/bench_synth.py, not asserted here)."""
from __future__ import annotations

import numpy as np
import pytest

from cvae_pms import params
from cvae_pms.physics.photosphere import table_wavelength_nm
from cvae_pms.physics.sed import sed_flux
from cvae_pms.xp import instrument as ins
from cvae_pms.xp.photometry import g_bp_mag, g_mag, g_rp_mag
from cvae_pms.xp.sampling import SAMPLING_NM, sampled_flux

WL = table_wavelength_nm()


@pytest.fixture(scope="module")
def box_seds() -> np.ndarray:
    theta = params.from_unit(np.random.default_rng(0).uniform(size=(500, 7)))
    return sed_flux(theta, WL)


def test_round_trip_matches_smoothed_sed(box_seds):
    bp, rp = ins.sed_to_coefficients(box_seds, WL)
    cal = sampled_flux(bp, rp)
    ref = ins.smoothed_sed(box_seds, WL)
    m = (SAMPLING_NM >= 346) & (SAMPLING_NM <= 1006)
    # relative to the pixel's flux, floored at 1 % of the spectrum's peak (the blue end of
    # cool, reddened stars is ~1e-6 of the peak, in real XP spectra too)
    den = np.maximum(np.abs(ref), 0.01 * np.abs(ref[:, m]).max(axis=1, keepdims=True))
    rel = (np.abs(cal - ref) / den)[:, m]
    assert np.median(rel) <= 0.005
    assert np.percentile(rel, 90) <= 0.02


def test_correction_is_small_and_raw_operator_is_physical(box_seds):
    raw = np.vstack([ins._band_operator(b, WL, ins.SETTINGS) for b in ins.BANDS])
    c_raw = box_seds @ raw.T
    bp, rp = ins.sed_to_coefficients(box_seds, WL)
    c = np.hstack([bp, rp])
    change = np.linalg.norm(c - c_raw, axis=1) / np.linalg.norm(c_raw, axis=1)
    assert np.median(change) < 0.08
    assert np.all(bp[:, 0] > 0) and np.all(rp[:, 0] > 0)  # first coefficient carries the flux


def test_absolute_scale_sun_at_10pc():
    sun = np.array([[5772.0, 4.438, 0.0, -11.0, 0.0, 1.0, 0.0]])
    bp, rp = ins.sed_to_coefficients(sed_flux(sun, WL), WL)
    # absolute magnitudes of the Sun in the Gaia bands (Casagrande & VandenBerg 2018): ~4.67, ~5.0, ~4.2
    assert g_mag(bp, rp)[0] == pytest.approx(4.67, abs=0.1)
    assert g_bp_mag(bp)[0] == pytest.approx(5.0, abs=0.1)
    assert g_rp_mag(rp)[0] == pytest.approx(4.2, abs=0.1)


def test_linear_and_cached(box_seds):
    f1, f2 = box_seds[:3], box_seds[3:6]
    b1, r1 = ins.sed_to_coefficients(f1, WL)
    b2, r2 = ins.sed_to_coefficients(f2, WL)
    b, r = ins.sed_to_coefficients(2.0 * f1 - 0.5 * f2, WL)
    np.testing.assert_allclose(b, 2.0 * b1 - 0.5 * b2, rtol=1e-9, atol=1e-9 * np.abs(b).max())
    np.testing.assert_allclose(r, 2.0 * r1 - 0.5 * r2, rtol=1e-9, atol=1e-9 * np.abs(r).max())
    assert ins.coefficient_operator(WL)[0] is ins.coefficient_operator(WL.copy())[0]


def test_projection_is_one_product_with_the_cached_operator():
    """Projecting many spectra is ``flux @ operator.T`` with the operator built once per grid
    (what makes 160,000 spectra take < 1 s: timed in benchmarks/bench_synth.py, not here):
    equal, row for row, to projecting each spectrum on its own."""
    op, _ = ins.coefficient_operator(WL)
    flux = np.random.default_rng(1).uniform(1e-16, 1e-15, size=(4_000, WL.size))
    bp, rp = ins.sed_to_coefficients(flux, WL)
    assert bp.shape == rp.shape == (4_000, 55)
    want = flux @ op.T
    np.testing.assert_allclose(np.hstack([bp, rp]), want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    for i in (0, 1234, 3999):
        b1, r1 = ins.sed_to_coefficients(flux[i], WL)
        np.testing.assert_allclose(b1[0], bp[i], rtol=1e-12, atol=1e-12 * np.abs(bp[i]).max())
        np.testing.assert_allclose(r1[0], rp[i], rtol=1e-12, atol=1e-12 * np.abs(rp[i]).max())
    assert ins.coefficient_operator(WL)[0] is op


@pytest.mark.parametrize("wl, flux, match", [
    (np.linspace(400.0, 1100.0, 300), None, "does not cover"),
    (np.linspace(300.0, 1100.0, 300)[::-1], None, "strictly increasing"),
    (WL, np.ones((2, WL.size - 1)), "expected"),
])
def test_bad_input(wl, flux, match):
    flux = np.ones((2, wl.size)) if flux is None else flux
    with pytest.raises(ins.InstrumentError, match=match):
        ins.sed_to_coefficients(flux, wl)


def test_non_finite_flux_names_row():
    flux = np.ones((3, WL.size)) * 1e-15
    flux[2, 10] = np.nan
    with pytest.raises(ins.InstrumentError, match="row 2"):
        ins.sed_to_coefficients(flux, WL)
