"""Numpy sampled flux == gaiaxpy.calibrate; photometry from coefficients against gaiaxpy and DR3."""
from __future__ import annotations

import contextlib
import io
import shutil

import numpy as np
import pytest

from cvae_pms.xp.archive import XPBatch, read_xp, write_xp_table
from cvae_pms.xp.photometry import g_bp_mag, g_mag, g_rp_mag, scale_to_g
from cvae_pms.xp.sampling import (SAMPLING_NM, calibration_matrices, design_matrices, merge_weights,
                                  sampled_flux, sampled_flux_covariance, sampled_flux_error)


def _gaiaxpy_calibrate(path):
    import gaiaxpy

    with contextlib.redirect_stdout(io.StringIO()):
        df, sampling = gaiaxpy.calibrate(str(path), save_file=False)
    np.testing.assert_array_equal(sampling, SAMPLING_NM)
    return df.set_index("source_id")


def _assert_matches_gaiaxpy(batch: XPBatch, path) -> None:
    df = _gaiaxpy_calibrate(path).loc[batch.source_id]
    ref_flux, ref_err = np.stack(df["flux"].to_numpy()), np.stack(df["flux_error"].to_numpy())
    flux = sampled_flux(batch.bp_coefficients, batch.rp_coefficients)
    err = sampled_flux_error(batch.bp_covariance, batch.rp_covariance)
    big = np.abs(ref_flux) > 1e-3 * np.abs(ref_flux).max(axis=1, keepdims=True)
    assert big.mean() > 0.8
    np.testing.assert_allclose(flux[big], ref_flux[big], rtol=1e-10, atol=0)
    np.testing.assert_allclose(err, ref_err, rtol=1e-10, atol=0)


def test_configuration_shapes():
    assert SAMPLING_NM.shape == (343,) and SAMPLING_NM[0] == 336 and SAMPLING_NM[-1] == 1020
    d_bp, d_rp = design_matrices()
    w_bp, w_rp = merge_weights()
    a_bp, a_rp = calibration_matrices()
    assert d_bp.shape == d_rp.shape == a_bp.shape == (55, 343)
    np.testing.assert_allclose(w_bp + w_rp, 1.0, atol=1e-12)
    assert (w_bp[SAMPLING_NM < 636] == 1).all() and (w_rp[SAMPLING_NM > 642] == 1).all()
    np.testing.assert_array_equal(a_bp, d_bp * w_bp)
    assert not a_bp.flags.writeable


@pytest.mark.parametrize("name", ["gaiaxpy_samples/XP_CONTINUOUS_RAW.csv",
                                  "gaiaxpy_samples/XP_CONTINUOUS_RAW.ecsv",
                                  "gaiaxpy_samples/MeanSpectrumSolutionWithCov.avro"])
def test_flux_equals_gaiaxpy_on_archive_files(real_xp, name):
    _assert_matches_gaiaxpy(read_xp(real_xp / name), real_xp / name)


def test_flux_equals_gaiaxpy_votable(real_xp, tmp_path):
    src = real_xp / "xp_spectral_lines" / "xp_continuous_combined_weiler2023_examples.vot"
    shutil.copy(src, tmp_path / "weiler.xml")          # gaiaxpy takes VOTables as .xml
    _assert_matches_gaiaxpy(read_xp(src), tmp_path / "weiler.xml")


@pytest.mark.parametrize("name, n", [("gaiaxpy_samples/18Sco-XP-spectra.csv", 1),
                                     ("xp_spectral_lines/xp_continuous_combined_chunk0.fits", 50)])
def test_flux_equals_gaiaxpy_via_written_archive_csv(real_xp, tmp_path, name, n):
    # gaiaxpy reads neither file directly (no standard deviations / one column per coefficient)
    batch = read_xp(real_xp / name).select(slice(0, n))
    _assert_matches_gaiaxpy(batch, write_xp_table(tmp_path / "copy.csv", batch))


def test_covariance_diagonal_and_missing_band(real_xp):
    batch = read_xp(real_xp / "gaiaxpy_samples" / "XP_CONTINUOUS_RAW.csv")
    cov = sampled_flux_covariance(batch.bp_covariance, batch.rp_covariance)
    assert cov.shape == (2, 343, 343)
    np.testing.assert_allclose(np.sqrt(np.diagonal(cov, axis1=1, axis2=2)),
                               sampled_flux_error(batch.bp_covariance, batch.rp_covariance), rtol=1e-12)
    np.testing.assert_array_equal(cov, np.swapaxes(cov, 1, 2))
    assert (np.linalg.eigvalsh(cov[0])[-10:] > 0).all()
    bp = batch.bp_coefficients.copy()
    bp[1] = np.nan
    flux = sampled_flux(bp, batch.rp_coefficients)
    w_bp, _ = merge_weights()
    assert np.isnan(flux[1, w_bp > 0]).all() and np.isfinite(flux[1, w_bp == 0]).all()
    assert np.isfinite(flux[0]).all()
    # one spectrum without a batch axis
    np.testing.assert_allclose(sampled_flux(batch.bp_coefficients[0], batch.rp_coefficients[0])[0],
                               sampled_flux(batch.bp_coefficients, batch.rp_coefficients)[0], rtol=1e-12)


