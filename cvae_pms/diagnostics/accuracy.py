"""Test-set accuracy tables: posterior medians vs truth, interval coverage, by magnitude.

Built on :mod:`cvae_pms.diagnostics.metrics`. Every metric is in the parameter's own unit
(K, dex, mag, ...), except fractions. ``outlier_fraction`` counts sources more than 3 robust
sigma from the truth (sigma = the robust scatter of the same parameter), so it measures the
tails beyond a Gaussian core.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> truth = rng.uniform(size=(500, 2))
>>> centre = truth + 0.1 * rng.normal(size=(500, 2))
>>> samples = centre[:, None, :] + 0.1 * rng.normal(size=(500, 400, 2))
>>> t = accuracy(samples, truth)
>>> bool(np.all(np.abs(t["scatter"] - 0.1) < 0.02))
True
"""
from __future__ import annotations

import numpy as np

from cvae_pms import params

from . import metrics

#: Metrics reported per parameter, in this order (CSV columns, JSON keys).
METRICS = ("bias", "scatter", "rms", "outlier_fraction", "coverage68", "coverage95", "width68")
#: Outliers are further than this many robust sigmas from the truth.
OUTLIER_SIGMA = 3.0


def point_accuracy(estimate: np.ndarray, truth: np.ndarray, p16: np.ndarray | None = None,
                   p84: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Metrics (p,) of point estimates ``(n, p)``; coverage68/width68 from optional 16/84 %
    bounds ``(n, p)``, coverage95 NaN (a point estimator has no 95 % interval)."""
    est = np.asarray(estimate, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    scatter = metrics.robust_scatter(est, t)
    nan = np.full(est.shape[1], np.nan)
    out = {"bias": metrics.bias(est, t), "scatter": scatter, "rms": metrics.rms(est, t),
           "outlier_fraction": metrics.outlier_fraction(est, t, OUTLIER_SIGMA * scatter),
           "coverage68": nan, "coverage95": nan.copy(), "width68": nan.copy()}
    if p16 is not None and p84 is not None:
        out["coverage68"] = np.mean((t >= p16) & (t <= p84), axis=0)
        out["width68"] = np.median(np.asarray(p84) - np.asarray(p16), axis=0)
    return out


def accuracy(samples: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics (p,) of posterior samples ``(n, S, p)`` against truths ``(n, p)``: accuracy of
    the posterior median, 68 %/95 % central-interval coverage and the median 68 % width."""
    s = np.asarray(samples)
    t = np.asarray(truth, dtype=np.float64)
    lo, hi = metrics.central_interval(s, 0.68)
    out = point_accuracy(metrics.posterior_median(s), t, lo, hi)
    out["coverage95"] = metrics.interval_coverage(s, t, 0.95)
    return out


def by_parameter(table: dict[str, np.ndarray], names: tuple[str, ...] = params.NAMES
                 ) -> dict[str, dict[str, float]]:
    """``{name: {metric: value}}`` from a metric table ``{metric: (p,)}`` (JSON-ready)."""
    return {n: {m: float(v[k]) for m, v in table.items()} for k, n in enumerate(names)}


def magnitude_bins(samples: np.ndarray, truth: np.ndarray, g_mag: np.ndarray,
                   edges: np.ndarray, min_sources: int = 5) -> list[dict]:
    """Accuracy per G-magnitude bin ``[edges[i], edges[i+1])``; bins with fewer than
    ``min_sources`` sources are reported with their count only."""
    g = np.asarray(g_mag, dtype=np.float64)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (g >= lo) & (g < hi) if hi < edges[-1] else (g >= lo) & (g <= hi)
        row: dict = {"g_low": float(lo), "g_high": float(hi), "n_sources": int(sel.sum())}
        if sel.sum() >= min_sources:
            row["per_parameter"] = by_parameter(accuracy(samples[sel], truth[sel]))
        out.append(row)
    return out
