"""The exact XP likelihood with the T_eff-dependent model error (the simulator's own)."""
import numpy as np
import pytest
from scipy import special

from cvae_pms import params
from cvae_pms.diagnostics.likelihood import XPLikelihood, builtin_forward
from cvae_pms.physics.sed import forward_model_meta
from cvae_pms.simulator import model_error_coefficient_covariance, simulate_observations


@pytest.fixture(scope="module")
def star():
    forward = builtin_forward({"forward_model": forward_model_meta()})
    theta = np.array([[4200.0, 4.0, 0.0, -8.5, 0.05, 0.8, 1.0]])
    bp, rp = forward(theta)
    obs = simulate_observations(bp, rp, 15.0, 20, np.random.default_rng(3), teff=theta[:, 0])
    return forward, theta, obs


def brute_force(obs, forward, u):
    """log L with the covariance built directly at each point's T_eff (no decomposition)."""
    y = np.concatenate([obs.bp[0], obs.rp[0]])
    out = []
    for row in np.atleast_2d(u):
        th = params.from_unit(row[None])
        cov = np.zeros((110, 110))
        cov[:55, :55], cov[55:, 55:] = obs.bp_cov[0], obs.rp_cov[0]
        cov += model_error_coefficient_covariance(obs.bp[0], obs.rp[0], teff=float(th[0, 0]))
        m = np.concatenate(forward(th), axis=1)[0]
        ci = np.linalg.inv(cov)
        a, b, c = m @ ci @ m, m @ ci @ y, y @ ci @ y
        logdet = np.linalg.slogdet(cov)[1]
        out.append(-0.5 * logdet - 0.5 * c + 0.5 * b * b / a - 0.5 * np.log(a)
                   + special.log_ndtr(b / np.sqrt(a)) - np.log(b / a))   # p(s) ~ 1/s
    return np.array(out)


def test_log_uniform_scale_prior_ignores_the_model_brightness(star):
    """p(s) ~ 1/s: a model made brighter by a parameter-dependent factor has the same
    likelihood (the flux level carries no information, as for the CVAE); the uniform prior
    penalises the brighter model by log k."""
    forward, theta, obs = star
    k = lambda th: 10 ** (0.4 * (th[:, 1] - 4.0))            # noqa: E731  brighter at high log g
    bright = lambda th: tuple(x * k(th)[:, None] for x in forward(th))  # noqa: E731
    u = np.repeat(params.to_unit(theta), 4, axis=0)
    u[:, 1] += [0.0, 0.05, -0.05, 0.1]
    args = (obs.bp[0], obs.rp[0], obs.bp_cov[0], obs.rp_cov[0])
    for kw in ({"teff_dependent": True}, {"teff": 4200.0}):
        a = XPLikelihood(forward, *args, to_physical=params.from_unit, **kw)(u)
        b = XPLikelihood(bright, *args, to_physical=params.from_unit, **kw)(u)
        np.testing.assert_allclose(b - b[0], a - a[0], atol=1e-8)
        a = XPLikelihood(forward, *args, to_physical=params.from_unit, scale_prior="uniform",
                         **kw)(u)
        b = XPLikelihood(bright, *args, to_physical=params.from_unit, scale_prior="uniform",
                         **kw)(u)
        shift = -np.log(k(params.from_unit(u)))
        np.testing.assert_allclose(b - b[0], a - a[0] + shift - shift[0], atol=1e-8)
    with pytest.raises(ValueError, match="scale_prior"):
        XPLikelihood(forward, *args, to_physical=params.from_unit, scale_prior="flat")


def test_log_uniform_scale_marginal_matches_the_integral():
    """The Laplace form equals the 1/s integral (taken above s = 0.01 s_hat) at SNR 30."""
    from scipy import integrate
    from cvae_pms.diagnostics.likelihood import _scale_marginal
    a, s_hat = 900.0, 2.0              # scale signal-to-noise b / sqrt(a) = 60
    b = a * s_hat
    val, _ = integrate.quad(lambda s: np.exp(-0.5 * a * s * s + b * s - 0.5 * b * b / a) / s,
                            0.01 * s_hat, 10 * s_hat, points=[s_hat], limit=200)
    want = np.log(val) + 0.5 * b * b / a - 0.5 * np.log(2 * np.pi)
    got = _scale_marginal(np.array([a]), np.array([b]))[0]
    assert abs(got - want) < 1e-3
    assert np.isneginf(_scale_marginal(np.array([a]), np.array([-b]))[0])


