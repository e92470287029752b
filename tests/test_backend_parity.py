"""TensorFlow and JAX give the same numbers: the features, the loss for the same weights, the
random streams and the posterior samples of the shipped model (JAX runs in a subprocess:
Keras picks its backend once per process)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "cvae_pms" / "models" / "default"
pytest.importorskip("jax")


def compute(model_dir: str, xp_file: str) -> dict[str, np.ndarray]:
    """Everything compared, computed under the backend of this process."""
    from cvae_pms import backend
    from cvae_pms.model.cvae import cvae_terms
    from cvae_pms.model.rundir import load_run
    from cvae_pms.model.sampler import KeyedSampler
    from cvae_pms.seeds import source_seeds
    from cvae_pms.xp.archive import read_xp

    run = load_run(model_dir)
    batch = read_xp(xp_file)
    ok = batch.ok
    feat = run.featuriser
    y, lg = feat.numpy(batch.bp_coefficients[ok], batch.rp_coefficients[ok],
                       batch.bp_covariance[ok], batch.rp_covariance[ok])
    rng = np.random.default_rng(5)
    flux = np.exp(rng.normal(-38.0, 0.3, size=(6, 343)))
    ys, lgs = feat.numpy_sampled(flux, flux * rng.uniform(0.01, 0.1, size=flux.shape))
    keys = source_seeds(11, np.arange(len(y)) + 1000)
    samples = KeyedSampler(run.net, 400, batch=8).sample_unit(y, keys)
    # the loss at typical training values: y with parameters drawn from its own posterior
    rows = np.arange(16) % len(y)
    yy, x = y[rows], samples[rows, np.arange(16)]
    eps = rng.normal(size=(16, run.net.config.latent)).astype(np.float32)
    loss = [backend.to_numpy(t) for t in cvae_terms(run.net, yy, x, eps, -2.0, 3.0,
                                                     with_prior_fit=True)]
    bits = backend.to_numpy(backend.random_bits(backend.key_words(keys), 64))
    return {"y": y, "lg": lg, "ys": ys, "lgs": lgs, "loss": np.array(loss), "samples": samples,
            "bits": bits}


@pytest.fixture(scope="module")
def both(real_xp, tmp_path_factory):
    xp_file = str(real_xp / "gaiaxpy_samples" / "XP_CONTINUOUS_RAW.csv")
    out = tmp_path_factory.mktemp("parity") / "jax.npz"
    code = ("import sys, numpy as np; from cvae_pms import backend; backend.select('jax'); "
            f"sys.path.insert(0, {str(ROOT / 'tests')!r}); import test_backend_parity as t; "
            f"r = t.compute({str(MODEL)!r}, {xp_file!r}); np.savez({str(out)!r}, **r); "
            "import keras; print(keras.backend.backend(), 'tensorflow' in sys.modules)")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["jax", "False"], proc.stdout   # no TensorFlow loaded
    import keras
    assert keras.backend.backend() == "tensorflow"
    with np.load(out) as f:
        jax_r = {k: f[k] for k in f.files}
    return compute(str(MODEL), xp_file), jax_r


def test_features_are_the_same_under_both_backends(both):
    tf_r, jax_r = both
    for k in ("y", "ys"):
        np.testing.assert_allclose(jax_r[k], tf_r[k], rtol=1e-6, atol=2e-6, err_msg=k)
    for k in ("lg", "lgs"):
        np.testing.assert_allclose(jax_r[k], tf_r[k], rtol=1e-6, err_msg=k)


def test_same_weights_give_the_same_loss(both):
    tf_r, jax_r = both
    # float32 sums over the batch: XLA and TF kernels differ by up to 2e-5 relative on an AVX2
    # CPU (1e-5 sufficed on AVX-512); a wrong term would differ by far more
    np.testing.assert_allclose(jax_r["loss"], tf_r["loss"], rtol=1e-4)
    assert np.isfinite(tf_r["loss"]).all()


def test_random_streams_are_bit_identical(both):
    tf_r, jax_r = both
    np.testing.assert_array_equal(jax_r["bits"], tf_r["bits"])
    assert len(np.unique(tf_r["bits"])) == tf_r["bits"].size        # no repeats in 64 x n


def test_samples_are_the_same_and_equal_in_distribution(both):
    """Same keys -> the same samples to float32 round-off; and (what a user relies on when
    the round-off is amplified, e.g. near a component boundary) the same distribution."""
    tf_r, jax_r = both
    a, b = tf_r["samples"], jax_r["samples"]
    assert a.shape == b.shape and a.shape[1:] == (400, 7)
    close = np.isclose(a, b, rtol=1e-4, atol=1e-4)
    assert close.mean() > 0.999, f"{(~close).sum()} of {close.size} samples differ"
    for i in range(a.shape[0]):
        for j in range(7):
            assert stats.ks_2samp(a[i, :, j], b[i, :, j]).pvalue > 0.01, (i, j)


def test_the_cli_runs_on_jax(real_xp, tmp_path):
    """``cvae-pms --backend jax infer`` writes the same posterior file as TensorFlow would,
    and records the backend."""
    import h5py
    xp_file = real_xp / "gaiaxpy_samples" / "XP_CONTINUOUS_RAW.csv"
    outs = {}
    for name in ("jax", "tensorflow"):
        out = tmp_path / f"{name}.h5"
        env = {**os.environ, "KERAS_BACKEND": ""}
        proc = subprocess.run([str(Path(sys.executable).parent / "cvae-pms"), "--backend", name, "infer",
                               str(xp_file), "--out", str(out), "--samples", "200", "--seed", "4"],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with h5py.File(out) as f:
            outs[name] = f["samples"][...].astype(np.float64)
            assert f.attrs["backend"] == name
    np.testing.assert_allclose(outs["jax"], outs["tensorflow"], rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_a_run_trained_under_jax_infers_and_resumes_under_tensorflow(real_xp, tmp_path):
    """``cvae-pms --backend jax train`` writes a model dir and checkpoints that TensorFlow
    reads: the same samples for the same seed, and ``--resume`` continues the run."""
    import helpers_infer as h
    from cvae_pms.training import train
    from cvae_pms.training.history import read_history

    grid = h.make_grid(tmp_path / "grid.h5", n=1500)
    run = tmp_path / "run"
    xp_file = real_xp / "gaiaxpy_samples" / "XP_CONTINUOUS_RAW.csv"
    sets = ["--set", "training.steps_per_epoch=10", "--set", "annealing.start=0",
            "--set", "annealing.end=1"]
    code = ("import sys; sys.path.insert(0, 'tests'); import helpers_infer as h, numpy as np; "
            "from cvae_pms import backend; backend.select('jax'); "
            "from cvae_pms.training import train; import cvae_pms; "
            f"train({str(grid)!r}, 'cpu-quick', {str(run)!r}, overrides=('training.epochs=2', "
            "'training.steps_per_epoch=10', 'annealing.start=0', 'annealing.end=1'), "
            "noise_model=h.noise_model(), log=print); "
            f"r = cvae_pms.load({str(run)!r}).sample({str(xp_file)!r}, n=300, seed=2); "
            f"np.save({str(tmp_path / 'jax.npy')!r}, r.samples)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "KERAS_BACKEND": "jax"}, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "jax backend" in proc.stdout
    import cvae_pms
    got = cvae_pms.load(run).sample(xp_file, n=300, seed=2).samples
    want = np.load(tmp_path / "jax.npy")
    close = np.isclose(got, want, rtol=1e-3, atol=1e-3)
    assert close.mean() > 0.999, f"{(~close).sum()} of {close.size} samples differ"
    res = train(grid, "cpu-quick", run, resume=True, noise_model=h.noise_model(),
                overrides=("training.epochs=3",) + tuple(s for s in sets if s != "--set"),
                log=lambda s: None)
    assert res.epochs_run == 1
    assert [r["epoch"] for r in read_history(run / "history.csv")] == [0, 1, 2]
