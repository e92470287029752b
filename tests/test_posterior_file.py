"""Posterior HDF5 file: writer, resume truncation, reader, summary table, corner plots."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from cvae_pms import params
from cvae_pms import posterior_file as pf


def _chunk(rng, ids, s=50, failed=()):
    n = len(ids)
    u = rng.uniform(0.2, 0.8, size=(n, 1, 7)) + rng.normal(0, 0.05, size=(n, s, 7))
    samples = params.from_unit(np.clip(u, 0, 1)).astype(np.float32)
    status = np.zeros(n, np.uint16)
    msg = [""] * n
    for i in failed:
        samples[i] = np.nan
        status[i] = pf.FLAG_FAILED
        msg[i] = "NaN in BP coefficients"
    return pf.PosteriorChunk(source_id=np.asarray(ids, np.int64), samples=samples, status=status,
                             message=msg, input_file=["/data/x.csv"] * n,
                             ood_distance=rng.uniform(1, 2, n), bound_params=np.zeros(n, np.uint8))


def test_write_read_roundtrip_and_summary(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "post.h5"
    c1, c2 = _chunk(rng, [1, 2, 3], failed=[1]), _chunk(rng, [4, 5])
    with pf.PosteriorWriter(path, 50, attrs={"seed": 7, "run_dir": "/runs/a",
                                             "command_line": ["cvae-pms", "infer"]}) as w:
        w.append(c1)
        w.append(c2)
    post = pf.read_posterior(path)
    assert post.source_id.tolist() == [1, 2, 3, 4, 5]
    assert post.samples.shape == (5, 50, 7) and post.samples.dtype == np.float32
    np.testing.assert_array_equal(post.samples[:3], c1.samples)
    assert np.isnan(post.samples[1]).all() and post.message[1] == "NaN in BP coefficients"
    assert post.attrs["seed"] == 7 and list(post.attrs["parameter_names"]) == list(params.NAMES)
    with h5py.File(path) as f:
        assert f["samples"].chunks == (1, 50, 7) and f["samples"].compression == "gzip"
    t = pf.summary_table(pf.iter_posterior(path, chunk_size=2, samples=False))
    assert len(t) == 5 and t.meta["seed"] == 7
    med = np.median(c2.samples[0, :, 0])
    assert t["teff_median"][3] == pytest.approx(med, rel=1e-5)
    p16, p84 = np.percentile(c2.samples[0, :, 0], [16, 84])
    assert t["teff_width68"][3] == pytest.approx(p84 - p16, rel=1e-4)
    assert np.isnan(t["teff_median"][1]) and t["flags"][1] == "failed"
    assert str(t["teff_median"].unit) == "K"
    for suffix in (".ecsv", ".csv"):
        out = pf.write_summary(t, tmp_path / f"s{suffix}")
        back = pf.read_summary(out)
        assert back["source_id"].tolist() == [1, 2, 3, 4, 5]
        np.testing.assert_allclose(back["a0_p97.5"][[0, 2, 3, 4]], t["a0_p97.5"][[0, 2, 3, 4]],
                                   rtol=1e-6)
    with pytest.raises(pf.PosteriorFileError, match="does not exist"):
        pf.write_summary(t, tmp_path / "missing" / "s.ecsv")


def test_resume_truncates_to_completed_rows(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "post.h5"
    with pf.PosteriorWriter(path, 50, attrs={"seed": 0}) as w:
        w.append(_chunk(rng, [10, 11]))
    # simulate a crash mid-append: rows written beyond n_complete
    with h5py.File(path, "r+") as f:
        for name in ("source_id", "samples", "quantiles", "status", "message", "input_file",
                     "ood_distance", "bound_params"):
            f[name].resize(3, axis=0)
        f["source_id"][2] = 99
    assert pf.completed_keys(path) == {("/data/x.csv", 10), ("/data/x.csv", 11)}
    with pf.PosteriorWriter(path, 50, resume=True) as w:
        assert w.n == 2
        w.append(_chunk(rng, [12]))
    assert pf.read_posterior(path, samples=False).source_id.tolist() == [10, 11, 12]
    with pytest.raises(pf.PosteriorFileError, match="samples per source"):
        pf.PosteriorWriter(path, 40, resume=True)


def test_quantiles_and_flags():
    s = np.arange(1000, dtype=np.float32)[None, :, None].repeat(7, axis=2)
    q = pf.posterior_quantiles(np.concatenate([s, np.full_like(s, np.nan)]))
    np.testing.assert_allclose(q[0, 0], np.percentile(np.arange(1000), pf.QUANTILE_LEVELS),
                               rtol=1e-6)
    assert np.isnan(q[1]).all()
    assert pf.flag_names(pf.FLAG_OOD | pf.FLAG_DIAGONAL_COV) == ["ood", "diagonal_covariance"]
    assert pf.bound_names(0b1000001) == "teff,a0"


def test_corner_plots_with_truth(tmp_path):
    from cvae_pms.plots.corner_plots import plot_posterior_file, read_truth

    rng = np.random.default_rng(3)
    path = tmp_path / "post.h5"
    c = _chunk(rng, [1, 2, 3], s=200, failed=[0])
    c.samples[2, :, 4] = 0.0  # a degenerate (constant) parameter must still plot
    with pf.PosteriorWriter(path, 200) as w:
        w.append(c)
    truth = tmp_path / "truth.csv"
    truth.write_text("source_id," + ",".join(params.NAMES) + "\n"
                     "2,4000,4.0,0.0,-8,0.1,0.7,1.0\n")
    assert read_truth(truth)[2][0] == 4000
    out = plot_posterior_file(path, tmp_path / "plots", max_plots=5, truth=truth)
    assert [p.name for p in out] == ["2.png", "3.png"]
    assert all(p.stat().st_size > 10_000 for p in out)
    assert len(plot_posterior_file(path, tmp_path / "plots2", max_plots=1)) == 1
