"""Networks, loss, annealing, fast sampler and metrics (unit tests, no training)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from cvae_pms.diagnostics import metrics
from cvae_pms.model.cvae import (DECODER_LOGVAR, LATENT_LOGVAR, Annealing, bounded, cvae_terms,
                                 decoder_log_prob, decoder_moments, prior_log_prob,
                                 training_loss)
from cvae_pms.model.networks import NetworkConfig, build_networks, whitening_matrix
from cvae_pms.model.sampler import PosteriorSampler, truncated_normal_icdf

tfd = tfp.distributions


def _eps(n: int, latent: int, seed) -> tf.Tensor:
    return tf.random.stateless_normal((n, latent), seed=seed)


def tfp_prior(logits, loc, logvar_raw):
    """TFP's mixture of diagonal Gaussians: the independent reference of r1."""
    scale = tf.exp(0.5 * bounded(logvar_raw, *LATENT_LOGVAR))
    return tfd.MixtureSameFamily(tfd.Categorical(logits=logits),
                                 tfd.MultivariateNormalDiag(loc=loc, scale_diag=scale))


def tfp_decoder(mean_raw, logvar_raw, low=0.0, high=1.0):
    """TFP's truncated normals: the independent reference of r2."""
    loc, scale = decoder_moments(mean_raw, logvar_raw)
    return tfd.Independent(tfd.TruncatedNormal(loc, scale, low, high), reinterpreted_batch_ndims=1)


SMALL = dict(y_dim=20, trunk=(32, 32), latent=3, components=4, r1_hidden=(16,),
             q_hidden=(16,), r2_hidden=(16, 16))


