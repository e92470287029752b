"""Out-of-distribution index and the bound flag.

OOD distance of a source = mean Euclidean distance from its standardised feature vector
(:func:`cvae_pms.features`, the network input) to its ``k`` nearest neighbours among
noisy spectra of the run's training split (fresh noise drawn with the training noise
model). The threshold is the 99th percentile of the same statistic over noisy spectra of the
run's test split, so about 1 % of in-distribution sources are flagged. ``train`` builds the
index (:mod:`cvae_pms.training.ood_index`) into ``RUN/ood.npz``; inference only reads it.
The reference features are rounded to float16 before the threshold is fitted and stored as two
zlib-compressed byte planes (format version 2, a third of the float32 size; version 1 files,
float32 and uncompressed, are still read).

Bound flag: a parameter "piles at a bound" when more than :data:`BOUND_FRACTION` (20 %) of
its samples lie within :data:`EDGE_WIDTH` (1 %) of the box width from an edge, unless the
training prior itself puts at least :data:`PRIOR_PILED` (5 %) of its grid points in that edge
band (then the pile is the prior's, not news).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors

from cvae_pms import params
from cvae_pms.atomic import atomic_path
from cvae_pms.errors import CvaePmsError

OOD_FILE = "ood.npz"
OOD_VERSION = 2
READ_VERSIONS = (1, 2)
EDGE_WIDTH = 0.01
BOUND_FRACTION = 0.20
PRIOR_PILED = 0.05


class OODError(CvaePmsError):
    """The OOD index cannot be built or read (names the run dir or file)."""


@dataclass
class OODIndex:
    """Nearest-neighbour reference set in standardised feature space, and its threshold.

    ``reference`` (n_ref, D) standardised features of noisy training spectra (float32 holding
    float16-representable values, see :func:`fit_ood_index`);
    ``threshold`` the flagging distance; ``k`` neighbours; ``prior_edge_fraction`` (7, 2):
    fraction of training grid points within ``EDGE_WIDTH`` of the (low, high) edge.
    """

    reference: np.ndarray
    k: int
    threshold: float
    quantile: float
    prior_edge_fraction: np.ndarray
    calibration_distance: np.ndarray
    meta: dict

    def __post_init__(self) -> None:
        self.reference = np.ascontiguousarray(self.reference, dtype=np.float32)
        self._nn = NearestNeighbors(n_neighbors=self.k, algorithm="brute").fit(self.reference)

    def distance(self, features: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """Mean distance (n,) to the ``k`` nearest reference spectra; NaN for non-finite rows."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.reference.shape[1]:
            raise OODError(f"features of shape {features.shape}, the OOD index expects "
                           f"(n, {self.reference.shape[1]})")
        out = np.full(features.shape[0], np.nan)
        good = np.flatnonzero(np.isfinite(features).all(axis=1))
        for i in range(0, good.size, chunk):
            idx = good[i:i + chunk]
            dist, _ = self._nn.kneighbors(features[idx])
            out[idx] = dist.mean(axis=1)
        return out

    def is_ood(self, distance: np.ndarray) -> np.ndarray:
        """True where ``distance`` exceeds the threshold (False for NaN)."""
        with np.errstate(invalid="ignore"):
            return np.asarray(distance) > self.threshold


def fit_ood_index(reference: np.ndarray, calibration: np.ndarray, k: int = 10,
                  quantile: float = 99.0, prior_unit: np.ndarray | None = None,
                  meta: dict | None = None) -> OODIndex:
    """Fit an :class:`OODIndex` from standardised feature arrays.

    ``reference`` (n_ref, D): noisy training spectra; ``calibration`` (n_cal, D): noisy
    held-out (test) spectra, whose ``quantile`` percentile of the k-NN distance is the
    threshold; ``prior_unit`` (N, 7): the training parameters scaled to [0, 1] (for
    :func:`prior_edge_fraction`; None: a uniform prior). The reference is rounded to float16
    (what :func:`save_ood_index` stores) before the threshold is computed, so a saved and
    reloaded index flags exactly the same sources; rows that are not finite in float16 are
    dropped.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        reference = np.asarray(reference, dtype=np.float16).astype(np.float32)
    reference = reference[np.isfinite(reference).all(axis=1)]
    if reference.shape[0] <= k:
        raise OODError(f"OOD index needs more than k={k} finite reference spectra, "
                       f"got {reference.shape[0]}")
    edge = (prior_edge_fraction(prior_unit) if prior_unit is not None
            else np.full((params.N_PARAMS, 2), EDGE_WIDTH))
    idx = OODIndex(reference, k, np.inf, quantile, edge, np.zeros(0), dict(meta or {}))
    cal = idx.distance(calibration)
    cal = cal[np.isfinite(cal)]
    if cal.size == 0:
        raise OODError("OOD index: no finite calibration spectrum")
    idx.threshold = float(np.percentile(cal, quantile))
    idx.calibration_distance = cal
    return idx


def prior_edge_fraction(prior_unit: np.ndarray) -> np.ndarray:
    """Fraction (7, 2) of unit-scaled parameter vectors within EDGE_WIDTH of (low, high)."""
    u = np.asarray(prior_unit, dtype=np.float64)
    return np.stack([(u <= EDGE_WIDTH).mean(axis=0), (u >= 1 - EDGE_WIDTH).mean(axis=0)], axis=1)


def bound_flags(samples: np.ndarray, prior_edge: np.ndarray | None = None) -> np.ndarray:
    """Per source (n,) uint8 bit mask: bit i set when parameter i piles at a bound.

    ``samples`` (n, S, 7) in physical units; NaN rows give 0. ``prior_edge`` (7, 2) from
    :func:`prior_edge_fraction` (None: uniform prior, no edge is piled).
    """
    x = np.asarray(samples, dtype=np.float32)
    width = params.HIGH - params.LOW
    lo = (params.LOW + EDGE_WIDTH * width).astype(np.float32)
    hi = (params.HIGH - EDGE_WIDTH * width).astype(np.float32)
    with np.errstate(invalid="ignore"):
        near = np.stack([(x <= lo).mean(axis=1), (x >= hi).mean(axis=1)], axis=2)  # (n, 7, 2)
    piled_prior = (np.zeros((params.N_PARAMS, 2), bool) if prior_edge is None
                   else np.asarray(prior_edge) >= PRIOR_PILED)
    hit = ((near > BOUND_FRACTION) & ~piled_prior).any(axis=2)  # (n, 7)
    weights = (1 << np.arange(params.N_PARAMS)).astype(np.uint8)
    return (hit.astype(np.uint8) * weights).sum(axis=1).astype(np.uint8)


def _float16_planes(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Low and high bytes (uint8, shape of ``a``) of ``a`` as little-endian float16: apart,
    the sign/exponent plane compresses well (what HDF5's shuffle filter does)."""
    b = np.ascontiguousarray(a, dtype="<f2").view(np.uint8).reshape(a.shape + (2,))
    return b[..., 0].copy(), b[..., 1].copy()


