"""The Python front end: cvae_pms.load(run).sample(...) equals `cvae-pms infer` for every input form."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner

import cvae_pms
from cvae_pms import posterior_file as pf
from cvae_pms.api import ApiError
from cvae_pms.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from helpers_infer import make_run
    tmp = tmp_path_factory.mktemp("api")
    run = make_run(tmp, epochs=1, n=800)
    obs = tmp / "obs.csv"
    res = CliRunner().invoke(main, ["simulate", "--grid", str(tmp / "grid.h5"), "--n", "12",
                                    "--rows", "all", "--g-mag", "12:16", "--seed", "3",
                                    "--out", str(obs)])
    assert res.exit_code == 0, res.output
    out = tmp / "post.h5"
    res = CliRunner().invoke(main, ["infer", str(run), str(obs), "--out", str(out),
                                    "--samples", "40", "--seed", "7", "--quiet"])
    assert res.exit_code == 0, res.output
    return run, obs, pf.read_posterior(out)


def test_sample_equals_the_cli_for_path_batch_arrays_and_table(setup):
    run, obs, cli = setup
    post = cvae_pms.load(run)
    by_path = post.sample(obs, n=40, seed=7)
    np.testing.assert_array_equal(by_path.source_id, cli.source_id)
    np.testing.assert_array_equal(by_path.samples, cli.samples)
    np.testing.assert_array_equal(by_path.status, cli.status)
    # other chunking: the same draws up to float32 rounding of batched matrix products
    small = post.sample(obs, n=40, seed=7, batch=5)
    np.testing.assert_allclose(small.samples, cli.samples, rtol=2e-6, atol=1e-6)  # round-off of other chunk sizes
    batch = cvae_pms.read_xp(obs)
    arrays = {"bp": batch.bp_coefficients, "rp": batch.rp_coefficients,
              "bp_cov": batch.bp_covariance, "rp_cov": batch.rp_covariance,
              "source_id": batch.source_id}
    for spectra in (batch, arrays, Table.read(obs, format="ascii.csv")):
        res = post.sample(spectra, n=40, seed=7)
        np.testing.assert_array_equal(res.samples, cli.samples)
    # another seed: other samples
    assert not np.array_equal(post.sample(batch, n=40, seed=8).samples, cli.samples)


def test_result_table_flags_and_corner(setup, tmp_path):
    run, obs, cli = setup
    res = cvae_pms.load(run).sample(obs, n=40, seed=7)
    t = res.table()
    np.testing.assert_allclose(t["teff_median"], np.median(cli.samples[:, :, 0], axis=1),
                               rtol=1e-6)
    assert list(t["source_id"]) == list(cli.source_id)
    assert res.flags == [pf.flag_names(int(s)) for s in cli.status]
    # the stand-in grid has no built-in forward model: the check is NaN, and says why
    assert np.isnan(res.gof_chi2_red).all()
    assert all("goodness of fit not computed" in m for m in res.message)
    png = res.corner(0, tmp_path / "c.png")
    assert png.stat().st_size > 10_000


def test_sampled_arrays_and_bad_input(setup):
    run, obs, _ = setup
    post = cvae_pms.load(run)
    from cvae_pms.xp.sampling import sampled_flux, sampled_flux_error
    b = cvae_pms.read_xp(obs)
    flux = sampled_flux(b.bp_coefficients, b.rp_coefficients)
    err = sampled_flux_error(b.bp_covariance, b.rp_covariance)
    err[2, 10] = -1.0                                   # one bad source: flagged, others go on
    res = post.sample({"flux": flux, "flux_error": err}, n=20, gof=False)
    assert res.gof_chi2_red is None
    failed = (res.status & pf.FLAG_FAILED) > 0
    assert failed.tolist() == [i == 2 for i in range(len(b))]
    assert np.isfinite(res.samples[~failed]).all() and "flux_error <= 0" in res.message[2]
    with pytest.raises(ApiError, match="flux, flux_error"):
        post.sample({"flux": flux}, n=5)
    with pytest.raises(ApiError, match="343"):
        post.sample({"flux": flux[:, :100], "flux_error": err[:, :100]}, n=5)
    with pytest.raises(ApiError, match="type int"):
        post.sample(3, n=5)
    with pytest.raises(ApiError, match="n must be"):
        post.sample(obs, n=0)


def test_a_moved_model_dir_without_its_grid_gives_the_same_samples(setup, tmp_path):
    # the model dir is self-contained for inference: copied elsewhere with the training grid
    # gone, it loads (OOD index from ood.npz, no grid access) and gives identical samples
    import shutil
    run, obs, cli = setup
    moved = shutil.copytree(run, tmp_path / "elsewhere" / "run")
    grid = run.parent / "grid.h5"
    hidden = grid.rename(grid.with_suffix(".hidden"))
    try:
        res = cvae_pms.load(moved).sample(obs, n=40, seed=7)
    finally:
        hidden.rename(grid)
    np.testing.assert_array_equal(res.samples, cli.samples)
    np.testing.assert_array_equal(res.status, cli.status)
