"""Training end to end on a tiny learnable grid: loss, annealing, KL use, posterior widths,
model dir round trip, resume equivalence, non-finite stop, CLI errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cvae_pms import params as P
from cvae_pms.grid.gridfile import write_grid
from cvae_pms.model.rundir import RunDirError, load_run
from cvae_pms.training import TrainingError, load_config, read_history, split_indices, train
from cvae_pms.xp.instrument import sed_to_coefficients
from cvae_pms.xp.noise import NoiseModel, draw_observation
from cvae_pms.xp.photometry import scale_to_g

TINY_TOML = """
[model]
trunk = [128, 128]
r1_hidden = [64]
q_hidden = [64]
r2_hidden = [128, 64]
components = 4
latent = 4
[annealing]
start = 2
end = 8
[training]
seed = 3
epochs = 14
batch_size = 128
learning_rate = 2e-3
lr_final = 2e-4
standardisation_rows = 2048
val_max_rows = 384
early_stopping_patience = 50
"""
NOISE = NoiseModel()


def toy_grid(path, n: int, seed: int = 0) -> None:
    """A smooth, learnable stand-in grid (not physics): blackbody x extinction x absorption
    bands whose depths encode T_eff (620 and 450 nm), log g (860 nm) and [M/H] (700 nm), x
    blue veiling (log Mdot). The [M/H] band depth is |u_mh - 1/2|, so the [M/H] posterior is
    bimodal: only a decoder that uses z fits it. Mass and ff leave no trace (prior returned)."""
    rng = np.random.default_rng(seed)
    x = P.from_unit(rng.uniform(size=(n, 7)))
    u = P.to_unit(x)
    wl = np.linspace(300.0, 1110.0, 406)
    lam = wl[None] * 1e-9
    bb = 1.0 / lam**5 / np.expm1(6.626e-34 * 2.998e8 / (lam * 1.381e-23 * x[:, :1]))
    bb /= bb.max(1, keepdims=True)
    ext = 10 ** (-0.4 * x[:, 6:7] * (550.0 / wl[None]) ** 1.3)

    def band(centre_nm, width_nm, depth):
        return 1 - depth * np.exp(-0.5 * ((wl[None] - centre_nm) / width_nm) ** 2)

    shape = (band(620, 25, 0.5 * (1 - u[:, :1])) * band(450, 25, 0.4 * u[:, :1])
             * band(860, 30, 0.4 * u[:, 1:2]) * band(700, 30, 0.8 * np.abs(u[:, 2:3] - 0.5)))
    veil = 1 + 10 ** (x[:, 3:4] + 7) * np.exp(-wl[None] / 400)
    bp, rp = sed_to_coefficients(1e-15 * bb * ext * shape * veil, wl)
    write_grid(path, x, bp, rp, meta={"source": "test toy grid", "reference_distance_pc": 10.0})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    toy_grid(d / "toy.h5", 3000)
    (d / "tiny.toml").write_text(TINY_TOML)
    return d


@pytest.fixture(scope="module")
def trained(workdir):
    result = train(workdir / "toy.h5", workdir / "tiny.toml", workdir / "run",
                   noise_model=NOISE, log=lambda s: None)
    return result


def _observe(run, idx, g, n_transits=40, seed=0):
    """Noisy observations (D's numpy noise) of grid rows ``idx`` at magnitude ``g``."""
    from cvae_pms.grid.gridfile import open_grid
    with open_grid(run.grid_info["path"]) as grid:
        x, bp, rp = grid.read(idx)
    bp, rp, _ = scale_to_g(bp, rp, g)
    obs = draw_observation(bp, rp, n_transits, np.random.default_rng(seed), NOISE)
    return x, obs


def test_training_writes_a_complete_run_and_the_loss_falls(trained, workdir):
    run = trained.run_dir
    for name in ("model.weights.h5", "network.json", "config.json", "config.toml", "params.json",
                 "features.json", "features.npz", "grid.json", "noise.json", "split.npz",
                 "history.csv", "loss.png"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "config.toml").read_text() == TINY_TOML
    hist = read_history(run / "history.csv")
    assert [r["epoch"] for r in hist] == list(range(14))
    assert all(np.isfinite([r[k] for k in ("H", "KL", "L", "val_H")]).all() for r in hist)
    assert hist[-1]["H"] < hist[0]["H"] - 1.0 and hist[-1]["val_H"] < hist[0]["val_H"] - 1.0
    assert [r["beta"] for r in hist[:3]] == [0.0, 0.0, 0.0] and hist[-1]["beta"] == 1.0
    assert hist[-1]["lr"] < hist[0]["lr"]
    with np.load(run / "split.npz") as s:
        allidx = np.concatenate([s["train"], s["val"], s["test"]])
    assert np.array_equal(np.sort(allidx), np.arange(3000))


def test_kl_positive_and_decoder_uses_z_after_annealing(trained):
    import tensorflow as tf
    from cvae_pms.model.cvae import LATENT_LOGVAR, bounded, decoder_moments
    hist = read_history(trained.run_dir / "history.csv")
    assert hist[-1]["beta"] == 1.0
    assert hist[-1]["KL"] > 0.01 and hist[-1]["val_KL"] > 0.01
    run = load_run(trained.run_dir)
    test_idx = run.split()["test"][:64]
    _, obs = _observe(run, test_idx, 14.0)
    y, _ = run.features(*obs)
    net = run.net
    h = net.encode(tf.constant(y))
    logits, loc, lv = net.prior_params(h)
    z = loc[:, None] + tf.exp(0.5 * bounded(lv, *LATENT_LOGVAR))[:, None] * \
        tf.random.stateless_normal((64, 50) + tuple(loc.shape[1:]), seed=[1, 1])
    comp = tf.random.stateless_categorical(logits, 50, seed=[2, 2])
    z = tf.gather(z, comp, batch_dims=2)                                      # (64, 50, L)
    m, s = decoder_moments(*net.decode_from_y_part(net.decoder_y_part(h)[:, None, :], z))
    spread_over_z = tf.reduce_mean(tf.math.reduce_variance(m, axis=1), axis=0).numpy()
    decoder_var = tf.reduce_mean(tf.square(s), axis=(0, 1)).numpy()
    # for the constrained parameters (T_eff, log g, A0) the decoder mean moves with z by a
    # measurable share of the decoder's own variance: z is not ignored (collapse gives ~0)
    sel = [P.INDEX["teff"], P.INDEX["logg"], P.INDEX["a0"]]
    assert spread_over_z[sel].sum() > 0.005 * decoder_var[sel].sum()


def test_faint_spectra_give_wider_posteriors(trained):
    run = load_run(trained.run_dir)
    idx = run.split()["test"][:120]
    widths = {}
    for g in (12.0, 17.0):
        _, obs = _observe(run, idx, g, seed=int(g))
        s = P.to_unit(run.sample(*obs, n_samples=300, seed=1))
        widths[g] = np.median(s.std(axis=1), axis=0)                          # (7,)
    ratio = widths[17.0] / widths[12.0]
    for name in ("teff", "logg", "a0"):
        assert ratio[P.INDEX[name]] > 1.2, (name, ratio)
    # parameters that leave no trace in the toy spectra stay at the prior width at both G
    np.testing.assert_allclose(widths[12.0][P.INDEX["mass"]], 1 / np.sqrt(12), rtol=0.2)


def test_save_load_gives_identical_samples(trained):
    idx = np.arange(5)
    run1 = load_run(trained.run_dir)
    x, obs = _observe(run1, idx, 15.0)
    a = run1.sample(*obs, n_samples=200, seed=7, batch=4)
    b = load_run(trained.run_dir).sample(*obs, n_samples=200, seed=7, batch=4)
    assert a.shape == (5, 200, 7) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not P.outside_bounds(a.astype(np.float64) * (1 - 1e-7) + 1e-7 * P.LOW).any()
    c = run1.sample(*obs, n_samples=200, seed=8, batch=4)
    assert not np.array_equal(a, c)


def test_load_refuses_mismatched_parameter_table_and_feature_version(trained, tmp_path):
    src = trained.run_dir
    for what in ("params", "features"):
        d = tmp_path / what
        shutil.copytree(src, d, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
        if what == "params":
            table = json.loads((d / "params.json").read_text())
            table["params"][0]["high"] = 8000.0
            (d / "params.json").write_text(json.dumps(table))
            match = "teff"
        else:
            meta = json.loads((d / "features.json").read_text())
            meta["version"] += 1
            (d / "features.json").write_text(json.dumps(meta))
            match = "feature version"
        with pytest.raises(RunDirError, match=match) as info:
            load_run(d)
        assert str(d) in str(info.value)
    with pytest.raises(RunDirError, match="not found"):
        load_run(tmp_path / "nowhere")


RESUME_SET = ["training.epochs=2", "training.steps_per_epoch=3", "annealing.start=0",
              "annealing.end=1", "training.standardisation_rows=512"]


class _Killed(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("whiten", [0, 16])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(workdir, tmp_path, whiten):
    """Also with the PCA-whitening input projection, which must come back from the checkpoint
    (it is fixed, not trained: equal in both runs and to the one saved after epoch 0)."""
    import h5py
    cfg = workdir / "tiny.toml"
    RESUME_SET = [*globals()["RESUME_SET"], f"model.whiten={whiten}"]
    train(workdir / "toy.h5", cfg, tmp_path / "a", overrides=RESUME_SET, noise_model=NOISE,
          log=lambda s: None)

    def kill_in_second_epoch(line: str) -> None:
        if line.startswith("epoch    1"):
            raise _Killed(line)

    with pytest.raises(_Killed):
        train(workdir / "toy.h5", cfg, tmp_path / "b", overrides=RESUME_SET, noise_model=NOISE,
              log=kill_in_second_epoch)
    assert len(read_history(tmp_path / "b" / "history.csv")) == 1
    with pytest.raises(TrainingError, match="not empty"):
        train(workdir / "toy.h5", cfg, tmp_path / "b", overrides=RESUME_SET, noise_model=NOISE)
    out = train(workdir / "toy.h5", cfg, tmp_path / "b", overrides=RESUME_SET, resume=True,
                noise_model=NOISE, log=lambda s: None)
    assert out.epochs_run == 1
    ha, hb = (read_history(tmp_path / k / "history.csv") for k in "ab")
    # bit-identical on CPU (stateless noise seeds, deterministic kernels): no tolerance
    for key in ("H", "KL", "val_H", "val_KL"):
        np.testing.assert_array_equal([r[key] for r in hb], [r[key] for r in ha], err_msg=key)

    def weights(path):
        with h5py.File(path, "r") as f:
            out = []
            f.visititems(lambda n, o: out.append(o[()]) if isinstance(o, h5py.Dataset) else None)
            return out

    wa, wb = weights(tmp_path / "a" / "model.weights.h5"), weights(tmp_path / "b" / "model.weights.h5")
    assert len(wa) == len(wb) > 10
    for a, b in zip(wa, wb):
        np.testing.assert_array_equal(a, b)
    if whiten:
        net = load_run(tmp_path / "b").net
        kernel = net.whiten_layer.kernel.numpy()
        assert kernel.shape == (686, whiten) and not net.whiten_layer.trainable
        # PCA axes scaled by 1/sqrt(variance + floor): orthogonal columns whose norms grow as
        # the variance falls, capped at 1/sqrt(1e-4 x mean variance (= 1, standardised)) = 100
        gram = kernel.T @ kernel
        off = gram - np.diag(np.diag(gram))
        norms = np.sqrt(np.diag(gram))
        assert np.abs(off).max() < 1e-3 * np.diag(gram).max()
        assert np.all(np.diff(norms) >= -1e-6 * norms[1:]) and norms[-1] <= 100.5
    with pytest.raises(TrainingError, match="different config"):
        train(workdir / "toy.h5", cfg, tmp_path / "b", resume=True, noise_model=NOISE,
              overrides=RESUME_SET + ["training.learning_rate=0.5"])


ES_SET = ["training.epochs=12", "training.steps_per_epoch=3", "annealing.start=0",
          "annealing.end=1", "training.standardisation_rows=512",
          "training.learning_rate=0.003", "training.lr_schedule='constant'",
          "training.early_stopping_patience=2"]


def _weights(path):
    import h5py
    with h5py.File(path, "r") as f:
        out = []
        f.visititems(lambda n, o: out.append(o[()]) if isinstance(o, h5py.Dataset) else None)
        return out


@pytest.mark.slow
def test_resume_after_annealing_during_early_stopping(workdir, tmp_path):
    """Killed after annealing with one non-improving epoch on the early-stopping counter:
    the resumed run ends like the uninterrupted one (same stop reason and epoch, same (best)
    weights, bit for bit). A resume that forgot best_val_L / bad_epochs would run longer or
    keep other weights."""
    cfg = workdir / "tiny.toml"
    a = train(workdir / "toy.h5", cfg, tmp_path / "a", overrides=ES_SET, noise_model=NOISE,
              log=lambda s: None)
    ha = read_history(tmp_path / "a" / "history.csv")
    # the first epoch after annealing (end = 1) whose val_L did not improve: the checkpoint
    # written after it holds bad_epochs = 1; kill while the next epoch ends (before its
    # checkpoint), so the resume starts from that state. (Where the run stops depends on the
    # CPU's floating point: epoch 9 on AVX-512, none by epoch 11 on AVX2.)
    best, first_bad = np.inf, None
    for r in ha[1:]:
        val_l = r["val_H"] + r["val_KL"]
        if val_l >= best:
            first_bad = r["epoch"]
            break
        best = val_l
    assert first_bad is not None and first_bad < ha[-1]["epoch"], [r["val_H"] for r in ha]
    stop = first_bad + 1

    def kill(line: str) -> None:
        if line.startswith(f"epoch {stop:4d}"):
            raise _Killed(line)

    with pytest.raises(_Killed):
        train(workdir / "toy.h5", cfg, tmp_path / "b", overrides=ES_SET, noise_model=NOISE,
              log=kill)
    assert len(read_history(tmp_path / "b" / "history.csv")) == stop
    b = train(workdir / "toy.h5", cfg, tmp_path / "b", overrides=ES_SET, resume=True,
              noise_model=NOISE, log=lambda s: None)
    assert b.epochs_run == len(ha) - stop and b.stop_reason == a.stop_reason
    hb = read_history(tmp_path / "b" / "history.csv")
    assert [r["epoch"] for r in hb] == [r["epoch"] for r in ha]
    for key in ("H", "KL", "val_H", "val_KL"):
        np.testing.assert_array_equal([r[key] for r in hb], [r[key] for r in ha], err_msg=key)
    wa, wb = (_weights(tmp_path / k / "model.weights.h5") for k in "ab")
    assert len(wa) == len(wb) > 10
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y)


def test_non_finite_loss_stops_with_a_checkpoint_and_message(workdir, tmp_path):
    with pytest.raises(TrainingError, match="non-finite loss at epoch 0") as info:
        train(workdir / "toy.h5", workdir / "tiny.toml", tmp_path / "nan", noise_model=NOISE,
              overrides=["training.learning_rate=1e30", "training.lr_schedule='constant'",
                         "training.global_clipnorm=1e30", "training.standardisation_rows=512",
                         "training.epochs=1"], log=lambda s: None)
    assert str(tmp_path / "nan") in str(info.value)
    assert list((tmp_path / "nan" / "checkpoints" / "nonfinite").glob("ckpt*.npz"))


def test_config_resolution_and_split():
    cfg, _ = load_config("cpu-quick", ["training.epochs=3", "model.trunk=[8, 8]"])
    assert cfg["training"]["epochs"] == 3 and cfg["model"]["trunk"] == [8, 8]
    assert cfg["annealing"]["end"] < cfg["training"]["epochs"] + 100
    for recipe in ("cpu-full", "gpu-full", "reference"):
        load_config(recipe)
    ref, _ = load_config("reference")
    assert ref["training"]["learning_rate"] == 1e-5 and ref["training"]["epochs"] == 3800
    assert (ref["annealing"]["start"], ref["annealing"]["end"], ref["model"]["latent"]) == (50, 150, 10)
    with pytest.raises(TrainingError, match="unknown config key"):
        load_config("cpu-quick", ["training.epoch=3"])
    with pytest.raises(TrainingError, match="should be a int"):
        load_config("cpu-quick", ["training.epochs=abc"])
    s1, s2 = split_indices(100, 1, 0.1, 0.2), split_indices(100, 1, 0.1, 0.2)
    assert all(np.array_equal(s1[k], s2[k]) for k in s1)
    assert (len(s1["train"]), len(s1["val"]), len(s1["test"])) == (70, 10, 20)


def test_cli_train_reports_errors_with_exit_code_1(workdir, tmp_path):
    from cvae_pms.cli import main
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--grid", str(tmp_path / "missing.h5"), "--config",
                               str(workdir / "tiny.toml"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "missing.h5" in res.output and "not found" in res.output
    res = runner.invoke(main, ["train", "--grid", str(workdir / "toy.h5"), "--config",
                               str(workdir / "tiny.toml"), "--out", str(tmp_path / "o"),
                               "--set", "training.nope=1"])
    assert res.exit_code == 1 and "training.nope" in res.output


def test_early_stopping_follows_the_validation_loss_h_plus_kl(workdir, tmp_path):
    """After annealing, weights and early stopping follow val_L = val_H + val_KL (the beta = 1
    objective), not val_H alone (lowest right after annealing while KL is still large)."""
    patience = 1
    out = train(workdir / "toy.h5", workdir / "tiny.toml", tmp_path / "es", noise_model=NOISE,
                overrides=["training.epochs=10", "training.steps_per_epoch=4",
                           "annealing.start=0", "annealing.end=1",
                           "training.standardisation_rows=512",
                           f"training.early_stopping_patience={patience}"], log=lambda s: None)
    hist = read_history(tmp_path / "es" / "history.csv")
    best, bad, stop = np.inf, 0, None
    for r in hist:
        if r["epoch"] < 1:
            continue
        val_l = r["val_H"] + r["val_KL"]
        best, bad = (val_l, 0) if val_l < best else (best, bad + 1)
        if bad >= patience:
            stop = r["epoch"]
            break
    assert hist[-1]["epoch"] == (stop if stop is not None else 9)
    assert out.stop_reason.startswith("early stopping: val_L") == (stop is not None)



def test_warm_start_loads_the_init_models_weights_and_refuses_a_different_split(
        workdir, trained, tmp_path):
    """``training.init_from``: the new run starts from the trained weights (with a vanishing
    learning rate they stay those weights; a fresh run's differ), at the full KL weight from
    epoch 0 (annealing.start = end = 0); an init model with another split is refused."""
    base = ["training.epochs=1", "training.steps_per_epoch=2", "annealing.start=0",
            "annealing.end=0", "training.learning_rate=1e-12", "training.lr_final=1e-12"]
    warm = train(workdir / "toy.h5", workdir / "tiny.toml", tmp_path / "warm", noise_model=NOISE,
                 overrides=base + [f"training.init_from={trained.run_dir}"], log=lambda s: None,
                 ood=False)
    cold = train(workdir / "toy.h5", workdir / "tiny.toml", tmp_path / "cold", noise_model=NOISE,
                 overrides=base, log=lambda s: None, ood=False)
    w0, w1, wc = (_weights(r.run_dir / "model.weights.h5") for r in (trained, warm, cold))
    assert len(w0) == len(w1) == len(wc) > 4
    assert all(np.allclose(a, b, rtol=0, atol=1e-7) for a, b in zip(w0, w1))
    assert not all(np.allclose(a, c, atol=1e-3) for a, c in zip(w0, wc) if a.size > 1)
    assert warm.history[0]["beta"] == 1.0
    for name in ("features.npz", "split.npz"):     # the init model's standardisation and split
        with np.load(warm.run_dir / name) as a, np.load(trained.run_dir / name) as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert json.loads((warm.run_dir / "config.json").read_text())["training"]["init_from"] \
        == str(trained.run_dir)
    # the warm run's validation loss is the trained model's, the cold one's is far worse
    assert warm.history[0]["val_H"] < cold.history[0]["val_H"] - 1.0
    with pytest.raises(TrainingError, match="split.npz"):
        train(workdir / "toy.h5", workdir / "tiny.toml", tmp_path / "other", noise_model=NOISE,
              overrides=base + ["training.seed=4", f"training.init_from={trained.run_dir}"],
              log=lambda s: None, ood=False)
    with pytest.raises(TrainingError, match="init_from"):
        train(workdir / "toy.h5", workdir / "tiny.toml", tmp_path / "none", noise_model=NOISE,
              overrides=base + [f"training.init_from={tmp_path / 'nowhere'}"],
              log=lambda s: None, ood=False)
