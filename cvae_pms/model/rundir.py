"""The model directory: everything needed to reproduce and use a trained CVAE.

Layout of ``RUN/``:

- ``model.weights.h5``: network weights (Keras 3);
- ``network.json``: :class:`~cvae_pms.model.networks.NetworkConfig`;
- ``config.json`` (the full resolved training config) and ``config.toml`` (the original text);
- ``params.json``: :func:`cvae_pms.params.table_dict` of the training run;
- ``features.json`` + ``features.npz``: :class:`~cvae_pms.features.FeatureSpec`;
- ``grid.json``: training grid path, content hash and meta; ``noise.json``: noise-model constants;
- ``split.npz``: train/val/test row indices of the grid (compressed, int32 where they fit);
- ``history.csv``, ``loss.png``, ``checkpoints/``, ``tensorboard/`` (written by training).

Every file is written to ``<name>.tmp-<pid>`` and renamed into place.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvae_pms import params as P
from cvae_pms.atomic import write_bytes_atomic, write_text_atomic
from cvae_pms.features import FEATURE_VERSION, FeatureError, Featuriser, FeatureSpec
from cvae_pms.errors import CvaePmsError
from cvae_pms.io.json_ready import json_ready

WEIGHTS = "model.weights.h5"
#: Files of a model dir that define its samples (hashed into :func:`model_hash`).
MODEL_FILES = (WEIGHTS, "network.json", "features.json", "features.npz", "params.json")


class RunDirError(CvaePmsError):
    """A model directory is missing, incomplete or incompatible (the message names it)."""


def write_json(path: str | Path, obj) -> None:
    """Indented, key-sorted JSON (NaN/inf -> null), written atomically."""
    write_text_atomic(path, json.dumps(json_ready(obj), indent=1, sort_keys=True,
                                       allow_nan=False))


def save_weights(net, directory: str | Path) -> None:
    """Save the network weights atomically as ``model.weights.h5``."""
    d = Path(directory)
    tmp = d / f"tmp-{os.getpid()}.weights.h5"
    net.save_weights(str(tmp))
    os.replace(tmp, d / WEIGHTS)


def save_static(directory: str | Path, *, network: dict, config: dict, config_toml: str,
                spec: FeatureSpec, grid_info: dict, noise: dict,
                split: dict[str, np.ndarray]) -> None:
    """Write every file of a model dir except weights and history (known at training start)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "network.json", network)
    write_json(d / "config.json", config)
    write_text_atomic(d / "config.toml", config_toml)
    write_json(d / "params.json", P.table_dict())
    spec.save(d)
    write_json(d / "grid.json", grid_info)
    write_json(d / "noise.json", noise)
    import io
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: _index_array(v) for k, v in split.items()})
    write_bytes_atomic(d / "split.npz", buf.getvalue())


def _index_array(rows) -> np.ndarray:
    """Grid row indices as the smallest of int32/int64 that holds them (split.npz)."""
    rows = np.asarray(rows, dtype=np.int64)
    small = rows.size == 0 or (rows.min() >= 0 and rows.max() < np.iinfo(np.int32).max)
    return rows.astype(np.int32) if small else rows


