"""User priors by importance reweighting (cvae_pms.priors)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, stats

from cvae_pms import params
from cvae_pms.priors import (CHABRIER_FORMS, Prior, PriorError, chabrier_imf_pdf, load_prior,
                             prior_from_dict, reweight)

from cvae_pms.priors import PRIOR_DIR  # noqa: E402  (the shipped examples)
TEFF = params.INDEX["teff"]


def uniform_samples(n: int, s: int, seed: int) -> np.ndarray:
    """(n, s, 7) samples uniform on the box, physical units."""
    return params.from_unit(np.random.default_rng(seed).random((n, s, params.N_PARAMS)))


def gaussian_teff_samples(n: int, s: int, m1: float, s1: float, seed: int) -> np.ndarray:
    """Box-uniform samples with teff ~ N(m1, s1) (well inside the box), float32."""
    x = uniform_samples(n, s, seed)
    x[..., TEFF] = np.random.default_rng(seed + 1).normal(m1, s1, size=(n, s))
    assert not params.outside_bounds(x).any()
    return x.astype(np.float32)


def normal_prior(param: str, mean: float, sigma: float, **settings) -> Prior:
    return prior_from_dict({"factor": [{"type": "normal", "param": param, "mean": mean,
                                        "sigma": sigma}], "settings": settings})


def test_gaussian_product_matches_analytic_posterior_and_ess():
    m1, s1, m2, s2 = 5000.0, 300.0, 5250.0, 200.0
    n, s = 16, 4000
    x = gaussian_teff_samples(n, s, m1, s1, seed=3)
    res = reweight(x, normal_prior("teff", m2, s2), seed=7)

    m_true = (m1 * s2**2 + m2 * s1**2) / (s1**2 + s2**2)
    sd_true = math.sqrt(s1**2 * s2**2 / (s1**2 + s2**2))
    assert np.allclose(res.weights.sum(axis=1), 1.0)

    # importance-weighted moments per source, pooled over sources
    t = x[..., TEFF].astype(float)
    wmean = (res.weights * t).sum(axis=1)
    wsd = np.sqrt((res.weights * (t - wmean[:, None]) ** 2).sum(axis=1))
    se = sd_true / np.sqrt(res.ess.sum())
    assert abs(wmean.mean() - m_true) < 5 * se
    assert abs(wsd.mean() / sd_true - 1) < 0.03

    # the resampled equal-weight set has the same moments (plus resampling noise)
    r = res.resampled[..., TEFF].astype(float)
    assert res.resampled.shape == x.shape and res.resampled.dtype == np.float32
    assert abs(r.mean() - m_true) < 8 * se
    assert abs(r.std(axis=1).mean() / sd_true - 1) < 0.04
    # other parameters keep their (uniform) distribution
    mass = res.resampled[..., params.INDEX["mass"]]
    assert abs(mass.mean() - params.BOUNDS[params.INDEX["mass"]].mean()) < 0.02

    # ESS / S = E[w]^2 / E[w^2] under q = N(m1, s1), w = N(x; m2, s2)
    e_w = stats.norm.pdf(m1, m2, math.hypot(s1, s2))
    e_w2 = stats.norm.pdf(m1, m2, math.sqrt(s1**2 + s2**2 / 2)) / (2 * s2 * math.sqrt(math.pi))
    ess_frac = e_w**2 / e_w2
    assert 0.2 < ess_frac < 0.8  # a case where reweighting matters but stays healthy
    assert abs(res.ess.mean() / s / ess_frac - 1) < 0.1
    assert not res.flag_low_ess.any() and not res.failed.any()


def test_narrow_prior_far_away_gives_low_ess_and_flag():
    x = gaussian_teff_samples(3, 2000, 4000.0, 150.0, seed=5)
    res = reweight(x, normal_prior("teff", 4800.0, 20.0, ess_min=50))
    assert (res.ess < 10).all()
    assert res.flag_low_ess.all()
    assert res.ess_threshold == 50.0
    # a fraction threshold scales with S
    res2 = reweight(x, normal_prior("teff", 4000.0, 150.0, ess_min_fraction=0.6))
    assert res2.ess_threshold == pytest.approx(1200.0)
    assert not res2.flag_low_ess.any() and (res2.ess > 0.6 * 2000).all()


def test_failed_and_zero_support_sources():
    x = gaussian_teff_samples(4, 500, 5000.0, 300.0, seed=9)
    x[1] = np.nan                                      # failed upstream
    x[2, :, TEFF] = 3100.0                             # nowhere inside the prior's range
    x[3, :10, :] = np.nan                              # a few bad samples: weight 0
    prior = prior_from_dict({"factor": [{"type": "uniform", "param": "teff",
                                         "low": 4000.0, "high": 6000.0}]})
    res = reweight(x, prior, seed=0)
    assert res.failed.tolist() == [False, True, False, False]
    assert res.zero_support.tolist() == [False, False, True, False]
    assert res.ess[1] == 0 and res.ess[2] == 0
    assert not res.flag_low_ess[1] and res.flag_low_ess[2]
    assert np.isnan(res.resampled[1]).all() and np.isnan(res.resampled[2]).all()
    assert (res.indices[1] == -1).all()
    assert np.isfinite(res.resampled[[0, 3]]).all()
    assert (res.weights[3, :10] == 0).all() and (res.indices[3] >= 10).all()
    t = res.resampled[[0, 3], :, TEFF]
    assert t.min() >= 4000.0 and t.max() <= 6000.0


def test_uniform_weights_keep_every_sample_once():
    x = uniform_samples(3, 300, seed=2)
    prior = prior_from_dict({"factor": [{"type": "uniform", "param": "a0", "low": -1.0,
                                         "high": 20.0}]})
    res = reweight(x, prior)
    assert np.allclose(res.ess, 300.0)
    # systematic resampling of equal weights returns each sample exactly once
    assert (np.sort(res.indices, axis=1) == np.arange(300)).all()


def test_log_density_box_and_edges():
    prior = normal_prior("teff", 5000.0, 500.0)
    theta = np.tile(params.BOUNDS.mean(axis=1), (4, 1))
    theta[1, params.INDEX["a0"]] = -0.5                # outside the box
    theta[2, params.INDEX["mass"]] = np.float32(1.3)   # float32 rounding at the edge: inside
    theta[3, 0] = np.nan
    lp = prior.log_density(theta)
    assert lp.shape == (4,)
    assert lp[0] == pytest.approx(stats.norm.logpdf(5000.0, 5000.0, 500.0))
    assert lp[1] == -np.inf and lp[3] == -np.inf
    assert np.isfinite(lp[2])


def test_lognormal_factor_density():
    prior = prior_from_dict({"factor": [{"type": "lognormal", "param": "mass",
                                         "mu": math.log(0.5), "sigma": 0.4}]})
    theta = np.tile(params.BOUNDS.mean(axis=1), (3, 1))
    m = np.array([0.3, 0.5, 1.2])
    theta[:, params.INDEX["mass"]] = m
    expect = stats.lognorm.logpdf(m, s=0.4, scale=0.5)
    assert np.allclose(prior.log_density(theta), expect)


@pytest.mark.parametrize("form", list(CHABRIER_FORMS))
def test_chabrier_normalised_and_continuous(form):
    lo, hi = params.BOUNDS[params.INDEX["mass"]]
    total, _ = integrate.quad(lambda m: chabrier_imf_pdf(m, lo, hi, form), lo, hi, points=[1.0])
    assert total == pytest.approx(1.0, rel=1e-6)
    wide, _ = integrate.quad(lambda m: chabrier_imf_pdf(m, 0.01, 100.0, form), 0.01, 100.0,
                             points=[0.1, 1.0, 10.0], limit=200)
    assert wide == pytest.approx(1.0, rel=1e-6)
    below, above = chabrier_imf_pdf(np.array([1 - 1e-9, 1 + 1e-9]), lo, hi, form)
    assert below == pytest.approx(above, rel=1e-6)
    assert chabrier_imf_pdf(np.array([0.2, 1.31]), lo, hi, form).tolist() == [0.0, 0.0]
    # slope of the power law: dN/dm ~ m^-(1 + x) above 1 Msun
    r = chabrier_imf_pdf(np.array([1.1, 1.25]), lo, hi, form)
    assert math.log(r[0] / r[1]) / math.log(1.25 / 1.1) == pytest.approx(2.3)


def test_chabrier_continuity_reproduces_published_constants():
    # Chabrier (2003) Table 1 / eq. 17 (individual): A = 0.158 (log-normal), B = 4.43e-2 (m > 1)
    m = np.array([0.5, 2.0])
    pdf = chabrier_imf_pdf(m, 0.01, 100.0, "individual")
    xi = pdf * m * math.log(10)                        # back to dN/dlog10 m, same constant
    lognormal_part = math.exp(-(math.log10(0.5) - math.log10(0.079)) ** 2 / (2 * 0.69**2))
    ratio = (xi[1] / 2.0 ** -1.3) / (xi[0] / lognormal_part)
    assert ratio == pytest.approx(4.43e-2 / 0.158, rel=0.01)


def test_chabrier_prior_shifts_mass_down():
    x = uniform_samples(8, 3000, seed=4)
    res = reweight(x, load_prior(PRIOR_DIR / "chabrier-imf.toml"), seed=1)
    lo, hi = params.BOUNDS[params.INDEX["mass"]]
    mean, _ = integrate.quad(lambda m: m * chabrier_imf_pdf(m, lo, hi), lo, hi, points=[1.0])
    got = res.resampled[..., params.INDEX["mass"]].mean()
    assert got < params.BOUNDS[params.INDEX["mass"]].mean() - 0.05
    assert got == pytest.approx(mean, abs=0.01)


def test_relation_prior_shifts_log_mdot():
    prior = prior_from_dict({"factor": [{"type": "relation", "x": "mass", "y": "log_mdot",
                                         "x_log": True, "slope": 2.0, "intercept": -8.0,
                                         "scatter": 0.4}]})
    x = uniform_samples(4, 20000, seed=6)
    res = reweight(x, prior, seed=2)
    lm = np.log10(res.resampled[..., params.INDEX["mass"]].ravel().astype(float))
    y = res.resampled[..., params.INDEX["log_mdot"]].ravel().astype(float)
    fit = stats.linregress(lm, y)
    assert fit.slope == pytest.approx(2.0, abs=0.1)
    assert fit.intercept == pytest.approx(-8.0, abs=0.05)
    assert np.std(y - fit.intercept - fit.slope * lm) == pytest.approx(0.4, rel=0.05)
    # mass stays uniform on its box: the relation is a conditional density of log_mdot
    m = res.resampled[..., params.INDEX["mass"]]
    assert m.mean() == pytest.approx(params.BOUNDS[params.INDEX["mass"]].mean(), abs=0.02)


@pytest.mark.parametrize("scheme", ["systematic", "multinomial"])
def test_reproducible_and_chunk_independent(scheme):
    x = gaussian_teff_samples(6, 800, 5000.0, 300.0, seed=11)
    prior = prior_from_dict({"factor": [{"type": "normal", "param": "teff", "mean": 5200.0,
                                         "sigma": 150.0}], "settings": {"resample": scheme}})
    sid = np.arange(6, dtype=np.int64) * 1_000_003 + 42
    a = reweight(x, prior, seed=3, source_id=sid)
    b = reweight(x, prior, seed=3, source_id=sid)
    np.testing.assert_array_equal(a.resampled, b.resampled)
    # the same sources split into two chunks give the same result
    c1 = reweight(x[:2], prior, seed=3, source_id=sid[:2])
    c2 = reweight(x[2:], prior, seed=3, source_id=sid[2:])
    np.testing.assert_array_equal(np.concatenate([c1.indices, c2.indices]), a.indices)
    d = reweight(x, prior, seed=4, source_id=sid)
    assert (d.indices != a.indices).any()
    # seed=None takes the prior file's seed
    e = reweight(x, prior, source_id=sid)
    f = reweight(x, prior, seed=prior.settings.seed, source_id=sid)
    np.testing.assert_array_equal(e.indices, f.indices)


def test_example_files_load_and_round_trip():
    files = sorted(PRIOR_DIR.glob("*.toml"))
    assert {f.name for f in files} >= {"lognormal-mass.toml", "chabrier-imf.toml",
                                       "mdot-mass-relation.toml"}
    theta = uniform_samples(1, 50, seed=0)[0]
    for f in files:
        prior = load_prior(f)
        d = json.loads(json.dumps(prior.to_dict()))    # storable as a JSON attribute
        again = prior_from_dict(d)
        np.testing.assert_allclose(again.log_density(theta), prior.log_density(theta))
        assert np.isfinite(prior.log_density(theta)).all()


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, needle", [
    ('[[factor]]\ntype = "normal"\nparam = "tef"\nmean = 1\nsigma = 1\n',
     "[[factor]] #1 (type 'normal'): key 'param': unknown parameter 'tef'"),
    ('[[factor]]\ntype = "gaussian"\nparam = "teff"\n', "[[factor]] #1: unknown factor type"),
    ('[[factor]]\ntype = "uniform"\nparam = "a0"\nlow = 0\nhigh = 1\n'
     '[[factor]]\ntype = "normal"\nparam = "teff"\nmean = 4000\nsigma = -5\n',
     "[[factor]] #2 (type 'normal'): key 'sigma' must be > 0"),
    ('[[factor]]\ntype = "normal"\nparam = "teff"\nmean = 4000\n', "missing key 'sigma'"),
    ('[[factor]]\nparam = "teff"\n', "missing key 'type'"),
    ('[[factor]]\ntype = "normal"\nparam = "teff"\nmean = 4000\nsigma = 5\nsigm = 1\n',
     "unknown key(s) 'sigm'"),
    ('[[factor]]\ntype = "lognormal"\nparam = "log_mdot"\nmu = 0\nsigma = 1\n',
     "needs log_mdot > 0"),
    ('[[factor]]\ntype = "relation"\nx = "mass"\ny = "mass"\nslope = 1\nintercept = 0\n'
     'scatter = 1\n', "name the same parameter"),
    ('[[factor]]\ntype = "uniform"\nparam = "teff"\nlow = 8000\nhigh = 9000\n',
     "does not overlap the box"),
    ('[[factor]]\ntype = "chabrier_imf"\nparam = "teff"\n', "applies to 'mass'"),
    ('[[factor]]\ntype = "normal"\nparam = "teff"\nmean = "hot"\nsigma = 1\n',
     "key 'mean' must be a finite number"),
    ('[settings]\nseed = 1\n', "no [[factor]] tables"),
    ('[[factor]]\ntype = "chabrier_imf"\n[settings]\nresample = "stratified"\n',
     "[settings]: key 'resample' must be one of systematic, multinomial"),
    ('[[factor]]\ntype = "chabrier_imf"\n[settings]\ness_min = 10\ness_min_fraction = 0.1\n',
     "not both"),
    ('[[factor]]\ntype = "chabrier_imf"\n[settings]\nseed = -1\n', "'seed' must be an integer"),
    ('[[factor]]\ntype = "chabrier_imf"\n[setting]\nseed = 1\n', "unknown top-level key"),
    ('[[factor]\ntype = "normal"\n', "not valid TOML"),
])
def test_bad_prior_files_raise_prior_error(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(PriorError) as err:
        load_prior(path)
    assert str(path) in str(err.value)
    assert needle in str(err.value)


def test_missing_prior_file(tmp_path):
    with pytest.raises(PriorError, match="prior file not found"):
        load_prior(tmp_path / "nope.toml")
