"""Luminosity channel (parallax + flux level), its training draw, inference with parallaxes
(bad ones included) and --prior wiring end to end."""
from __future__ import annotations

import json
import math
import shutil

import h5py
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from cvae_pms import params
from cvae_pms import posterior_file as pf
from cvae_pms.astrometry import (AstrometryError, luminosity_channel, read_astrometry,
                                 ops_draw_parallax, ops_luminosity_channel)
from cvae_pms.cli import main
from cvae_pms.features import N_FEATURES, FeatureSpec, Featuriser
from cvae_pms.infer import InferError, cached_model, infer
from cvae_pms.training import TrainingError, train

import helpers_infer as h

D_REF_PC = 10.0


def _lum_grid(path, n=1000, seed=0):
    """The stand-in grid with absolute fluxes at 10 pc (reference_distance_pc in the meta)."""
    from cvae_pms.grid.gridfile import write_grid
    from cvae_pms.xp.instrument import sed_to_coefficients
    rng = np.random.default_rng(seed)
    u = rng.uniform(size=(n, params.N_PARAMS))
    u[:, 6] *= 0.3
    theta = params.from_unit(u)
    bp, rp = sed_to_coefficients(h.standin_sed(theta), h.WL_NM)
    write_grid(path, theta, bp, rp, meta={"source": "test_luminosity stand-in",
                                           "random_seed": seed,
                                           "reference_distance_pc": D_REF_PC})
    return path


@pytest.fixture(scope="module")
def lum_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("lum")
    grid = _lum_grid(base / "grid.h5")
    cfg = base / "tiny.toml"
    cfg.write_text("[luminosity]\nenabled = true\n")
    run = base / "run"
    train(grid, cfg, run, overrides=h.TINY_OVERRIDES + ("training.epochs=3",),
          noise_model=h.noise_model(), log=lambda s: None,
          ood=dict(n_ref=400, n_cal=100, k=10, seed=0))
    return run


# ------------------------------------------------------------------------------ channel
def test_channel_equals_the_analytic_formula():
    lg = np.array([-15.3, -15.3, -14.0, -14.0])
    plx = np.array([100.0, 10.0, 2.0, 100.0 - 0.017])
    err = np.array([1.0, 0.5, 0.1, 1.0])
    value, error, present = luminosity_channel(lg, plx, err, zero_point_mas=0.0)
    assert present[:3].all()
    assert value[0] == pytest.approx(-15.3)            # 10 pc: the observed level itself
    assert value[1] == pytest.approx(-15.3 + 2.0)      # 100 pc: 100x brighter at 10 pc
    assert value[2] == pytest.approx(-14.0 + 2 * math.log10(50.0))
    assert error[1] == pytest.approx(2 / math.log(10) * 0.05)
    # zero point is added: 99.983 + 0.017 = 100 mas
    v_zp, _, _ = luminosity_channel(lg[3:], plx[3:], err[3:], zero_point_mas=0.017)
    assert v_zp[0] == pytest.approx(-14.0)
    v_tf, e_tf, p_tf = ops_luminosity_channel(lg, plx, err, 5.0)
    np.testing.assert_allclose(v_tf.numpy(), value, atol=1e-5)
    np.testing.assert_allclose(e_tf.numpy(), error, rtol=1e-5)
    assert (p_tf.numpy() == present).all()


def test_bad_parallaxes_are_missing_with_zero_inputs():
    lg = np.full(6, -15.0)
    plx = np.array([-1.0, 0.0, np.nan, 1.0, 1.0, 1.0])
    err = np.array([0.1, 0.1, 0.1, 0.3, np.nan, 0.0])      # 1/0.3 < 5: low S/N
    value, error, present = luminosity_channel(lg, plx, err)
    assert not present.any()
    assert (value == 0).all() and (error == 0).all()
    spec = FeatureSpec(model_error_frac=np.full(343, 0.005), luminosity=True)
    assert spec.y_dim == N_FEATURES + 3
    feat = Featuriser(spec)
    mean, std = np.zeros(spec.y_dim), np.ones(spec.y_dim)
    mean[N_FEATURES], std[N_FEATURES] = -16.0, 2.0
    feat.set_standardisation(mean, std)
    out = feat.luminosity_inputs(tf.constant([-15.0, -15.0]), tf.constant([0.1, 0.0]),
                                 tf.constant([True, False])).numpy()
    np.testing.assert_allclose(out, [[0.5, 0.1, 1.0], [0.0, 0.0, 0.0]], atol=1e-6)


