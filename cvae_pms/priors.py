"""User priors applied to posterior samples by importance reweighting.

The CVAE is trained with a uniform prior on the 7-D box of :mod:`cvae_pms.params`, so its
samples theta ~ p(theta | y) under that prior. For another prior p_user the importance weight
of a sample is ``w = p_user(theta) / p_train(theta)``, which is proportional to
``p_user(theta)`` inside the box (p_train is constant there). Per source this module
normalises the weights (log-sum-exp), reports the effective sample size
``ESS = (sum w)^2 / sum w^2`` (between 1 and S), flags sources whose ESS falls below a
threshold, and resamples S equal-weight samples (systematic or multinomial).

A prior file (TOML) lists factors, multiplied together; parameters no factor names stay
uniform on their box, and every factor is truncated to the box automatically (a ``normal``
factor is thus a truncated normal)::

    name = "Chabrier IMF with Mdot ~ M^2"

    [[factor]]
    type = "chabrier_imf"          # Chabrier (2003) IMF on mass (individual stars)
    param = "mass"

    [[factor]]
    type = "relation"              # log_mdot ~ Normal(intercept + slope*log10(mass), scatter)
    x = "mass"
    y = "log_mdot"
    x_log = true
    slope = 2.0
    intercept = -8.0
    scatter = 0.8

    [settings]
    ess_min = 50                   # or ess_min_fraction = 0.05 (of S); not both
    seed = 0
    resample = "systematic"        # or "multinomial"

Factor types (keys; ``param``/``x``/``y`` are names from :data:`cvae_pms.params.NAMES`, values
in that parameter's physical unit):

- ``normal``: ``param``, ``mean``, ``sigma`` (> 0).
- ``lognormal``: ``param``, ``mu``, ``sigma`` (> 0), the mean and standard deviation of
  ``ln x``; density ``exp(-(ln x - mu)^2 / (2 sigma^2)) / (x sigma sqrt(2 pi))``, zero for x <= 0.
- ``uniform``: ``param``, ``low``, ``high``: a narrower box (must overlap the parameter's box).
- ``chabrier_imf``: ``param = "mass"`` (the default), optional ``form`` = ``"individual"``
  (default) or ``"system"``, optional overrides ``m_c`` [Msun], ``sigma`` [dex], ``x``.
  See :func:`chabrier_imf_pdf`.
- ``relation``: ``x``, ``y``, ``slope``, ``intercept``, ``scatter`` (> 0), optional ``x_log``
  (default false): ``y ~ Normal(intercept + slope * f(x), scatter)`` with ``f = log10`` when
  ``x_log`` else the identity.

:meth:`Prior.log_density` is the log of the product of the factor densities (each normalised
on its own support; the truncation to the box is not renormalised, which does not change the
weights), ``-inf`` outside the box.

Example
-------
>>> import numpy as np
>>> from cvae_pms import params
>>> from cvae_pms.priors import prior_from_dict, reweight
>>> prior = prior_from_dict({"factor": [{"type": "normal", "param": "teff",
...                                      "mean": 4000.0, "sigma": 200.0}]})
>>> rng = np.random.default_rng(1)
>>> theta = params.from_unit(rng.random((2, 1000, 7)))      # 2 sources, 1000 samples each
>>> result = reweight(theta, prior, seed=0)
>>> result.resampled.shape, bool(abs(result.resampled[..., 0].mean() - 4000) < 50)
((2, 1000, 7), True)

The factor types are read in :mod:`cvae_pms.prior.factors` (densities in
:mod:`cvae_pms.prior.densities`), the prior and its file in :mod:`cvae_pms.prior.spec`; this
module reweights and resamples, and re-exports their public names.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvae_pms import params
from cvae_pms.prior.densities import CHABRIER_FORMS, CHABRIER_X, chabrier_imf_pdf
from cvae_pms.prior.factors import FACTOR_TYPES, Factor, PriorError
from cvae_pms.prior.spec import (DEFAULT_ESS_MIN, PRIOR_DIR, RESAMPLERS, Prior, PriorSettings,
                                 load_prior, prior_from_dict)

__all__ = ["CHABRIER_FORMS", "CHABRIER_X", "DEFAULT_ESS_MIN", "FACTOR_TYPES", "PRIOR_DIR",
           "RESAMPLERS", "Factor", "Prior", "PriorError", "PriorSettings", "ReweightResult",
           "chabrier_imf_pdf", "load_prior", "prior_from_dict", "reweight"]


# --------------------------------------------------------------------------------------------
# reweighting


@dataclass
class ReweightResult:
    """Importance reweighting of n sources' samples under a user prior.

    Attributes:
        weights: (n, S) float64, normalised per source (sum 1); 0 for failed sources.
        ess: (n,) effective sample size ``(sum w)^2 / sum w^2``; 0 for failed sources and
            for sources where the prior is zero at every sample.
        flag_low_ess: (n,) bool, ``ess < ess_threshold`` (never set for failed sources).
        resampled: (n, S, 7) float32 equal-weight samples; NaN for failed and zero-support
            sources.
        indices: (n, S) int64, which original sample each resampled one is (-1 where NaN).
        failed: (n,) bool, the input samples were all NaN (already failed upstream).
        zero_support: (n,) bool, not failed but the prior is zero at every sample.
        ess_threshold: the threshold used.
    """

    weights: np.ndarray
    ess: np.ndarray
    flag_low_ess: np.ndarray
    resampled: np.ndarray
    indices: np.ndarray
    failed: np.ndarray
    zero_support: np.ndarray
    ess_threshold: float


def reweight(samples: np.ndarray, prior: Prior, seed: int | None = None,
             source_id: np.ndarray | None = None) -> ReweightResult:
    """Reweight posterior samples drawn under the uniform training prior to ``prior``.

    Args:
        samples: (n, S, 7) posterior samples, physical units; a failed source is all NaN.
        prior: the user prior.
        seed: resampling seed (int >= 0); ``None`` uses ``prior.settings.seed``.
        source_id: (n,) int64 keys of the sources. The resampling random numbers of a
            source depend only on (seed, its key, S), so chunking does not change the result.
            ``None`` keys the sources by their row index.

    Returns:
        :class:`ReweightResult`. Vectorised over sources and samples; memory O(n S).
    """
    x = np.asarray(samples)
    if x.ndim != 3 or x.shape[2] != params.N_PARAMS:
        raise ValueError(f"samples must have shape (n, S, {params.N_PARAMS}), got {x.shape}")
    n, s = x.shape[:2]
    seed = prior.settings.seed if seed is None else int(seed)
    keys = np.arange(n, dtype=np.int64) if source_id is None else np.asarray(source_id, np.int64)
    if keys.shape != (n,):
        raise ValueError(f"source_id must have shape ({n},), got {keys.shape}")

    failed = ~np.isfinite(x).any(axis=2).any(axis=1) if s else np.ones(n, bool)
    log_w = prior.log_density(x)                                       # (n, S)
    log_max = log_w.max(axis=1, initial=-np.inf)
    zero_support = ~failed & ~np.isfinite(log_max)
    ok = np.isfinite(log_max)
    w = np.zeros((n, s), dtype=np.float64)
    w[ok] = np.exp(log_w[ok] - log_max[ok, None])
    w[ok] /= w[ok].sum(axis=1, keepdims=True)
    ess = np.zeros(n, dtype=np.float64)
    ess[ok] = 1.0 / np.square(w[ok]).sum(axis=1)

    threshold = prior.settings.ess_threshold(s)
    flag = ~failed & (ess < threshold)

    indices = np.full((n, s), -1, dtype=np.int64)
    resampled = np.full(x.shape, np.nan, dtype=np.float32)
    if ok.any():
        u = _resampling_uniforms(seed, keys[ok], s, prior.settings.resample)
        cdf = np.cumsum(w[ok], axis=1)
        cdf /= cdf[:, -1:]          # last entry exactly 1: trailing zero weights never drawn
        idx = _search_sorted_rows(cdf, u)
        indices[ok] = idx
        resampled[ok] = np.take_along_axis(x[ok], idx[:, :, None], axis=1)
    return ReweightResult(weights=w, ess=ess, flag_low_ess=flag, resampled=resampled,
                          indices=indices, failed=failed, zero_support=zero_support,
                          ess_threshold=threshold)


_SALT = 0x5052494F52535253  # "PRIORSRS": keeps these streams apart from infer's


def _resampling_uniforms(seed: int, keys: np.ndarray, s: int, scheme: str) -> np.ndarray:
    """Sorted points (m, S) in [0, 1) for systematic or multinomial resampling of m sources.

    Each source's numbers are the SplitMix64 stream started at ``mix(seed, key)``.
    """
    from cvae_pms.seeds import GAMMA, keyed_state, mix64
    with np.errstate(over="ignore"):
        state = mix64(keyed_state(seed, keys, _SALT))
        count = 1 if scheme == "systematic" else s
        steps = np.arange(1, count + 1, dtype=np.uint64) * GAMMA
        bits = mix64(state[:, None] + steps[None, :])
    u = (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    if scheme == "systematic":
        return (u + np.arange(s)[None, :]) / s
    return np.sort(u, axis=1)


def _search_sorted_rows(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row-wise ``searchsorted(cdf[i], u[i], side='right')`` for sorted rows, clipped to S-1.

    Merges each row's cdf and points with one stable argsort along axis 1, so no loop over
    rows and no loss of precision.
    """
    m, s = cdf.shape
    merged = np.concatenate([cdf, u], axis=1)
    order = np.argsort(merged, axis=1, kind="stable")     # ties: cdf entries come first
    is_cdf = order < s
    below = np.cumsum(is_cdf, axis=1)                      # cdf entries <= each position
    idx = below[~is_cdf].reshape(m, u.shape[1])
    return np.minimum(idx, s - 1)
