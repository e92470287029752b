"""TARP expected coverage: joint calibration from samples alone (Lemos et al. 2023).

Own numpy implementation. All parameters are first scaled to the unit box
(:func:`cvae_pms.params.to_unit`), so distances weigh every parameter by its prior range.
For source ``i`` draw a reference point ``r_i`` uniformly in the box; the credibility of the
ball around ``r_i`` that just reaches the truth is
``f_i = mean_j [ |s_ij - r_i| < |theta_i - r_i| ]``. The expected coverage probability at
credibility ``alpha`` is ``ECP(alpha) = mean_i [ f_i < alpha ]``; a calibrated posterior has
``ECP(alpha) = alpha`` (the ``f_i`` are uniform), an over-confident one falls below the
diagonal, an under-confident (too wide) one lies above it. ``max_deviation`` is
``max |ECP - alpha|``; the band is the binomial band of ``n`` uniform values.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(3)
>>> mu = rng.uniform(0.3, 0.7, size=(400, 2))
>>> truth = mu + 0.05 * rng.normal(size=(400, 2))
>>> samples = mu[:, None, :] + 0.05 * rng.normal(size=(400, 300, 2))
>>> bool(run_tarp(samples, truth, seed=0).max_deviation < 0.1)
True
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pp import binomial_band


@dataclass
class TARPResult:
    """``alpha`` (m,) credibility levels, ``ecp`` (m,) expected coverage, the 95 % band
    (m,) for a calibrated estimator, ``f`` (n,) per-source credibility of the truth ball,
    and ``max_deviation`` = max |ecp - alpha|."""

    alpha: np.ndarray
    ecp: np.ndarray
    band_low: np.ndarray
    band_high: np.ndarray
    f: np.ndarray
    max_deviation: float
    seed: int

    def to_dict(self) -> dict:
        return {
            "n_sources": int(self.f.shape[0]),
            "seed": self.seed,
            "alpha": self.alpha.tolist(),
            "ecp": self.ecp.tolist(),
            "band95_low": self.band_low.tolist(),
            "band95_high": self.band_high.tolist(),
            "max_deviation": float(self.max_deviation),
        }


def run_tarp(samples_unit: np.ndarray, truth_unit: np.ndarray, seed: int = 0,
             n_alpha: int = 101, references: np.ndarray | None = None) -> TARPResult:
    """TARP expected coverage from unit-box samples ``(n, S, p)`` and truths ``(n, p)``.

    Reference points are drawn uniformly in ``[0, 1]^p`` with ``seed`` unless given
    (``references`` (n, p)).
    """
    s = np.asarray(samples_unit, dtype=np.float64)
    t = np.asarray(truth_unit, dtype=np.float64)
    if s.ndim != 3 or t.shape != (s.shape[0], s.shape[2]):
        raise ValueError(f"samples {s.shape} and truth {t.shape} do not match: "
                         "expected (n, S, p) and (n, p)")
    n, _, p = s.shape
    if n == 0:
        raise ValueError("TARP needs at least one source")
    if references is None:
        references = np.random.default_rng(seed).uniform(size=(n, p))
    r = np.asarray(references, dtype=np.float64)[:, None, :]
    d_samples = np.sqrt(np.sum((s - r) ** 2, axis=2))           # (n, S)
    d_truth = np.sqrt(np.sum((t[:, None, :] - r) ** 2, axis=2))  # (n, 1)
    f = np.mean(d_samples < d_truth, axis=1)
    alpha = np.linspace(0.0, 1.0, n_alpha)
    ecp = np.mean(f[None, :] < alpha[:, None], axis=1)
    lo, hi = binomial_band(n, alpha, 0.95)
    return TARPResult(alpha=alpha, ecp=ecp, band_low=lo, band_high=hi, f=f,
                      max_deviation=float(np.max(np.abs(ecp - alpha))), seed=seed)
