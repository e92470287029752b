"""What the network sees in training: noisy features of the grid rows.

The noise path (:class:`cvae_pms.simulator.TrainingNoise`, and
:class:`cvae_pms.simulator.TrainingLuminosity` for the parallax channel) feeds the feature
map; its standardisation (and the optional whitening) comes from noisy training draws, or from
the run dir on ``--resume``. The validation features are drawn once per run (fixed noise).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvae_pms.simulator import TrainingLuminosity, TrainingNoise

from .config import TrainingError
from .data import GridRows, TrainingData


@dataclass
class Batching:
    """Batch layout: ``rows`` grid rows per step, each with ``copies`` noise draws."""

    copies: int
    rows: int
    steps: int          # steps per epoch
    total_steps: int    # over all epochs (the learning-rate schedule's length)


def plan_batches(tcfg: dict, n_train: int, grid_path) -> Batching:
    """Rows per step, steps per epoch and in all from the ``training`` config."""
    copies = int(tcfg["noise_copies"])
    if copies < 1 or tcfg["batch_size"] % copies:
        raise TrainingError(f"training.noise_copies = {copies} must be >= 1 and divide "
                            f"training.batch_size = {tcfg['batch_size']}")
    bs = int(tcfg["batch_size"]) // copies   # grid rows per step; each gets `copies` draws
    if n_train < bs:
        raise TrainingError(f"{grid_path}: {n_train} training rows < {bs} rows per "
                            f"batch; use a smaller training.batch_size")
    steps = tcfg["steps_per_epoch"] or n_train // bs
    return Batching(copies=copies, rows=bs, steps=steps, total_steps=steps * tcfg["epochs"])


def load_model_error(run: Path, ncfg: dict, noise_model, *, resume: bool):
    """The model-error draw: the run dir's ``model_error.npz`` on resume, else from the config."""
    from cvae_pms.xp.model_error import ModelError, ModelErrorError
    try:
        return (ModelError.from_file(run / "model_error.npz")
                if resume and (run / "model_error.npz").is_file()
                else ModelError.from_config(ncfg, noise_model))
    except ModelErrorError as exc:
        raise TrainingError(str(exc)) from exc


@dataclass
class TrainingInputs:
    """The feature map, the noise path into it, and the fixed validation features."""

    spec: object                     # cvae_pms.features.FeatureSpec
    feat: object                     # cvae_pms.features.Featuriser
    noise: TrainingNoise
    lum: TrainingLuminosity | None
    whiten: np.ndarray | None        # whitening kernel (new runs with model.whiten only)
    val_y: np.ndarray                # (n_val, y_dim) standardised validation features

    def step_draws(self, bp0, rp0, g0, x, key, copies: int, latent: int):
        """One training step's random part, the same under every backend (keras.ops): noisy
        features y (n k, y_dim), the targets x repeated (n k, 7) and the latent normals
        eps (n k, latent) of rows bp0, rp0 (n, 55) at G0 (n,), from one stream key
        (split into the noise, luminosity and latent keys)."""
        from keras import ops

        from cvae_pms import backend
        from cvae_pms.simulator import unit_teff
        keys = backend.split_key(key, 3)                 # noise, luminosity, latent
        y, lg, g = self.noise.observe(bp0, rp0, g0, keys[0], copies=copies, return_g=True,
                                      teff=unit_teff(x))
        if self.lum is not None:
            y = ops.concatenate([y, self.lum.inputs(lg, g0, g, keys[1], copies)], axis=1)
        x = ops.repeat(x, copies, axis=0)
        return y, x, backend.normal(keys[2], (ops.shape(x)[0], latent))


def build_inputs(cfg: dict, run: Path, data: TrainingData, noise_model, model_error,
                 grid_path, *, resume: bool, spec_dir: Path | None = None) -> TrainingInputs:
    """Seed Keras, set up the feature map and noise path, standardise (new runs), draw val.

    ``spec_dir``: a warm start's init model dir, whose feature standardisation (and
    whitening, restored with its weights) the new run takes instead of computing its own."""
    import keras
    from cvae_pms.features import Featuriser, FeatureSpec
    seed = int(cfg["training"]["seed"])
    lcfg = cfg["luminosity"]
    keras.utils.set_random_seed(seed)
    if resume or spec_dir is not None:
        spec = FeatureSpec.load(run if resume else spec_dir)
        feat = Featuriser(spec)
        if not resume:
            _check_init_spec(spec, spec_dir, model_error, bool(lcfg["enabled"]))
    else:
        spec = FeatureSpec(model_error_frac=model_error.reference_fraction,
                           luminosity=bool(lcfg["enabled"]))
        feat = Featuriser(spec)
    noise = TrainingNoise(feat, noise_model, cfg["noise"], model_error)
    lum = TrainingLuminosity(feat, lcfg, data.reference_distance_pc) if lcfg["enabled"] else None
    whiten = None
    if not resume and spec_dir is None:
        whiten = _standardise(feat, noise, lum, data.train_rows, cfg, grid_path)
    val_y = _validation_features(noise, lum, data.val_rows, seed)
    return TrainingInputs(spec=spec, feat=feat, noise=noise, lum=lum, whiten=whiten, val_y=val_y)