def test_teff_dependent_likelihood_equals_the_direct_computation(star):
    forward, theta, obs = star
    like = XPLikelihood(forward, obs.bp[0], obs.rp[0], obs.bp_cov[0], obs.rp_cov[0],
                        to_physical=params.from_unit, teff_dependent=True)
    u0 = params.to_unit(theta)[0]
    # points across node intervals, below the first node and above the last
    teffs = np.array([3100.0, 3900.0, 4200.0, 4650.0, 5555.0, 6900.0])
    pts = np.repeat(u0[None], teffs.size, axis=0)
    pts[:, 0] = params.to_unit(np.column_stack([teffs, np.repeat(theta[:, 1:], teffs.size, 0)]))[:, 0]
    got = like(pts)
    want = brute_force(obs, forward, pts)
    np.testing.assert_allclose(got - got[2], want - want[2], atol=1e-6 * np.abs(want).max() + 1e-6)


def test_fixed_teff_and_dependent_agree_at_that_teff(star):
    """At the true T_eff the two forms differ only by a constant (the dropped log det / c)."""
    forward, theta, obs = star
    args = (forward, obs.bp[0], obs.rp[0], obs.bp_cov[0], obs.rp_cov[0])
    dep = XPLikelihood(*args, to_physical=params.from_unit, teff_dependent=True)
    fixed = XPLikelihood(*args, to_physical=params.from_unit, teff=float(theta[0, 0]))
    u = np.repeat(params.to_unit(theta), 3, axis=0)
    u[:, 1] += [0.0, 0.01, -0.02]        # log g varies, T_eff fixed
    d1, d2 = dep(u), fixed(u)
    np.testing.assert_allclose(d1 - d1[0], d2 - d2[0], atol=1e-6)


def test_teff_dependent_needs_the_model_error(star):
    forward, theta, obs = star
    with pytest.raises(ValueError, match="teff_dependent"):
        XPLikelihood(forward, obs.bp[0], obs.rp[0], obs.bp_cov[0], obs.rp_cov[0],
                     to_physical=params.from_unit, teff_dependent=True, model_error=False)


def _chi2_at_truth(like, u):
    m, s = like.whitened_model(u)[0], like.best_scale(u)[0]
    return float(np.sum((like._y - s * m) ** 2))


def test_simulator_and_likelihood_agree_at_the_model_flux():
    """The simulator draws the model error at the noise-free model flux: with the model-error
    covariance at that flux the chi^2 at the truth follows chi^2 with 109 dof (110 coefficients,
    one fitted scale); at the observed flux (which contains the draw) it has a heavy tail.
    A cool, reddened star at G = 12, where the model error dominates the noise."""
    forward = builtin_forward({"forward_model": forward_model_meta()})
    theta = np.array([[3500.0, 4.0, 0.0, -8.5, 0.05, 0.8, 6.0]])
    u = params.to_unit(theta)
    bp, rp = forward(theta)
    n = 200
    obs = simulate_observations(np.repeat(bp, n, 0), np.repeat(rp, n, 0), 12.0, 40,
                                np.random.default_rng(5), teff=np.full(n, 3500.0))
    at_model, at_obs = [], []
    for i in range(n):
        args = (forward, obs.bp[i], obs.rp[i], obs.bp_cov[i], obs.rp_cov[i])
        first = XPLikelihood(*args, to_physical=params.from_unit, teff=3500.0)
        model = first.best_scale(u)[0] * first.model(u)[0]
        at_obs.append(_chi2_at_truth(first, u))
        at_model.append(_chi2_at_truth(XPLikelihood(*args, to_physical=params.from_unit,
                                                    teff=3500.0, model_error_at=model), u))
    q = np.percentile(at_model, [10, 50, 90])
    # chi^2_109: 10/50/90 % = 90.6 / 108.3 / 127.6; 200 draws resolve ~ +-3 in the median
    assert 85 < q[0] < 97 and 102 < q[1] < 115 and 120 < q[2] < 137, q
    assert np.percentile(at_obs, 90) > 150        # measured 416 for a star like this


def test_best_fit_model_error_reference(star):
    """``model_error_at="best_fit"`` finds the maximum-likelihood point (near the truth here)
    and evaluates the model error at its model flux; the truth's chi^2 is then plausible."""
    forward, theta, obs = star
    args = (forward, obs.bp[0], obs.rp[0], obs.bp_cov[0], obs.rp_cov[0])
    like = XPLikelihood(*args, to_physical=params.from_unit, teff=float(theta[0, 0]),
                        model_error_at="best_fit", seed=1)
    u = params.to_unit(theta)
    assert like(like.best_fit_unit[None])[0] >= like(u)[0] - 1e-6
    assert abs(like.best_fit_unit[0] - u[0, 0]) < 0.1          # T_eff within 400 K
    assert 70 < _chi2_at_truth(like, u) < 160
    with pytest.raises(ValueError, match="model_error_at"):
        XPLikelihood(*args, to_physical=params.from_unit, model_error_at="nonsense")
