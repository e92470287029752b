"""OOD index (k-NN distance, 99th-percentile threshold, cache) and the bound flag."""
from __future__ import annotations

import os

import numpy as np
import pytest

from cvae_pms import params
from cvae_pms import ood

import helpers_infer as h


def test_threshold_flags_about_one_percent_and_far_points():
    rng = np.random.default_rng(0)
    ref, cal, fresh = (rng.normal(size=(n, 12)) for n in (3000, 2000, 4000))
    idx = ood.fit_ood_index(ref, cal, k=10)
    frac = idx.is_ood(idx.distance(fresh)).mean()
    assert 0.003 < frac < 0.025
    far = rng.normal(size=(50, 12)) + 4.0
    assert idx.is_ood(idx.distance(far)).all()
    d = idx.distance(np.vstack([fresh[:2], np.full((1, 12), np.nan)]))
    assert np.isfinite(d[:2]).all() and np.isnan(d[2])
    assert not idx.is_ood(d[2:]).any()
    with pytest.raises(ood.OODError, match=r"\(n, 12\)"):
        idx.distance(np.zeros((3, 5)))


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    idx = ood.fit_ood_index(rng.normal(size=(200, 4)), rng.normal(size=(100, 4)), k=5,
                            meta={"model_hash": "abc"})
    path = ood.save_ood_index(idx, tmp_path / "ood.npz")
    back = ood.load_ood_index(path)
    x = rng.normal(size=(20, 4))
    np.testing.assert_allclose(back.distance(x), idx.distance(x))
    assert back.threshold == idx.threshold and back.meta["model_hash"] == "abc"
    (tmp_path / "bad.npz").write_bytes(b"not npz")
    with pytest.raises(ood.OODError, match="bad.npz"):
        ood.load_ood_index(tmp_path / "bad.npz")


def test_bound_flags():
    rng = np.random.default_rng(2)
    u = rng.uniform(0.3, 0.7, size=(3, 500, 7))
    u[1, :150, 0] = 0.001        # 30 % of T_eff samples at the lower edge
    u[2, :50, 6] = 0.999         # 10 % at the upper A0 edge: below the 20 % threshold
    x = params.from_unit(u)
    flags = ood.bound_flags(x)
    assert flags.tolist() == [0, 1, 0]
    piled = np.full((7, 2), 0.01)
    piled[0, 0] = 0.3            # the prior itself piles T_eff at its lower edge
    assert ood.bound_flags(x, piled).tolist() == [0, 0, 0]
    assert ood.bound_flags(np.full((1, 10, 7), np.nan)).tolist() == [0]
    prior = np.zeros((100, 7)) + 0.5
    prior[:10, 3] = 0.0
    edge = ood.prior_edge_fraction(prior)
    assert edge[3, 0] == pytest.approx(0.1) and edge[3, 1] == 0 and edge[0].sum() == 0


def test_build_and_cache_for_a_run(tmp_path_factory):
    from cvae_pms.infer import load_model, model_hash

    run = h.shared_run(tmp_path_factory)
    cached = ood.load_ood_index(run / ood.OOD_FILE)
    assert cached.meta["model_hash"] == model_hash(run)
    assert cached.reference.shape == (600, 686) and np.isfinite(cached.threshold)
    # the threshold is the 99th percentile of the calibration (test split) distances
    assert np.mean(cached.calibration_distance > cached.threshold) == pytest.approx(0.01, abs=0.01)
    mtime = os.stat(run / ood.OOD_FILE).st_mtime_ns
    model = load_model(run)
    assert os.stat(run / ood.OOD_FILE).st_mtime_ns == mtime  # reused, not rebuilt
    assert model.ood.threshold == cached.threshold