def _from_float16_planes(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_float16_planes`, as float32."""
    b = np.stack([lo, hi], axis=-1).astype(np.uint8)
    return b.view("<f2").reshape(lo.shape).astype(np.float32)


def save_ood_index(index: OODIndex, path: str | os.PathLike) -> Path:
    """Write the index to a compressed ``.npz`` file atomically (format :data:`OOD_VERSION`).

    The reference features are stored as float16 (exact for an index from
    :func:`fit_ood_index`, which rounds them before fitting the threshold).
    """
    path = Path(path)
    meta = {k: str(v) for k, v in index.meta.items()}
    lo, hi = _float16_planes(index.reference)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, version=OOD_VERSION, reference_lo=lo, reference_hi=hi,
                            k=index.k, threshold=index.threshold, quantile=index.quantile,
                            prior_edge_fraction=index.prior_edge_fraction,
                            calibration_distance=index.calibration_distance,
                            meta_keys=np.array(list(meta), dtype=str),
                            meta_values=np.array(list(meta.values()), dtype=str))
    return path


def load_ood_index(path: str | os.PathLike) -> OODIndex:
    """Read an index written by :func:`save_ood_index` (format versions :data:`READ_VERSIONS`)."""
    path = Path(path)
    try:
        with np.load(path) as z:
            version = int(z["version"])
            if version not in READ_VERSIONS:
                raise OODError(f"{path}: OOD index version {version}, this code reads "
                               f"{', '.join(map(str, READ_VERSIONS))}; {rebuild_hint(path.parent)}")
            reference = (z["reference"] if version == 1
                         else _from_float16_planes(z["reference_lo"], z["reference_hi"]))
            return OODIndex(reference, int(z["k"]), float(z["threshold"]),
                            float(z["quantile"]), z["prior_edge_fraction"],
                            z["calibration_distance"],
                            dict(zip(z["meta_keys"].tolist(), z["meta_values"].tolist())))
    except OODError:
        raise
    except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib.error, EOFError, KeyError ...
        raise OODError(f"{path}: cannot read OOD index, damaged? ({type(exc).__name__}: "
                       f"{exc})") from exc


def rebuild_hint(run_dir: str | os.PathLike) -> str:
    """The command that (re)builds a model dir's ``ood.npz`` (needs the training grid)."""
    return f"cvae-pms ood rebuild {run_dir} [--grid GRID]"


def load_run_ood_index(run, model_hash: str) -> OODIndex:
    """The OOD index ``RUN/ood.npz`` of a loaded run, written by ``train`` for this model.

    Inference never rebuilds it (that needs the training grid): a missing, damaged or stale
    (made for another version of the weights) index raises :class:`OODError` naming the file
    and the command that rebuilds it (:func:`rebuild_hint`).
    """
    path = Path(run.path) / OOD_FILE
    how = (f"rebuild it where the training grid is available with '{rebuild_hint(run.path)}'"
           f" (grid recorded at training: {run.grid_info.get('path', '?')}), or restore "
           f"{OOD_FILE} from a copy of the model dir")
    if not path.is_file():
        raise OODError(f"{path}: no OOD index in the model dir; {how}")
    try:
        index = load_ood_index(path)
    except OODError as exc:
        raise OODError(f"{exc}; {how}") from exc
    if index.meta.get("model_hash") != model_hash:
        raise OODError(f"{path}: OOD index made for another version of the model (model hash "
                       f"differs); {how}")
    return index
