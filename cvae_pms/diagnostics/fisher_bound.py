"""Fisher-matrix (Cramer-Rao) forecast: how precisely can one XP spectrum fix each parameter?

For a Gaussian likelihood with a fixed covariance ``C`` around the model ``mu(theta) = s m(u)``
(``u`` the seven parameters on the unit box, ``s`` the unknown flux scale) the Fisher matrix is
``F = J^T C^-1 J`` with ``J`` the Jacobian of ``mu`` in ``(u, ln s)``; ``(F^-1)_kk`` bounds the
variance of any unbiased estimate of ``u_k`` with every other parameter (and ``s``)
marginalised. The box prior enters as the Gaussian with the same variance, ``1/12`` on the
unit box (a Bayesian information bound; it keeps a parameter the spectrum cannot see, such as
the mass, at its prior width instead of an infinite bound). ``ln s`` gets no prior.

The bound is local: it ignores the non-linear T_eff-veiling-extinction degeneracies and the
box edges, so it is a forecast to compare methods against, not a guarantee (a posterior median
can beat it near a bound; a multimodal posterior is worse than it). The Jacobian is a central
difference of step ``step`` on the unit box (one-sided within ``step`` of an edge).

Example (a linear model: the bound is exact)
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> B = rng.normal(size=(30, 2))
>>> model = lambda u: np.atleast_2d(u) @ B.T + 5.0          # m(u), rows of u -> rows of m
>>> F = fisher_matrix(model, np.array([0.5, 0.5]), scale=1.0, prior=False)
>>> J = np.column_stack([B, B @ [0.5, 0.5] + 5.0])
>>> bool(np.allclose(F, J.T @ J, rtol=1e-6))
True
"""
from __future__ import annotations

from typing import Callable

import numpy as np

#: Variance of a uniform prior on [0, 1].
UNIT_BOX_VARIANCE = 1.0 / 12.0


def jacobian(model: Callable[[np.ndarray], np.ndarray], u0: np.ndarray, step: float = 1e-3
             ) -> tuple[np.ndarray, np.ndarray]:
    """Finite-difference Jacobian ``d m / d u`` (d, p) of ``model`` (rows (w, p) -> (w, d)) at
    ``u0`` (p,) on the unit box, and the value ``m(u0)`` (d,); central where ``u0 +- step``
    stays inside [0, 1], else one-sided. All 2p + 1 points go to ``model`` in one call."""
    u0 = np.asarray(u0, np.float64)
    p = u0.size
    up = np.minimum(u0 + step, 1.0)
    lo = np.maximum(u0 - step, 0.0)
    pts = np.repeat(u0[None], 2 * p + 1, axis=0)
    pts[np.arange(p), np.arange(p)] = up
    pts[p + np.arange(p), np.arange(p)] = lo
    m = np.asarray(model(pts), np.float64)
    return ((m[:p] - m[p:2 * p]) / (up - lo)[:, None]).T, m[2 * p]


def fisher_matrix(model_whitened: Callable[[np.ndarray], np.ndarray], u0: np.ndarray,
                  scale: float, step: float = 1e-3, prior: bool = True) -> np.ndarray:
    """Fisher matrix (p + 1, p + 1) in ``(u_1..u_p, ln s)`` of ``mu = s m(u)``.

    ``model_whitened`` returns ``L^-1 m(u)`` for rows of ``u`` (``L L^T = C`` the data
    covariance), so ``F = J^T J``. ``prior`` adds ``1 / UNIT_BOX_VARIANCE`` to the diagonal
    of the ``u`` block.
    """
    u0 = np.asarray(u0, np.float64)
    jac, m0 = jacobian(model_whitened, u0, step)                          # (d, p), (d,)
    j = scale * np.column_stack([jac, m0])                                # d mu / d ln s = s m
    f = j.T @ j
    if prior:
        f[np.arange(u0.size), np.arange(u0.size)] += 1.0 / UNIT_BOX_VARIANCE
    return f


def marginal_std(fisher: np.ndarray) -> np.ndarray:
    """Cramer-Rao standard deviations ``sqrt(diag F^-1)`` (all others marginalised). A
    singular ``F`` (a direction with no information and no prior) gives ``inf`` for every
    parameter that direction involves."""
    w, v = np.linalg.eigh(fisher)
    null = w <= 1e-12 * max(float(w.max()), 0.0)
    keep = ~null
    d = (v[:, keep] ** 2) @ (1.0 / w[keep])
    d[np.any(np.abs(v[:, null]) > 1e-8, axis=1)] = np.inf
    return np.sqrt(d)


def star_bounds(likelihood, u_true: np.ndarray, step: float = 1e-3) -> np.ndarray:
    """Cramer-Rao standard deviations (p,) on the unit box for one star.

    ``likelihood`` is a :class:`cvae_pms.diagnostics.likelihood.XPLikelihood` (its data
    covariance, forward model and whitening); the Fisher matrix is taken at the true
    parameters ``u_true`` (p,) and the maximum-likelihood flux scale there.
    """
    u_true = np.asarray(u_true, np.float64)
    scale = float(likelihood.best_scale(u_true[None])[0])
    f = fisher_matrix(likelihood.whitened_model, u_true, scale, step)
    return marginal_std(f)[:u_true.size]


def forecast_scatter(std: np.ndarray, seed: int = 0, draws: int = 200) -> np.ndarray:
    """Robust scatter (1.4826 MAD) (p,) that estimates with per-star Gaussian errors of
    standard deviation ``std`` (n, p) would show: Monte Carlo over ``draws`` error draws
    (median over draws), for comparison with the robust scatter of posterior medians."""
    std = np.asarray(std, np.float64)
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((draws,) + std.shape) * std[None]
    mad = np.median(np.abs(e - np.median(e, axis=1, keepdims=True)), axis=1)
    from .metrics import MAD_TO_SIGMA
    return MAD_TO_SIGMA * np.median(mad, axis=0)


def observation_bounds(forward: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                       theta: np.ndarray, bp: np.ndarray, rp: np.ndarray, bp_cov: np.ndarray,
                       rp_cov: np.ndarray, step: float = 1e-3, model_error=None) -> np.ndarray:
    """Cramer-Rao standard deviations (n, 7) in physical units of n observed spectra
    (``bp``/``rp`` (n, 55), covariances (n, 55, 55)) of stars with true parameters ``theta``
    (n, 7), under the exact likelihood (:class:`~cvae_pms.diagnostics.likelihood.XPLikelihood`
    with the built-in ``forward`` model and the model-error term ``model_error``, default the
    shipped one, at each star's true T_eff). ~0.01 s per star."""
    from cvae_pms import params
    from cvae_pms.diagnostics.likelihood import XPLikelihood

    std = np.empty((theta.shape[0], params.N_PARAMS))
    for i in range(theta.shape[0]):
        u = params.to_unit(theta[i])
        kw = dict(to_physical=params.from_unit, teff=float(theta[i, params.INDEX["teff"]]),
                  model_error_term=model_error)
        first = XPLikelihood(forward, bp[i], rp[i], bp_cov[i], rp_cov[i], **kw)
        # the model error at the true model's flux (what the simulator draws it at)
        true_model = first.best_scale(u[None])[0] * first.model(u[None])[0]
        like = XPLikelihood(forward, bp[i], rp[i], bp_cov[i], rp_cov[i],
                            model_error_at=true_model, **kw)
        std[i] = star_bounds(like, u, step)
    return std * (params.HIGH - params.LOW)
