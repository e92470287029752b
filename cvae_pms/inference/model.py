"""The loaded model of inference: :class:`Model` (network, OOD index, hash, G range),
:func:`load_model` / :func:`cached_model`, :func:`sample_sources`, and :class:`InferError`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvae_pms.errors import CvaePmsError

if TYPE_CHECKING:
    from cvae_pms.model.sampler import KeyedSampler
from cvae_pms.inference.sampling import KEYED_BATCH, keyed_sampler, keyed_samples
from cvae_pms.ood import OODError, OODIndex, load_run_ood_index


class InferError(CvaePmsError):
    """Inference cannot run or an input gave nothing usable (the message names the file)."""


@dataclass
class Model:
    """A loaded model dir with everything inference needs (load once per process)."""

    run: object
    ood: OODIndex
    hash: str
    g_range: tuple[float, float] | None

    @property
    def luminosity(self) -> bool:
        """Whether the network takes the luminosity (parallax) channel."""
        return bool(self.run.spec.luminosity)

    @property
    def zero_point_mas(self) -> float:
        """The model's default parallax zero point [mas] (added to parallaxes)."""
        cfg = self.run.config.get("luminosity", {}) if isinstance(self.run.config, dict) else {}
        return float(cfg.get("zero_point_mas", 0.0))

    def predictive_check(self, n_draws: int | None = None, threshold: float | None = None):
        """``(check, note)``: the posterior predictive check of this model
        (:class:`cvae_pms.gof.PredictiveCheck`, cached per settings), or ``(None, why not)``
        for models without a built-in forward model (ingested grids)."""
        from cvae_pms.gof import N_DRAWS, PredictiveCheck
        key = (N_DRAWS if n_draws is None else int(n_draws), threshold)
        cache = self.__dict__.setdefault("_checks", {})
        if key not in cache:
            cache[key] = PredictiveCheck.for_run(self.run, key[0], threshold)
        return cache[key]

    def sampler(self, n_samples: int, batch: int = KEYED_BATCH) -> "KeyedSampler":
        """The compiled per-source-keyed sampler for ``n_samples`` (cached on the run)."""
        return keyed_sampler(self.run, n_samples, batch)


def load_model(run_dir: str | os.PathLike) -> Model:
    """Load a model dir and its OOD index ``RUN/ood.npz`` (written by ``train``).

    Raises :class:`InferError` for a missing/incompatible model dir (another parameter table
    or feature version) and for a missing, damaged or stale ``ood.npz`` (the message names
    the file and the command that rebuilds it).
    """
    from cvae_pms.model.rundir import RunDirError, load_run, model_hash

    try:
        run = load_run(run_dir)
    except RunDirError as exc:
        raise InferError(f"cannot use model: {exc}") from exc
    digest = model_hash(run_dir)
    try:
        ood = load_run_ood_index(run, digest)
    except OODError as exc:
        raise InferError(f"cannot use model: {exc}") from exc
    noise = run.config.get("noise", {}) if isinstance(run.config, dict) else {}
    g_range = ((float(noise["g_min"]), float(noise["g_max"]))
               if "g_min" in noise and "g_max" in noise else None)
    return Model(run=run, ood=ood, hash=digest, g_range=g_range)


_MODELS: dict[str, Model] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(run_dir: str) -> Model:
    """:func:`load_model` once per process and model dir (Dask workers reuse it for every
    task; thread-safe, so threaded workers load it once too). ``cached_model.loads`` counts
    the loads of this process."""
    key = str(Path(run_dir).resolve())
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_model(key)
            cached_model.loads += 1
        return _MODELS[key]


cached_model.loads = 0


def sample_sources(model: Model, y: np.ndarray, source_id: np.ndarray, n_samples: int,
                   seed: int) -> np.ndarray:
    """:func:`keyed_samples` of a loaded :class:`Model`."""
    return keyed_samples(model.run, y, source_id, n_samples, seed)