@dataclass
class Run:
    """A loaded model dir: networks, feature map and the stored training metadata."""

    path: Path
    net: object
    featuriser: Featuriser
    config: dict
    grid_info: dict
    noise: dict

    @property
    def spec(self) -> FeatureSpec:
        return self.featuriser.spec

    def split(self) -> dict[str, np.ndarray]:
        """Train/val/test row indices of the training grid."""
        return read_npz(self.path / "split.npz", self.path)

    def features(self, bp: np.ndarray, rp: np.ndarray, bp_cov: np.ndarray, rp_cov: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Network input (n, y_dim) and log10 flux norm [W m^-2 nm^-1] (n,) of observations.

        For a luminosity model the luminosity channel is marked missing (spectrum-only input);
        :meth:`Featuriser.numpy_with_luminosity` adds parallaxes.
        """
        y, lg, _ = self.featuriser.numpy_with_luminosity(bp, rp, bp_cov, rp_cov)
        return y, lg

    def sample(self, bp: np.ndarray, rp: np.ndarray, bp_cov: np.ndarray, rp_cov: np.ndarray,
               n_samples: int = 1000, seed: int = 0, batch: int = 64) -> np.ndarray:
        """Posterior samples (n, n_samples, 7), physical units, float32.

        Identical for the same inputs, ``seed``, ``n_samples`` and ``batch``.
        """
        y, _ = self.features(bp, rp, bp_cov, rp_cov)
        return self.sample_features(y, n_samples=n_samples, seed=seed, batch=batch)

    def sample_features(self, y: np.ndarray, n_samples: int = 1000, seed: int = 0,
                        batch: int = 64) -> np.ndarray:
        """:meth:`sample` from precomputed features ``y`` (n, y_dim)."""
        from cvae_pms.model.sampler import PosteriorSampler
        key = (int(n_samples), int(batch))
        cache = self.__dict__.setdefault("_samplers", {})
        if key not in cache:
            cache[key] = PosteriorSampler(self.net, n_samples=n_samples, batch=batch)
        u = cache[key].sample_unit(y, seed=seed)
        return P.from_unit(u).astype(np.float32)


def model_hash(run_dir: str | os.PathLike) -> str:
    """sha256 (hex) over the files of a model dir that determine its samples
    (:data:`MODEL_FILES`); recorded in ``ood.npz`` and in every posterior file."""
    h = hashlib.sha256()
    run = Path(run_dir)
    for name in MODEL_FILES:
        p = run / name
        if p.is_file():
            h.update(name.encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def _read_json(path: Path, run: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise RunDirError(f"{run}: not a complete model dir: {path.name} is missing") from exc
    except (ValueError, OSError) as exc:
        raise RunDirError(f"{path}: damaged, not valid JSON ({exc})") from exc


def check_training_grid(run_dir: str | os.PathLike, trained: dict | None, grid,
                        error: type[Exception] = RunDirError, why: str = "") -> str:
    """Raise ``error`` when the open grid ``grid`` is not the one the model dir ``run_dir``
    was trained on (``trained``: its ``grid.json``; no content hash: unknown, accepted).
    ``why`` is appended to the message (what would go wrong).

    A different content hash is accepted when ``trained`` holds a fingerprint
    (:mod:`cvae_pms.grid.fingerprint`) that ``grid`` matches: the same grid regenerated on
    another CPU. Returns '' for the exact grid, else a note saying so."""
    from cvae_pms.grid.fingerprint import fingerprint_difference, grid_fingerprint
    trained = trained or {}
    trained_hash, content_hash = trained.get("content_hash"), grid.content_hash
    if not trained_hash or trained_hash == content_hash:
        return ""
    head = (f"{grid.path}: content hash differs from the grid {run_dir} was trained on "
            f"({content_hash[:12]}... vs {trained_hash[:12]}...)")
    if "fingerprint" not in trained:
        raise error(f"{head}{why}; the model dir has no grid fingerprint to tell a regenerated "
                    f"grid from another one")
    diff = fingerprint_difference(trained["fingerprint"], grid_fingerprint(grid))
    if diff:
        raise error(f"{head} and its fingerprint too: {diff}{why}")
    return (f"{head}, but its fingerprint matches (the same grid regenerated, last-bit "
            f"differences): accepted")


def read_npz(path: Path, run: Path | None = None) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file of a model dir, read in full (so the zip CRCs are
    checked); :class:`RunDirError` naming the file when it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{run or path.parent}: not a complete model dir: {path.name} is "
                          f"missing")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: np.asarray(f[k]) for k in f.files}
    except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib.error, EOFError, ValueError ...
        raise RunDirError(f"{path}: damaged ({type(exc).__name__}: {exc}); restore it or "
                          f"retrain the model") from exc


def load_weights_checked(net, weights: Path, net_json: Path) -> None:
    """Load ``weights`` into ``net``; :class:`RunDirError` naming the file when it is
    damaged (cut short, not HDF5) or holds other shapes than ``net_json`` describes."""
    import h5py
    try:
        with h5py.File(weights, "r"):
            pass
    except OSError as exc:
        raise RunDirError(f"{weights}: damaged, not a readable weights file ({exc}); restore "
                          f"it or retrain the model") from exc
    try:
        net.load_weights(str(weights))
    except (ValueError, KeyError, TypeError, OSError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "expected" in ln.lower()),
                     lines[0] if lines else type(exc).__name__)
        raise RunDirError(f"{weights}: does not match {net_json.name} ({first}); the weights "
                          f"and the network configuration come from different models") from exc


def load_run(path: str | Path, matrices: tuple[np.ndarray, np.ndarray] | None = None) -> Run:
    """Load a model dir; refuses another parameter table or feature version.

    Raises:
        RunDirError: missing dir/files, a mismatched parameter table or feature version.
    """
    from cvae_pms.model.networks import NetworkConfig, build_networks
    run = Path(path)
    if not run.is_dir():
        raise RunDirError(f"{run}: model dir not found")
    try:
        P.check_table(_read_json(run / "params.json", run), f"model dir {run}")
    except P.ParameterTableMismatch as exc:
        raise RunDirError(str(exc)) from exc
    read_npz(run / "features.npz", run)      # integrity (a cut file is named, not a zip error)
    try:
        spec = FeatureSpec.load(run)
        featuriser = Featuriser(spec, matrices)
    except FeatureError as exc:
        raise RunDirError(f"model dir {run}: {exc}") from exc
    if spec.version != FEATURE_VERSION:  # FeatureSpec.load already refuses; kept explicit
        raise RunDirError(f"model dir {run}: feature version {spec.version} != {FEATURE_VERSION}")
    net_json = run / "network.json"
    try:
        net_cfg = NetworkConfig.from_dict(_read_json(net_json, run))
        if net_cfg.y_dim != spec.y_dim:
            raise ValueError(f"y_dim {net_cfg.y_dim}, the feature specification has "
                             f"{spec.y_dim}")
        net = build_networks(net_cfg)
    except RunDirError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{net_json}: not a valid network configuration "
                          f"({str(exc).strip(chr(34))})") from exc
    weights = run / WEIGHTS
    if not weights.is_file():
        raise RunDirError(f"{run}: no trained weights ({WEIGHTS}); training not finished?")
    load_weights_checked(net, weights, net_json)
    return Run(path=run, net=net, featuriser=featuriser,
               config=_read_json(run / "config.json", run),
               grid_info=_read_json(run / "grid.json", run),
               noise=_read_json(run / "noise.json", run))
