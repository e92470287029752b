"""Fisher-matrix (Cramer-Rao) forecast: exact on linear models, physical on the built-in model."""
import numpy as np
import pytest

from cvae_pms import params
from cvae_pms.diagnostics import fisher_bound as fb


def _linear(b, c=5.0):
    return lambda u: np.atleast_2d(u) @ b.T + c


def test_linear_model_fisher_is_exact():
    b = np.random.default_rng(1).normal(size=(40, 3))
    u0 = np.array([0.2, 0.5, 0.9])
    f = fb.fisher_matrix(_linear(b), u0, scale=2.0, prior=False)
    j = 2.0 * np.column_stack([b, b @ u0 + 5.0])
    np.testing.assert_allclose(f, j.T @ j, rtol=1e-6)
    np.testing.assert_allclose(fb.marginal_std(f), np.sqrt(np.diag(np.linalg.inv(j.T @ j))),
                               rtol=1e-6)


def test_jacobian_is_one_sided_at_the_box_edges():
    b = np.random.default_rng(2).normal(size=(10, 2))
    jac, value = fb.jacobian(_linear(b), np.array([0.0, 1.0]))
    np.testing.assert_allclose(jac, b, rtol=1e-8)
    np.testing.assert_allclose(value, b @ [0.0, 1.0] + 5.0, rtol=1e-12)


def test_invisible_parameter_keeps_its_prior_width_and_noise_scales_the_bound():
    rng = np.random.default_rng(3)
    b = np.column_stack([rng.normal(size=50), np.zeros(50)])    # u_2 does not change m
    u0 = np.array([0.4, 0.6])
    std = fb.marginal_std(fb.fisher_matrix(_linear(b), u0, scale=1.0))
    assert std[1] == pytest.approx(np.sqrt(fb.UNIT_BOX_VARIANCE), rel=1e-6)
    b2 = np.column_stack([rng.normal(size=50), rng.normal(size=50)])
    s1 = fb.marginal_std(fb.fisher_matrix(_linear(b2, 0.0), u0, 1.0, prior=False))
    s2 = fb.marginal_std(fb.fisher_matrix(_linear(b2 / 2.0, 0.0), u0, 1.0, prior=False))
    np.testing.assert_allclose(s2[:2], 2.0 * s1[:2], rtol=1e-6)   # twice the noise


def test_forecast_scatter_of_equal_errors_is_their_sigma():
    std = np.full((400, 2), [0.1, 3.0])
    np.testing.assert_allclose(fb.forecast_scatter(std, seed=0), [0.1, 3.0], rtol=0.05)


def test_builtin_model_bound_tightens_for_brighter_stars():
    """Same solar-type spectrum at two flux levels: the T_eff and A0 bounds shrink with S/N,
    and the mass (no spectral signature once the flux level is free) stays at its prior."""
    from cvae_pms.diagnostics.likelihood import XPLikelihood, builtin_forward
    from cvae_pms.xp.noise import coefficient_covariance
    from cvae_pms.xp.photometry import scale_to_g

    fwd = builtin_forward({})
    theta = np.array([[5200.0, 4.2, 0.0, -9.0, 0.02, 0.9, 0.8]])
    bp, rp = fwd(theta)
    out = []
    for g_mag in (12.0, 17.0):
        bpg, rpg, _ = scale_to_g(bp, rp, g_mag)
        bpc, rpc = coefficient_covariance(bpg, rpg, 40)
        like = XPLikelihood(fwd, bpg[0], rpg[0], bpc[0], rpc[0], to_physical=params.from_unit)
        out.append(fb.star_bounds(like, params.to_unit(theta[0])) * (params.HIGH - params.LOW))
    bright, faint = out
    for name in ("teff", "a0"):
        i = params.INDEX[name]
        assert bright[i] < 0.7 * faint[i], (name, bright[i], faint[i])
    m = params.INDEX["mass"]
    assert faint[m] > 0.9 * np.sqrt(fb.UNIT_BOX_VARIANCE) * (params.HIGH[m] - params.LOW[m])


def test_singular_fisher_gives_inf_only_where_the_null_direction_reaches():
    f = np.array([[4.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.0]])
    std = fb.marginal_std(f)
    np.testing.assert_allclose(std[:2], np.sqrt(np.diag(np.linalg.inv(f[:2, :2]))), rtol=1e-10)
    assert np.isinf(std[2])
