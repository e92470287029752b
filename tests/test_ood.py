"""OOD index (k-NN distance, 99th-percentile threshold, cache) and the bound flag."""
from __future__ import annotations

import os

import numpy as np
import pytest

from cvae_pms import params
from cvae_pms import ood
from cvae_pms.training.ood_index import build_ood_index

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
    # the fit rounds the reference to float16, what the file stores: reloading is exact
    np.testing.assert_array_equal(back.reference, idx.reference)
    np.testing.assert_array_equal(back.distance(x), idx.distance(x))
    assert back.threshold == idx.threshold and back.meta["model_hash"] == "abc"
    with np.load(path) as z:
        assert int(z["version"]) == ood.OOD_VERSION == 2 and "reference" not in z.files
    (tmp_path / "bad.npz").write_bytes(b"not npz")
    with pytest.raises(ood.OODError, match="bad.npz"):
        ood.load_ood_index(tmp_path / "bad.npz")


def test_float16_file_is_small_and_version_1_files_still_read(tmp_path):
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(2000, 300))
    idx = ood.fit_ood_index(ref, rng.normal(size=(200, 300)), k=10, meta={"model_hash": "h"})
    # rounding the reference to float16 moves k-NN distances by < 0.1 %
    exact = ood.OODIndex(ref, 10, idx.threshold, 99.0, idx.prior_edge_fraction, np.zeros(0), {})
    x = rng.normal(size=(100, 300))
    np.testing.assert_allclose(idx.distance(x), exact.distance(x), rtol=1e-3)
    assert not np.array_equal(idx.reference, exact.reference)
    path = ood.save_ood_index(idx, tmp_path / "ood.npz")
    assert path.stat().st_size < 0.45 * ref.size * 4       # float32 would be ref.size * 4
    # a version-1 file (float32 reference, uncompressed), as older model dirs hold
    np.savez(tmp_path / "v1.npz", version=1, reference=idx.reference, k=idx.k,
             threshold=idx.threshold, quantile=idx.quantile,
             prior_edge_fraction=idx.prior_edge_fraction,
             calibration_distance=idx.calibration_distance,
             meta_keys=np.array(["model_hash"]), meta_values=np.array(["h"]))
    v1 = ood.load_ood_index(tmp_path / "v1.npz")
    np.testing.assert_array_equal(v1.distance(x), idx.distance(x))
    np.savez(tmp_path / "v9.npz", version=9)
    with pytest.raises(ood.OODError, match=r"v9.npz: OOD index version 9.*ood rebuild"):
        ood.load_ood_index(tmp_path / "v9.npz")


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


@pytest.mark.slow  # trains the session's shared tiny run when it runs first (~20 s)
def test_built_by_train_and_read_by_infer(trained_run):
    from cvae_pms.infer import load_model
    from cvae_pms.model.rundir import model_hash

    run = trained_run
    cached = ood.load_ood_index(run / ood.OOD_FILE)
    assert cached.meta["model_hash"] == model_hash(run)
    assert cached.reference.shape == (600, 686) and np.isfinite(cached.threshold)
    mtime = os.stat(run / ood.OOD_FILE).st_mtime_ns
    model = load_model(run)
    assert os.stat(run / ood.OOD_FILE).st_mtime_ns == mtime  # reused, not rebuilt
    assert model.ood.threshold == cached.threshold


@pytest.mark.slow
@pytest.mark.parametrize("damage, why", [
    (lambda p: p.unlink(), "no OOD index"),
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "cannot read OOD index"),
], ids=["missing", "damaged"])
def test_missing_or_damaged_index_is_refused_and_rebuilt_by_the_command(trained_run, tmp_path,
                                                                        damage, why):
    """Inference never rebuilds ood.npz (that needs the training grid): it names the file and
    the rebuild command; ``cvae-pms ood rebuild RUN`` then restores identical OOD flags."""
    import shutil

    from click.testing import CliRunner

    from cvae_pms.cli import main
    from cvae_pms.infer import InferError, load_model

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    build_ood_index(run)                                 # the settings the command uses
    before = load_model(run).ood
    damage(run / ood.OOD_FILE)
    with pytest.raises(InferError) as err:
        load_model(run)
    assert str(run / ood.OOD_FILE) in str(err.value) and why in str(err.value)
    assert f"cvae-pms ood rebuild {run}" in str(err.value)
    r = CliRunner().invoke(main, ["ood", "rebuild", str(run)])
    assert r.exit_code == 0, r.output
    after = load_model(run).ood
    assert after.threshold == before.threshold
    np.testing.assert_array_equal(after.reference, before.reference)
    feats = np.random.default_rng(0).normal(size=(20, before.reference.shape[1]))
    np.testing.assert_array_equal(after.is_ood(after.distance(feats)),
                                  before.is_ood(before.distance(feats)))


