"""Simulation-based calibration ranks (Talts, Betancourt, Simpson, Vehtari & Gelman 2018).

For each test source the rank of the truth among ``L`` posterior samples is uniform on
``0..L`` when the posterior is calibrated. Ranks are histogrammed in ``B`` bins; for ``N``
sources each bin count is Binomial(N, 1/B), which gives the band drawn behind the
histogram (99 % by default, as in Talts et al.). A chi-square test of the counts against
uniform gives a p-value. Computing (:func:`sbc_ranks`), judging (:func:`check_sbc`) and
drawing (``figures.sbc_figure``) are separate.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(2)
>>> mu = rng.normal(size=(500, 1))
>>> truth = mu + rng.normal(size=(500, 1))
>>> samples = mu[:, None, :] + rng.normal(size=(500, 199, 1))
>>> r = check_sbc(sbc_ranks(samples, truth), n_samples=199, n_bins=20)
>>> bool(r.pvalue[0] > 0.01)
True
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


def sbc_ranks(samples: np.ndarray, truth: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rank ``(n, p)`` in ``0..S`` of each truth among its ``S`` samples ``(n, S, p)``.

    Ties (samples equal to the truth, e.g. piled at a bound) are broken at random with
    ``seed`` so that a calibrated posterior still gives uniform ranks.
    """
    s = np.asarray(samples, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)[:, None, :]
    if s.ndim != 3 or t.shape[0] != s.shape[0] or t.shape[2] != s.shape[2]:
        raise ValueError(f"samples {s.shape} and truth {t.shape[0::2]} do not match: "
                         "expected (n, S, p) and (n, p)")
    below = np.sum(s < t, axis=1)
    equal = np.sum(s == t, axis=1)
    rng = np.random.default_rng(seed)
    return below + rng.integers(0, equal + 1)


@dataclass
class SBCResult:
    """Histogrammed ranks: ``counts`` (B, p); per bin (B,) the count ``expected`` for
    uniform ranks and its binomial band; the chi-square p-value per parameter (p,); the bin
    edges in rank units (B+1,)."""

    counts: np.ndarray
    expected: np.ndarray
    band_low: np.ndarray
    band_high: np.ndarray
    pvalue: np.ndarray
    edges: np.ndarray
    band_confidence: float

    def to_dict(self, names: tuple[str, ...]) -> dict:
        return {
            "n_bins": int(self.counts.shape[0]),
            "edges": self.edges.tolist(),
            "expected": self.expected.tolist(),
            "band_confidence": self.band_confidence,
            "band_low": self.band_low.tolist(),
            "band_high": self.band_high.tolist(),
            "counts": {n: self.counts[:, k].astype(int).tolist() for k, n in enumerate(names)},
            "pvalue": {n: float(self.pvalue[k]) for k, n in enumerate(names)},
        }


def check_sbc(ranks: np.ndarray, n_samples: int, n_bins: int = 20,
              band_confidence: float = 0.99) -> SBCResult:
    """Histogram ranks ``(n, p)`` (each in ``0..n_samples``) and test them against uniform."""
    ranks = np.asarray(ranks)
    n = ranks.shape[0]
    if n == 0:
        raise ValueError("SBC needs at least one source")
    n_bins = int(min(n_bins, n_samples + 1))
    # Equal-width bins over the L+1 possible ranks; each integer rank goes to the bin holding
    # its centre, so a bin's probability under uniform ranks is its share of integer ranks.
    edges = np.linspace(0.0, n_samples + 1.0, n_bins + 1)

    def bin_of(r: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(edges, r + 0.5, side="right") - 1, 0, n_bins - 1)

    prob = np.bincount(bin_of(np.arange(n_samples + 1)), minlength=n_bins) / (n_samples + 1.0)
    idx = bin_of(ranks)
    counts = np.stack([np.bincount(idx[:, k], minlength=n_bins) for k in range(ranks.shape[1])],
                      axis=1)
    expected = n * prob
    chi2 = np.sum((counts - expected[:, None]) ** 2 / expected[:, None], axis=0)
    pvalue = stats.chi2.sf(chi2, df=n_bins - 1)
    a = 1.0 - band_confidence
    return SBCResult(counts=counts, expected=expected,
                     band_low=stats.binom.ppf(a / 2, n, prob),
                     band_high=stats.binom.ppf(1 - a / 2, n, prob),
                     pvalue=pvalue, edges=edges, band_confidence=band_confidence)
