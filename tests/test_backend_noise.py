"""The noise path and its stream-key random numbers are backend-neutral: the same inputs and
key give the same Fisher Cholesky, covariance, noisy draw, features and evaluate/training
observations under TensorFlow (this process) and JAX (a subprocess, x64 on); and the keyed
uniforms/normals of :mod:`cvae_pms.backend` have the right distribution."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
KEY = (5, 6)
#: Modules of the noise path that must not import TensorFlow under JAX.
NOISE_MODULES = ("cvae_pms.simulator", "cvae_pms.xp.noise", "cvae_pms.xp.model_error",
                 "cvae_pms.astrometry")


def _stars() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noiseless coefficients (3, 55) of blackbody-like stars (3200-6500 K, A0 3-0) and T_eff."""
    from cvae_pms.xp.instrument import sed_to_coefficients
    teff = np.array([3200.0, 4500.0, 6500.0])
    wl = np.linspace(300.0, 1110.0, 406)
    lam = wl * 1e-9
    bb = 1.0 / lam**5 / np.expm1(6.626e-34 * 2.998e8 / (lam * 1.381e-23 * teff[:, None]))
    a0 = np.array([3.0, 1.0, 0.0])[:, None]
    sed = 1e-15 * bb / bb.max(1, keepdims=True) * 10 ** (-0.4 * a0 * (550.0 / wl) ** 1.3)
    bp, rp = sed_to_coefficients(sed, wl)
    return bp, rp, teff


def _compute(out: Path) -> dict:
    """Every number compared across backends, saved to ``out/<backend>.npz``; returns facts
    (backend, dtypes) as a dictionary."""
    from cvae_pms import backend
    from cvae_pms.astrometry import ops_draw_parallax
    from cvae_pms.evaluation.config import GSetting
    from cvae_pms.evaluation.observations import draw_observations
    from cvae_pms.features import Featuriser, FeatureSpec
    from cvae_pms.simulator import TrainingNoise
    from cvae_pms.training.config import DEFAULT_CONFIG
    from cvae_pms.xp import noise as nz
    from cvae_pms.xp.photometry import g_mag, scale_to_g

    np_ = backend.to_numpy
    bp0, rp0, teff = _stars()
    bp, rp, _ = scale_to_g(bp0, rp0, np.array([13.0, 15.0, 17.0]))
    nt = np.array([20.0, 40.0, 60.0])
    a = {}
    chols = nz.ops_information_cholesky(bp, rp, nt)
    covs = nz.ops_coefficient_covariance(bp, rp, nt)
    a["chol_bp"], a["chol_rp"] = np_(chols)
    a["cov_bp"], a["cov_rp"] = np_(covs)
    draw = nz.ops_draw_observation(bp, rp, nt, backend.stream_key(KEY))
    a["obs_bp"], a["obs_rp"], a["obs_cov_bp"], a["obs_cov_rp"] = np_(draw)
    model = nz.NoiseModel.default()
    feat = Featuriser(FeatureSpec(model_error_frac=np.full(343, model.model_error_fraction)))
    a["y_draw"], a["lg_draw"] = feat.numpy(*(np_(v) for v in draw))
    # evaluate's path: numpy stream -> G, transits, model error, then the keyed noise draw
    obs = draw_observations(bp0, rp0, GSetting(14.0, 16.0), (20, 40), seed=3, teff=teff)
    a["y_eval"], a["lg_eval"] = feat.numpy(obs.bp, obs.rp, obs.bp_cov, obs.rp_cov)
    # training's path (the OOD index and the train step): G, transits and noise from a key
    noise = TrainingNoise(feat, model, DEFAULT_CONFIG["noise"])
    y, lg, g = noise.observe(bp0.astype(np.float32), rp0.astype(np.float32),
                             np.asarray(g_mag(bp0, rp0), np.float32), KEY, standardise=False,
                             copies=2, return_g=True, teff=teff.astype(np.float32))
    a["y_train"], a["lg_train"], a["g_train"] = np_((y, lg, g))
    a["plx"], a["plx_err"] = np_(ops_draw_parallax(np.full(2000, 5.0), np.full(2000, 10.0), 10.0,
                                                   (0.01, 0.3), 0.2, KEY))
    key = backend.stream_key(KEY)
    a["key"], a["split"] = np_(key), np_(backend.split_key(key, 3))
    a["fold"], a["fold_seed"] = np_(backend.fold_in(key, 7)), np_(backend.stream_key(12345))
    a["u32"], a["u64"] = np_(backend.uniform_like(key, (7, 9))), np_(backend.uniform_like(key, (63,), "float64"))
    a["z32"], a["z64"] = np_(backend.normal(key, (5, 11))), np_(backend.normal(key, (4, 25), "float64"))
    np.savez(out / f"{backend.name()}.npz", **a)
    return {"backend": backend.name(),
            "dtypes": {k: str(v.dtype) for k, v in zip(("chol", "cov", "obs", "z64"),
                                                       (chols[0], covs[0], draw[0], a["z64"]))}}


