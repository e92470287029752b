"""Diagnostics: P-P, SBC, TARP, JS divergence, the emcee wrapper, the XP likelihood,
the HistGradientBoosting baseline, accuracy tables, result files and figures."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import integrate

from cvae_pms import params
from cvae_pms.diagnostics import (accuracy, baseline, divergence, figures, likelihood, pp,
                                  reference_mcmc, result_files, sbc, tarp)


def gaussian_posteriors(n: int, s: int, p: int, width: float, seed: int = 0, shift: float = 0.0):
    """Truths and samples of a Gaussian model whose exact posterior has unit width.

    ``width`` scales the sample spread (1 = calibrated, < 1 over-confident, > 1 too wide);
    ``shift`` offsets the samples (a biased posterior).
    """
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(n, p))
    truth = mu + rng.normal(size=(n, p))
    samples = mu[:, None, :] + shift + width * rng.normal(size=(n, s, p))
    return samples, truth


# ---------------------------------------------------------------- P-P
def test_pp_calibrated_passes_and_overconfident_fails():
    s, t = gaussian_posteriors(500, 400, 3, 1.0, seed=1)
    good = pp.run_pp(s, t)
    assert np.all(good.pvalue > 1e-3)
    assert np.all(good.max_deviation < 0.08)
    # The calibrated ECDF stays (mostly) inside the 95 % pointwise band.
    inside = (good.ecdf >= good.band_low[:, None]) & (good.ecdf <= good.band_high[:, None])
    assert inside.mean() > 0.9
    s, t = gaussian_posteriors(500, 400, 3, 0.5, seed=1)
    bad = pp.run_pp(s, t)
    assert np.all(bad.pvalue < 1e-6)
    assert np.all(bad.max_deviation > 0.15)
    # Over-confident: too many truths in the lower tail -> ECDF above the band at 10 %.
    i10 = np.argmin(np.abs(bad.levels - 0.1))
    assert np.all(bad.ecdf[i10] > bad.band_high[i10])


def test_truth_quantile_ties_and_band_width():
    samples = np.array([[[0.0], [1.0], [1.0], [2.0]]])
    assert pp.truth_quantiles(samples, np.array([[1.0]]))[0, 0] == pytest.approx(0.5)
    lo, hi = pp.binomial_band(400, np.array([0.0, 0.5, 1.0]))
    assert lo[0] == 0 and hi[-1] == 1
    # 95 % band at 0.5 ~ +- 1.96 sqrt(0.25 / 400) = +- 0.049
    assert hi[1] - lo[1] == pytest.approx(2 * 1.96 * 0.025, abs=0.006)
    with pytest.raises(ValueError):
        pp.truth_quantiles(np.zeros((3, 5, 2)), np.zeros((4, 2)))


# ---------------------------------------------------------------- SBC
def test_sbc_uniform_for_calibrated_not_for_biased():
    s, t = gaussian_posteriors(600, 199, 2, 1.0, seed=2)
    r = sbc.check_sbc(sbc.sbc_ranks(s, t), n_samples=199, n_bins=20)
    assert r.counts.sum(axis=0).tolist() == [600, 600]
    assert np.allclose(r.expected, 30.0)
    assert np.all(r.pvalue > 1e-3)
    s, t = gaussian_posteriors(600, 199, 2, 1.0, seed=2, shift=0.7)
    r = sbc.check_sbc(sbc.sbc_ranks(s, t), n_samples=199, n_bins=20)
    assert np.all(r.pvalue < 1e-6)
    # Samples shifted up -> truths rank low: the first bins overflow the band.
    assert np.all(r.counts[0] > r.band_high[0])


def test_sbc_random_tie_breaking_keeps_ranks_uniform():
    # Samples piled exactly on the truth (e.g. at a box bound): ranks must still spread.
    s = np.zeros((2000, 9, 1))
    ranks = sbc.sbc_ranks(s, np.zeros((2000, 1)), seed=0)
    r = sbc.check_sbc(ranks, n_samples=9, n_bins=10)
    assert r.pvalue[0] > 1e-3


# ---------------------------------------------------------------- TARP
def test_tarp_diagonal_when_calibrated_and_sides_when_not():
    def unit(width, seed):
        rng = np.random.default_rng(seed)
        mu = rng.uniform(0.3, 0.7, size=(600, 3))
        truth = mu + 0.05 * rng.normal(size=(600, 3))
        samples = mu[:, None, :] + width * 0.05 * rng.normal(size=(600, 300, 3))
        return samples, truth

    good = tarp.run_tarp(*unit(1.0, 3), seed=0)
    assert good.max_deviation < 0.08
    narrow = tarp.run_tarp(*unit(0.4, 3), seed=0)
    wide = tarp.run_tarp(*unit(2.5, 3), seed=0)
    i10, i90 = np.argmin(np.abs(good.alpha - 0.1)), np.argmin(np.abs(good.alpha - 0.9))
    # Over-confident: the truth ball holds ~none or ~all samples, so f piles at 0 and 1 and
    # the ECP curve is flattened (above the diagonal at low alpha, below at high alpha).
    assert narrow.ecp[i10] > 0.2 and narrow.ecp[i90] < 0.75
    # Under-confident: f piles near 1/2, the curve steepens (S-shape the other way).
    assert wide.ecp[i10] < 0.05 and wide.ecp[i90] > 0.97
    assert narrow.max_deviation > 0.15 and wide.max_deviation > 0.15
    # Seeded: same reference points, same answer.
    assert tarp.run_tarp(*unit(1.0, 3), seed=0).ecp.tolist() == good.ecp.tolist()


# ---------------------------------------------------------------- JS divergence
def test_js_bounds_symmetry_and_2d_sees_correlation():
    rng = np.random.default_rng(4)
    a = rng.uniform(size=(5000, 2))
    assert np.all(divergence.js_divergence_1d(a, a) == 0)
    b = np.stack([rng.uniform(0, 0.5, 5000), rng.uniform(0.5, 1, 5000)], axis=1)
    c = np.stack([rng.uniform(0.5, 1, 5000), rng.uniform(0, 0.5, 5000)], axis=1)
    assert np.allclose(divergence.js_divergence_1d(b, c), 1.0)
    assert np.allclose(divergence.js_divergence_1d(a, b), divergence.js_divergence_1d(b, a))
    # Same marginals, different correlation: 1-D JS at the sampling floor, 2-D JS not.
    cov = 0.01 * np.array([[1.0, 0.9], [0.9, 1.0]])
    corr = rng.multivariate_normal([0.5, 0.5], cov, size=20000)
    indep = np.stack([rng.permutation(corr[:, 0]), rng.permutation(corr[:, 1])], axis=1)
    floor = rng.multivariate_normal([0.5, 0.5], cov, size=20000)
    assert np.all(divergence.js_divergence_1d(corr, indep) < 0.01)
    js2 = divergence.js_divergence_2d(corr, indep)
    assert np.isnan(js2[0, 0]) and js2[0, 1] == js2[1, 0]
    assert js2[0, 1] > 0.15
    assert divergence.js_divergence_2d(corr, floor)[0, 1] < 0.03


# ---------------------------------------------------------------- emcee wrapper
def test_emcee_recovers_known_2d_posterior():
    """A 2-parameter toy posterior known exactly: a correlated Gaussian inside the box."""
    mean = np.array([0.35, 0.6])
    cov = np.array([[0.04**2, 0.6 * 0.04 * 0.07], [0.6 * 0.04 * 0.07, 0.07**2]])
    prec = np.linalg.inv(cov)

    def log_like(u):
        d = u - mean
        return -0.5 * np.einsum("wi,ij,wj->w", d, prec, d)

    r1 = reference_mcmc.run_emcee(log_like, 2, seed=1, max_steps=6000, check_every=500)
    r2 = reference_mcmc.run_emcee(log_like, 2, seed=2, max_steps=6000, check_every=500)
    assert r1.converged and r2.converged
    assert r1.n_steps > 50 * np.max(r1.tau)
    assert 0.1 < r1.acceptance < 0.9
    exact = np.random.default_rng(0).multivariate_normal(mean, cov, size=r1.samples_unit.shape[0])
    assert np.allclose(r1.samples_unit.mean(axis=0), mean, atol=0.01)
    assert np.allclose(np.cov(r1.samples_unit.T), cov, rtol=0.25, atol=2e-4)
    js_exact = divergence.js_divergence_1d(r1.samples_unit, exact)
    js_floor = divergence.js_divergence_1d(r1.samples_unit, r2.samples_unit)
    assert np.all(js_exact < 0.03) and np.all(js_floor < 0.03)
    # A wrong posterior (shifted by 1 sigma) is clearly distinguishable.
    wrong = exact + np.array([0.04, 0.0])
    assert divergence.js_divergence_1d(r1.samples_unit, wrong)[0] > 3 * js_exact[0]
    assert divergence.js_divergence_2d(r1.samples_unit, exact)[0, 1] < 0.06


def test_refined_start_finds_a_sharp_peak_and_the_chain_its_width():
    """At G ~ 15 the XP likelihood is a sharp peak in the 7-D box: the walkers must start on it
    (global optimisation of the prescan), and the chain then recovers mean and width."""
    rng = np.random.default_rng(4)
    centre = rng.uniform(0.2, 0.8, 7)
    sd = np.full(7, 0.003)

    def log_like(u):
        return -0.5 * np.sum(((u - centre) / sd) ** 2, axis=1)

    start = reference_mcmc.prescan_start(log_like, 7, 32, seed=0)
    assert start.shape == (32, 7) and np.all(np.abs(start - centre) < 5 * sd)
    crude = reference_mcmc.prescan_start(log_like, 7, 32, seed=0, refine=False)
    assert np.median(np.abs(crude - centre) / sd) > 20       # what the crude start gave
    r = reference_mcmc.run_emcee(log_like, 7, seed=0, max_steps=8000, check_every=500)
    assert np.all(np.abs(r.samples_unit.mean(0) - centre) < 0.3 * sd)
    np.testing.assert_allclose(r.samples_unit.std(0), sd, rtol=0.25)


def test_emcee_respects_the_box_prior():
    # Flat likelihood piled against u = 0 edge: samples never leave [0, 1].
    r = reference_mcmc.run_emcee(lambda u: -5.0 * u[:, 0], 2, seed=3, max_steps=2000,
                                 check_every=500)
    assert r.samples_unit.min() >= 0 and r.samples_unit.max() <= 1
    assert np.median(r.samples_unit[:, 0]) < 0.3


def test_xp_likelihood_marginalises_the_flux_scale():
    """log L differences equal the numerical integral over the scale s > 0."""
    rng = np.random.default_rng(5)
    basis = rng.normal(size=(2, 55, 2)) + 3.0

    def forward(theta):
        bp = 1.0 + theta[:, :2] @ basis[0].T
        rp = 1.0 + theta[:, :2] @ basis[1].T
        return bp, rp

    cov_b = np.diag(rng.uniform(0.5, 2.0, 55)) * 0.05
    cov_r = np.diag(rng.uniform(0.5, 2.0, 55)) * 0.05
    true = np.array([[0.3, 0.7]])
    bp, rp = forward(true)
    s_true = 0.8
    bp_obs = s_true * bp[0] + rng.multivariate_normal(np.zeros(55), cov_b)
    rp_obs = s_true * rp[0] + rng.multivariate_normal(np.zeros(55), cov_r)
    # toy coefficients are no XP spectrum: coefficient noise only (model error: test_model_error)
    like = likelihood.XPLikelihood(forward, bp_obs, rp_obs, cov_b, cov_r,
                                       to_physical=lambda u: u, model_error=False,
                                       scale_prior="uniform")
    pts = np.array([[0.3, 0.7], [0.32, 0.69]])

    def numeric(u):
        m_b, m_r = forward(u[None])
        def f(s):
            rb, rr = bp_obs - s * m_b[0], rp_obs - s * m_r[0]
            return np.exp(-0.5 * (rb @ np.linalg.solve(cov_b, rb) + rr @ np.linalg.solve(cov_r, rr))
                          + 200.0)
        return np.log(integrate.quad(f, 0, 5, points=[s_true], limit=200)[0])

    got = like(pts)
    want = np.array([numeric(p) for p in pts])
    assert got[0] - got[1] == pytest.approx(want[0] - want[1], abs=1e-3)
    assert like.best_scale(pts[:1])[0] == pytest.approx(s_true, rel=0.02)
    assert np.all(np.isfinite(got))


# ---------------------------------------------------------------- baseline
def test_baseline_learns_and_its_interval_covers():
    rng = np.random.default_rng(6)
    n = 3000
    x = rng.uniform(size=(n, 4))
    noise = 0.05
    theta = np.stack([0.2 + 0.6 * x[:, 0] + noise * rng.normal(size=n),
                      0.5 + 0.3 * np.sin(3 * x[:, 1]) + noise * rng.normal(size=n)], axis=1)
    b = baseline.fit_baseline(x[:2000], theta[:2000], seed=0, max_iter=80)
    pred = b.predict(x[2000:])
    assert np.all(pred.p16 <= pred.p84)
    table = accuracy.point_accuracy(pred.estimate, theta[2000:], pred.p16, pred.p84)
    assert np.all(table["scatter"] < 1.5 * noise)
    assert np.all((table["coverage68"] > 0.58) & (table["coverage68"] < 0.78))
    assert np.all(np.isnan(table["coverage95"]))


# ---------------------------------------------------------------- accuracy
def test_accuracy_metrics_and_magnitude_bins():
    s, t = gaussian_posteriors(800, 300, 7, 1.0, seed=7)
    table = accuracy.accuracy(s, t)
    assert set(table) == set(accuracy.METRICS)
    # Medians scatter around the truth by the unit posterior width.
    assert np.all(np.abs(table["scatter"] - 1.0) < 0.12)
    assert np.all(np.abs(table["coverage68"] - 0.68) < 0.06)
    assert np.all(np.abs(table["coverage95"] - 0.95) < 0.03)
    assert np.all(table["outlier_fraction"] < 0.02)
    # An outlier population beyond 3 robust sigma is counted.
    s2 = s.copy()
    s2[:80] += 10.0
    assert np.all(np.abs(accuracy.accuracy(s2, t)["outlier_fraction"] - 0.1) < 0.01)
    g = np.linspace(12, 17, 800)
    bins = accuracy.magnitude_bins(s, t, g, np.array([12.0, 14.0, 17.0]))
    assert [b["n_sources"] for b in bins] == [int(np.sum(g < 14)), int(np.sum(g >= 14))]
    assert set(bins[0]["per_parameter"]) == set(params.NAMES)


# ---------------------------------------------------------------- files and figures
def test_result_files_and_figures(tmp_path):
    path = result_files.write_json(tmp_path / "x.json", {"a": np.float32(1.5), "b": np.nan,
                                                         "c": np.arange(3)})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": None, "c": [0, 1, 2]}
    s, t = gaussian_posteriors(200, 100, 7, 1.0, seed=8)
    s = params.from_unit(0.5 + 0.1 * s)
    t = params.from_unit(0.5 + 0.1 * t)
    med = np.median(s, axis=1)
    lo, hi = np.percentile(s, [16, 84], axis=1)
    figures.accuracy_figure(t, med, lo, hi, tmp_path / "acc.png", "G = 15")
    figures.residuals_figure(t, med, accuracy.accuracy(s, t)["scatter"], tmp_path / "res.png")
    figures.pp_figure(pp.run_pp(s, t), tmp_path / "pp.png")
    figures.sbc_figure(sbc.check_sbc(sbc.sbc_ranks(s, t), 100), tmp_path / "sbc.png")
    figures.tarp_figure(tarp.run_tarp(params.to_unit(s), params.to_unit(t)), tmp_path / "t.png")
    figures.js_figure(np.full((3, 7), 0.01), np.full((3, 7), 0.001), tmp_path / "js.png")
    for name in ("acc", "res", "pp", "sbc", "t", "js"):
        data = (tmp_path / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list(tmp_path.glob("*.tmp-*"))


def test_builtin_forward_reproduces_its_grid_and_refuses_others():
    from cvae_pms.physics.sed import forward_model_meta

    theta = params.from_unit(np.random.default_rng(9).uniform(size=(3, 7)))
    forward = likelihood.builtin_forward({"forward_model": forward_model_meta()})
    bp, rp = forward(theta)
    # Any flux scale per row is fine (the likelihood marginalises it).
    likelihood.check_forward(forward, theta, 3.7 * bp, 3.7 * rp)
    with pytest.raises(likelihood.ReferenceModelError, match="row 1"):
        rp2 = rp.copy()
        rp2[1, 5] *= 1.1
        likelihood.check_forward(forward, theta, bp, rp2)
    meta = {"forward_model": forward_model_meta()}
    meta["forward_model"]["accretion"]["draw_nuisance"] = True
    with pytest.raises(likelihood.ReferenceModelError, match="nuisance"):
        likelihood.builtin_forward(meta)
