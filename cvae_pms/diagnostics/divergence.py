"""Jensen-Shannon divergence between two sample sets, 1-D per parameter and 2-D per pair.

Samples are compared in the unit box (:func:`cvae_pms.params.to_unit`) on fixed histogram
bins over [0, 1], so divergences of different parameters and runs are comparable. The
result is in bits: 0 for identical distributions, 1 for disjoint ones. Finite sample
sizes give a positive floor (compare with two independent reference chains of the same
size, as ``reference_mcmc`` does). 1-D divergences hide errors in the joint distribution,
hence the 2-D version on every parameter pair.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> a = rng.uniform(0.0, 0.5, size=(4000, 1))
>>> b = rng.uniform(0.5, 1.0, size=(4000, 1))
>>> round(float(js_divergence_1d(a, b)[0]), 3)
1.0
"""
from __future__ import annotations

import numpy as np

#: Default histogram bins on [0, 1] per axis.
BINS_1D = 40
BINS_2D = 16


def _js_bits(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (bits) of two histograms (any shape, normalised here)."""
    p = p.ravel() / p.sum()
    q = q.ravel() / q.sum()
    m = 0.5 * (p + q)

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return max(0.5 * kl(p) + 0.5 * kl(q), 0.0)


def js_divergence_1d(a_unit: np.ndarray, b_unit: np.ndarray, bins: int = BINS_1D) -> np.ndarray:
    """JS divergence (bits) per parameter between samples ``(Sa, p)`` and ``(Sb, p)``."""
    a = np.asarray(a_unit, dtype=np.float64)
    b = np.asarray(b_unit, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"sample sets {a.shape} and {b.shape} must be (S, p) with equal p")
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = np.empty(a.shape[1])
    for k in range(a.shape[1]):
        ha = np.histogram(np.clip(a[:, k], 0.0, 1.0), edges)[0].astype(np.float64)
        hb = np.histogram(np.clip(b[:, k], 0.0, 1.0), edges)[0].astype(np.float64)
        out[k] = _js_bits(ha, hb)
    return out


def js_divergence_2d(a_unit: np.ndarray, b_unit: np.ndarray, bins: int = BINS_2D) -> np.ndarray:
    """JS divergence (bits) of every 2-D marginal: ``(p, p)`` symmetric, NaN on the diagonal."""
    a = np.clip(np.asarray(a_unit, dtype=np.float64), 0.0, 1.0)
    b = np.clip(np.asarray(b_unit, dtype=np.float64), 0.0, 1.0)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"sample sets {a.shape} and {b.shape} must be (S, p) with equal p")
    p = a.shape[1]
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = np.full((p, p), np.nan)
    for i in range(p):
        for j in range(i + 1, p):
            ha = np.histogram2d(a[:, i], a[:, j], [edges, edges])[0]
            hb = np.histogram2d(b[:, i], b[:, j], [edges, edges])[0]
            out[i, j] = out[j, i] = _js_bits(ha, hb)
    return out
