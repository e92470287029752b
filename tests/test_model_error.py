"""Forward-model error: one definition across simulate, training noise and the emcee likelihood."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg, special

from cvae_pms.diagnostics import likelihood
from cvae_pms.simulator import (draw_model_error_coefficients, model_error_coefficient_covariance,
                                simulate_observations)
from cvae_pms.xp.flux_fit import flux_to_coefficients, ridge_projection
from cvae_pms.xp.model_error import ModelError
from cvae_pms.xp.noise import NoiseModel
from cvae_pms.xp.photometry import g_mag, scale_to_g
from cvae_pms.xp.sampling import SAMPLING_NM, calibration_matrices, sampled_flux

BAND = (SAMPLING_NM >= 400) & (SAMPLING_NM <= 1000)


@pytest.fixture(scope="module")
def star():
    """Noiseless coefficients (1, 55) x 2 of a 4500 K accreting star at 10 pc."""
    from cvae_pms.physics.photosphere import table_wavelength_nm
    from cvae_pms.physics.sed import sed_flux
    from cvae_pms.xp.instrument import sed_to_coefficients

    wl = table_wavelength_nm()
    theta = np.array([[4500.0, 4.5, 0.0, -9.0, 0.05, 0.8, 0.5]])
    return sed_to_coefficients(sed_flux(theta, wl, 10.0), wl)


def test_ridge_projection_is_the_flux_fit_operator(star):
    proj = ridge_projection()
    assert proj.shape == (110, 343) and not proj.flags.writeable
    assert ridge_projection() is proj  # cached
    flux = sampled_flux(*star)
    bp, rp, _ = flux_to_coefficients(flux)
    np.testing.assert_allclose(proj @ flux[0], np.concatenate([bp[0], rp[0]]), rtol=1e-10)
    # a flux that is an XP spectrum comes back to itself
    a = np.vstack(calibration_matrices())
    back = (proj @ flux[0]) @ a
    assert np.linalg.norm(back - flux[0]) / np.linalg.norm(flux[0]) < 1e-3


def test_projected_model_error_keeps_size_and_correlation(star):
    """Calibrated flux of model-error-perturbed noiseless stars: per-pixel std = fraction x
    flux and Gaussian correlation over model_error_corr_nm, within sampling error."""
    model = NoiseModel.default()
    term = ModelError.parametric(model.model_error_fraction, model.model_error_corr_nm)
    n = 3000
    bp, rp = star
    d_bp, d_rp = draw_model_error_coefficients(np.repeat(bp, n, 0), np.repeat(rp, n, 0),
                                               np.random.default_rng(1), model,
                                               model_error=term)
    f0 = sampled_flux(bp, rp)[0]
    z = (sampled_flux(bp + d_bp, rp + d_rp) - f0) / (model.model_error_fraction * np.abs(f0))
    ratio = z.std(axis=0)[BAND]
    # sampling error of a std from 3000 draws: 1.3 %; projection loses/gains at most 2.5 %
    assert abs(np.median(ratio) - 1) < 0.02
    assert np.all(np.abs(ratio - 1) < 0.08)
    assert np.all(np.abs(z.mean(axis=0)[BAND]) < 5 / np.sqrt(n))
    # analytic: the ridge projection keeps 95-105 % of the variance at every pixel 400-1000 nm
    a = np.vstack(calibration_matrices())
    proj = ridge_projection()
    cov = np.abs(f0)[:, None] * term.covariance() * np.abs(f0)[None, :]
    kept = np.einsum("ip,ij,jp->p", a, proj @ cov @ proj.T, a) / np.diag(cov)
    assert np.all(np.abs(kept[BAND] - 1) < 0.05)
    # correlation at lags 4..40 nm, averaged over 400-1000 nm, vs exp(-lag^2 / (2 L^2))
    zs = (z - z.mean(0)) / z.std(0)
    idx = np.flatnonzero(BAND)
    for lag in (2, 5, 7, 10, 15):
        i = idx[idx + lag <= idx.max()]
        emp = np.mean(zs[:, i] * zs[:, i + lag])
        want = np.exp(-0.5 * (2.0 * lag / model.model_error_corr_nm) ** 2)
        assert emp == pytest.approx(want, abs=0.03), (2 * lag, emp, want)


def test_empirical_model_error_depends_on_teff_and_survives_projection(star):
    """The shipped (real-star) term: a draw's per-pixel std follows the T_eff node it is drawn
    at (cool stars' model error is larger), and the flux -> coefficient projection keeps most
    of it; the population-average term sits between."""
    term = ModelError.default()
    n = 2000
    bp, rp = star
    f0 = np.abs(sampled_flux(bp, rp)[0])
    out = {}
    for teff in (3400.0, 6500.0, None):
        t = None if teff is None else np.full(n, teff)
        d_bp, d_rp = draw_model_error_coefficients(np.repeat(bp, n, 0), np.repeat(rp, n, 0),
                                                   np.random.default_rng(2), model_error=term,
                                                   teff=t)
        z = (sampled_flux(bp + d_bp, rp + d_rp) - f0) / f0
        want = np.sqrt(term.variance(None if teff is None else np.array([teff]))[0])
        ratio = z.std(axis=0)[BAND] / want[BAND]
        assert 0.8 < np.median(ratio) < 1.05, (teff, np.median(ratio))
        out[teff] = np.median(z.std(axis=0)[BAND])
    assert out[3400.0] > 1.5 * out[6500.0]
    assert out[6500.0] < out[None] < out[3400.0]
    # the numpy and keras.ops draws have the same per-pixel variance
    import tensorflow as tf
    flux = np.repeat(f0[None], n, 0).astype(np.float32)
    tfd = term.ops_draw(tf.constant(flux), tf.constant(np.full(n, 4000.0, np.float32)),
                        tf.constant([1, 2], tf.int64)).numpy() / flux
    npd = term.draw(flux, np.full(n, 4000.0), np.random.default_rng(5)) / flux
    ratio = tfd.std(0)[BAND] / npd.std(0)[BAND]
    assert abs(np.median(ratio) - 1) < 0.03


@pytest.fixture(scope="module")
def training_noise():
    from cvae_pms.features import Featuriser, FeatureSpec
    from cvae_pms.simulator import TrainingNoise
    from cvae_pms.training import DEFAULT_CONFIG

    model = NoiseModel.default()
    feat = Featuriser(FeatureSpec(model_error_frac=np.full(343, model.model_error_fraction)))
    return TrainingNoise(feat, model, DEFAULT_CONFIG["noise"])


def _training_flux(noise, bp, rp, g: float, n_transits: float, n: int, seed: int) -> np.ndarray:
    """Calibrated flux (n, 343) W m^-2 nm^-1 of n training-path draws of one star."""
    import tensorflow as tf

    y, log10_norm = noise.observe_at(bp.astype(np.float32), rp.astype(np.float32),
                                     np.asarray(g_mag(bp, rp), np.float32),
                                     np.array([g], np.float32), np.array([n_transits]),
                                     tf.constant([seed, 11], tf.int64), standardise=False,
                                     copies=n)
    return y.numpy()[:, :343].astype(np.float64) * 10.0 ** log10_norm.numpy()[:, None]


@pytest.mark.parametrize("g", [12.0, 17.0])
def test_simulated_and_training_noise_agree(star, training_noise, g):
    """Per-pixel mean and std of calibrated flux: simulate_observations == training path."""
    n = 3000
    bp, rp = star
    train = _training_flux(training_noise, bp, rp, g, 40, n, seed=int(g))
    obs = simulate_observations(np.repeat(bp, n, 0), np.repeat(rp, n, 0), g, 40,
                                np.random.default_rng(int(g)))
    sim = sampled_flux(obs.bp, obs.rp)
    sd = train.std(axis=0)
    # difference of two means in units of its standard error; 343 correlated pixels
    assert np.all(np.abs(sim.mean(0) - train.mean(0)) < 5 * sd * np.sqrt(2 / n))
    ratio = sim.std(axis=0) / sd   # standard error of the ratio ~ 1 / sqrt(n) = 1.8 %
    assert abs(np.median(ratio) - 1) < 0.02 and np.all(np.abs(ratio - 1) < 0.08)
    if g == 12.0:
        # where the model error matters, leaving it out is detected by the same test
        clean = simulate_observations(np.repeat(bp, n, 0), np.repeat(rp, n, 0), g, 40,
                                      np.random.default_rng(int(g)), model_error=False)
        ratio = sampled_flux(clean.bp, clean.rp).std(axis=0) / sd
        assert np.median(ratio) < 0.96 and ratio.min() < 0.8


def _gaussian_log_like(forward, obs, cov, u, s_grid):
    """log of the integral over s of N(obs; s m(u), cov) ds / s, on a grid (independent check).

    The 1/s weight is the default log-uniform prior on the flux scale.
    """
    m = np.concatenate(forward(u[None]), axis=1)[0]
    r = obs[None] - s_grid[:, None] * m[None]
    chi2 = np.sum(r * np.linalg.solve(cov, r.T).T, axis=1)
    return special.logsumexp(-0.5 * chi2 - np.log(s_grid)) + np.log(s_grid[1] - s_grid[0])


def test_likelihood_includes_model_error(star):
    bp0, rp0 = star
    bp, rp, _ = scale_to_g(bp0, rp0, np.array([12.0]))
    obs = simulate_observations(bp, rp, 12.0, 40, np.random.default_rng(3))
    basis = np.random.default_rng(4).normal(size=(2, 55))

    def forward(theta):   # toy model: the star with two shape parameters
        return (bp0 * (1 + 0.01 * theta[:, :1] * basis[0]),
                rp0 * (1 + 0.01 * theta[:, 1:2] * basis[1]))

    args = (forward, obs.bp[0], obs.rp[0], obs.bp_cov[0], obs.rp_cov[0])
    with_me = likelihood.XPLikelihood(*args, to_physical=lambda u: u)
    without = likelihood.XPLikelihood(*args, to_physical=lambda u: u, model_error=False)
    c_me = model_error_coefficient_covariance(obs.bp[0], obs.rp[0])
    assert np.all(np.linalg.eigvalsh(c_me) > -1e-12 * np.abs(c_me).max())
    full = linalg.block_diag(obs.bp_cov[0], obs.rp_cov[0]) + c_me
    np.testing.assert_allclose(with_me.covariance, full, rtol=1e-12, atol=0)
    # against direct integration over the scale with the full (BP-RP coupled) covariance
    pts = np.array([[0.0, 0.0], [0.5, -0.4], [-1.0, 0.8]])
    scale = with_me.best_scale(pts[:1])[0]
    s_grid = scale * np.linspace(0.97, 1.03, 6001)
    y = np.concatenate([obs.bp[0], obs.rp[0]])
    want = np.array([_gaussian_log_like(forward, y, full, u, s_grid) for u in pts])
    got = with_me(pts)
    np.testing.assert_allclose(got - got[0], want - want[0], atol=1e-3)
    # the model error makes a bright source's likelihood broader: along each toy direction the
    # Fisher information d^T C^-1 d is smaller with the model-error covariance than without
    noise_only = linalg.block_diag(obs.bp_cov[0], obs.rp_cov[0])
    np.testing.assert_allclose(without.covariance, noise_only, rtol=1e-12, atol=0)
    for k in range(2):
        d = np.zeros(110)
        d[55 * k:55 * (k + 1)] = 0.01 * (bp0, rp0)[k][0] * basis[k]
        info_with = d @ np.linalg.solve(full, d)
        info_without = d @ np.linalg.solve(noise_only, d)
        assert info_with < 0.9 * info_without
