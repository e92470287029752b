"""One-dimensional P-P calibration: where each truth falls inside its own posterior.

For source ``i`` and parameter ``k`` the posterior quantile of the truth is
``q_ik = (#samples < truth + 0.5 #samples == truth) / S``. For a calibrated posterior the
``q_ik`` of many sources are uniform on [0, 1], so their empirical CDF follows the diagonal
(the P-P plot of Gabbard et al. 2022). Deviations are judged with pointwise binomial bands
and a Kolmogorov-Smirnov test against the uniform distribution.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> mu = rng.normal(size=(400, 1))
>>> truth = mu + rng.normal(size=(400, 1))
>>> samples = mu[:, None, :] + rng.normal(size=(400, 300, 1))
>>> r = run_pp(samples, truth)
>>> bool(r.pvalue[0] > 0.01)
True
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


def truth_quantiles(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Posterior quantile ``(n, p)`` of each truth within its samples ``(n, S, p)``.

    Ties (e.g. samples piled at a box bound equal to the truth) count one half.
    """
    s = np.asarray(samples, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)[:, None, :]
    if s.ndim != 3 or t.shape[0] != s.shape[0] or t.shape[2] != s.shape[2]:
        raise ValueError(f"samples {s.shape} and truth {t.shape[0::2]} do not match: "
                         "expected (n, S, p) and (n, p)")
    below = np.sum(s < t, axis=1)
    equal = np.sum(s == t, axis=1)
    return (below + 0.5 * equal) / s.shape[1]


def binomial_band(n: int, levels: np.ndarray, confidence: float = 0.95
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise central ``confidence`` band of an empirical CDF of ``n`` uniform values.

    At level ``p`` the count below ``p`` is Binomial(n, p); returns the fractions
    ``(low, high)`` at each level.
    """
    levels = np.asarray(levels, dtype=np.float64)
    alpha = 1.0 - confidence
    lo = stats.binom.ppf(alpha / 2, n, levels) / n
    hi = stats.binom.ppf(1 - alpha / 2, n, levels) / n
    return np.nan_to_num(lo, nan=0.0), np.nan_to_num(hi, nan=1.0)


@dataclass
class PPResult:
    """P-P numbers for ``p`` parameters over ``n`` sources.

    ``levels`` (m,) credibility levels; ``ecdf`` (m, p) fraction of sources whose truth
    quantile is <= the level; ``band_low``/``band_high`` (m,) the 95 % binomial band;
    ``pvalue`` (p,) KS p-value of the quantiles against uniform; ``max_deviation`` (p,)
    max |ecdf - level| (the calibration score: 0 is perfect); ``quantiles`` (n, p).
    """

    levels: np.ndarray
    ecdf: np.ndarray
    band_low: np.ndarray
    band_high: np.ndarray
    pvalue: np.ndarray
    max_deviation: np.ndarray
    quantiles: np.ndarray

    @property
    def n_sources(self) -> int:
        return int(self.quantiles.shape[0])

    def to_dict(self, names: tuple[str, ...]) -> dict:
        """JSON-ready numbers, curves keyed by parameter name."""
        return {
            "n_sources": self.n_sources,
            "levels": self.levels.tolist(),
            "band95_low": self.band_low.tolist(),
            "band95_high": self.band_high.tolist(),
            "ecdf": {n: self.ecdf[:, k].tolist() for k, n in enumerate(names)},
            "pvalue": {n: float(self.pvalue[k]) for k, n in enumerate(names)},
            "max_deviation": {n: float(self.max_deviation[k]) for k, n in enumerate(names)},
        }


def run_pp(samples: np.ndarray, truth: np.ndarray, n_levels: int = 101,
           confidence: float = 0.95) -> PPResult:
    """P-P curves, binomial band, KS p-values and max deviations from samples ``(n, S, p)``."""
    q = truth_quantiles(samples, truth)
    return pp_from_quantiles(q, n_levels=n_levels, confidence=confidence)


def pp_from_quantiles(q: np.ndarray, n_levels: int = 101, confidence: float = 0.95) -> PPResult:
    """As :func:`run_pp`, from precomputed truth quantiles ``(n, p)``."""
    q = np.asarray(q, dtype=np.float64)
    n = q.shape[0]
    if n == 0:
        raise ValueError("P-P needs at least one source")
    levels = np.linspace(0.0, 1.0, n_levels)
    ecdf = np.mean(q[None, :, :] <= levels[:, None, None], axis=1)
    lo, hi = binomial_band(n, levels, confidence)
    tests = [stats.kstest(q[:, k], "uniform") for k in range(q.shape[1])]
    pvalue = np.array([t.pvalue for t in tests])
    # The KS statistic: the exact sup |ECDF - level|, not only at the plotted levels.
    ks = np.array([t.statistic for t in tests])
    return PPResult(levels=levels, ecdf=ecdf, band_low=lo, band_high=hi, pvalue=pvalue,
                    max_deviation=ks, quantiles=q)
