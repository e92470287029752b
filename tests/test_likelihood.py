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
                   + special.log_ndtr(b / np.sqrt(a)))
    return np.array(out)


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
