"""Dask scale-out: one task per input file gives the single-process samples."""
from __future__ import annotations

import numpy as np
import pytest

from cvae_pms import params
from cvae_pms import posterior_file as pf
from cvae_pms.infer import InferError, cached_model, infer
from cvae_pms.scaleout import dask_client, infer_dask, parse_dask, part_path

import helpers_infer as h

pytest.importorskip("distributed")


def test_parse_and_part_names(tmp_path):
    assert parse_dask("local:3") == ("local", 3)
    assert parse_dask("tcp://10.0.0.1:8786") == ("address", "tcp://10.0.0.1:8786")
    for bad in ("local:0", "local:x", "somehost"):
        with pytest.raises(InferError, match="--dask"):
            parse_dask(bad)
    assert part_path(tmp_path / "post.h5", "/data/xp_0001.csv.gz").name == "post.xp_0001.h5"


def test_dask_local_2_equals_single_process(tmp_path, tmp_path_factory):
    run = h.shared_run(tmp_path_factory)
    rng = np.random.default_rng(11)
    files = []
    for k in range(4):
        u = rng.uniform(0.15, 0.85, (3, 7))
        u[:, 6] *= 0.3
        files.append(h.write_observations(
            tmp_path / f"in{k}.csv", params.from_unit(u), rng.uniform(12, 16, 3), seed=k,
            source_id=np.arange(10 * k + 1, 10 * k + 4)))
    single = tmp_path / "single.h5"
    infer(run, files, single, n_samples=40, seed=3, model=cached_model(str(run)),
          progress=False)
    ref = pf.read_posterior(single)
    loads = cached_model.loads
    # processes=False keeps the test fast; each worker thread shares this process's model cache
    with dask_client("local:2", processes=False) as client:
        table, infos = infer_dask(client, run, files, tmp_path / "dask.h5",
                                  summary=tmp_path / "dask.ecsv", n_samples=40, seed=3)
    assert cached_model.loads == loads  # threaded workers reuse this process's loaded model
    assert len(infos) == 4 and len(table) == 12
    got_ids, got_samples = [], []
    for f, info in zip(files, infos):
        assert info["part"] == str(part_path(tmp_path / "dask.h5", f).resolve())
        post = pf.read_posterior(info["part"])
        got_ids.append(post.source_id)
        got_samples.append(post.samples)
    np.testing.assert_array_equal(np.concatenate(got_ids), ref.source_id)
    np.testing.assert_array_equal(np.concatenate(got_samples), ref.samples)
    merged = pf.read_summary(tmp_path / "dask.ecsv")
    np.testing.assert_array_equal(merged["source_id"], ref.source_id)
    np.testing.assert_allclose(merged["teff_median"], np.median(ref.samples[:, :, 0], axis=1),
                               rtol=1e-5)


def test_dask_refuses_clashing_stems(tmp_path, tmp_path_factory):
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir(), b.mkdir()
    for d in (a, b):
        (d / "xp.csv").write_text("source_id\n1\n")
    with pytest.raises(InferError, match="same file stem"):
        infer_dask(None, tmp_path, [a / "xp.csv", b / "xp.csv"], tmp_path / "p.h5")