@pytest.mark.slow
def test_stale_index_and_moved_grid(trained_run, tmp_path):
    """An index of other weights is refused; the rebuild command finds a moved grid with
    --grid and refuses a grid with other content."""
    import shutil

    from click.testing import CliRunner

    from cvae_pms.cli import main
    from cvae_pms.infer import InferError, load_model

    shared = trained_run
    run = tmp_path / "run"
    shutil.copytree(shared, run)
    idx = ood.load_ood_index(run / ood.OOD_FILE)
    idx.meta["model_hash"] = "0" * 64
    ood.save_ood_index(idx, run / ood.OOD_FILE)
    with pytest.raises(InferError, match="another version of the model"):
        load_model(run)
    moved = tmp_path / "moved.h5"
    shutil.copyfile(shared.parent / "grid.h5", moved)
    other = h.make_grid(tmp_path / "other.h5", n=300, seed=9)
    r = CliRunner().invoke(main, ["ood", "rebuild", str(run), "--grid", str(other)])
    assert r.exit_code == 1 and "content hash differs" in r.output
    r = CliRunner().invoke(main, ["ood", "rebuild", str(run), "--grid", str(moved)])
    assert r.exit_code == 0, r.output
    assert load_model(run).ood.meta["grid"] == str(moved)


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """A 1-epoch tiny run on a 6000-row stand-in grid with test and val splits of 1800 rows.

    The OOD statistic uses only the standardised network input, so one epoch is enough.
    """
    from cvae_pms.training import train

    base = tmp_path_factory.mktemp("ood_wide")
    grid = h.make_grid(base / "grid.h5", n=6000, seed=3)
    cfg = base / "tiny.toml"
    cfg.write_text("# tiny test recipe\n")
    train(grid, cfg, base / "run", noise_model=h.noise_model(), log=lambda s: None,
          overrides=h.TINY_OVERRIDES + ("training.epochs=1", "training.val_fraction=0.3",
                                        "training.test_fraction=0.3"), ood=False)
    return base / "run"


def _fresh_features(run_dir, rows, seed):
    """Features of one fresh training-noise observation of each grid row (G, transits drawn)."""
    import tensorflow as tf

    from cvae_pms.grid.gridfile import open_grid
    from cvae_pms.model.rundir import load_run
    from cvae_pms.simulator import TrainingNoise
    from cvae_pms.xp.noise import NoiseModel
    from cvae_pms.xp.photometry import g_mag

    run = load_run(run_dir)
    fields = set(NoiseModel.__dataclass_fields__)
    noise = TrainingNoise(run.featuriser, NoiseModel.from_dict(
        {k: v for k, v in run.noise.items() if k in fields}), run.config["noise"])
    with open_grid(run.grid_info["path"]) as grid:
        bp, rp = grid.coefficients(np.sort(rows))
    g0 = np.asarray(g_mag(bp, rp), dtype=np.float32)
    y, _ = noise.observe(tf.constant(bp, tf.float32), tf.constant(rp, tf.float32),
                         tf.constant(g0), tf.constant([seed, 7], tf.int64))
    return y.numpy()


@pytest.mark.slow
def test_fresh_in_distribution_rate_is_the_nominal_one_percent(wide_run):
    """Held-out check of the 99th-percentile threshold: validation rows (never seen by the
    index: reference = training rows, calibration = test rows), observed with fresh noise
    through the training noise path, are flagged at the nominal 1 % within sampling error.

    The threshold is an order statistic of n_cal calibration distances, so for exchangeable
    fresh distances the flagged count is beta-binomial (the binomial with the threshold's own
    uncertainty): the threshold lies between order statistics r and r + 1
    (r = floor((n_cal - 1) q) + 1), whose exceedance probabilities are Beta(n_cal - r + 1, r)
    and Beta(n_cal - r, r + 1). Accept the central 99.9 % of those: 3-44 of 1800 for a
    nominal 18 (a threshold at the 95th percentile flags 94 of them).
    """
    from scipy.stats import betabinom

    from cvae_pms.model.rundir import load_run

    split = load_run(wide_run).split()
    n_train = split["train"].size
    index = build_ood_index(wide_run, n_ref=n_train, n_cal=split["test"].size, k=10,
                            seed=0, save=False)
    n_cal = index.calibration_distance.size
    assert n_cal == split["test"].size == split["val"].size == 1800
    fresh = index.distance(_fresh_features(wide_run, split["val"], seed=12345))
    assert np.isfinite(fresh).all()
    m, flagged = fresh.size, int(index.is_ood(fresh).sum())
    r = int(np.floor((n_cal - 1) * index.quantile / 100)) + 1
    lo = betabinom(m, n_cal - r, r + 1).ppf(0.0005)
    hi = betabinom(m, n_cal - r + 1, r).ppf(0.9995)
    assert lo <= flagged <= hi, (f"{flagged}/{m} fresh in-distribution spectra flagged OOD "
                                 f"(nominal {100 - index.quantile:.0f} %: {lo:.0f}-{hi:.0f})")
