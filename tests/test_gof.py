"""The posterior predictive goodness of fit (cvae_pms.gof): calibrated on simulations, sensitive
to a wrong model, the same statistic for coefficient and sampled input, wired through infer."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner

from cvae_pms import gof
from cvae_pms import params as P
from cvae_pms import posterior_file as pf
from cvae_pms.cli import main
from cvae_pms.grid.synth import synth_grid
from cvae_pms.physics.sed import forward_model_meta, sed_function
from cvae_pms.xp.archive import read_xp
from cvae_pms.xp.model_error import ModelError

N_OBS = 300
TEFF = P.INDEX["teff"]


@pytest.fixture(scope="module")
def check():
    sed = sed_function({"forward_model": forward_model_meta()})
    return gof.PredictiveCheck(sed, ModelError.default(), n_draws=4, threshold=3.0)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    path = tmp_path_factory.mktemp("gof") / "g.h5"
    synth_grid(path, n=1200, seed=3, chunk=1200, progress=False)
    return path


@pytest.fixture(scope="module")
def observed(grid, tmp_path_factory):
    """N_OBS noisy coefficient observations (G 12-17, model error included) + truth."""
    out = tmp_path_factory.mktemp("obs") / "obs.csv"
    res = CliRunner().invoke(main, ["simulate", "--grid", str(grid), "--n", str(N_OBS),
                                    "--rows", "all", "--g-mag", "12:17", "--seed", "4",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    truth = Table.read(out.with_name("obs_truth.csv"), format="ascii.csv")
    theta = np.column_stack([np.asarray(truth[n], float) for n in P.NAMES])
    return read_xp(out), theta, out


def _at_truth(theta: np.ndarray, k: int = 4) -> np.ndarray:
    """A posterior concentrated at the truth: (n, k, 7)."""
    return np.repeat(theta[:, None, :], k, axis=1)


def test_calibrated_on_simulated_coefficients(check, observed):
    # the noise the simulator adds is the noise the check assumes: chi2_red ~ 1 and the
    # posterior predictive p-value close to uniform
    batch, theta, _ = observed
    res = check.coefficients(_at_truth(theta), batch.bp_coefficients, batch.rp_coefficients,
                             batch.bp_covariance, batch.rp_covariance)
    assert np.isfinite(res.chi2_red).all()
    assert 0.85 < np.median(res.chi2_red) < 1.15
    # binomial 3 sigma on 300 around 0.05 and 0.5; the moment-matched null is approximate
    assert 0.01 < np.mean(res.p_value < 0.05) < 0.11
    assert 0.38 < np.mean(res.p_value < 0.5) < 0.62
    assert np.all((res.dof > 5) & (res.dof < 342))
    assert np.mean(check.poor_fit(res)) < 0.02


def test_wrong_model_or_distorted_spectrum_is_flagged(check, observed):
    batch, theta, _ = observed
    base = check.coefficients(_at_truth(theta), batch.bp_coefficients, batch.rp_coefficients,
                              batch.bp_covariance, batch.rp_covariance)
    # posterior 600 K too hot: the forward model no longer reproduces the spectrum
    hot = theta.copy()
    hot[:, TEFF] = np.clip(hot[:, TEFF] + 600.0, None, P.HIGH[TEFF])
    moved = hot[:, TEFF] > theta[:, TEFF] + 300
    wrong = check.coefficients(_at_truth(hot), batch.bp_coefficients, batch.rp_coefficients,
                               batch.bp_covariance, batch.rp_covariance)
    ratio = wrong.chi2_red[moved] / base.chi2_red[moved]
    assert np.median(ratio) > 2 and np.mean(ratio > 1) > 0.9
    # a smooth 5 % ripple in the spectrum (sampled route): flagged at bright G
    from cvae_pms.xp.sampling import SAMPLING_NM, sampled_flux, sampled_flux_error
    flux = sampled_flux(batch.bp_coefficients, batch.rp_coefficients)
    err = sampled_flux_error(batch.bp_covariance, batch.rp_covariance)
    clean = check.sampled(_at_truth(theta), flux, err)
    wave = np.sin(2 * np.pi * SAMPLING_NM / 250.0)
    frac = []
    for amp in (0.05, 0.1, 0.2):
        bent = check.sampled(_at_truth(theta), flux * (1 + amp * wave), err)
        assert np.mean(bent.chi2_red > clean.chi2_red) > 0.9
        frac.append(np.mean(check.poor_fit(bent)))
    # the flagged fraction rises with the size of the distortion
    assert np.mean(check.poor_fit(clean)) < 0.02 < frac[0] < frac[1] < frac[2]
    assert frac[2] > 0.8


def test_sampled_and_coefficient_routes_agree(check, observed):
    # with flux_error = sqrt(diag(A^T C A)) both routes weight the pixels the same: the same
    # statistic; only the degrees of freedom (correlations) differ
    batch, theta, _ = observed
    from cvae_pms.xp.sampling import sampled_flux, sampled_flux_error
    samples = _at_truth(theta)
    samples[:, 1:, TEFF] += 80.0
    a = check.coefficients(samples, batch.bp_coefficients, batch.rp_coefficients,
                           batch.bp_covariance, batch.rp_covariance)
    b = check.sampled(samples, sampled_flux(batch.bp_coefficients, batch.rp_coefficients),
                      sampled_flux_error(batch.bp_covariance, batch.rp_covariance))
    np.testing.assert_allclose(a.chi2_red, b.chi2_red, rtol=1e-6)
    # correlated noise has fewer effective degrees of freedom than independent pixels
    assert np.median(a.dof) < np.median(b.dof)


def test_r_v_profiled_for_grids_that_draw_r_v(check, observed):
    # a star observed through R_V = 5.5: a check fixed at R_V 3.1 sees a bad fit, the check
    # of a grid with R_V drawn in 2.5-5.5 (profiled over 4 values) does not
    _, theta, _ = observed
    meta = {"forward_model": forward_model_meta(r_v_range=(2.5, 5.5))}
    settings = gof._nuisance_settings(meta)
    assert [m["forward_model"]["extinction"]["r_v"] for m in settings] == [2.5, 3.5, 4.5, 5.5]
    assert gof._nuisance_settings({"forward_model": forward_model_meta()}) == [
        {"forward_model": forward_model_meta()}]
    dusty = theta.copy()
    dusty[:, P.INDEX["a0"]] = 3.0
    sed55 = sed_function({"forward_model": forward_model_meta(r_v=5.5)})
    flux = sed55(dusty) @ gof._flux_operator()
    err = 0.005 * np.abs(flux) + 1e-3 * np.median(np.abs(flux), axis=1, keepdims=True)
    fixed = check.sampled(_at_truth(dusty), flux, err)
    prof = gof.PredictiveCheck([sed_function(m) for m in settings], check.model_error, 4,
                               3.0).sampled(_at_truth(dusty), flux, err)
    assert np.median(prof.chi2_red) < 0.2 * np.median(fixed.chi2_red)
    assert np.median(prof.chi2_red) < 1.5


def test_bad_rows_and_options(check):
    samples = np.full((2, 4, P.N_PARAMS), np.nan)
    res = check.sampled(samples, np.ones((2, 343)), np.ones((2, 343)))
    assert np.isnan(res.chi2_red).all() and not check.poor_fit(res).any()
    with pytest.raises(gof.GofError, match="n_draws"):
        gof.PredictiveCheck(check.sed, check.model_error, n_draws=0)
    with pytest.raises(gof.GofError, match="threshold"):
        gof.PredictiveCheck(check.sed, check.model_error, threshold=-1.0)
    assert check.draws(np.zeros((1, 1000, 7))).size == 4
    assert check.draws(np.zeros((1, 2, 7))).size == 2


def test_shipped_threshold_has_provenance():
    doc = gof.default_threshold()
    assert 1.0 < doc["chi2_red"] < 100.0
    assert 0.9 < doc["quantile"] < 1.0 and doc["n_stars"] >= 1000
    assert {"config", "code_commit", "date", "stars"} <= set(doc)
    assert "crc32 % 4 in 2, 3" in doc["stars"]


@pytest.mark.slow
def test_infer_end_to_end_flags_and_columns(grid, observed, tmp_path):
    from helpers_infer import TINY_OVERRIDES, noise_model
    from cvae_pms.training import train
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("# tiny\n")
    run = tmp_path / "run"
    train(grid, cfg, run, overrides=TINY_OVERRIDES + ("training.epochs=2",),
          noise_model=noise_model(), log=lambda s: None)
    _, _, obs = observed
    out, summ = tmp_path / "p.h5", tmp_path / "p.ecsv"
    res = CliRunner().invoke(main, ["infer", str(run), str(obs), "--out", str(out),
                                    "--summary", str(summ), "--samples", "64", "--quiet",
                                    "--gof-draws", "8", "--poor-fit-threshold", "2.0"])
    assert res.exit_code == 0, res.output
    post = pf.read_posterior(out, samples=False)
    assert np.isfinite(post.gof_chi2_red).all() and np.isfinite(post.gof_p).all()
    flagged = (post.status & pf.FLAG_POOR_FIT) > 0
    np.testing.assert_array_equal(flagged, post.gof_chi2_red > 2.0)
    assert post.attrs["gof_draws"] == 8 and post.attrs["gof_threshold"] == 2.0
    t = Table.read(summ)
    np.testing.assert_allclose(t["gof_chi2_red"], post.gof_chi2_red, rtol=1e-6)
    assert all(("poor_fit" in f) == bool(x) for f, x in zip(t["flags"], flagged))
    # --no-gof: no columns, no flag; resuming with other check settings is refused
    res = CliRunner().invoke(main, ["infer", str(run), str(obs), "--out", str(tmp_path / "n.h5"),
                                    "--samples", "64", "--quiet", "--no-gof"])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "n.h5") as f:
        assert "gof_chi2_red" not in f and int(f.attrs["gof_draws"]) == 0
        assert not np.any(f["status"][:] & pf.FLAG_POOR_FIT)
    # a model dir's own calibrated threshold takes precedence over the shipped one
    (run / "gof_threshold.json").write_text('{"chi2_red": 3.25}')
    res = CliRunner().invoke(main, ["infer", str(run), str(obs), "--out", str(tmp_path / "o.h5"),
                                    "--samples", "64", "--quiet", "--gof-draws", "8"])
    assert res.exit_code == 0, res.output
    assert pf.read_posterior(tmp_path / "o.h5", samples=False).attrs["gof_threshold"] == 3.25
    res = CliRunner().invoke(main, ["infer", str(run), str(obs), "--out", str(out),
                                    "--samples", "64", "--quiet", "--resume",
                                    "--gof-draws", "16", "--poor-fit-threshold", "2.0"])
    assert res.exit_code != 0 and "gof_draws" in res.output, res.output


@pytest.mark.slow
def test_ingested_grid_model_has_no_check(tmp_path):
    from helpers_infer import make_run
    from cvae_pms.infer import infer
    run = make_run(tmp_path, epochs=1, n=800)
    obs = tmp_path / "obs.csv"
    res = CliRunner().invoke(main, ["simulate", "--grid", str(tmp_path / "grid.h5"), "--n", "5",
                                    "--rows", "all", "--g-mag", "13", "--seed", "1",
                                    "--out", str(obs)])
    assert res.exit_code == 0, res.output
    r = infer(run, [obs], tmp_path / "p.h5", n_samples=16, progress=False)
    assert "goodness of fit not computed" in r.gof_note
    post = pf.read_posterior(tmp_path / "p.h5", samples=False)
    assert np.isnan(post.gof_chi2_red).all() and not np.any(post.status & pf.FLAG_POOR_FIT)
    assert all("goodness of fit not computed" in m for m in post.message)
    assert post.attrs["gof_draws"] == 0 and "ingested" in post.attrs["gof_note"]