def test_training_parallax_draw():
    n = 20000
    g0, g = np.full(n, 5.0, np.float32), np.full(n, 10.0, np.float32)   # 5 mag fainter: 100 pc
    plx, err = ops_draw_parallax(g0, g, D_REF_PC, (0.01, 0.3), 0.2, tf.constant([3, 4], tf.int64))
    plx, err = plx.numpy(), err.numpy()
    kept = np.isfinite(plx)
    assert abs(kept.mean() - 0.8) < 0.02
    frac = err[kept] / 10.0
    assert frac.min() >= 0.0099 and frac.max() <= 0.301
    assert abs(np.median(np.log(frac)) - 0.5 * (math.log(0.01) + math.log(0.3))) < 0.05
    pulls = (plx[kept] - 10.0) / err[kept]
    assert abs(pulls.mean()) < 0.05 and abs(pulls.std() - 1.0) < 0.05


def test_old_feature_spec_loads_as_spectrum_only(tmp_path):
    spec = FeatureSpec(model_error_frac=np.full(343, 0.005))
    spec.save(tmp_path)
    meta = json.loads((tmp_path / "features.json").read_text())
    del meta["luminosity"]                                   # as written before the channel
    (tmp_path / "features.json").write_text(json.dumps(meta))
    loaded = FeatureSpec.load(tmp_path)
    assert not loaded.luminosity and loaded.y_dim == N_FEATURES


def test_normalised_grid_refuses_luminosity(tmp_path):
    grid = h.make_grid(tmp_path / "grid.h5", n=300)          # no reference_distance_pc
    cfg = tmp_path / "c.toml"
    cfg.write_text("[luminosity]\nenabled = true\n")
    with pytest.raises(TrainingError, match="reference_distance_pc"):
        train(grid, cfg, tmp_path / "run", overrides=h.TINY_OVERRIDES, log=lambda s: None)