def _check_init_spec(spec, spec_dir: Path, model_error, luminosity: bool) -> None:
    """The init model's feature map must be the one this run's config would build."""
    if spec.luminosity != luminosity:
        raise TrainingError(f"training.init_from: {spec_dir} has luminosity.enabled = "
                            f"{spec.luminosity}, this run {luminosity}")
    ours = np.asarray(model_error.reference_fraction, dtype=float)
    theirs = np.asarray(spec.model_error_frac, dtype=float)
    if ours.shape != theirs.shape or not np.allclose(ours, theirs, rtol=1e-6, atol=0):
        raise TrainingError(f"training.init_from: {spec_dir}/features.npz was made with another "
                            f"model error than this run's noise.model_error; use the init "
                            f"model's [noise] settings")


def _standardise(feat, noise: TrainingNoise, lum: TrainingLuminosity | None, rows: GridRows,
                 cfg: dict, grid_path) -> np.ndarray | None:
    """Set the feature mean/std from noisy draws of the first training rows; returns the
    whitening kernel when ``model.whiten`` asks for one (else None)."""
    from cvae_pms import backend
    from cvae_pms.model.networks import whitening_matrix
    tcfg, lcfg = cfg["training"], cfg["luminosity"]
    seed = int(tcfg["seed"])
    k = min(len(rows), tcfg["standardisation_rows"])
    raw, raw_lum = [], []
    for i in range(0, k, 1024):
        sl = slice(i, min(i + 1024, k))
        s_i = backend.stream_key([seed, 2**31 - 2 - i])
        y, lg, g = noise.observe(rows.bp[sl], rows.rp[sl], rows.g[sl],
                                 s_i, standardise=False, return_g=True,
                                 teff=rows.teff[sl].astype(np.float32))
        raw.append(backend.to_numpy(y))
        if lum is not None:
            value, error, present = lum.raw(lg, rows.g[sl], g, backend.fold_in(s_i, 7))
            value, error, present = backend.to_numpy((value, error, present))
            raw_lum.append(np.stack([value, error], 1)[present])
    raw = np.concatenate(raw)
    if not np.isfinite(raw).all():
        raise TrainingError(f"{grid_path}: non-finite features from training rows "
                            f"(bad coefficients?)")
    mean, std = raw.mean(0), raw.std(0)
    if lum is not None:
        raw_lum = np.concatenate(raw_lum)
        if len(raw_lum) < 2:
            raise TrainingError(f"{grid_path}: no usable simulated parallax in "
                                f"{k} standardisation rows (luminosity config {lcfg})")
        mean = np.concatenate([mean, raw_lum.mean(0), [0.0]])
        std = np.concatenate([std, raw_lum.std(0), [1.0]])
    feat.set_standardisation(mean, std)
    if not cfg["model"]["whiten"]:
        return None
    return whitening_matrix((raw - mean[:raw.shape[1]]) / feat.spec.std[:raw.shape[1]],
                            int(cfg["model"]["whiten"]), float(cfg["model"]["whiten_floor"]))


def _validation_features(noise: TrainingNoise, lum: TrainingLuminosity | None,
                         rows: GridRows, seed: int) -> np.ndarray:
    """Standardised features of the validation rows, one fixed noise draw per run."""
    from keras import ops

    from cvae_pms import backend

    def block(i: int) -> np.ndarray:
        s_i = backend.stream_key([seed, 2**31 - 3 - i])
        sl = slice(i, i + 1024)
        y, lg, g = noise.observe(rows.bp[sl], rows.rp[sl], rows.g[sl], s_i,
                                 return_g=True, teff=rows.teff[sl].astype(np.float32))
        if lum is not None:
            y = ops.concatenate([y, lum.inputs(lg, rows.g[sl], g, backend.fold_in(s_i, 7))], 1)
        return backend.to_numpy(y)

    return np.concatenate([block(i) for i in range(0, len(rows), 1024)])
