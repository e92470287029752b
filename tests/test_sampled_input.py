"""Sampled-spectrum input: xp_sampled_mean_spectrum products, gaiaxpy.calibrate output and the
APOGEE x XP library read as SampledBatch; features, G, flags and posteriors equal to the
coefficient route for the same real sources."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cvae_pms import params
from cvae_pms import posterior_file as pf
from cvae_pms.cli import main
from cvae_pms.xp.archive import XPBatch, XPReadError, iter_xp, read_xp, write_xp_table
from cvae_pms.xp.sampled import SampledBatch
from cvae_pms.xp.sampling import sampled_flux, sampled_flux_error

import helpers_infer as h

WEILER = "xp_spectral_lines/xp_continuous_combined_weiler2023_examples.vot"
RAW = "gaiaxpy_samples/XP_CONTINUOUS_RAW.csv"


# --------------------------------------------------------------------------- helpers
def _cells(values: np.ndarray, brackets: str = "[]") -> list[str]:
    return [brackets[0] + ",".join(repr(float(v)) for v in row) + brackets[1] for row in values]


def write_sampled(path, source_id, flux, flux_error, brackets: str = "[]", extra=None,
                  unit: str | None = "W.m**-2.nm**-1"):
    """A sampled table in the archive's xp_sampled_mean_spectrum layout, format by extension:
    CSV (array cells as strings), ECSV/FITS/VOTable (array columns, via astropy)."""
    import astropy.units as u
    from astropy.table import Table

    n = len(source_id)
    base = {"source_id": np.asarray(source_id, np.int64),
            "solution_id": np.full(n, 375316653866487564, np.int64),
            "ra": np.linspace(10.0, 20.0, n), "dec": np.linspace(-5.0, 5.0, n)}
    base.update(extra or {})
    name = str(path)
    if name.endswith(".csv"):
        df = pd.DataFrame(base)
        df["flux"] = _cells(flux, brackets)
        df["flux_error"] = _cells(flux_error, brackets)
        df.to_csv(path, index=False)
        return path
    t = Table(base)
    t["flux"] = np.asarray(flux, np.float64)
    t["flux_error"] = np.asarray(flux_error, np.float32)
    if unit is not None:
        t["flux"].unit = t["flux_error"].unit = u.Unit(unit)
    fmt = {".ecsv": "ascii.ecsv", ".fits": "fits", ".vot": "votable"}[path.suffix]
    t.write(path, format=fmt, overwrite=True)
    return path


@pytest.fixture(scope="module")
def coeff(real_xp):
    """Six real sources with coefficient correlations (Proxima Cen and friends, Weiler's 4)."""
    return XPBatch.concat([read_xp(real_xp / RAW), read_xp(real_xp / WEILER)])


@pytest.fixture(scope="module")
def calibrated(real_xp, tmp_path_factory):
    """gaiaxpy.calibrate output (truncation off, default sampling) of the six sources, saved by
    gaiaxpy itself in every format it writes: {fmt: path}."""
    from gaiaxpy import calibrate

    d = tmp_path_factory.mktemp("gaiaxpy_out")
    weiler_csv = write_xp_table(d / "weiler_coefficients.csv", read_xp(real_xp / WEILER))
    six = d / "six_coefficients.csv"
    pd.concat([pd.read_csv(real_xp / RAW), pd.read_csv(weiler_csv)],
              ignore_index=True).to_csv(six, index=False)
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for fmt in ("csv", "ecsv", "fits", "xml", "avro"):
            calibrate(str(six), truncation=False, save_file=True, output_path=str(d),
                      output_file=f"cal_{fmt}", output_format=fmt)
            out[fmt] = d / f"cal_{fmt}.{fmt}"
    return out


@pytest.fixture(scope="module")
def run(trained_run):
    return trained_run


@pytest.fixture(scope="module")
def model(run):
    from cvae_pms.infer import cached_model
    return cached_model(str(run))


# --------------------------------------------------------------------------- reading
@pytest.mark.parametrize("ext, brackets", [(".csv", "[]"), (".csv", "()"), (".ecsv", "[]"),
                                           (".fits", "[]"), (".vot", "[]")])
def test_archive_sampled_products_read_in_every_format(tmp_path, coeff, ext, brackets):
    flux = sampled_flux(coeff.bp_coefficients, coeff.rp_coefficients)
    err = sampled_flux_error(coeff.bp_covariance, coeff.rp_covariance)
    path = write_sampled(tmp_path / f"xp_sampled{ext}", coeff.source_id, flux, err, brackets)
    batch = read_xp(path)
    assert isinstance(batch, SampledBatch) and batch.sampled and not coeff.sampled
    assert batch.ok.all() and batch.source_id.tolist() == coeff.source_id.tolist()
    assert batch.flux.shape == (6, 343) and batch.flux.dtype == np.float64
    np.testing.assert_allclose(batch.flux, flux, rtol=1e-12)
    np.testing.assert_allclose(batch.flux_error, err, rtol=1e-6)      # float32 in FITS/VOT
    np.testing.assert_allclose(batch.extra["ra"], np.linspace(10, 20, 6))
    assert np.isnan(batch.extra["parallax"]).all()


@pytest.mark.parametrize("fmt", ["csv", "ecsv", "fits", "xml", "avro"])
def test_gaiaxpy_calibrate_output_reads_in_every_format(calibrated, coeff, fmt):
    batch = read_xp(calibrated[fmt])
    assert batch.sampled and batch.ok.all()
    assert sorted(batch.source_id.tolist()) == sorted(coeff.source_id.tolist())
    order = [list(batch.source_id).index(s) for s in coeff.source_id]
    flux = sampled_flux(coeff.bp_coefficients, coeff.rp_coefficients)
    err = sampled_flux_error(coeff.bp_covariance, coeff.rp_covariance)
    np.testing.assert_allclose(batch.flux[order], flux, rtol=1e-10,
                               atol=1e-12 * np.abs(flux).max())
    np.testing.assert_allclose(batch.flux_error[order], err, rtol=2e-7)  # float32 in fits/xml


def test_streaming_in_chunks(tmp_path, coeff):
    flux = np.tile(sampled_flux(coeff.bp_coefficients, coeff.rp_coefficients), (5, 1))
    err = np.tile(sampled_flux_error(coeff.bp_covariance, coeff.rp_covariance), (5, 1))
    for ext in (".csv", ".fits"):
        path = write_sampled(tmp_path / f"many{ext}", np.arange(1, 31), flux, err)
        batches = list(iter_xp(path, chunk_size=7))
        assert [len(b) for b in batches] == [7, 7, 7, 7, 2]
        whole = SampledBatch.concat(batches)
        assert whole.source_id.tolist() == list(range(1, 31))
        np.testing.assert_allclose(whole.flux, flux, rtol=1e-12)
        sub = whole.select(np.arange(3, 6))
        assert sub.source_id.tolist() == [4, 5, 6] and sub.flux.shape == (3, 343)


def test_bad_rows_get_a_reason_and_the_others_go_on(tmp_path, coeff):
    good_f = sampled_flux(coeff.bp_coefficients[:1], coeff.rp_coefficients[:1])[0]
    good_e = sampled_flux_error(coeff.bp_covariance[:1], coeff.rp_covariance[:1])[0]
    cases = {  # source_id: (flux cell, error cell, expected reason)
        1: (good_f, good_e, ""),
        2: (good_f[:300], good_e[:300], "flux: 300 values, expected 343; "
                                        "flux_error: 300 values, expected 343"),
        3: (np.r_[np.nan, good_f[1:]], good_e, "non-finite flux (NaN/inf) in 1 of 343 pixels"),
        4: (np.r_[good_f[:5], np.inf, good_f[6:]], good_e,
            "non-finite flux (NaN/inf) in 1 of 343 pixels"),
        5: (good_f, np.r_[0.0, good_e[1:]], "flux_error <= 0 in 1 of 343 pixels"),
        6: (good_f, np.r_[-good_e[:3], good_e[3:]], "flux_error <= 0 in 3 of 343 pixels"),
        7: (good_f, np.r_[good_e[:9], np.nan, good_e[10:]],
            "non-finite flux_error (NaN/inf) in 1 of 343 pixels"),
        8: (None, good_e, "flux missing"),
        9: (good_f, None, "flux_error missing"),
        10: (good_f, good_e, ""),
    }
    cell = lambda v: "" if v is None else "[" + ",".join(repr(float(x)) for x in v) + "]"
    df = pd.DataFrame({"source_id": list(cases), "flux": [cell(c[0]) for c in cases.values()],
                       "flux_error": [cell(c[1]) for c in cases.values()]})
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    batch = read_xp(path)
    assert batch.error.tolist() == [c[2] for c in cases.values()]
    assert batch.ok.tolist() == [not c[2] for c in cases.values()]
    assert np.isnan(batch.flux[~batch.ok]).all() and np.isnan(batch.flux_error[~batch.ok]).all()
    np.testing.assert_allclose(batch.flux[batch.ok], np.stack([good_f, good_f]), rtol=1e-15)
    # a FITS array column of the wrong width: every row has the reason, nothing crashes
    path = write_sampled(tmp_path / "short.fits", [1, 2], np.tile(good_f[:340], (2, 1)),
                         np.tile(good_e[:340], (2, 1)))
    batch = read_xp(path)
    assert set(batch.error) == {"flux: 340 values, expected 343; "
                                "flux_error: 340 values, expected 343"}


def test_bad_source_id_and_bad_cell(tmp_path, coeff):
    f = _cells(sampled_flux(coeff.bp_coefficients[:2], coeff.rp_coefficients[:2]))
    e = _cells(sampled_flux_error(coeff.bp_covariance[:2], coeff.rp_covariance[:2]))
    pd.DataFrame({"source_id": ["12x", "7"], "flux": [f[0], "[1,2,oops]"],
                  "flux_error": e}).to_csv(tmp_path / "odd.csv", index=False)
    batch = read_xp(tmp_path / "odd.csv")
    assert batch.error[0] == "row 0: source_id '12x' is not an integer"
    assert batch.error[1].startswith("flux: cannot parse array cell")


def test_files_that_are_neither_coefficients_nor_sampled(tmp_path, calibrated):
    cases = {
        "other.csv": ("source_id,teff,logg\n1,5000,4.5\n",
                      r"neither XP coefficients .* nor sampled spectra .*columns found: "
                      r"source_id, teff, logg"),
        "noerr.csv": ("source_id,flux\n1,\"[1,2]\"\n", "without a 'flux_error' column"),
        "convert.csv": ("source_id,xp,flux,flux_error\n1,BP,\"[1]\",\"[1]\"\n",
                        "gaiaxpy.convert output"),
        "lib.csv": ("apogee_id,flux,flux_error,medflux\nx,\"[1]\",\"[1]\",1\n",
                    "APOGEE x XP library"),
    }
    for name, (text, match) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(XPReadError, match=match) as info:
            read_xp(path)
        assert str(path) in str(info.value)


def test_another_sampling_grid_is_refused(tmp_path, real_xp):
    from gaiaxpy import calibrate

    with contextlib.redirect_stdout(io.StringIO()):
        for fmt in ("csv", "ecsv", "fits", "xml"):
            calibrate(str(real_xp / RAW), sampling=np.linspace(400, 900, 100), truncation=False,
                      save_file=True, output_path=str(tmp_path), output_file=f"custom_{fmt}",
                      output_format=fmt)
            with pytest.raises(XPReadError, match=r"sampled on 100 points \(400..900 nm"):
                read_xp(tmp_path / f"custom_{fmt}.{fmt}")
    # without gaiaxpy's side file the CSV can only be checked row by row (100 != 343 pixels)
    (tmp_path / "custom_csv_sampling.csv").unlink()
    batch = read_xp(tmp_path / "custom_csv.csv")
    assert set(batch.error) == {"flux: 100 values, expected 343; "
                                "flux_error: 100 values, expected 343"}


def test_flux_units_are_converted_or_refused(tmp_path, coeff):
    flux = sampled_flux(coeff.bp_coefficients, coeff.rp_coefficients)
    err = sampled_flux_error(coeff.bp_covariance, coeff.rp_covariance)
    cgs = write_sampled(tmp_path / "cgs.fits", coeff.source_id, flux * 100.0, err * 100.0,
                        unit="erg / (s cm2 Angstrom)")
    np.testing.assert_allclose(read_xp(cgs).flux, flux, rtol=1e-12)
    bad = write_sampled(tmp_path / "fnu.fits", coeff.source_id, flux, err, unit="Jy")
    with pytest.raises(XPReadError, match="column 'flux' has unit 'Jy', not a flux density per"):
        read_xp(bad)


# --------------------------------------------------------------------------- features, G
def test_features_of_coefficients_and_of_their_gaiaxpy_sampled_output_are_equal(
        calibrated, coeff, model):
    """Same real source: coefficient input (with correlations) and gaiaxpy.calibrate's
    sampled output give the same network input, so one model serves both."""
    from cvae_pms.features import FeatureSpec, Featuriser

    spec_run = model.run.featuriser
    spec_raw = Featuriser(FeatureSpec(model_error_frac=np.asarray(spec_run.spec.model_error_frac)))
    for fmt in ("csv", "fits"):
        s = read_xp(calibrated[fmt])
        order = [list(s.source_id).index(i) for i in coeff.source_id]
        # raw features: measured 1.7e-6 (float32 rounding of the coefficient path); the
        # standardised ones are divided by the training std (measured 8e-6)
        for fe, tol in ((spec_raw, 1e-5), (spec_run, 5e-5)):
            y_c, lg_c = fe.numpy(coeff.bp_coefficients, coeff.rp_coefficients,
                                 coeff.bp_covariance, coeff.rp_covariance)
            y_s, lg_s = fe.numpy_sampled(s.flux[order], s.flux_error[order])
            assert np.abs(y_s - y_c).max() < tol, (fmt, np.abs(y_s - y_c).max())
            assert np.abs(lg_s - lg_c).max() < 1e-5
        # ... and the test can fail: 1 % larger errors move the noise features by log10(1.01)
        y_big, _ = spec_raw.numpy_sampled(s.flux[order], 1.01 * s.flux_error[order])
        y_c, _ = spec_raw.numpy(coeff.bp_coefficients, coeff.rp_coefficients,
                                coeff.bp_covariance, coeff.rp_covariance)
        assert np.abs(y_big - y_c)[:, 343:].max() > 1e-3


def test_sampled_features_are_scale_free_and_match_with_the_luminosity_channel(coeff):
    from cvae_pms.features import FeatureSpec, Featuriser

    fe = Featuriser(FeatureSpec(model_error_frac=np.full(343, 0.005), luminosity=True))
    flux = sampled_flux(coeff.bp_coefficients, coeff.rp_coefficients)
    err = sampled_flux_error(coeff.bp_covariance, coeff.rp_covariance)
    plx, plx_err = np.full(6, 5.0), np.full(6, 0.1)
    y_c, lg_c, pres_c = fe.numpy_with_luminosity(coeff.bp_coefficients, coeff.rp_coefficients,
                                                 coeff.bp_covariance, coeff.rp_covariance,
                                                 plx, plx_err)
    y_s, lg_s, pres_s = fe.numpy_sampled_with_luminosity(flux, err, plx, plx_err)
    assert y_s.shape == (6, 689) and pres_s.all() and (pres_s == pres_c).all()
    assert np.abs(y_s - y_c).max() < 1e-5 and np.abs(lg_s - lg_c).max() < 1e-5
    # the per-source unit keeps float32 usable at any flux level (variance ~1e-40 here)
    y_faint, lg_faint = fe.numpy_sampled(flux * 1e-5, err * 1e-5)
    assert np.abs(y_faint - y_s[:, :686]).max() < 1e-5
    np.testing.assert_allclose(lg_faint, lg_s - 5.0, atol=1e-5)


def test_g_from_sampled_flux_agrees_with_the_coefficient_g(real_xp):
    from cvae_pms.xp.photometry import (g_bp_mag, g_bp_mag_from_flux, g_mag, g_mag_from_flux,
                                        g_rp_mag, g_rp_mag_from_flux)

    b = read_xp(real_xp / "xp_spectral_lines" / "xp_continuous_combined_chunk0.fits")
    flux = sampled_flux(b.bp_coefficients, b.rp_coefficients)
    g = g_mag(b.bp_coefficients, b.rp_coefficients)
    assert np.isfinite(g).sum() > 1900
    assert np.nanmax(np.abs(g_mag_from_flux(flux) - g)) < 1e-9
    # float32-stored flux (FITS/VOTable products, the APOGEE library): still ~1e-6 mag
    f32 = flux.astype(np.float32).astype(np.float64)
    assert np.nanmax(np.abs(g_mag_from_flux(f32) - g)) < 1e-4
    assert np.nanmax(np.abs(g_bp_mag_from_flux(f32) - g_bp_mag(b.bp_coefficients))) < 1e-2
    assert np.nanmax(np.abs(g_rp_mag_from_flux(f32) - g_rp_mag(b.rp_coefficients))) < 1e-2
    # a NaN row gives NaN, not a crash; a 1-D flux gives one value
    assert np.isnan(g_mag_from_flux(np.full((1, 343), np.nan))).all()
    assert g_mag_from_flux(flux[0]).shape == (1,)


# --------------------------------------------------------------------------- inference
def test_infer_sampled_end_to_end_cli_flags_and_summary(tmp_path, run):
    theta = params.from_unit(np.random.default_rng(5).uniform(0.2, 0.8, (8, 7)))
    coeff_csv = h.write_observations(tmp_path / "obs.csv", theta, np.full(8, 14.0), seed=2)
    c = read_xp(coeff_csv)
    flux = sampled_flux(c.bp_coefficients, c.rp_coefficients)
    err = sampled_flux_error(c.bp_covariance, c.rp_covariance)
    err[2, 10] = 0.0                                                # one bad row
    sampled = write_sampled(tmp_path / "obs_sampled.csv", c.source_id, flux, err)
    res = CliRunner().invoke(main, ["infer", str(run), str(sampled), "--out",
                                    str(tmp_path / "post.h5"), "--summary",
                                    str(tmp_path / "post.ecsv"), "--samples", "50", "--quiet"])
    assert res.exit_code == 0, res.output
    post = pf.read_posterior(tmp_path / "post.h5")
    assert len(post) == 8 and post.source_id.tolist() == c.source_id.tolist()
    assert ((post.status & pf.FLAG_SAMPLED_INPUT) > 0).all()
    assert not ((post.status & pf.FLAG_DIAGONAL_COV) > 0).any()
    failed = (post.status & pf.FLAG_FAILED) > 0
    assert failed.tolist() == [i == 2 for i in range(8)]
    assert post.message[2] == "flux_error <= 0 in 1 of 343 pixels"
    assert np.isfinite(post.samples[~failed]).all()
    t = pf.read_summary(tmp_path / "post.ecsv")
    assert all("sampled_input" in f.split(",") for f in t["flags"])
    assert "128 sampled_input" in t["status"].description
    assert pf.STATUS_FLAGS[128][0] == "sampled_input"
    # the same sources as coefficients: same samples (features equal, keyed seeds)
    res = CliRunner().invoke(main, ["infer", str(run), str(coeff_csv), "--out",
                                    str(tmp_path / "post_c.h5"), "--samples", "50", "--quiet"])
    assert res.exit_code == 0, res.output
    post_c = pf.read_posterior(tmp_path / "post_c.h5")
    assert not ((post_c.status & pf.FLAG_SAMPLED_INPUT) > 0).any()
    keep = ~failed
    np.testing.assert_allclose(post.quantiles[keep], post_c.quantiles[keep], rtol=1e-3,
                               atol=1e-3)


def test_real_source_medians_agree_between_coefficient_and_sampled_input(
        tmp_path, calibrated, coeff, run, model, real_xp):
    from cvae_pms.infer import infer

    coeff_files = [real_xp / RAW, real_xp / WEILER]
    infer(run, coeff_files, tmp_path / "c.h5", n_samples=400, model=model, progress=False)
    infer(run, [calibrated["fits"]], tmp_path / "s.h5", n_samples=400, model=model,
          progress=False)
    c, s = pf.read_posterior(tmp_path / "c.h5"), pf.read_posterior(tmp_path / "s.h5")
    order = [list(s.source_id).index(i) for i in c.source_id]
    qc, qs = c.quantiles, s.quantiles[order]
    sigma = 0.5 * (qc[:, :, 3] - qc[:, :, 1])
    dev = np.abs(qs[:, :, 2] - qc[:, :, 2]) / sigma
    assert len(c) == 6 and np.isfinite(dev).all()
    assert dev.max() < 0.2, dev.max()
    # flags agree apart from the input kind (G from the flux equals G from the coefficients)
    other = ~np.uint16(pf.FLAG_SAMPLED_INPUT | pf.FLAG_DIAGONAL_COV)
    np.testing.assert_array_equal(s.status[order] & other, c.status & other)
    assert ((s.status & pf.FLAG_SAMPLED_INPUT) > 0).all()


def test_infer_batch_python_route_on_a_sampled_batch(model, calibrated):
    from cvae_pms.infer import infer_batch

    batch = read_xp(calibrated["ecsv"])
    chunk = infer_batch(model, batch, 30, seed=0)
    assert len(chunk) == 6 and np.isfinite(chunk.samples).all()
    assert ((np.asarray(chunk.status) & pf.FLAG_SAMPLED_INPUT) > 0).all()
    assert all(m == "" for m in chunk.message)


# --------------------------------------------------------------------------- APOGEE library
@pytest.fixture(scope="module")
def library():
    from cvae_pms.realdata.apogee import LibraryError, library_path

    try:
        return library_path()
    except LibraryError as exc:
        pytest.skip(str(exc))


def test_library_reads_through_the_split_never_the_reserved_rows(library):
    from cvae_pms.realdata.apogee import split_part
    from cvae_pms.xp.photometry import g_mag_from_flux

    it = iter_xp(library, chunk_size=2000)
    batches = [next(it), next(it)]
    it.close()
    b = SampledBatch.concat(batches)
    ids = b.extra["apogee_id"]
    assert len(b) == 4000 and b.sampled
    assert (split_part(ids) != 0).all()                       # reserved part never appears
    assert np.all(np.diff(b.source_id) > 0) and b.source_id[0] >= 0  # FITS row indices
    assert b.ok.mean() > 0.99 and np.isfinite(b.flux[b.ok]).all()
    # the library flux is absolute: its G agrees with the library's own Gaia EDR3 G
    d = g_mag_from_flux(b.flux[b.ok]) - b.extra["phot_g_mean_mag"][b.ok]
    assert abs(np.nanmedian(d)) < 0.02 and np.nanpercentile(np.abs(d), 90) < 0.05


def test_library_rows_through_infer(library, model, run, tmp_path):
    """The Python route on the real library path (first chunk), and the CLI on a small
    library-format file made of non-reserved rows only."""
    from astropy.io import fits

    from cvae_pms.infer import infer_batch
    from cvae_pms.realdata.apogee import NON_RESERVED_PARTS, iter_library

    it = iter_xp(library, chunk_size=40)
    batch = next(it)
    it.close()
    chunk = infer_batch(model, batch, 20, seed=0)
    assert ((np.asarray(chunk.status) & pf.FLAG_SAMPLED_INPUT) > 0).all()
    assert [m.split("apogee_id=")[-1] for m in chunk.message] == list(batch.extra["apogee_id"])
    # a small library-format file (rows of the non-reserved parts only) through the CLI
    lib = next(iter_library(library, parts=NON_RESERVED_PARTS, chunk_size=12))
    med = np.full(12, 1e-16)
    cols = [fits.Column("apogee_id", "30A", array=lib.apogee_id),
            fits.Column("gaiaedr3_source_id", "K", array=lib.labels["gaia_source_id"]),
            fits.Column("flux", "343E", array=lib.flux / med[:, None]),
            fits.Column("flux_error", "343E", array=lib.flux_error / med[:, None]),
            fits.Column("medflux", "E", array=med)]
    cols += [fits.Column(k, "E", array=v) for k, v in lib.labels.items()
             if k != "gaia_source_id"]
    small = tmp_path / "small_library.fits"
    fits.BinTableHDU.from_columns(cols).writeto(small)
    res = CliRunner().invoke(main, ["infer", str(run), str(small), "--out",
                                    str(tmp_path / "lib.h5"), "--summary",
                                    str(tmp_path / "lib.ecsv"), "--samples", "20", "--quiet"])
    assert res.exit_code == 0, res.output
    t = pf.read_summary(tmp_path / "lib.ecsv")
    assert list(t["source_id"]) == list(range(12))            # rows of the small file
    assert [m.split("apogee_id=")[-1] for m in t["message"]] == list(lib.apogee_id)
    assert all("sampled_input" in f for f in t["flags"])
