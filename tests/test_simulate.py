"""cvae-pms simulate: archive-layout output, truth table, parallax, G/transit draws, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner

from cvae_pms import params as P
from cvae_pms.cli import main
from cvae_pms.grid.gridfile import open_grid, write_grid
from cvae_pms.grid.synth import synth_grid
from cvae_pms.simulate import parse_range, simulate
from cvae_pms.simulator import SimulateError, simulate_observations
from cvae_pms.xp.archive import read_xp
from cvae_pms.xp.photometry import g_mag
from cvae_pms.xp.sampling import sampled_flux, sampled_flux_error


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "g.h5"
    synth_grid(path, n=300, seed=5, chunk=300, progress=False)
    return path


def _run(*args):
    return CliRunner().invoke(main, ["simulate", *map(str, args)])


def test_grid_simulation_round_trip(tmp_path, grid):
    out = tmp_path / "obs.csv"
    result = _run("--grid", grid, "--n", 20, "--rows", "all", "--g-mag", "12:17", "--transits", "15:80",
                  "--out", out, "--seed", 2)
    assert result.exit_code == 0, result.output
    truth = Table.read(tmp_path / "obs_truth.csv", format="ascii.csv")
    assert list(truth.colnames[:8]) == ["source_id", *P.NAMES]
    assert {"g_mag", "n_transits", "distance_pc", "grid_row"} <= set(truth.colnames)
    assert np.all((truth["g_mag"] >= 12) & (truth["g_mag"] <= 17))
    assert np.all((truth["n_transits"] >= 15) & (truth["n_transits"] <= 80))
    batch = read_xp(out)
    np.testing.assert_array_equal(batch.source_id, np.arange(1, 21))
    with open_grid(grid) as g:
        theta, bp0, rp0 = g.read(np.asarray(truth["grid_row"]))
    np.testing.assert_allclose(theta, np.column_stack([truth[n] for n in P.NAMES]))
    # the observed spectra are the grid spectra scaled to G plus noise of the size inference
    # assumes: in calibrated flux, the propagated covariance plus the model-error variance
    # (the shipped, T_eff-dependent term, at each star's true T_eff)
    from cvae_pms.xp.model_error import ModelError
    scale = 10 ** (-0.4 * (np.asarray(truth["g_mag"]) - g_mag(bp0, rp0)))
    flux0 = sampled_flux(bp0 * scale[:, None], rp0 * scale[:, None])
    sigma = np.sqrt(sampled_flux_error(batch.bp_covariance, batch.rp_covariance) ** 2
                    + ModelError.default().variance(theta[:, P.INDEX["teff"]]) * flux0 ** 2)
    resid = (sampled_flux(batch.bp_coefficients, batch.rp_coefficients) - flux0) / sigma
    assert 0.8 < resid.std() < 1.2
    np.testing.assert_allclose(g_mag(batch.bp_coefficients, batch.rp_coefficients), truth["g_mag"], atol=0.05)
    # parallax: from the flux scaling relative to the grid's 10 pc, with 5 % noise
    dist = 10.0 * 10 ** (0.2 * (np.asarray(truth["g_mag"]) - g_mag(bp0, rp0)))
    np.testing.assert_allclose(truth["distance_pc"], dist, rtol=1e-8)
    plx = np.asarray(batch.extra["parallax"])
    plx_err = np.asarray(batch.extra["parallax_error"])
    np.testing.assert_allclose(plx_err, 0.05 * 1000 / dist, rtol=1e-8)
    assert np.abs((plx - 1000 / dist) / plx_err).max() < 5 and np.std(plx - 1000 / dist) > 0


def test_settings_sidecar_and_no_model_error(tmp_path, grid):
    import json

    for name, flag in (("me", "--model-error"), ("clean", "--no-model-error")):
        result = _run("--grid", grid, "--n", 6, "--rows", "all", "--g-mag", "12", "--transits", "40",
                      "--out", tmp_path / f"{name}.csv", "--seed", 3, flag)
        assert result.exit_code == 0, result.output
        assert f"{name}_simulate.json" in result.output
    me = json.loads((tmp_path / "me_simulate.json").read_text())
    clean = json.loads((tmp_path / "clean_simulate.json").read_text())
    assert me["model_error"] is True and clean["model_error"] is False
    assert me["seed"] == 3 and me["g_mag_range"] == [12.0, 12.0] and me["transit_range"] == [40, 40]
    assert me["n_sources"] == 6 and me["grid"] == str(grid) and me["rows"] == "all"
    assert me["noise_model"]["model_error_fraction"] > 0 and me["model_error_ridge_alpha"] > 0
    assert not list(tmp_path.glob("*.tmp-*"))
    a, b = read_xp(tmp_path / "me.csv"), read_xp(tmp_path / "clean.csv")
    # the model error perturbs the star's spectrum before Gaia observes it: the reported
    # errors (estimated from the observed coefficients) move by about its size, not more
    var_a = np.diagonal(a.bp_covariance, axis1=1, axis2=2)
    var_b = np.diagonal(b.bp_covariance, axis1=1, axis2=2)
    assert np.median(np.abs(var_a[:, 0] / var_b[:, 0] - 1)) < 0.1
    diff = np.concatenate([a.bp_coefficients - b.bp_coefficients,
                           a.rp_coefficients - b.rp_coefficients], axis=1)
    assert np.all(np.abs(diff).max(axis=1) > 0)
    # its size: ~0.5 % of the flux, i.e. ~0.5 % of the zero-order coefficients
    rel = np.abs(diff[:, 0]) / np.abs(b.bp_coefficients[:, 0])
    assert np.median(rel) < 0.02


def test_gaiaxpy_reads_the_output(tmp_path, grid):
    from gaiaxpy import calibrate

    out = tmp_path / "obs.ecsv"
    simulate(out, (15.0, 15.0), (40, 40), seed=1, grid_path=grid, n=5, rows="test")
    spectra, sampling = calibrate(str(out), save_file=False)
    assert len(spectra) == 5 and np.all(np.isfinite(np.stack(spectra["flux"].values)))
    truth = Table.read(tmp_path / "obs_truth.csv", format="ascii.csv")
    assert np.all(truth["g_mag"] == 15.0) and np.all(truth["n_transits"] == 40)
    # --rows test draws from the training test split (seed 1, 10 %)
    from cvae_pms.training import split_indices

    assert set(truth["grid_row"]) <= set(split_indices(300, 1, 0.1, 0.1)["test"])


def test_deterministic_given_seed(tmp_path, grid):
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        simulate(tmp_path / f"{name}.csv", (12, 17), (15, 80), seed=seed, grid_path=grid, n=8, rows="all")
    a, b, c = ((tmp_path / f"{x}.csv").read_text() for x in "abc")
    assert a == b and a != c


def test_params_table_and_normalised_grid(tmp_path, grid):
    table = tmp_path / "p.csv"
    table.write_text("teff,logg,mh,log_mdot,ff,mass,a0\n4000,4,0,-8,0.05,0.6,1\n5500,4.5,0.2,-9,0.1,0.9,0.3\n")
    rep = simulate(tmp_path / "o.csv", (14, 14), (30, 30), seed=0, params_path=table)
    assert rep.n == 2 and rep.with_parallax
    truth = Table.read(tmp_path / "o_truth.csv", format="ascii.csv")
    assert np.all(truth["grid_row"] == -1) and truth["teff"][1] == 5500
    with open_grid(grid) as g:
        theta, bp, rp = g.read(slice(0, 10))
    norm = tmp_path / "norm.h5"
    write_grid(norm, theta, bp / bp[:, :1], rp / bp[:, :1], meta={"source": "normalised"})
    rep = simulate(tmp_path / "n.csv", (14, 16), (30, 30), seed=0, grid_path=norm, rows="all")
    assert not rep.with_parallax
    header = (tmp_path / "n.csv").read_text().splitlines()[0].split(",")
    assert "parallax" not in header and "parallax_error" not in header
    assert "parallax" in (tmp_path / "o.csv").read_text().splitlines()[0].split(",")


@pytest.mark.parametrize("content, message", [
    ("teff,logg,mh,log_mdot,ff,mass\n4000,4,0,-8,0.05,0.6\n", "missing columns a0"),
    ("teff,logg,mh,log_mdot,ff,mass,a0\n4000,4,0,-8,0.05,0.6,1\n4000,4,0,-8,0.5,0.6,1\n", "row 2: ff outside"),
    ("teff,logg,mh,log_mdot,ff,mass,a0\n4000,4,0,-8,0.05,0.6,abc\n", "non-numeric"),
])
def test_bad_params_table(tmp_path, content, message):
    table = tmp_path / "p.csv"
    table.write_text(content)
    result = _run("--params", table, "--out", tmp_path / "o.csv")
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "o.csv").exists()


def test_bad_options(tmp_path, grid):
    assert parse_range("15", "g") == (15.0, 15.0)
    for text in ("17:12", "a:b", "1:2:3"):
        with pytest.raises(SimulateError):
            parse_range(text, "--g-mag")
    with pytest.raises(SimulateError, match="integers"):
        parse_range("15.5:20", "--transits", integer=True)
    result = _run("--out", tmp_path / "o.csv")
    assert result.exit_code != 0 and "exactly one of --grid or --params" in result.output
    result = _run("--grid", tmp_path / "none.h5", "--out", tmp_path / "o.csv")
    assert result.exit_code != 0 and "none.h5" in result.output
    result = _run("--grid", grid, "--out", tmp_path / "o.fits")
    assert result.exit_code != 0 and ".csv or .ecsv" in result.output


def test_simulate_observations_function():
    rng = np.random.default_rng(0)
    theta = np.array([[4500.0, 4.5, 0.0, -9.0, 0.05, 0.8, 0.5]] * 2)
    from cvae_pms.physics.photosphere import table_wavelength_nm
    from cvae_pms.physics.sed import sed_flux
    from cvae_pms.xp.instrument import sed_to_coefficients

    wl = table_wavelength_nm()
    bp, rp = sed_to_coefficients(sed_flux(theta, wl), wl)
    obs = simulate_observations(bp, rp, np.array([12.0, 17.0]), np.array([20, 60]), rng)
    rel = np.sqrt(obs.bp_cov[:, 0, 0]) / (bp[:, 0] * obs.flux_factor)
    assert rel[1] > rel[0]  # fainter star: larger relative error
    np.testing.assert_allclose(obs.flux_factor[0] / obs.flux_factor[1], 10 ** (0.4 * 5.0), rtol=1e-10)
    with pytest.raises(SimulateError, match="row 0"):
        simulate_observations(np.zeros((3, 55)), np.zeros((3, 55)), 15.0, 40, rng)


def test_rows_from_a_run_split(tmp_path, grid):
    """--run takes the model dir's own test rows, and refuses a run made on another grid."""
    import json

    with open_grid(grid) as g:
        n_rows, grid_hash = g.n, g.content_hash
    run = tmp_path / "run"
    run.mkdir()
    test_rows = np.array([3, 7, 11, 19])
    np.savez(run / "split.npz", train=np.arange(20, n_rows), val=np.array([0, 1]), test=test_rows)
    (run / "grid.json").write_text(json.dumps({"content_hash": grid_hash}))
    res = CliRunner().invoke(main, ["simulate", "--grid", str(grid), "--run", str(run),
                                    "--g-mag", "15", "--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 0, res.output
    truth = Table.read(tmp_path / "o_truth.csv")
    assert sorted(truth["grid_row"].tolist()) == test_rows.tolist()
    (run / "grid.json").write_text(json.dumps({"content_hash": "0" * 64}))
    res = CliRunner().invoke(main, ["simulate", "--grid", str(grid), "--run", str(run),
                                    "--g-mag", "15", "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 1 and "content hash differs from the grid" in res.output
    assert not (tmp_path / "p.csv").exists()
