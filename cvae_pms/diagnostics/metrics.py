"""Accuracy and calibration metrics of posterior estimates: small pure numpy functions.

All functions work per parameter along the last axis, so they take arrays shaped
``(n_sources, n_params)`` (estimates, truths) or ``(n_sources, n_samples, n_params)``
(posterior samples) and return one value per parameter.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> truth = rng.uniform(size=(2000, 2))
>>> centre = truth + rng.normal(0, 0.1, size=(2000, 2))      # noisy best estimate
>>> samples = centre[:, None, :] + rng.normal(0, 0.1, size=(2000, 500, 2))
>>> bool(np.all(np.abs(interval_coverage(samples, truth, 0.68) - 0.68) < 0.04))
True
"""
from __future__ import annotations

import numpy as np

#: Factor turning a median absolute deviation into a Gaussian-equivalent standard deviation.
MAD_TO_SIGMA = 1.4826


def bias(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Median of ``estimate - truth`` per parameter (robust bias), in the parameters' units."""
    return np.median(np.asarray(estimate) - np.asarray(truth), axis=0)


def robust_scatter(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """1.4826 x median absolute deviation of ``estimate - truth`` per parameter."""
    r = np.asarray(estimate) - np.asarray(truth)
    return MAD_TO_SIGMA * np.median(np.abs(r - np.median(r, axis=0)), axis=0)


def rms(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Root mean square of ``estimate - truth`` per parameter."""
    r = np.asarray(estimate) - np.asarray(truth)
    return np.sqrt(np.mean(r**2, axis=0))


def outlier_fraction(estimate: np.ndarray, truth: np.ndarray, threshold: np.ndarray | float
                     ) -> np.ndarray:
    """Fraction of sources with ``|estimate - truth| > threshold`` per parameter.

    ``threshold`` is a scalar or one value per parameter, in the parameters' units.
    """
    r = np.abs(np.asarray(estimate) - np.asarray(truth))
    return np.mean(r > np.asarray(threshold), axis=0)


def central_interval(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds ``(n, p)`` of the central ``level`` interval of samples ``(n, S, p)``."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must lie in (0, 1), got {level}")
    q = np.quantile(np.asarray(samples), [0.5 - level / 2, 0.5 + level / 2], axis=1)
    return q[0], q[1]


def interval_coverage(samples: np.ndarray, truth: np.ndarray, level: float = 0.68) -> np.ndarray:
    """Fraction of sources whose central ``level`` interval contains the truth, per parameter.

    ``samples`` is ``(n, S, p)``, ``truth`` is ``(n, p)``. A calibrated posterior gives
    ``level`` within binomial noise, ``sqrt(level (1 - level) / n)``.
    """
    lo, hi = central_interval(samples, level)
    t = np.asarray(truth)
    return np.mean((t >= lo) & (t <= hi), axis=0)


def posterior_median(samples: np.ndarray) -> np.ndarray:
    """Median ``(n, p)`` of posterior samples ``(n, S, p)``."""
    return np.median(np.asarray(samples), axis=1)


def summary(samples: np.ndarray, truth: np.ndarray, levels: tuple[float, ...] = (0.68, 0.95)
            ) -> dict[str, np.ndarray]:
    """Bias, robust scatter and rms of the posterior medians, and coverage at each level."""
    med = posterior_median(samples)
    out = {"bias": bias(med, truth), "robust_scatter": robust_scatter(med, truth),
           "rms": rms(med, truth)}
    for level in levels:
        out[f"coverage_{round(100 * level)}"] = interval_coverage(samples, truth, level)
    return out