# --------------------------------------------------------------------------- photometry
def test_g_mag_against_dr3_and_gaiaxpy_synthetic_photometry(real_xp):
    import gaiaxpy

    sco = read_xp(real_xp / "gaiaxpy_samples" / "18Sco-XP-spectra.csv")
    # 18 Sco, DR3 phot_g_mean_mag 5.327651; synthetic G differs by 0.0007 mag
    assert abs(g_mag(sco.bp_coefficients, sco.rp_coefficients)[0] - sco.extra["phot_g_mean_mag"][0]) < 0.005
    path = real_xp / "gaiaxpy_samples" / "XP_CONTINUOUS_RAW.csv"
    raw = read_xp(path)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = gaiaxpy.generate(str(path), photometric_system=gaiaxpy.PhotometricSystem.Gaia_DR3_Vega,
                               save_file=False).set_index("source_id").loc[raw.source_id]
    np.testing.assert_allclose(g_mag(raw.bp_coefficients, raw.rp_coefficients),
                               ref["GaiaDr3Vega_mag_G"], atol=1e-9)


def test_g_bp_g_rp_against_dr3_vega_synthetic_bp_rp(real_xp):
    from gaiaxpy.core.config import load_xpsampling_from_xml

    batch = read_xp(real_xp / "xp_spectral_lines" / "xp_continuous_combined_chunk0.fits")
    s = load_xpsampling_from_xml(system="GaiaDr3Vega")          # bands G, BP, RP
    zp = np.array([-26.4899, -25.9655, -27.2164])
    syn = -2.5 * np.log10(batch.bp_coefficients @ s["bp"] + batch.rp_coefficients @ s["rp"]) + zp
    d_bp = g_bp_mag(batch.bp_coefficients) - syn[:, 1]
    d_rp = g_rp_mag(batch.rp_coefficients) - syn[:, 2]
    # internal window integral + Riello ZPs vs standardised synthetic photometry, G 7-20:
    # measured median +0.002 (BP) / -0.013 (RP) mag, 16-84 % spread < 0.01 mag
    assert abs(np.median(d_bp)) < 0.01 and abs(np.median(d_rp)) < 0.02
    assert np.percentile(np.abs(d_bp), 84) < 0.02 and np.percentile(np.abs(d_rp), 84) < 0.025
    assert np.percentile(np.abs(d_bp), 99) < 0.06 and np.percentile(np.abs(d_rp), 99) < 0.06


def test_scale_to_g_and_missing_bands(real_xp):
    batch = read_xp(real_xp / "gaiaxpy_samples" / "XP_CONTINUOUS_RAW_with_missing_BP.csv")
    bp, rp, factor = scale_to_g(batch.bp_coefficients, batch.rp_coefficients, 15.0)
    g = g_mag(bp, rp)
    np.testing.assert_allclose(g[batch.ok], 15.0, atol=1e-10)
    assert np.isnan(g[~batch.ok]).all() and np.isnan(factor[~batch.ok]).all()
    colour = g_bp_mag(batch.bp_coefficients) - g_rp_mag(batch.rp_coefficients)
    np.testing.assert_allclose((g_bp_mag(bp) - g_rp_mag(rp))[batch.ok], colour[batch.ok], atol=1e-10)
    np.testing.assert_allclose(g_bp_mag(bp)[batch.ok] - g_bp_mag(batch.bp_coefficients)[batch.ok],
                               -2.5 * np.log10(factor[batch.ok]), atol=1e-10)
    assert np.isnan(g_bp_mag(-batch.bp_coefficients[:1])).all()       # negative flux -> NaN


def test_internal_bases_match_gaiaxpy_converter():
    from gaiaxpy.config.paths import hermite_bases_file
    from gaiaxpy.converter.config import parse_config
    from gaiaxpy.converter.converter import get_design_matrices

    from cvae_pms.xp.photometry import internal_design_matrices

    u = np.linspace(-3.0, 62.0, 66)
    ref = get_design_matrices(u, parse_config(hermite_bases_file))
    for ours, band in zip(internal_design_matrices(u), ("bp", "rp")):
        theirs = ref[band].get_design_matrix()
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12 * np.abs(theirs).max())
