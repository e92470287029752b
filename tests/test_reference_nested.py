"""The nested-sampling reference (dynesty): evidence, calibration and determinism."""
import numpy as np
import pytest

from cvae_pms.diagnostics.reference_nested import run_dynesty

pytest.importorskip("dynesty")

MEAN, SD = np.array([0.4, 0.6]), np.array([0.05, 0.08])


def gauss(u):
    return -0.5 * np.sum(((u - MEAN) / SD) ** 2, axis=1)


@pytest.mark.parametrize("sample", ["rwalk", "unif"])
def test_gaussian_evidence_and_moments(sample):
    """log Z of a Gaussian well inside the box is sum log(sd sqrt(2 pi)); moments recovered."""
    r = run_dynesty(gauss, 2, seed=3, nlive=200, sample=sample)
    want = float(np.sum(np.log(SD * np.sqrt(2 * np.pi))))
    assert abs(r.logz - want) < 3 * r.logz_err + 0.05
    np.testing.assert_allclose(r.samples_unit.mean(axis=0), MEAN, atol=0.015)
    np.testing.assert_allclose(r.samples_unit.std(axis=0), SD, rtol=0.15)
    assert r.n_call > r.n_iter > 0 and r.summary()["n_samples"] == r.samples_unit.shape[0]


def test_same_seed_same_samples_other_seed_other_samples():
    a = run_dynesty(gauss, 2, seed=5, nlive=100)
    b = run_dynesty(gauss, 2, seed=5, nlive=100)
    c = run_dynesty(gauss, 2, seed=6, nlive=100)
    np.testing.assert_array_equal(a.samples_unit, b.samples_unit)
    assert a.logz == b.logz and not np.array_equal(a.samples_unit[:50], c.samples_unit[:50])


def test_calibrated_on_a_known_case():
    """Truth from the prior, data = truth + N(0, 0.06^2): the 68 % intervals cover ~68 %
    (2 x 40 intervals: binomial sd 0.05), also where the posterior is cut by the box."""
    rng = np.random.default_rng(11)
    inside = []
    for k in range(40):
        truth = rng.uniform(size=2)
        data = truth + 0.06 * rng.standard_normal(2)
        r = run_dynesty(lambda u, d=data: -0.5 * np.sum(((u - d) / 0.06) ** 2, axis=1), 2,
                        seed=k, nlive=100)
        lo, hi = np.percentile(r.samples_unit, [16, 84], axis=0)
        inside.extend((lo <= truth) & (truth <= hi))
    assert 0.55 <= np.mean(inside) <= 0.82


def test_bimodal_posterior_keeps_both_modes():
    """Two equal, well separated modes: each gets about half of the samples."""
    def two(u):
        a = -0.5 * np.sum(((u - 0.25) / 0.03) ** 2, axis=1)
        b = -0.5 * np.sum(((u - 0.75) / 0.03) ** 2, axis=1)
        return np.logaddexp(a, b)
    r = run_dynesty(two, 2, seed=2, nlive=300)
    frac = np.mean(r.samples_unit[:, 0] < 0.5)
    assert 0.35 < frac < 0.65


def test_xp_star_truth_inside_the_reference():
    """One simulated G = 15 star on the exact (T_eff-dependent) likelihood."""
    from cvae_pms import params
    from cvae_pms.diagnostics.likelihood import XPLikelihood, builtin_forward
    from cvae_pms.physics.sed import forward_model_meta
    from cvae_pms.simulator import simulate_observations
    forward = builtin_forward({"forward_model": forward_model_meta()})
    theta = np.array([[4700.0, 3.8, -0.2, -8.0, 0.1, 1.0, 1.5]])
    o = simulate_observations(*forward(theta), 15.0, 40, np.random.default_rng(1),
                              teff=theta[:, 0])
    like = XPLikelihood(forward, o.bp[0], o.rp[0], o.bp_cov[0], o.rp_cov[0],
                        to_physical=params.from_unit, teff_dependent=True,
                        model_error_at="best_fit")
    r = run_dynesty(like, 7, seed=0, nlive=100)
    lo, hi = np.percentile(params.from_unit(r.samples_unit), [0.5, 99.5], axis=0)
    assert np.all((lo <= theta[0]) & (theta[0] <= hi)), (lo, hi)
    t = params.INDEX["teff"]
    assert hi[t] - lo[t] < 800.0        # informative: far narrower than the 4000 K box