def test_astrometry_table_errors(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("source_id,parallax\n1,2.0\n")
    with pytest.raises(AstrometryError, match="parallax_error"):
        read_astrometry(p)
    p.write_text("source_id,parallax,parallax_error\n1,2.0,0.1\n1,3.0,0.1\n")
    with pytest.raises(AstrometryError, match="source_id 1 appears more than once"):
        read_astrometry(p)
    with pytest.raises(AstrometryError, match="not found"):
        read_astrometry(tmp_path / "none.csv")


# ------------------------------------------------------------------------------ train + infer
def test_run_dir_records_the_channel(lum_run):
    cfg = json.loads((lum_run / "config.json").read_text())
    assert cfg["luminosity"]["enabled"] is True
    assert json.loads((lum_run / "features.json").read_text())["luminosity"] is True
    assert json.loads((lum_run / "network.json").read_text())["y_dim"] == N_FEATURES + 3
    assert json.loads((lum_run / "grid.json").read_text())["meta"]["reference_distance_pc"] == 10


def _obs_with_parallax(tmp_path, n=6):
    """Archive CSV of n stand-in stars with parallax columns: good, negative, NaN, low S/N ..."""
    from cvae_pms.xp.archive import read_xp, write_xp_table
    path = h.write_observations(tmp_path / "obs.csv", h_theta(n), np.full(n, 13.0), seed=2)
    b = read_xp(path)
    plx = np.array([20.0, -3.0, np.nan, 20.0, 20.0, 15.0])[:n]
    err = np.array([0.5, 0.5, 0.5, 10.0, 0.5, 0.4])[:n]
    write_xp_table(path, {"source_id": b.source_id, "bp_coefficients": b.bp_coefficients,
                          "rp_coefficients": b.rp_coefficients, "bp_covariance": b.bp_covariance,
                          "rp_covariance": b.rp_covariance,
                          "extra": {"parallax": plx, "parallax_error": err}})
    return path


def h_theta(n, seed=1):
    u = np.random.default_rng(seed).uniform(0.15, 0.85, (n, 7))
    u[:, 6] *= 0.3
    return params.from_unit(u)


def test_infer_bad_parallaxes_flagged_never_a_crash(tmp_path, lum_run):
    obs = _obs_with_parallax(tmp_path)
    model = cached_model(str(lum_run))
    # astrometry table: replaces source 5's parallax by a negative one, lacks the others
    table = tmp_path / "astro.ecsv"
    from astropy.table import Table
    Table({"source_id": [5, 999], "parallax": [-1.0, 3.0],
           "parallax_error": [0.1, 0.1]}).write(table, format="ascii.ecsv")
    res = infer(lum_run, [obs], tmp_path / "p.h5", n_samples=50, progress=False, model=model,
                astrometry=table)
    post = pf.read_posterior(res.out)
    no_plx = (post.status & pf.FLAG_NO_PARALLAX) > 0
    # 1 good, 2 negative, 3 NaN, 4 low S/N, 5 negative from the table, 6 good
    assert no_plx.tolist() == [False, True, True, True, True, False]
    assert np.isfinite(post.samples).all()                  # every source still has samples
    assert (post.status & pf.FLAG_FAILED).sum() == 0
    assert res.n_no_parallax == 4
    assert "parallax 15" not in post.message[4] and "-1 mas <= 0" in post.message[4]
    assert "missing or NaN" in post.message[2] and "< 5" in post.message[3]
    # good rows carry only the note that the stand-in grid allows no goodness-of-fit check
    note = post.attrs["gof_note"]
    assert "goodness of fit not computed" in note
    assert post.message[0] == note and post.message[5] == note
    assert post.message[4].endswith(note) and "-1 mas" in post.message[4]
    with h5py.File(res.out) as f:
        assert int(f.attrs["luminosity"]) == 1 and f.attrs["astrometry"].endswith("astro.ecsv")
    # the missing-parallax posterior is the spectrum-only one: same as giving no parallax at all
    y_no, _, _ = model.run.featuriser.numpy_with_luminosity(
        *_coeffs(obs), parallax_mas=None)
    from cvae_pms.infer import sample_sources
    s_no = sample_sources(model, y_no, post.source_id, 50, 0)
    np.testing.assert_array_equal(s_no[no_plx], post.samples[no_plx])
    assert not np.array_equal(s_no[0], post.samples[0])     # the channel changes a good one


def _coeffs(path):
    from cvae_pms.xp.archive import read_xp
    b = read_xp(path)
    return b.bp_coefficients, b.rp_coefficients, b.bp_covariance, b.rp_covariance


def test_spectrum_only_model_ignores_parallaxes(trained_run, tmp_path):
    run = trained_run
    model = cached_model(str(run))
    with_plx = _obs_with_parallax(tmp_path)
    plain = h.write_observations(tmp_path / "plain.csv", h_theta(6), np.full(6, 13.0), seed=2)
    logs = []
    a = infer(run, [with_plx], tmp_path / "a.h5", n_samples=40, progress=False, model=model,
              log=logs.append)
    b = infer(run, [plain], tmp_path / "b.h5", n_samples=40, progress=False, model=model)
    pa, pb = pf.read_posterior(a.out), pf.read_posterior(b.out)
    np.testing.assert_array_equal(pa.samples, pb.samples)
    assert not ((pa.status & pf.FLAG_NO_PARALLAX) > 0).any()
    assert sum("parallaxes are ignored" in m for m in logs) == 1


def test_prior_end_to_end_cli(tmp_path, lum_run):
    obs = _obs_with_parallax(tmp_path)
    prior = tmp_path / "prior.toml"
    prior.write_text('name = "narrow teff"\n[[factor]]\ntype = "normal"\nparam = "teff"\n'
                     'mean = 4000.0\nsigma = 30.0\n[settings]\ness_min_fraction = 0.5\n')
    out = tmp_path / "p.h5"
    r = CliRunner().invoke(main, ["infer", str(lum_run), str(obs), "--out", str(out),
                                  "--samples", "64", "--quiet", "--prior", str(prior),
                                  "--keep-raw", "--summary", str(tmp_path / "s.ecsv")])
    assert r.exit_code == 0, r.output
    post = pf.read_posterior(out)
    assert post.samples.shape == (6, 64, 7) and post.samples_raw.shape == (6, 64, 7)
    assert post.ess.shape == (6,) and (post.ess >= 1).all() and (post.ess <= 64).all()
    assert ((post.status & pf.FLAG_LOW_ESS) > 0).tolist() == (post.ess < 32).tolist()
    # resampled samples are raw samples of the same source
    for i in range(6):
        raw = {tuple(v) for v in post.samples_raw[i]}
        assert all(tuple(v) in raw for v in post.samples[i])
    # The weights, recomputed here from the raw samples and the prior's stated density
    # N(4000 K, 30 K): ESS = 1 / sum(w^2); the resampled mean is the importance-weighted mean
    # within its Monte Carlo error (<= sqrt(var_w / S) for multinomial resampling, less for
    # systematic: 4 of those, plus float32 rounding), and the prior pulls T_eff toward 4000 K.
    teff_raw = post.samples_raw[:, :, 0].astype(np.float64)
    ok = np.isfinite(teff_raw).all(axis=1)
    assert ok.sum() >= 4
    log_w = -0.5 * ((teff_raw[ok] - 4000.0) / 30.0) ** 2
    w = np.exp(log_w - log_w.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(post.ess[ok], 1.0 / np.square(w).sum(axis=1), rtol=1e-4)
    mean_w = (w * teff_raw[ok]).sum(axis=1)
    sd_w = np.sqrt((w * (teff_raw[ok] - mean_w[:, None]) ** 2).sum(axis=1))
    mean_res = post.samples[ok, :, 0].astype(np.float64).mean(axis=1)
    np.testing.assert_array_less(np.abs(mean_res - mean_w), 4 * sd_w / np.sqrt(64) + 0.5)
    far = np.abs(teff_raw[ok].mean(axis=1) - 4000.0)
    assert (far > 100).sum() >= 3, far
    moved = np.abs(mean_res - 4000.0)
    assert (moved[far > 100] < far[far > 100]).all(), (moved, far)
    with h5py.File(out) as f:
        assert json.loads(f.attrs["prior"])["name"] == "narrow teff"
    summary = pf.read_summary(tmp_path / "s.ecsv")
    assert "ess" in summary.colnames
    # resume with a different prior is refused
    prior2 = tmp_path / "prior2.toml"
    prior2.write_text(prior.read_text().replace("30.0", "60.0"))
    r2 = CliRunner().invoke(main, ["infer", str(lum_run), str(obs), "--out", str(out),
                                   "--samples", "64", "--quiet", "--prior", str(prior2),
                                   "--keep-raw", "--resume"])
    assert r2.exit_code == 1 and "prior" in r2.output
    with pytest.raises(InferError, match="--keep-raw"):
        infer(lum_run, [obs], tmp_path / "q.h5", keep_raw=True, progress=False)


def _obs_plx(path, plx, err, seed=3):
    """Stand-in stars (G 13) with the given parallax columns, as an archive CSV."""
    from cvae_pms.xp.archive import read_xp, write_xp_table
    n = len(plx)
    b = read_xp(h.write_observations(path, h_theta(n, seed=4), np.full(n, 13.0), seed=seed))
    write_xp_table(path, {"source_id": b.source_id, "bp_coefficients": b.bp_coefficients,
                          "rp_coefficients": b.rp_coefficients, "bp_covariance": b.bp_covariance,
                          "rp_covariance": b.rp_covariance,
                          "extra": {"parallax": np.asarray(plx, float),
                                    "parallax_error": np.asarray(err, float)}})
    return path


def test_parallax_zero_point_and_min_over_error_end_to_end(tmp_path, lum_run):
    """The zero point is the model's luminosity.zero_point_mas unless --parallax-zero-point
    overrides it; it is ADDED to the parallax before the S/N cut (--min-parallax-over-error).

    Parallaxes 20, 2.4, 2.6, 20 mas with errors 0.5 mas: S/N 40, 4.8, 5.2, 40."""
    plx, err = np.array([20.0, 2.4, 2.6, 20.0]), np.full(4, 0.5)
    obs = _obs_plx(tmp_path / "obs.csv", plx, err)

    def run_cli(run, out, *extra):
        r = CliRunner().invoke(main, ["infer", str(run), str(obs), "--out", str(tmp_path / out),
                                      "--samples", "32", "--quiet", *extra])
        assert r.exit_code == 0, r.output
        post = pf.read_posterior(tmp_path / out)
        return post, ((post.status & pf.FLAG_NO_PARALLAX) > 0).tolist()

    base, no_plx = run_cli(lum_run, "base.h5")                      # model zero point 0
    assert base.attrs["parallax_zero_point_mas"] == 0.0
    assert base.attrs["min_parallax_over_error"] == 5.0 and no_plx == [False, True, False, False]
    assert "parallax/error 4.8 < 5" in base.message[1]

    lo, no_plx = run_cli(lum_run, "lo.h5", "--min-parallax-over-error", "4.5")
    assert lo.attrs["min_parallax_over_error"] == 4.5 and no_plx == [False] * 4
    assert not np.array_equal(lo.samples[1], base.samples[1])         # its parallax now used
    np.testing.assert_array_equal(lo.samples[[0, 2, 3]], base.samples[[0, 2, 3]])
    _, no_plx = run_cli(lum_run, "hi.h5", "--min-parallax-over-error", "5.5")
    assert no_plx == [False, True, True, False]

    # a copy of the model whose config says zero_point_mas = -0.2 mas
    zp_run = tmp_path / "zp_run"
    shutil.copytree(lum_run, zp_run)
    cfg = json.loads((zp_run / "config.json").read_text())
    assert cfg["luminosity"]["zero_point_mas"] == 0.0
    cfg["luminosity"]["zero_point_mas"] = -0.2
    (zp_run / "config.json").write_text(json.dumps(cfg))
    zp, no_plx = run_cli(zp_run, "zp.h5")
    assert zp.attrs["parallax_zero_point_mas"] == pytest.approx(-0.2)
    assert no_plx == [False, True, True, False]                       # 2.6 - 0.2 = 2.4 mas
    assert "parallax/error 4.8 < 5" in zp.message[2]
    # the same as the zero-point-free model given parallaxes - 0.2 mas, sample for sample
    shifted = _obs_plx(tmp_path / "shifted.csv", plx - 0.2, err)
    ref = infer(lum_run, [shifted], tmp_path / "shifted.h5", n_samples=32, progress=False)
    np.testing.assert_array_equal(zp.samples, pf.read_posterior(ref.out).samples)
    # --parallax-zero-point overrides the model's value
    over, no_plx = run_cli(zp_run, "over.h5", "--parallax-zero-point", "0.0")
    assert over.attrs["parallax_zero_point_mas"] == 0.0 and no_plx == [False, True, False, False]
    np.testing.assert_array_equal(over.samples, base.samples)


def test_lum_recipe_is_cpu_quick_with_the_channel_on():
    from cvae_pms.training import load_config
    quick, _ = load_config("cpu-quick")
    lum, _ = load_config("cpu-quick-lum")
    assert quick["luminosity"]["enabled"] is False and lum["luminosity"]["enabled"] is True
    lum["luminosity"]["enabled"] = False
    assert lum == quick


# ------------------------------------------------------------------------------ evaluate
def test_evaluate_gives_a_luminosity_model_its_parallaxes(tmp_path, lum_run):
    """evaluate scores a luminosity model with simulated parallaxes that put each source back
    at the grid's distance: its luminosity value equals the noise-free grid row's flux level
    at 10 pc, the flag is set for every source, and metrics.json says so."""
    from cvae_pms.evaluate import (EvaluateConfig, GSetting, draw_observations, evaluate,
                                   network_input)
    from cvae_pms.grid.gridfile import open_grid
    from cvae_pms.model.rundir import load_run
    run = load_run(lum_run)
    with open_grid(lum_run / ".." / "grid.h5") as grid:
        theta, bp0, rp0 = grid.read(np.arange(40))
    ob = draw_observations(bp0, rp0, GSetting(14.0, 14.0), (40, 40), seed=3,
                           teff=theta[:, params.INDEX["teff"]])
    assert not np.allclose(ob.flux_factor, 1.0)          # really moved away from 10 pc
    from cvae_pms.astrometry import draw_parallax
    true, plx, err = draw_parallax(ob.flux_factor, D_REF_PC, 1e-6, np.random.default_rng(0))
    np.testing.assert_allclose(err / true, 1e-6)
    _, lg_obs = run.featuriser.numpy(ob.bp, ob.rp, ob.bp_cov, ob.rp_cov)
    _, lg_grid = run.featuriser.numpy(bp0, rp0, ob.bp_cov * 0, ob.rp_cov * 0)
    value, _, present = luminosity_channel(lg_obs, plx, err)
    assert present.all()
    np.testing.assert_allclose(value, lg_grid, atol=0.02)     # the grid row's level at 10 pc
    y = network_input(run, ob.bp, ob.rp, ob.bp_cov, ob.rp_cov, ob.flux_factor, D_REF_PC, 0.05,
                      np.random.default_rng(1))
    y_fallback, _ = run.features(ob.bp, ob.rp, ob.bp_cov, ob.rp_cov)
    assert y.shape == y_fallback.shape == (40, N_FEATURES + 3)
    assert (y[:, -1] == 1).all() and (y_fallback[:, -1] == 0).all()
    np.testing.assert_array_equal(y[:, :N_FEATURES], y_fallback[:, :N_FEATURES])

    cfg = EvaluateConfig(run_dir=lum_run, grid=lum_run / ".." / "grid.h5", out=tmp_path / "ev",
                         g_settings=[GSetting(13.0, 13.0)], rows="all", n=30, samples=50,
                         fisher=False, baseline=True, baseline_rows=200, baseline_max_iter=10,
                         parallax_error_frac=0.1)
    res = evaluate(cfg, log=lambda s: None)
    assert res["luminosity"]["channel"] is True
    assert res["luminosity"]["parallax_error_frac"] == 0.1
    assert res["luminosity"]["reference_distance_pc"] == D_REF_PC
    on_disk = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert on_disk["luminosity"] == res["luminosity"]
    assert np.isfinite(res["per_parameter"]["teff"]["scatter"])
    assert "teff" in res["baseline"]["per_parameter"]


def test_evaluate_cli_rejects_a_non_positive_parallax_error(tmp_path, lum_run):
    r = CliRunner().invoke(main, ["evaluate", str(lum_run), "--grid",
                                  str(lum_run / ".." / "grid.h5"), "--g-mag", "13",
                                  "--parallax-error-frac", "0", "--out", str(tmp_path / "ev")])
    assert r.exit_code != 0
    assert "--parallax-error-frac" in r.output
