"""grid synth: box sampling, determinism, metadata, bad options, and grid plot."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cvae_pms import params as P
from cvae_pms.cli import main
from cvae_pms.grid import synth as S
from cvae_pms.grid.gridfile import open_grid, validate_grid
from cvae_pms.physics.photosphere import table_wavelength_nm
from cvae_pms.physics.sed import sed_flux
from cvae_pms.xp.instrument import sed_to_coefficients


@pytest.fixture(scope="module")
def small_grid(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "g.h5"
    report = S.synth_grid(path, n=600, seed=3, chunk=250, progress=False)
    return path, report


def test_sobol_and_random_designs_fill_the_box():
    for design in S.DESIGNS:
        theta = S.sample_box(4096, 1, design)
        assert not P.outside_bounds(theta).any()
        u = P.to_unit(theta)
        # every parameter covers its range evenly: each decile holds ~10 %
        counts = np.stack([np.histogram(u[:, j], bins=10, range=(0, 1))[0] for j in range(7)])
        assert counts.min() > 300 and counts.max() < 520
    sob = P.to_unit(S.sample_box(1024, 1, "sobol"))
    # a scrambled Sobol set is more even than random: 1-D bins of 1/64 hold exactly 16 points
    assert np.all(np.histogram(sob[:, 0], bins=64, range=(0, 1))[0] == 16)
    assert not np.array_equal(S.sample_box(64, 1), S.sample_box(64, 2))


def test_grid_content_and_meta(small_grid):
    path, report = small_grid
    validate_grid(path)
    with open_grid(path) as g:
        assert g.n == 600 and g.reference_distance_pc == 10.0
        theta, bp, rp = g.read(np.arange(0, 600, 97))
        meta = g.meta
    np.testing.assert_array_equal(theta, S.sample_box(600, 3)[::97])
    wl = table_wavelength_nm()
    ref_bp, ref_rp = sed_to_coefficients(sed_flux(theta, wl, 10.0), wl)
    np.testing.assert_allclose(bp, ref_bp, rtol=1e-10)
    np.testing.assert_allclose(rp, ref_rp, rtol=1e-10)
    assert meta["random_seed"] == 3 and meta["design"] == "sobol" and meta["extinction_law"] == "G23"
    assert meta["forward_model"]["accretion"]["draw_nuisance"] is False
    assert meta["instrument_operator"]["pupil_area_m2"] == pytest.approx(0.7278)
    assert "background_e_s" in meta["noise_model_reference"]
    assert "numpy" in meta["package_versions"]
    assert set(report.stage_seconds) == {"sampling", "sed", "projection", "writing"}


def test_same_seed_same_hash_other_seed_other_hash(tmp_path, small_grid):
    _, report = small_grid
    again = S.synth_grid(tmp_path / "a.h5", n=600, seed=3, chunk=250, progress=False)
    other = S.synth_grid(tmp_path / "b.h5", n=600, seed=4, chunk=250, progress=False)
    assert again.content_hash == report.content_hash
    assert other.content_hash != report.content_hash


def test_nuisance_draws_are_seeded(tmp_path):
    a = S.synth_grid(tmp_path / "a.h5", n=200, seed=1, chunk=100, draw_nuisance=True, progress=False)
    b = S.synth_grid(tmp_path / "b.h5", n=200, seed=1, chunk=100, draw_nuisance=True, progress=False)
    c = S.synth_grid(tmp_path / "c.h5", n=200, seed=1, chunk=100, progress=False)
    assert a.content_hash == b.content_hash != c.content_hash
    with open_grid(tmp_path / "a.h5") as g:
        lo, hi = g.meta["synth"]["nuisance_summary"]["t_slab_k"]
    assert 8000 <= lo < hi <= 11000


def test_nuisance_physics_grid(tmp_path):
    from cvae_pms.physics.sed import ForwardModelUnavailable, sed_function
    out = tmp_path / "n.h5"
    res = CliRunner().invoke(main, ["grid", "synth", "--out", str(out), "--quiet", "--n", "300",
                                    "--seed", "2", "--nuisance-physics"])
    assert res.exit_code == 0, res.output
    again = S.synth_grid(tmp_path / "m.h5", n=300, seed=2, draw_nuisance=True,
                         r_v_range=(2.5, 5.5), progress=False)
    fixed = S.synth_grid(tmp_path / "f.h5", n=300, seed=2, progress=False)
    with open_grid(out) as g:
        meta, (_, bp, _) = g.meta, g.read(np.arange(300))
        assert g.content_hash == again.content_hash != fixed.content_hash
    assert meta["forward_model"]["extinction"]["r_v_range"] == [2.5, 5.5]
    lo, hi = meta["synth"]["nuisance_summary"]["r_v"]
    assert 2.5 <= lo < 2.7 and 5.3 < hi <= 5.5
    # no single forward model: refused, or the fixed choices (R_V 3.1, fixed slab) on request
    with pytest.raises(ForwardModelUnavailable, match="per star"):
        sed_function(meta)
    with open_grid(tmp_path / "f.h5") as g:
        _, bp_fixed, _ = g.read(np.arange(300))
        wl_meta = g.meta
    theta = S.sample_box(300, 2)
    from cvae_pms.physics.photosphere import table_wavelength_nm
    from cvae_pms.xp.instrument import sed_to_coefficients
    bp_f, _ = sed_to_coefficients(sed_function(meta, nuisance="fixed")(theta), table_wavelength_nm())
    bp_w, _ = sed_to_coefficients(sed_function(wl_meta)(theta), table_wavelength_nm())
    np.testing.assert_allclose(bp_f, bp_w, rtol=1e-10)
    np.testing.assert_allclose(bp_w, bp_fixed, rtol=1e-6)
    assert not np.allclose(bp, bp_fixed, rtol=1e-3)
    res = CliRunner().invoke(main, ["grid", "synth", "--out", str(tmp_path / "x.h5"), "--quiet",
                                    "--n", "10", "--r-v-range", "5"])
    assert res.exit_code != 0 and "LOW:HIGH" in res.output


@pytest.mark.parametrize("args, message", [
    (["--n", "0"], "--n must be a positive integer"),
    (["--n", "-5"], "--n must be a positive integer"),
    (["--n", "abc"], "not a valid integer"),
    (["--n", "10", "--design", "lhs"], "--design must be one of"),
    (["--n", "10", "--distance-pc", "-1"], "--distance-pc must be a positive number"),
    (["--n", "10", "--distance-pc", "nan"], "--distance-pc must be a positive number"),
    (["--n", "10", "--chunk", "0"], "--chunk must be a positive integer"),
    (["--n", "10", "--extinction-law", "CCM89"], "--extinction-law must be one of"),
])
def test_bad_options_exit_nonzero_and_leave_no_file(tmp_path, args, message):
    out = tmp_path / "bad.h5"
    result = CliRunner().invoke(main, ["grid", "synth", "--out", str(out), "--quiet", *args])
    assert result.exit_code != 0
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


def test_cli_synth_and_plot(tmp_path):
    out = tmp_path / "g.h5"
    result = CliRunner().invoke(main, ["grid", "synth", "--n", "64", "--out", str(out), "--quiet",
                                       "--design", "random", "--extinction-law", "F19", "--seed", "9"])
    assert result.exit_code == 0, result.output
    assert "content hash" in result.output
    with open_grid(out) as g:
        assert g.meta["design"] == "random" and g.meta["extinction_law"] == "F19"
        assert g.meta["forward_model"]["extinction"]["law"] == "F19"
    fig = tmp_path / "teff.png"
    result = CliRunner().invoke(main, ["grid", "plot", str(out), "--vary", "log_mdot", "--out", str(fig)])
    assert result.exit_code == 0, result.output
    assert fig.stat().st_size > 10_000
    from astropy.table import Table

    t = Table.read(fig.with_suffix(".ecsv"))
    assert t.meta["method"].startswith("forward model")
    curves = np.stack([t[f"flux_{j}"] for j in range(6)])
    blue = (t["wavelength_nm"] > 340) & (t["wavelength_nm"] < 360)
    # stronger accretion -> more blue flux (Balmer continuum)
    assert np.all(np.diff(curves[:, blue].mean(axis=1)) > 0)
    result = CliRunner().invoke(main, ["grid", "plot", str(out), "--all", "--out", str(tmp_path / "all")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "all").glob("sweep_*.png"))) == 7


def test_plot_nearest_rows_for_a_foreign_grid(tmp_path, small_grid):
    from cvae_pms.grid.gridfile import write_grid
    from cvae_pms.grid.plots import parameter_sweep, sweep_theta
    from cvae_pms.xp.sampling import sampled_flux

    path, _ = small_grid
    with open_grid(path) as g:
        theta, bp, rp = g.read(slice(0, 600))
    foreign = tmp_path / "user.h5"
    write_grid(foreign, theta, bp, rp, meta={"source": "user grid"})
    sweep = parameter_sweep(foreign, "teff")
    assert sweep.method == "nearest grid rows"
    assert np.all(np.diff(sweep.theta[:, 0]) > 0)
    rows = [int(np.flatnonzero((theta == t).all(axis=1))[0]) for t in sweep.theta]
    np.testing.assert_allclose(sweep.flux, sampled_flux(bp[rows], rp[rows]))
    # each curve is the row nearest to the reference point with teff stepped
    ref_other = P.to_unit(sweep_theta("teff"))[:, 1:]
    assert np.all(np.abs(P.to_unit(sweep.theta)[:, 1:] - ref_other[: len(rows)]).max(axis=1) < 0.6)
