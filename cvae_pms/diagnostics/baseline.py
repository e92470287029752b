"""A classical baseline: per-parameter gradient-boosted trees on the CVAE's own features.

For each of the seven parameters three scikit-learn ``HistGradientBoostingRegressor`` models
are trained on the unit-scaled target: squared error (the point estimate) and quantile loss
at 16 % and 84 % (a 68 % interval). Same features, same noisy training rows as the CVAE, so
the comparison isolates the estimator. The interval is not a posterior: only 68 % coverage
is defined for it.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.uniform(size=(3000, 3))
>>> theta = np.stack([x[:, 0], x[:, 1] + 0.05 * rng.normal(size=3000)], axis=1)
>>> b = fit_baseline(x, np.clip(theta, 0, 1), seed=0, max_iter=60)
>>> pred = b.predict(x[:200])
>>> bool(np.median(np.abs(pred.estimate[:, 0] - x[:200, 0])) < 0.05)
True
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits

#: Quantiles of the baseline's interval.
QUANTILES = (0.16, 0.84)


@dataclass
class BaselinePrediction:
    """Point estimate and 16/84 % quantiles ``(n, p)`` in the units of the training targets."""

    estimate: np.ndarray
    p16: np.ndarray
    p84: np.ndarray


@dataclass
class Baseline:
    """Fitted models: ``models[k] = (mean, q16, q84)`` per parameter ``k``."""

    models: list[tuple[HistGradientBoostingRegressor, ...]]
    fit_s: float
    n_threads: int | None = 1

    def predict(self, features: np.ndarray) -> BaselinePrediction:
        """Predict for features ``(n, d)``; the quantiles are sorted so p16 <= p84."""
        x = np.asarray(features, dtype=np.float64)
        with threadpool_limits(limits=self.n_threads, user_api="openmp"):
            est = np.stack([m[0].predict(x) for m in self.models], axis=1)
            q = np.stack([np.stack([m[1].predict(x), m[2].predict(x)]) for m in self.models],
                         axis=2)
        q.sort(axis=0)
        return BaselinePrediction(estimate=est, p16=q[0], p84=q[1])


def fit_baseline(features: np.ndarray, theta: np.ndarray, seed: int = 0, max_iter: int = 300,
                 learning_rate: float = 0.05, max_leaf_nodes: int = 15,
                 n_threads: int | None = 1) -> Baseline:
    """Fit the three regressors per parameter on features ``(n, d)`` and targets ``(n, p)``.

    Early stopping always on (a 10 % validation split, 10 rounds without improvement), so
    ``max_iter`` is only a cap.
    ``n_threads``: OpenMP threads for the trees; 1 by default because scikit-learn's
    busy-waiting threads run ~10x slower when other processes share the cores (measured on
    the 2-core machine); ``None`` uses all cores on a dedicated machine.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(theta, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"features {x.shape} and targets {y.shape} must be (n, d) and (n, p)")
    t0 = time.perf_counter()

    def model(**loss) -> HistGradientBoostingRegressor:
        return HistGradientBoostingRegressor(max_iter=max_iter, learning_rate=learning_rate,
                                             max_leaf_nodes=max_leaf_nodes, random_state=seed,
                                             early_stopping=True, validation_fraction=0.1,
                                             n_iter_no_change=10, **loss)

    models = []
    with threadpool_limits(limits=n_threads, user_api="openmp"):
        for k in range(y.shape[1]):
            trio = (model(loss="squared_error"),
                    model(loss="quantile", quantile=QUANTILES[0]),
                    model(loss="quantile", quantile=QUANTILES[1]))
            for m in trio:
                m.fit(x, y[:, k])
            models.append(trio)
    return Baseline(models=models, fit_s=time.perf_counter() - t0, n_threads=n_threads)
