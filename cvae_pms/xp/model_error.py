"""The forward-model error term: how far real XP spectra scatter around the (corrected) model.

A fractional, wavelength-correlated perturbation of the calibrated flux on ``SAMPLING_NM``:
``flux_obs = flux (1 + delta)``, ``delta ~ N(0, C(T_eff))``. ``C`` is given at a few T_eff nodes
as ``F_b F_b^T + diag(d_b^2)`` (``F_b`` (343, k) low-rank factors, ``d_b`` (343,) an independent
remainder) and interpolated between nodes with hat-function weights ``w_b(T_eff)`` (constant
beyond the end nodes): ``C(T) = sum_b w_b C_b``, drawn as
``delta = sum_b sqrt(w_b) (F_b z_b + d_b * z'_b)``.

Two sources:
- :meth:`ModelError.default`: the empirical term shipped as ``cvae_pms/data/model_error.npz``,
  measured on real APOGEE x XP stars after the photosphere correction (cross-fitted residuals,
  photon noise subtracted; ``scripts/calibrate_forward_model.py``, provenance in ``meta``).
- :meth:`ModelError.parametric`: the earlier fixed term, ``fraction`` per pixel correlated with
  a Gaussian of ``corr_nm`` (one node, no T_eff dependence).

The network's error features cannot know T_eff, so they add the T_eff-independent
``reference_fraction`` (the node average of the per-pixel sigma, :attr:`reference_fraction`);
the T_eff dependence enters through the training draws.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import CvaePmsError
from .sampling import SAMPLING_NM

DEFAULT_FILE = "model_error.npz"
KINDS = ("empirical", "parametric")


class ModelErrorError(CvaePmsError, ValueError):
    """An unreadable or inconsistent model-error file or option."""


@dataclass(frozen=True, eq=False)
class ModelError:
    """Fractional model-error covariance at T_eff nodes (see the module docstring).

    Attributes:
        teff_nodes: (B,) node temperatures [K], increasing.
        factors: (B, 343, k) low-rank factors of the fractional covariance.
        diag: (B, 343) fractional sigma of the independent remainder.
        kind: ``"empirical"`` or ``"parametric"``.
        meta: provenance (JSON-serialisable).
    """

    teff_nodes: np.ndarray
    factors: np.ndarray
    diag: np.ndarray
    kind: str = "empirical"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        b = np.asarray(self.teff_nodes).size
        if (np.shape(self.factors)[:2] != (b, SAMPLING_NM.size)
                or np.shape(self.diag) != (b, SAMPLING_NM.size)
                or (b > 1 and np.any(np.diff(self.teff_nodes) <= 0))):
            raise ModelErrorError(f"model error: inconsistent shapes teff_nodes {np.shape(self.teff_nodes)}, "
                                  f"factors {np.shape(self.factors)}, diag {np.shape(self.diag)}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def default(cls) -> "ModelError":
        """The empirical term shipped with the package."""
        return _default()

    @classmethod
    def parametric(cls, fraction: float = 0.005, corr_nm: float = 15.0) -> "ModelError":
        """``fraction`` per pixel, Gaussian-correlated over ``corr_nm`` (T_eff independent)."""
        d = SAMPLING_NM[:, None] - SAMPLING_NM[None, :]
        corr = np.exp(-0.5 * (d / corr_nm) ** 2)
        # A Gaussian kernel matrix is numerically singular: 1e-6 on the diagonal.
        chol = np.linalg.cholesky(corr + 1e-6 * np.eye(SAMPLING_NM.size))
        return cls(np.array([5000.0]), (fraction * chol)[None], np.zeros((1, SAMPLING_NM.size)),
                   "parametric", {"fraction": float(fraction), "corr_nm": float(corr_nm)})

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelError":
        try:
            with np.load(path, allow_pickle=False) as d:
                return cls(d["teff_nodes"], d["factors"], d["diag"], str(d["kind"]),
                           json.loads(str(d["meta"])))
        except (OSError, KeyError, ValueError) as exc:
            raise ModelErrorError(f"{path}: cannot read the model-error file: {exc}") from exc

    @classmethod
    def from_config(cls, noise_cfg: dict, noise_model=None) -> "ModelError":
        """From a training config's ``[noise]`` table: ``model_error = "empirical"`` (default)
        or ``"parametric"`` (with the noise model's ``model_error_fraction``/``_corr_nm``)."""
        kind = noise_cfg.get("model_error", "empirical")
        if kind == "empirical":
            return cls.default()
        if kind == "parametric":
            from .noise import NoiseModel
            nm = noise_model or NoiseModel.default()
            return cls.parametric(nm.model_error_fraction, nm.model_error_corr_nm)
        raise ModelErrorError(f"noise.model_error = {kind!r}: choose from {', '.join(KINDS)}")

    def save(self, path: str | Path) -> None:
        """Write the term as ``.npz`` (atomic)."""
        from cvae_pms.atomic import atomic_path
        with atomic_path(path) as tmp:
            np.savez(tmp, teff_nodes=self.teff_nodes, factors=self.factors.astype(np.float32),
                     diag=self.diag.astype(np.float32), kind=self.kind,
                     meta=json.dumps(self.meta))

    # ------------------------------------------------------------------ numbers
    def weights(self, teff_k: np.ndarray | None, n: int | None = None) -> np.ndarray:
        """Hat-function node weights (n, B) at T_eff [K]; None: equal weights (population mean)."""
        b = self.teff_nodes.size
        if teff_k is None:
            return np.full((n or 1, b), 1.0 / b)
        t = np.clip(np.atleast_1d(np.asarray(teff_k, np.float64)), self.teff_nodes[0],
                    self.teff_nodes[-1])
        if b == 1:
            return np.ones((t.size, 1))
        eye = np.eye(b)
        return np.stack([np.interp(t, self.teff_nodes, eye[j]) for j in range(b)], axis=1)

    def node_variance(self) -> np.ndarray:
        """Per-pixel fractional variance at each node (B, 343)."""
        return np.sum(self.factors ** 2, axis=2) + self.diag ** 2

    @property
    def reference_fraction(self) -> np.ndarray:
        """T_eff-independent per-pixel fractional sigma (343,) used by the error features."""
        return np.sqrt(np.mean(self.node_variance(), axis=0))

    def variance(self, teff_k: np.ndarray | None, n: int | None = None) -> np.ndarray:
        """Per-pixel fractional variance (n, 343) at T_eff."""
        return self.weights(teff_k, n) @ self.node_variance()

    def covariance(self, teff_k: float | None = None) -> np.ndarray:
        """Fractional covariance (343, 343) at one T_eff (None: the node average)."""
        w = self.weights(None if teff_k is None else np.array([teff_k]))[0]
        return sum(wb * (f @ f.T + np.diag(d ** 2))
                   for wb, f, d in zip(w, self.factors, self.diag))

    def draw(self, flux: np.ndarray, teff_k: np.ndarray | None, rng: np.random.Generator
             ) -> np.ndarray:
        """Additive flux perturbation (n, 343) = |flux| delta, one draw per row."""
        flux = np.atleast_2d(np.asarray(flux, np.float64))
        n = flux.shape[0]
        w = np.sqrt(self.weights(teff_k, n))                                      # (n, B)
        z = rng.standard_normal((n, self.teff_nodes.size, self.factors.shape[2]))
        z2 = rng.standard_normal((n, self.teff_nodes.size, SAMPLING_NM.size))
        delta = (np.einsum("nb,bpk,nbk->np", w, self.factors, z)
                 + np.einsum("nb,bp,nbp->np", w, self.diag, z2))
        return np.abs(flux) * delta

    def ops_draw(self, flux, teff_k, key):
        """keras.ops twin of :meth:`draw` (float32, any backend): ``flux`` (n, 343) tensor,
        ``teff_k`` (n,) [K] tensor or None, ``key`` a stream key or seed
        (:func:`cvae_pms.backend.stream_key`)."""
        from keras import ops

        from cvae_pms import backend
        flux = ops.cast(flux, "float32")
        n = ops.shape(flux)[0]
        b, k = self.teff_nodes.size, self.factors.shape[2]
        ones = ops.ones_like(flux[:, :1])                                        # (n, 1)
        if teff_k is None or b == 1:
            w = ones * (1.0 / b if teff_k is None else 1.0) * ops.ones((b,), "float32")
        else:
            t = ops.clip(ops.cast(teff_k, "float32"), float(self.teff_nodes[0]),
                         float(self.teff_nodes[-1]))
            nodes = ops.convert_to_tensor(self.teff_nodes, "float32")
            lo = ops.clip(ops.cast(ops.searchsorted(nodes, t, side="right"), "int32") - 1, 0, b - 2)
            x0, x1 = ops.take(nodes, lo), ops.take(nodes, lo + 1)
            frac = (t - x0) / (x1 - x0)
            w = (ops.one_hot(lo, b) * (1.0 - frac)[:, None]
                 + ops.one_hot(lo + 1, b) * frac[:, None])
        w = ops.sqrt(w)
        keys = backend.split_key(key, 2)
        z = backend.normal(keys[0], (n, b, k))
        delta = ops.einsum("nb,bpk,nbk->np", w, ops.convert_to_tensor(self.factors, "float32"), z)
        if np.any(self.diag):
            z2 = backend.normal(keys[1], (n, b, SAMPLING_NM.size))
            delta += ops.einsum("nb,bp,nbp->np", w, ops.convert_to_tensor(self.diag, "float32"), z2)
        return ops.abs(flux) * delta

    def describe(self) -> str:
        med = np.median(self.reference_fraction[(SAMPLING_NM >= 400) & (SAMPLING_NM <= 1000)])
        return (f"{self.kind} model error, {self.teff_nodes.size} T_eff node(s), "
                f"median reference sigma {100 * med:.2f} % (400-1000 nm)")


@functools.lru_cache(maxsize=1)
def _default() -> ModelError:
    ref = resources.files("cvae_pms") / "data" / DEFAULT_FILE
    with resources.as_file(ref) as path:
        if not path.is_file():
            raise ModelErrorError(f"{path}: model-error file missing (run "
                                  "scripts/calibrate_forward_model.py)")
        return ModelError.from_file(path)


def run_model_error(run) -> ModelError:
    """The model-error term a loaded run (:class:`cvae_pms.model.rundir.Run`) was trained
    with: ``RUN/model_error.npz``, else the one its config names (runs made before the
    empirical term: the parametric one)."""
    path = Path(run.path) / "model_error.npz"
    if path.is_file():
        return ModelError.from_file(path)
    noise = dict(run.config.get("noise", {}))
    noise.setdefault("model_error", "parametric")
    return ModelError.from_config(noise)
