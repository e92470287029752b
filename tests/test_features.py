"""The feature map: agreement with the numpy XP calibration, robustness, spec round trip,
real archive spectra, and noise parity between training and simulated observations."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from cvae_pms.features import (FEATURE_VERSION, N_FEATURES, RELNOISE_CLIP, FeatureError,
                               Featuriser, FeatureSpec)
from cvae_pms.xp.instrument import sed_to_coefficients
from cvae_pms.xp.noise import NoiseModel, coefficient_covariance
from cvae_pms.xp.photometry import g_mag
from cvae_pms.xp.sampling import SAMPLING_NM, sampled_flux, sampled_flux_error

ME = 0.005


def _stars(teff=(3200.0, 4500.0, 6500.0), a0=(3.0, 1.0, 0.0)):
    """Noiseless coefficients of blackbody-like stars (cool/reddened ones have ~0 blue flux)."""
    wl = np.linspace(300.0, 1110.0, 406)
    lam = wl * 1e-9
    t = np.asarray(teff)[:, None]
    bb = 1.0 / lam**5 / np.expm1(6.626e-34 * 2.998e8 / (lam * 1.381e-23 * t))
    sed = 1e-15 * bb / bb.max(1, keepdims=True) * 10 ** (-0.4 * np.asarray(a0)[:, None]
                                                         * (550.0 / wl) ** 1.3)
    return sed_to_coefficients(sed, wl)


@pytest.fixture(scope="module")
def feat():
    return Featuriser(FeatureSpec(model_error_frac=np.full(343, ME)))


def test_features_match_numpy_calibration(feat):
    bp, rp = _stars()
    cb, cr = coefficient_covariance(bp, rp, 40, NoiseModel())
    y, lg = feat.numpy(bp, rp, cb, cr, standardise=False)
    flux = sampled_flux(bp, rp)
    sigma = np.sqrt(sampled_flux_error(cb, cr) ** 2 + (ME * flux) ** 2)
    norm = flux.mean(1)
    assert y.shape == (3, N_FEATURES)
    np.testing.assert_allclose(y[:, :343], flux / norm[:, None], atol=2e-5)
    np.testing.assert_allclose(y[:, 343:], np.clip(np.log10(sigma / norm[:, None]), *RELNOISE_CLIP),
                               atol=2e-4)
    np.testing.assert_allclose(lg, np.log10(norm), atol=1e-5)


def test_features_scale_invariant_and_robust_to_negative_blue_flux(feat):
    bp, rp = _stars()
    cb, cr = coefficient_covariance(bp, rp, 40, NoiseModel())
    assert sampled_flux(bp, rp)[0, :5].max() < 1e-3 * sampled_flux(bp, rp)[0].max()
    y1, lg1 = feat.numpy(bp, rp, cb, cr)
    y2, lg2 = feat.numpy(100 * bp, 100 * rp, 1e4 * cb, 1e4 * cr)
    np.testing.assert_allclose(y1, y2, atol=1e-4)
    np.testing.assert_allclose(lg2 - lg1, 2.0, atol=1e-5)
    # a noisy cool star with negative blue pixels still gives finite features
    bp_neg = bp.copy()
    bp_neg[0, 1:] += 0.2 * np.abs(bp[0, 0])
    assert sampled_flux(bp_neg, rp)[0].min() < 0
    y3, _ = feat.numpy(bp_neg, rp, cb, cr)
    assert np.isfinite(y3).all()


def test_numpy_entry_rejects_bad_shapes(feat):
    with pytest.raises(FeatureError, match="55"):
        feat.numpy(np.ones((2, 54)), np.ones((2, 54)), np.ones((2, 54, 54)), np.ones((2, 54, 54)))


def test_spec_round_trip_and_version_check(tmp_path, feat):
    spec = FeatureSpec(model_error_frac=np.full(343, ME), mean=np.arange(686.0),
                       std=np.linspace(1, 2, 686))
    Featuriser(spec)                                  # records the design-matrix digest
    spec.save(tmp_path)
    back = FeatureSpec.load(tmp_path)
    np.testing.assert_array_equal(back.mean, spec.mean)
    np.testing.assert_array_equal(back.std, spec.std)
    assert back.matrices_sha256 == spec.matrices_sha256 and back.version == FEATURE_VERSION
    meta = json.loads((tmp_path / "features.json").read_text())
    meta["version"] = FEATURE_VERSION + 1
    (tmp_path / "features.json").write_text(json.dumps(meta))
    with pytest.raises(FeatureError, match=str(tmp_path)):
        FeatureSpec.load(tmp_path)
    with pytest.raises(FeatureError, match="design matrices"):
        Featuriser(FeatureSpec(model_error_frac=np.full(343, ME), matrices_sha256="0" * 64))


def test_real_archive_spectra_give_finite_features(real_xp, feat):
    from cvae_pms.xp.archive import read_xp
    batch = read_xp(real_xp / "gaiaxpy_samples" / "XP_CONTINUOUS_RAW.csv")
    b = batch.select(batch.ok)
    assert len(b) >= 1
    y, lg = feat.numpy(b.bp_coefficients, b.rp_coefficients, b.bp_covariance, b.rp_covariance)
    assert np.isfinite(y).all() and np.isfinite(lg).all()
    # absolute level agrees with the calibrated flux of gaiaxpy's matrices
    np.testing.assert_allclose(lg, np.log10(sampled_flux(b.bp_coefficients,
                                                         b.rp_coefficients).mean(1)), atol=1e-4)


def _numpy_simulated_features(bp, rp, g, n_transits, model, rng):
    """The numpy path: D's numpy noise draws (model error at the noise-free flux, mapped to
    coefficients, then coefficient noise with errors from the noisy draw) and the feature
    formulas written out in numpy (unstandardised)."""
    from cvae_pms.simulator import MODEL_ERROR_RIDGE_ALPHA
    from cvae_pms.xp.flux_fit import ridge_projection
    from cvae_pms.xp.noise import draw_observation
    from cvae_pms.xp.photometry import scale_to_g
    bp, rp, _ = scale_to_g(bp, rp, g)
    # the parametric term written out: fraction * |flux| * (Gaussian-correlated unit normal)
    dist = SAMPLING_NM[:, None] - SAMPLING_NM[None, :]
    chol = np.linalg.cholesky(np.exp(-0.5 * (dist / model.model_error_corr_nm) ** 2)
                              + 1e-6 * np.eye(SAMPLING_NM.size))
    flux0 = sampled_flux(bp, rp)
    delta = model.model_error_fraction * rng.standard_normal(flux0.shape) @ chol.T
    d = (np.abs(flux0) * delta) @ ridge_projection(MODEL_ERROR_RIDGE_ALPHA).T
    bp_o, rp_o, cb, cr = draw_observation(bp + d[:, :55], rp + d[:, 55:], n_transits, rng,
                                          model)
    flux = sampled_flux(bp_o, rp_o)
    sigma = np.sqrt(sampled_flux_error(cb, cr) ** 2 + (model.model_error_fraction * flux) ** 2)
    norm = flux.mean(1, keepdims=True)
    return np.concatenate([flux / norm, np.clip(np.log10(sigma / norm), *RELNOISE_CLIP)], 1)


def _parametric(model):
    """The fixed (parametric) model-error term of ``model``, which the numpy reference path
    of these tests implements independently."""
    from cvae_pms.xp.model_error import ModelError
    return ModelError.parametric(model.model_error_fraction, model.model_error_corr_nm)


@pytest.mark.parametrize("g, n_transits, copies", [(12.0, 40, 1), (16.5, 20, 1), (14.0, 30, 4)])
def test_noise_parity_training_vs_simulated_observation(feat, g, n_transits, copies):
    """Features of a simulated observation (numpy noise path) and of a training sample (the TF
    noise path inside the train step), same star, same G and transits: same distribution.
    ``copies > 1``: several draws per grid row share the covariance (training.noise_copies)."""
    from cvae_pms.simulator import TrainingNoise
    from cvae_pms.training import DEFAULT_CONFIG
    model = NoiseModel(model_error_fraction=ME)
    bp, rp = _stars(teff=(4200.0,), a0=(1.5,))
    n = 2400
    bp_n, rp_n = np.repeat(bp, n, 0), np.repeat(rp, n, 0)
    y_sim = _numpy_simulated_features(bp_n, rp_n, g, n_transits, model, np.random.default_rng(1))
    tn = TrainingNoise(feat, model, DEFAULT_CONFIG["noise"], _parametric(model))
    m = n // copies
    y_tr, _ = tn.observe_at(tf.constant(bp_n[:m], tf.float32), tf.constant(rp_n[:m], tf.float32),
                            tf.fill([m], float(g_mag(bp, rp)[0])), tf.fill([m], g),
                            tf.fill([m], float(n_transits)), tf.constant([3, 4], tf.int64),
                            standardise=False, copies=copies)
    y_tr = y_tr.numpy()
    pix = slice(0, 343)
    sd_sim, sd_tr = y_sim[:, pix].std(0), y_tr[:, pix].std(0)
    # means agree within 5 standard errors; stds within 15 % (2400 draws: s.e. ~1.4 %)
    diff = np.abs(y_sim[:, pix].mean(0) - y_tr[:, pix].mean(0))
    assert np.all(diff <= 5 * np.sqrt((sd_sim**2 + sd_tr**2) / n) + 1e-5)
    ratio = sd_tr / sd_sim
    assert 0.95 < np.median(ratio) < 1.05
    assert np.all((ratio > 0.85) & (ratio < 1.15))
    # the relative-noise half agrees too, including its draw-to-draw scatter (the reported
    # errors come from each noisy draw in both paths)
    np.testing.assert_allclose(y_tr[:, 343:].mean(0), y_sim[:, 343:].mean(0), atol=0.01)
    nsd_tr, nsd_sim = y_tr[:, 343:].std(0), y_sim[:, 343:].std(0)
    assert 0.85 < np.median(nsd_tr / nsd_sim) < 1.15


def test_training_error_features_follow_the_noisy_draw_not_the_truth(feat):
    """Archive errors are estimated from the observed data: across noise draws of one star the
    reported per-pixel sigma must move with the observed flux (sigma^2 ~ a n + b + c n^2), not
    stay a fixed function of the noise-free spectrum (which lets a network read the noise-free
    shape off the error features)."""
    from cvae_pms.simulator import TrainingNoise
    from cvae_pms.training import DEFAULT_CONFIG
    model = NoiseModel(model_error_fraction=0.0)
    bp, rp = _stars(teff=(4200.0,), a0=(1.5,))
    n = 600
    tn = TrainingNoise(feat, model, DEFAULT_CONFIG["noise"], _parametric(model))
    y, lg = tn.observe_at(tf.constant(np.repeat(bp, n, 0), tf.float32),
                          tf.constant(np.repeat(rp, n, 0), tf.float32),
                          tf.fill([n], float(g_mag(bp, rp)[0])), tf.fill([n], 17.0),
                          tf.fill([n], 20.0), tf.constant([8, 9], tf.int64), standardise=False)
    y, lg = y.numpy(), lg.numpy()
    # undo the per-source normalisation: log10 flux and log10 sigma in one common unit
    log_flux = np.log10(np.clip(y[:, :343], 1e-12, None)) + lg[:, None]
    log_sigma = y[:, 343:] + lg[:, None]
    blue = slice(40, 90)                      # 416-516 nm: photon-noise dominated at G = 17
    r = [np.corrcoef(log_flux[:, k], log_sigma[:, k])[0, 1] for k in range(blue.start, blue.stop)]
    # measured ~0.16 (sigma depends on the whole band's noisy counts, not only this pixel's);
    # errors computed at the noise-free spectrum give a constant sigma here: r = 0 / undefined
    assert np.median(r) > 0.08
    assert np.median(log_sigma[:, blue].std(0)) > 1e-4


def test_noise_parity_detects_double_noise(feat):
    """The parity check has teeth: noise added twice in training is caught."""
    from cvae_pms.simulator import TrainingNoise
    from cvae_pms.training import DEFAULT_CONFIG
    model = NoiseModel(model_error_fraction=ME)
    bp, rp = _stars(teff=(4200.0,), a0=(1.5,))
    n = 2000
    bp_n, rp_n = np.repeat(bp, n, 0), np.repeat(rp, n, 0)
    y_sim = _numpy_simulated_features(bp_n, rp_n, 16.5, 20, model, np.random.default_rng(2))
    tn = TrainingNoise(feat, model, DEFAULT_CONFIG["noise"], _parametric(model))
    g0 = float(g_mag(bp, rp)[0])
    # observing at G and half the transits doubles the variance: like adding the noise twice
    y_tr, _ = tn.observe_at(tf.constant(bp_n, tf.float32), tf.constant(rp_n, tf.float32),
                            tf.fill([n], g0), tf.fill([n], 16.5), tf.fill([n], 10.0),
                            tf.constant([5, 6], tf.int64), standardise=False)
    ratio = y_tr.numpy()[:, :343].std(0) / y_sim[:, :343].std(0)
    assert np.median(ratio) > 1.2


@pytest.mark.parametrize("g", [12.0, 17.0])
def test_flux_variance_from_covariance_equals_from_information(feat, g):
    """diag(A^T Cov A) computed two ways agrees: from the coefficient covariances (inference,
    float32 inputs as :meth:`Featuriser.numpy` passes them) and from the Cholesky factors of
    the Fisher matrices (training), for noise-free and noisy spectra of cool/reddened stars."""
    from cvae_pms.xp.noise import (draw_observation, ops_covariance_from_cholesky,
                                   ops_information_cholesky)
    from cvae_pms.xp.photometry import scale_to_g
    bp, rp, _ = scale_to_g(*_stars(), g)
    nt = np.array([20.0, 40.0, 60.0])
    bp_o, rp_o, _, _ = draw_observation(bp, rp, nt, np.random.default_rng(4))
    bp, rp, nt = np.concatenate([bp, bp_o]), np.concatenate([rp, rp_o]), np.tile(nt, 2)
    chols = ops_information_cholesky(bp, rp, nt)
    covs = [ops_covariance_from_cholesky(c).numpy().astype(np.float32) for c in chols]
    f32 = [tf.constant(a, tf.float32) for a in (bp, rp, *covs)]
    v_cov = feat.flux_variance(*f32).numpy()
    v_inf = feat.flux_variance_from_information(tf.constant(bp), tf.constant(rp), chols).numpy()
    assert v_cov.shape == v_inf.shape == (6, 343) and np.all(v_inf > 0)
    np.testing.assert_allclose(v_cov, v_inf, rtol=1e-4, atol=0)