def test_annealing_schedule_published_values():
    a = Annealing(start=50, end=150, shape="log")
    assert [a.beta(e) for e in (0, 49, 50)] == [0.0, 0.0, 0.0]
    expected = (math.log(101) - math.log(51)) / (math.log(151) - math.log(51))
    assert a.beta(100) == pytest.approx(expected)
    assert 0.55 < a.beta(100) < 0.7          # log ramp: past half-way at the midpoint
    assert a.beta(150) == 1.0 and a.beta(200) == 1.0
    betas = [a.beta(e) for e in range(0, 201)]
    assert all(b2 >= b1 for b1, b2 in zip(betas, betas[1:]))
    assert a.truncation_bounds(0) == (-10.0, 11.0)
    assert a.truncation_bounds(150) == (0.0, 1.0)
    assert Annealing(start=50, end=150, shape="linear").beta(100) == pytest.approx(0.5)
    assert Annealing(truncation_ramp=False).truncation_bounds(0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        Annealing(start=10, end=9)
    step = Annealing(start=10, end=10)             # a step: full KL weight from epoch 10 on
    assert [step.beta(e) for e in (0, 9.9, 10, 11)] == [0.0, 0.0, 1.0, 1.0]
    assert Annealing(start=0, end=0).beta(0) == 1.0   # warm start: no annealing at all
    assert Annealing(start=0, end=0).truncation_bounds(0) == (0.0, 1.0)


def test_bounded_log_variances_stay_in_range():
    raw = tf.constant([-1e4, -3.0, 0.0, 3.0, 1e4])
    for lo, hi in (DECODER_LOGVAR, LATENT_LOGVAR):
        v = bounded(raw, lo, hi).numpy()
        assert np.all(v >= lo) and np.all(v <= hi)
        assert np.all(np.diff(v) >= 0)


def test_network_shapes_and_split_first_decoder_layer():
    cfg = NetworkConfig(**SMALL)
    net = build_networks(cfg, seed=3)
    y = tf.random.normal((5, 20), seed=1)
    h = net.encode(y)
    logits, loc, logvar = net.prior_params(h)
    assert logits.shape == (5, 4) and loc.shape == (5, 4, 3) and logvar.shape == (5, 4, 3)
    # prior component means start spread out (random-normal bias), not all at zero
    assert float(tf.math.reduce_std(loc[0])) > 0.3
    z = tf.random.normal((5, 7, 3), seed=2)
    mean, lv = net.decode_from_y_part(net.decoder_y_part(h)[:, None, :], z)
    assert mean.shape == (5, 7, 7)
    # the broadcast y-part equals decoding each (y, z) pair separately
    m2, _ = net.decode_from_y_part(net.decoder_y_part(h), z[:, 2, :])
    np.testing.assert_allclose(mean[:, 2, :].numpy(), m2.numpy(), rtol=1e-5, atol=1e-6)
    same = build_networks(cfg, seed=3)
    for a, b in zip(net.weights, same.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_conv_trunk_option_builds():
    cfg = NetworkConfig(**{**SMALL, "y_dim": 40, "conv_filters": (4, 4), "conv_kernel": 3})
    net = build_networks(cfg)
    assert net.encode(tf.zeros((2, 40))).shape == (2, 32)


def test_whitening_decorrelates_and_caps_the_gain_of_empty_directions():
    rng = np.random.default_rng(0)
    # 30 correlated features of rank 12 with variances spanning 1e4 .. 1e-2
    y = (rng.normal(size=(5000, 12)) * np.logspace(2, -1, 12)) @ np.linalg.qr(
        rng.normal(size=(30, 30)))[0][:12]
    w = whitening_matrix(y, 10, floor=1e-12)
    cov = np.cov((y @ w).T)
    np.testing.assert_allclose(np.diag(cov), 1.0, rtol=1e-3)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-3
    # the 1e-2-variance direction is not amplified beyond 1/sqrt(floor * mean variance)
    capped = whitening_matrix(y, 12, floor=1e-4)
    gain = np.linalg.norm(capped, axis=0)
    mean_var = np.trace(np.cov(y.T)) / 30
    assert gain.max() <= 1.0 / np.sqrt(1e-4 * mean_var) * 1.001
    assert np.var(y @ capped[:, -1]) < 0.5          # floor-dominated: below unit variance
    with pytest.raises(ValueError):
        whitening_matrix(y, 31)


def test_whitening_layer_is_fixed_and_only_on_the_spectral_inputs():
    cfg = NetworkConfig(**{**SMALL, "y_dim": 23, "whiten": 5, "whiten_dim": 20})
    net = build_networks(cfg, seed=1)
    assert net.whiten_layer.kernel.shape == (20, 5)
    assert all(v is not net.whiten_layer.kernel for v in net.trainable_variables)
    # the 3 inputs past whiten_dim bypass the projection: changing them changes the encoding,
    # changing a spectral input along a direction the projection removes does not
    net.whiten_layer.kernel.assign(np.eye(20, 5, dtype=np.float32))
    y = tf.random.normal((4, 23), seed=3)
    bump_removed = tf.concat([y[:, :19], y[:, 19:20] + 5.0, y[:, 20:]], axis=1)
    bump_lum = tf.concat([y[:, :22], y[:, 22:] + 5.0], axis=1)
    np.testing.assert_allclose(net.encode(y).numpy(), net.encode(bump_removed).numpy())
    assert not np.allclose(net.encode(y).numpy(), net.encode(bump_lum).numpy())
    with pytest.raises(ValueError, match="whiten"):
        NetworkConfig(**{**SMALL, "y_dim": 40, "whiten": 4, "whiten_dim": 40,
                         "conv_filters": (4,)})
    with pytest.raises(ValueError, match="whiten"):
        NetworkConfig(**{**SMALL, "whiten": 30, "whiten_dim": 20})


def test_monte_carlo_kl_matches_closed_form_for_one_component():
    """With one mixture component, -H(q) - log r1(z_q) averages to the Gaussian KL."""
    cfg = NetworkConfig(**{**SMALL, "components": 1})
    net = build_networks(cfg, seed=0)
    y = tf.random.normal((64, 20), seed=4)
    x = tf.random.uniform((64, 7), seed=5)
    kls = [float(cvae_terms(net, y, x, _eps(64, 3, [7, i]))[1]) for i in range(200)]
    h = net.encode(y)
    logits, loc, logvar = net.prior_params(h)
    q_loc, q_lv = net.posterior_params(h, x)
    q = tfp.distributions.MultivariateNormalDiag(q_loc, tf.exp(0.5 * bounded(q_lv, *LATENT_LOGVAR)))
    p = tfp.distributions.MultivariateNormalDiag(
        loc[:, 0], tf.exp(0.5 * bounded(logvar, *LATENT_LOGVAR))[:, 0])
    exact = float(tf.reduce_mean(tfp.distributions.kl_divergence(q, p)))
    assert np.mean(kls) == pytest.approx(exact, rel=0.05)
    assert exact > 0


def _grads_by_part(net, loss_fn):
    """Gradients of ``loss_fn()`` grouped by network part (trunk, r1, q, r2): None -> zeros."""
    with tf.GradientTape() as tape:
        loss = loss_fn()
    grads = tape.gradient(loss, net.trainable_variables)
    out: dict[str, list[np.ndarray]] = {"trunk": [], "r1": [], "q": [], "r2": []}
    for v, g in zip(net.trainable_variables, grads):
        part = v.path.split("/")[-2].split("_")[0]
        out[part].append(np.zeros(v.shape) if g is None else g.numpy())
    return out


def test_prior_warmup_term_reaches_only_r1():
    """The warm-up term -log r1(stop_gradient(z_q)|y) trains the prior network (r1 head and the
    trunk r1 reads its input from) and nothing of q or r2; so at beta = 0 q and r2 see H only,
    while r1 gets exactly the r1-part of the KL gradient."""
    net = build_networks(NetworkConfig(**SMALL), seed=2)
    y = tf.random.normal((64, 20), seed=11)
    x = tf.random.uniform((64, 7), seed=12)
    seed = _eps(64, 3, [3, 4])

    warm = _grads_by_part(net, lambda: cvae_terms(net, y, x, seed, with_prior_fit=True)[2])
    leaks = {p: sum(np.count_nonzero(g) for g in warm[p]) for p in ("q", "r2")}
    assert leaks == {"q": 0, "r2": 0}, f"warm-up term gradient reaches q/r2: {leaks}"
    assert all(np.count_nonzero(g) > 0 for g in warm["r1"]) and len(warm["r1"]) >= 4
    assert any(np.count_nonzero(g) > 0 for g in warm["trunk"])  # shared with r1 (its input)

    def objective(beta):
        def f():
            h_loss, kl, fit = cvae_terms(net, y, x, seed, with_prior_fit=True)
            return training_loss(h_loss, kl, fit, tf.constant(beta), prior_warmup=True)
        return f

    at0 = _grads_by_part(net, objective(0.0))
    h_only = _grads_by_part(net, lambda: cvae_terms(net, y, x, seed)[0])
    kl_only = _grads_by_part(net, lambda: cvae_terms(net, y, x, seed)[1])
    for part in ("q", "r2"):
        for a, b in zip(at0[part], h_only[part]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(at0["r1"], kl_only["r1"]):  # H does not reach r1: its gradient is the KL's
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert any(np.count_nonzero(g) > 0 for g in kl_only["q"])  # the KL itself does reach q


def test_loss_terms_finite_with_targets_on_the_bounds():
    net = build_networks(NetworkConfig(**SMALL), seed=1)
    x = tf.constant(np.r_[np.zeros((1, 7)), np.ones((1, 7)), 1.0 + 1e-7 * np.ones((1, 7))],
                    tf.float32)
    h_loss, kl = cvae_terms(net, tf.random.normal((3, 20)), x, _eps(3, 3, [1, 1]))
    assert np.isfinite(h_loss.numpy()) and np.isfinite(kl.numpy())


def test_log_probs_match_tfp():
    """r1's mixture and r2's truncated-normal log densities (keras.ops, any backend) equal
    TFP's, also with the wide bounds of the truncation ramp and locations on the box edges."""
    rng = np.random.default_rng(3)
    logits = tf.constant(rng.normal(size=(50, 4)), tf.float32)
    loc = tf.constant(rng.normal(size=(50, 4, 3)), tf.float32)
    lv = tf.constant(rng.normal(0, 3, size=(50, 4, 3)), tf.float32)
    z = tf.constant(rng.normal(size=(50, 3)), tf.float32)
    np.testing.assert_allclose(prior_log_prob(logits, loc, lv, z).numpy(),
                               tfp_prior(logits, loc, lv).log_prob(z).numpy(), rtol=1e-5,
                               atol=1e-5)
    mean_raw = tf.constant(np.r_[rng.normal(0, 3, size=(48, 7)), np.full((2, 7), 30.0)]
                           * np.r_[np.ones(49), -1.0][:, None], tf.float32)
    dec_lv = tf.constant(rng.normal(0, 4, size=(50, 7)), tf.float32)
    x = tf.constant(rng.uniform(size=(50, 7)), tf.float32)
    for low, high in ((0.0, 1.0), (-10.0, 11.0), (-2.5, 3.0)):
        np.testing.assert_allclose(decoder_log_prob(mean_raw, dec_lv, x, low, high).numpy(),
                                   tfp_decoder(mean_raw, dec_lv, low, high).log_prob(x).numpy(),
                                   rtol=2e-5, atol=2e-4)


def test_inverse_cdf_truncated_normal_matches_tfp():
    loc = tf.constant([0.05, 0.5, 0.97])
    scale = tf.constant([0.2, 0.1, 0.5])
    u = tf.random.stateless_uniform((200_000, 3), seed=[1, 2])
    x = truncated_normal_icdf(loc, scale, u).numpy()
    assert x.min() >= 0.0 and x.max() <= 1.0
    ref = tfp.distributions.TruncatedNormal(loc, scale, 0.0, 1.0)
    np.testing.assert_allclose(x.mean(0), ref.mean().numpy(), atol=3e-3)
    np.testing.assert_allclose(x.std(0), ref.stddev().numpy(), atol=3e-3)


def test_sampler_component_first_matches_the_mixture_and_is_deterministic():
    net = build_networks(NetworkConfig(**SMALL), seed=2)
    y = np.random.default_rng(0).normal(size=(3, 20)).astype(np.float32)
    s = PosteriorSampler(net, n_samples=4000, batch=2)
    a = s.sample_unit(y, seed=5)
    assert a.shape == (3, 4000, 7) and a.dtype == np.float32
    np.testing.assert_array_equal(a, s.sample_unit(y, seed=5))
    assert not np.array_equal(a, s.sample_unit(y, seed=6))
    # reference: TFP's mixture sampler + TFP truncated normal, same networks
    h = net.encode(tf.constant(y))
    logits, loc, logvar = net.prior_params(h)
    z = tfp_prior(logits, loc, logvar).sample(4000, seed=3)       # (S, n, L)
    z = tf.transpose(z, (1, 0, 2))
    mean, lv = net.decode_from_y_part(net.decoder_y_part(h)[:, None, :], z)
    ref = tfp_decoder(mean, lv).sample(seed=4).numpy()
    np.testing.assert_allclose(a.mean(1), ref.mean(1), atol=0.02)
    np.testing.assert_allclose(a.std(1), ref.std(1), atol=0.02)


def test_metrics_on_known_distributions():
    rng = np.random.default_rng(1)
    truth = rng.uniform(size=(4000, 2))
    est = truth + np.array([0.1, -0.2]) + rng.normal(0, [0.05, 0.3], size=(4000, 2))
    np.testing.assert_allclose(metrics.bias(est, truth), [0.1, -0.2], atol=0.02)
    np.testing.assert_allclose(metrics.robust_scatter(est, truth), [0.05, 0.3], rtol=0.06)
    np.testing.assert_allclose(metrics.rms(est, truth), np.sqrt([0.1**2 + 0.05**2, 0.2**2 + 0.09]),
                               rtol=0.05)
    assert metrics.outlier_fraction(est, truth, 10.0).tolist() == [0.0, 0.0]
    centre = truth + rng.normal(0, 0.1, size=truth.shape)
    good = centre[:, None, :] + rng.normal(0, 0.1, size=(4000, 400, 2))
    narrow = centre[:, None, :] + rng.normal(0, 0.03, size=(4000, 400, 2))
    np.testing.assert_allclose(metrics.interval_coverage(good, truth, 0.68), 0.68, atol=0.03)
    np.testing.assert_allclose(metrics.interval_coverage(good, truth, 0.95), 0.95, atol=0.02)
    assert np.all(metrics.interval_coverage(narrow, truth, 0.68) < 0.35)
    with pytest.raises(ValueError):
        metrics.central_interval(good, 1.5)
