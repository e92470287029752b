"""``cvae-pms evaluate`` end to end on a tiny run trained on a tiny built-in-physics grid."""
from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner

from cvae_pms import params
from cvae_pms.cli import main
from cvae_pms.evaluate import EvaluationError, GSetting, parse_g_mags, parse_range

from helpers_infer import TINY_OVERRIDES, noise_model


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 900-row grid from the built-in forward model and a CVAE trained on it for 2 epochs."""
    from cvae_pms.grid.gridfile import write_grid
    from cvae_pms.physics.photosphere import table_wavelength_nm
    from cvae_pms.physics.sed import forward_model_meta, sed_flux
    from cvae_pms.training import train
    from cvae_pms.xp.instrument import sed_to_coefficients

    tmp = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    u = rng.uniform(size=(900, params.N_PARAMS))
    u[:, 6] *= 0.3
    theta = params.from_unit(u)
    bp, rp = sed_to_coefficients(sed_flux(theta), table_wavelength_nm())
    grid = tmp / "grid.h5"
    write_grid(grid, theta, bp, rp, meta={"forward_model": forward_model_meta(),
                                          "reference_distance_pc": 10.0, "random_seed": 0})
    cfg = tmp / "tiny.toml"
    cfg.write_text("# tiny test recipe\n")
    run = tmp / "run"
    train(grid, cfg, run, overrides=TINY_OVERRIDES + ("training.epochs=2",),
          noise_model=noise_model(), log=lambda s: None)
    return tmp, grid, run


def test_parse_options():
    assert parse_g_mags(["12,15", "13:17", "15"]) == [GSetting(12, 12), GSetting(15, 15),
                                                      GSetting(13, 17)]
    assert GSetting(13, 17).label == "13-17" and GSetting(15, 15).label == "15"
    assert parse_range("15:80", "--transits", integer=True) == (15, 80)
    for bad in (["abc"], ["17:12"], ["40"], [""]):
        with pytest.raises(EvaluationError):
            parse_g_mags(bad)
    with pytest.raises(EvaluationError):
        parse_range("0:5", "--transits", integer=True)


def test_evaluate_cli_writes_consistent_numbers_and_figures(tiny_run):
    tmp, grid, run = tiny_run
    out = tmp / "eval"
    r = CliRunner().invoke(main, [
        "evaluate", str(run), "--grid", str(grid), "--n", "40", "--g-mag", "15",
        "--g-mag", "13:17", "--samples", "150", "--seed", "3", "--emcee", "1",
        "--emcee-max-steps", "1000", "--baseline-rows", "300", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "TARP max deviation" in r.output
    for lab in ("15", "13-17"):
        for fig in ("accuracy", "residuals", "pp", "sbc", "tarp"):
            assert (out / f"{fig}_{lab}.png").stat().st_size > 5000
    assert (out / "js_15.png").is_file()
    pred = Table.read(out / "predictions_15.csv")
    assert len(pred) == 40
    assert np.all(pred["teff_p16"] <= pred["teff_median"])
    assert np.all((pred["a0_truth_quantile"] >= 0) & (pred["a0_truth_quantile"] <= 1))
    m = json.loads((out / "metrics.json").read_text())
    from cvae_pms.grid.gridfile import open_grid
    with open_grid(grid) as g:
        assert m["grid_hash"] == g.content_hash
    assert m["seed"] == 3 and m["primary_g"] == "15" and m["n_sources"] == 40
    required = ("bias", "scatter", "rms", "outlier_fraction", "coverage68", "coverage95",
                "pp_pvalue")
    for name in params.NAMES:
        for key in required:
            v = m["per_parameter"][name][key]
            assert v is not None and np.isfinite(v)
        assert 0 <= m["per_parameter"][name]["coverage68"] <= m["per_parameter"][name][
            "coverage95"] <= 1
    assert 0 <= m["tarp"]["max_deviation"] <= 1
    assert set(m["by_g_mag"]) == {"15", "13-17"}
    bins = m["by_g_mag"]["13-17"]["magnitude_bins"]
    assert [b["g_low"] for b in bins] == [13, 14, 15, 16]
    assert sum(b["n_sources"] for b in bins) == 40
    # metrics.csv holds the same numbers as metrics.json.
    t = Table.read(out / "metrics.csv")
    row = t[(t["g"].astype(str) == "15") & (t["g_bin"] == "all") & (t["parameter"] == "teff")]
    assert row["scatter"][0] == pytest.approx(m["per_parameter"]["teff"]["scatter"])
    assert row["pp_pvalue"][0] == pytest.approx(m["per_parameter"]["teff"]["pp_pvalue"])
    # Baseline side by side with the CVAE.
    assert m["baseline"]["n_train"] == 300
    bvc = Table.read(out / "baseline_vs_cvae.csv")
    assert len(bvc) == 2 * params.N_PARAMS
    assert set(m["baseline"]["per_parameter"]) == set(params.NAMES)
    # emcee reference (the --emcee alias) on the exact likelihood for one source, with its
    # floor.
    e = m["reference"]
    assert e["sampler"] == "emcee"
    assert e["n_sources"] == 1 and len(e["per_source"][0]["chains"]) == 2
    for name in params.NAMES:
        for key in ("js_cvae_bits", "js_floor_bits"):
            assert 0 <= e["per_source"][0][key][name] <= 1
    assert e["speed_ratio_reference_over_cvae"] > 1
    # Fisher forecast of the accuracy limit on the same observations, per G setting: the mass
    # has no spectral signature once the flux level is free, so its forecast is the prior's
    # standard deviation; everything else is constrained below it.
    assert "limit" in r.output
    box_sd = (params.HIGH - params.LOW) / np.sqrt(12.0)
    for lab in ("15", "13-17"):
        lim = m["by_g_mag"][lab]["information_limit"]
        assert lim["n_sources"] == 40
        f = np.array([lim["per_parameter"][n]["forecast_scatter"] for n in params.NAMES])
        assert np.all(np.isfinite(f)) and np.all(f > 0)
        k = params.INDEX["mass"]
        assert f[k] == pytest.approx(box_sd[k], rel=0.15)
        for name in ("teff", "logg", "a0"):
            i = params.INDEX[name]
            assert f[i] < 0.8 * box_sd[i], name


def test_evaluate_is_seeded_and_refuses_another_grid(tiny_run, tmp_path):
    from cvae_pms.evaluate import EvaluateConfig, evaluate
    from cvae_pms.grid.gridfile import write_grid

    _, grid, run = tiny_run

    def once(out, seed):
        cfg = EvaluateConfig(run_dir=run, grid=grid, out=out, g_settings=[GSetting(16, 16)],
                             n=12, samples=60, seed=seed, baseline=False)
        return evaluate(cfg, log=lambda s: None)

    a, b, c = once(tmp_path / "a", 1), once(tmp_path / "b", 1), once(tmp_path / "c", 2)
    assert a["per_parameter"] == b["per_parameter"]
    assert a["per_parameter"] != c["per_parameter"]
    other = tmp_path / "other.h5"
    theta = params.from_unit(np.full((3, 7), 0.5))
    write_grid(other, theta, np.ones((3, 55)), np.ones((3, 55)), meta={})
    r = CliRunner().invoke(main, ["evaluate", str(run), "--grid", str(other), "--g-mag", "15",
                                  "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "other.h5" in r.output and "content hash" in r.output
    r = CliRunner().invoke(main, ["evaluate", str(run), "--grid", str(grid), "--g-mag", "x",
                                  "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "--g-mag" in r.output


def test_information_limit_is_skipped_for_a_grid_the_builtin_model_cannot_make(tmp_path):
    """A grid whose coefficients the built-in forward model does not reproduce (e.g. an
    ingested grid of another model) gets a recorded skip, not a meaningless bound."""
    from cvae_pms.evaluate import EvaluateConfig, _information_limit, _limit_model

    rng = np.random.default_rng(5)
    n = 4
    theta = params.from_unit(rng.uniform(size=(n, params.N_PARAMS)))
    other = rng.normal(size=(n, 55)) + 10.0

    class OtherGrid:
        meta: dict = {}

        def coefficients(self, idx):
            return other[: len(idx)], other[: len(idx)]

    cov = np.broadcast_to(np.eye(55), (n, 55, 55))
    obs = (other, other, cov, cov, None, np.zeros((n, 3, params.N_PARAMS)), None, None)
    cfg = EvaluateConfig(run_dir=tmp_path, grid=tmp_path / "other.h5", out=tmp_path,
                         g_settings=[GSetting(15.0, 15.0)])
    messages = []
    model = _limit_model(OtherGrid(), theta, np.arange(n), cfg, messages.append)
    res = _information_limit(model, theta, obs, {}, GSetting(15.0, 15.0), cfg, messages.append)
    assert "skipped" in res and "does not reproduce" in res["skipped"]
    assert any("information limit skipped" in m for m in messages)


def test_evaluate_and_infer_give_the_same_samples(tiny_run):
    """One sampler: evaluate keys each test star on (--seed + the G's position, grid row), so
    infer on the same observation with source_id = grid row and that seed reproduces it."""
    from cvae_pms.evaluate import evaluated_observations, run_model_error
    from cvae_pms.grid.gridfile import open_grid
    from cvae_pms.infer import infer_batch, load_model
    from cvae_pms.xp.archive import XPBatch
    tmp, grid, run = tiny_run
    out = tmp / "eval_same"
    r = CliRunner().invoke(main, ["evaluate", str(run), "--grid", str(grid), "--n", "12",
                                  "--g-mag", "13,15", "--samples", "60", "--seed", "5",
                                  "--no-baseline", "--no-fisher", "--out", str(out)])
    assert r.exit_code == 0, r.output
    model = load_model(run)
    for i, g in enumerate((13.0, 15.0)):
        pred = Table.read(out / f"predictions_{g:g}.csv")
        rows = np.asarray(pred["grid_row"], np.int64)
        with open_grid(grid) as gf:
            theta, bp0, rp0 = gf.read(rows)
        settings = [GSetting(13.0, 13.0), GSetting(15.0, 15.0)]
        ob = evaluated_observations(bp0, rp0, theta, settings, settings[i], (15, 80), 5,
                                    model_error=run_model_error(model.run))
        n = len(rows)
        batch = XPBatch(rows, ob.bp, ob.rp, ob.bp_cov, ob.rp_cov, np.full(n, 55), np.full(n, 55),
                        np.ones(n, bool), np.array([""] * n, dtype=object), {}, "eval")
        chunk = infer_batch(model, batch, 60, seed=5 + i)
        med = np.median(chunk.samples.astype(np.float64), axis=1)
        for k, p in enumerate(params.NAMES):
            np.testing.assert_allclose(pred[f"{p}_median"], med[:, k], rtol=1e-6)


def test_evaluate_dynesty_reference(tiny_run):
    """``--reference N`` (dynesty by default): two independent nested-sampling runs per
    source on the exact likelihood, the truth's quantile and the JS floor reported."""
    tmp, grid, run = tiny_run
    out = tmp / "eval_dynesty"
    r = CliRunner().invoke(main, [
        "evaluate", str(run), "--grid", str(grid), "--n", "6", "--g-mag", "15",
        "--samples", "200", "--seed", "4", "--reference", "1", "--nlive", "60",
        "--no-baseline", "--no-fisher", "--out", str(out)])
    assert r.exit_code == 0, r.output
    e = json.loads((out / "metrics.json").read_text())["reference"]
    assert e["sampler"] == "dynesty" and e["n_sources"] == 1
    src = e["per_source"][0]
    assert len(src["chains"]) == 2 and all(c["nlive"] == 60 for c in src["chains"])
    assert all(np.isfinite(c["logz"]) for c in src["chains"])
    for name in params.NAMES:
        assert 0 <= src["js_floor_bits"][name] <= 1
        assert 0 <= src["truth_quantile_in_reference"][name] <= 1