_JAX_RUN = ("import json, sys; from pathlib import Path; sys.path.insert(0, {tests!r}); "
            "from cvae_pms import backend; backend.select('jax'); "
            "import test_backend_noise as t; facts = t._compute(Path({out!r})); "
            "facts['tensorflow_imported'] = 'tensorflow' in sys.modules; print(json.dumps(facts))")


def _run_jax(code: str) -> str:
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """(TensorFlow arrays, JAX arrays, JAX facts) of :func:`_compute`."""
    out = tmp_path_factory.mktemp("backends")
    facts = json.loads(_run_jax(_JAX_RUN.format(tests=str(TESTS), out=str(out))))
    assert _compute(out)["backend"] == "tensorflow"
    return dict(np.load(out / "tensorflow.npz")), dict(np.load(out / "jax.npz")), facts


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference relative to the largest magnitude of each row (matrix)."""
    axes = tuple(range(1, a.ndim))
    return float(np.max(np.abs(a - b).max(axis=axes) / np.abs(b).max(axis=axes)))


def test_jax_keeps_float64_and_imports_no_tensorflow(both):
    _, _, facts = both
    assert facts["backend"] == "jax" and not facts["tensorflow_imported"]
    assert facts["dtypes"] == {"chol": "float64", "cov": "float64", "obs": "float64",
                               "z64": "float64"}


def test_fisher_cholesky_and_covariance_agree_across_backends(both):
    tf_, jx, _ = both
    for name in ("chol_bp", "chol_rp", "cov_bp", "cov_rp"):
        assert _rel(jx[name], tf_[name]) < 1e-10, name


def test_same_key_same_draw_and_features_across_backends(both):
    tf_, jx, _ = both
    for name in ("obs_bp", "obs_rp", "obs_cov_bp", "obs_cov_rp"):
        assert _rel(jx[name], tf_[name]) < 1e-6, name
    # the draw is a draw: it differs from the noise-free-spectrum covariance's mean
    assert not np.allclose(tf_["obs_cov_bp"], tf_["cov_bp"], rtol=1e-6)
    np.testing.assert_allclose(jx["y_draw"], tf_["y_draw"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jx["lg_draw"], tf_["lg_draw"], rtol=1e-6)


def test_evaluate_and_training_observations_agree_across_backends(both):
    tf_, jx, _ = both
    for name in ("y_eval", "lg_eval", "y_train", "lg_train", "g_train"):
        assert jx[name].shape == tf_[name].shape and np.isfinite(tf_[name]).all(), name
        np.testing.assert_allclose(jx[name], tf_[name], rtol=0, atol=1e-4, err_msg=name)
    np.testing.assert_array_equal(np.isnan(jx["plx"]), np.isnan(tf_["plx"]))
    np.testing.assert_allclose(jx["plx"], tf_["plx"], rtol=1e-5)


def test_stream_keys_and_uniforms_are_bit_identical_across_backends(both):
    tf_, jx, _ = both
    for name in ("key", "split", "fold", "fold_seed", "u32", "u64"):
        np.testing.assert_array_equal(jx[name], tf_[name], err_msg=name)
    np.testing.assert_allclose(jx["z32"], tf_["z32"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jx["z64"], tf_["z64"], rtol=1e-13, atol=1e-13)


def test_noise_modules_import_no_tensorflow_under_jax():
    code = ("from cvae_pms import backend; backend.select('jax'); "
            + "; ".join(f"import {m}" for m in NOISE_MODULES)
            + "; import sys; print('tensorflow' in sys.modules)")
    assert _run_jax(code) == "False"


# -- the stream-key helpers (TensorFlow, in process) ----------------------------------------
N = 100_000


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normal_and_uniform_moments_and_ks(dtype):
    from scipy import stats

    from cvae_pms import backend
    key = backend.stream_key(KEY)
    z = backend.to_numpy(backend.normal(key, (N // 4, 4), dtype)).ravel()
    assert z.dtype == np.dtype(dtype)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01      # s.e. 0.003 and 0.0022
    assert stats.kstest(z, stats.norm.cdf).pvalue > 1e-3
    assert abs(stats.skew(z)) < 0.03 and abs(stats.kurtosis(z)) < 0.06
    u = backend.to_numpy(backend.uniform_like(backend.fold_in(key, 1), (N,), dtype))
    assert u.dtype == np.dtype(dtype) and u.min() > 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    if dtype == "float64":
        # 52-bit uniforms and normals: not float32 numbers
        assert np.mean(z != z.astype(np.float32)) > 0.99
        assert np.mean(u != u.astype(np.float32)) > 0.99


def test_split_and_folded_keys_are_independent_and_deterministic():
    import tensorflow as tf

    from cvae_pms import backend
    key = backend.stream_key(KEY)
    keys = backend.split_key(key, 3)
    streams = [key, keys[0], keys[1], keys[2], backend.fold_in(key, 0), backend.fold_in(key, 1),
               backend.stream_key((KEY[0], KEY[1] + 1)), backend.stream_key((KEY[0] + 1, KEY[1]))]
    z = np.stack([backend.to_numpy(backend.normal(k, (N,))) for k in streams])
    corr = np.corrcoef(z)
    assert np.abs(corr[np.triu_indices(len(streams), 1)]).max() < 0.01
    # determinism, and one key per seed whatever its container or integer dtype
    np.testing.assert_array_equal(z[0], backend.to_numpy(backend.normal(KEY, (N,))))
    words = backend.to_numpy(key)
    assert words.dtype == np.uint32 and words.shape == (2,)
    for seed in (np.array(KEY), tf.constant(KEY, tf.int64), tf.constant(KEY, tf.int32), key):
        np.testing.assert_array_equal(backend.to_numpy(backend.stream_key(seed)), words)
    np.testing.assert_array_equal(backend.to_numpy(backend.stream_key(5)),
                                  backend.to_numpy(backend.stream_key((5, 0))))
    big = (2**40 + 3, -7)
    np.testing.assert_array_equal(backend.to_numpy(backend.stream_key(big)),
                                  backend.to_numpy(backend.stream_key(tf.constant(big, tf.int64))))
    np.testing.assert_array_equal(backend.to_numpy(backend.fold_in(key, 7)),
                                  backend.to_numpy(backend.fold_in(key, tf.constant(7))))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_keyed_draws_inside_tf_function_with_dynamic_batch(jit_compile):
    """Inside tf.function (batch size unknown at trace time) and XLA the draws equal the eager
    ones, the loop's int64 seeds are accepted and keys fold in a replica id tensor."""
    import tensorflow as tf

    from cvae_pms import backend

    @tf.function(input_signature=[tf.TensorSpec([None, 3]), tf.TensorSpec([2], tf.int64)],
                 jit_compile=jit_compile)
    def draw(x, seed_t):
        keys = backend.split_key(backend.fold_in(seed_t, tf.constant(0)), 2)
        n = tf.shape(x)[0]
        return (backend.normal(keys[0], (n, 3), "float64"), backend.normal(keys[1], (n, 2)),
                backend.uniform_like(keys[1], (n,)))

    seed = tf.constant([3, 1_000_007], tf.int64)
    keys = backend.split_key(backend.fold_in(backend.stream_key((3, 1_000_007)), 0), 2)
    for n in (5, 17):
        got = draw(tf.zeros((n, 3)), seed)
        want = (backend.normal(keys[0], (n, 3), "float64"), backend.normal(keys[1], (n, 2)),
                backend.uniform_like(keys[1], (n,)))
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-6, atol=1e-6)
