"""The exact XP likelihood of one source, for the reference samplers and the Fisher bound.

:class:`XPLikelihood` is Gaussian in the 110 BP+RP coefficients around ``s m(theta)``, where
``m`` is the built-in forward model (SED -> coefficients at the grid's reference distance,
:func:`builtin_forward`) and ``s > 0`` an unknown flux scale (distance and the absolute flux
level, which the CVAE does not see either). The covariance is the source's own (BP and RP
independent, as in the archive) plus, by default, the forward-model error that training and
``simulate`` add (:func:`cvae_pms.simulator.model_error_coefficient_covariance`): ``P S P^T``
with ``P`` (110, 343) the ridge map flux -> coefficients and ``S`` the fractional model-error
covariance times the outer product of a calibrated flux, ``model_error_at``:

- ``"best_fit"``: the flux of the maximum-likelihood model ``s m(theta_hat)`` (found with a
  provisional likelihood at the observed flux, :func:`maximise`). The simulator draws the
  model error at the star's noise-free model flux, so this is the exact covariance up to the
  difference between the best-fit and the true model (a few per cent of ``S``); use it for a
  reference posterior. On 150 draws of each of 5 stars at G = 12, 15, 17 the chi^2 at the
  truth under the covariance at the true model flux follows chi^2_110 (10/50/90 %: 88/109/129).
- ``"observed"`` (default, cheap): the observed flux. Biased: the observed flux contains the
  model-error draw itself, so ``S`` is large exactly where the draw is; chi^2 at the truth
  median 110-201 and 90 % 130-416 on the same stars (worst at G = 12, cool and reddened).
- an array (110,): those coefficients' flux (e.g. the true model for a Fisher bound).

The model error depends on T_eff (:class:`cvae_pms.xp.model_error.ModelError`: hat-function
weights over T_eff nodes). Three choices:

- ``teff_dependent=True``: the covariance at each evaluated point's own T_eff, the exact
  likelihood of the simulator (use this for a reference posterior). Between two nodes the
  covariance is linear in the weight ``t``, ``C(t) = A + t B``; with ``A = L L^T`` and
  ``L^{-1} B L^{-T} = V diag(lam) V^T`` (done once per node interval),
  ``log det C = log det A + sum log(1 + t lam)`` and ``C^{-1} = W^T diag(1/(1 + t lam)) W``
  with ``W = V^T L^{-1}``: exact, and one 110 x 110 product per point.
- ``teff`` [K] a number: one fixed covariance at that T_eff (the Fisher bound at the truth).
- neither: one fixed covariance at the node average (the T_eff-independent term).

``s`` is marginalised analytically. With inverse covariance ``C^{-1}``, ``a = m C^{-1} m``,
``b = m C^{-1} y``, ``c = y C^{-1} y``, a uniform prior on ``s > 0`` (``scale_prior="uniform"``)
gives ``log L = -log det C / 2 - c / 2 + b^2 / (2a) - log(a) / 2 + log Phi(b / sqrt(a))``
(+ const; with a fixed covariance the first two terms are constant and dropped). That prior
is not what the CVAE or the simulator assume: both see a spectrum whose flux level carries no
information (the simulator sets ``s`` so that the star has the drawn G; the features divide by
the mean flux), while a uniform prior on ``s`` weights every model by ``1 / |m|`` and so
favours intrinsically faint models (small radius: high log g, low M, low Mdot). On 100 stars
at G = 15 it put the truth below the reference's 16th percentile of log g for 43 % of stars.
The default, ``scale_prior="log-uniform"`` (``p(s) ~ 1/s``, invariant under ``m -> k m``),
is the uniform result minus ``log(b / a)`` (the Laplace approximation of the 1/s integral,
exact to O(1/SNR^2) in the scale's own signal-to-noise ``b / sqrt(a)``; the exact integral
diverges at ``s -> 0``, where the likelihood is ``exp(-c/2)``, negligible for any detected
source).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import linalg, special

from cvae_pms import params as P
from cvae_pms.errors import CvaePmsError

Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class ReferenceModelError(CvaePmsError):
    """The built-in forward model cannot reproduce a grid (so no exact likelihood for it)."""


SCALE_PRIORS = ("log-uniform", "uniform")


def _scale_marginal(a: np.ndarray, b: np.ndarray, prior: str = "log-uniform") -> np.ndarray:
    """Flux scale marginalised (w,): ``b^2 / (2a) - log(a) / 2 + log Phi(b / sqrt(a))`` for a
    uniform prior on ``s > 0``, minus ``log(b / a)`` for ``p(s) ~ 1/s``; -inf where ``a <= 0``
    (and, for the log-uniform prior, where ``b <= 0``: no positive scale fits)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 0.5 * b * b / a - 0.5 * np.log(a) + special.log_ndtr(b / np.sqrt(a))
        if prior == "log-uniform":
            out = np.where(b > 0, out - np.log(np.where(b > 0, b, 1.0) / a), -np.inf)
    return np.where(a > 0, out, -np.inf)


class XPLikelihood:
    """Exact Gaussian likelihood of one source's 110 XP coefficients, flux scale marginalised.

    ``forward(theta (w, 7) physical) -> (bp (w, 55), rp (w, 55))`` is the noiseless model at
    any fixed distance; ``bp``/``rp`` (55,) the observed coefficients, ``bp_cov``/``rp_cov``
    (55, 55) their covariance. ``to_physical`` maps unit-box rows to physical parameters.
    Call with unit-box points ``(w, 7)``; returns ``log L`` (w,) up to a constant. The
    model-error options (``model_error``, ``teff``, ``teff_dependent``, ``model_error_at``;
    ``seed`` for the ``"best_fit"`` search, whose point is kept as ``best_fit_unit``) are
    described in the module docstring, as is ``scale_prior`` (``"log-uniform"``, default, or
    ``"uniform"``); ``model_error_term`` is the
    :class:`~cvae_pms.xp.model_error.ModelError` (default: the shipped one).
    """

    def __init__(self, forward: Forward, bp: np.ndarray, rp: np.ndarray, bp_cov: np.ndarray,
                 rp_cov: np.ndarray, to_physical: Callable[[np.ndarray], np.ndarray],
                 model_error: bool = True, noise_model=None, teff: float | None = None,
                 model_error_term=None, teff_dependent: bool = False,
                 model_error_at="observed", seed: int = 0,
                 scale_prior: str = "log-uniform") -> None:
        from cvae_pms.simulator import model_error_coefficient_covariance
        from cvae_pms.xp.model_error import ModelError

        if scale_prior not in SCALE_PRIORS:
            raise ValueError(f"scale_prior = {scale_prior!r}: one of {SCALE_PRIORS}")
        self.scale_prior = scale_prior
        if teff_dependent and (teff is not None or not model_error):
            raise ValueError("teff_dependent needs model_error=True and no fixed teff")
        self.forward = forward
        self.to_physical = to_physical
        self.teff_dependent = bool(teff_dependent)
        obs = np.concatenate([np.asarray(bp, np.float64).ravel(),
                              np.asarray(rp, np.float64).ravel()])
        data_cov = linalg.block_diag(np.asarray(bp_cov, np.float64),
                                     np.asarray(rp_cov, np.float64))
        self.best_fit_unit = None
        if not model_error or (isinstance(model_error_at, str) and model_error_at == "observed"):
            ref = obs
        elif isinstance(model_error_at, str) and model_error_at == "best_fit":
            provisional = XPLikelihood(forward, bp, rp, bp_cov, rp_cov, to_physical, True,
                                       noise_model, teff, model_error_term,
                                       scale_prior=scale_prior)
            self.best_fit_unit = maximise(provisional, P.N_PARAMS, seed)
            ref = (provisional.best_scale(self.best_fit_unit[None])[0]
                   * provisional.model(self.best_fit_unit[None])[0])
        elif isinstance(model_error_at, str):
            raise ValueError(f"model_error_at = {model_error_at!r}: 'observed', 'best_fit' or "
                             "coefficients (110,)")
        else:
            ref = np.asarray(model_error_at, np.float64).ravel()
            if ref.shape != (110,):
                raise ValueError(f"model_error_at: expected 110 coefficients, got {ref.shape}")
        self.model_error_reference = ref
        self.covariance = data_cov
        if model_error and not teff_dependent:
            self.covariance = data_cov + model_error_coefficient_covariance(
                ref[:55], ref[55:], noise_model, teff, model_error_term)
        self._chol = _cholesky(self.covariance)
        self._y = self._whiten(obs[None])[0]
        if self.teff_dependent:
            term = model_error_term or ModelError.default()
            self._nodes = np.asarray(term.teff_nodes, np.float64)
            node_cov = [data_cov + model_error_coefficient_covariance(
                ref[:55], ref[55:], noise_model, float(t), term) for t in self._nodes]
            self._intervals = [_interval(node_cov[j], node_cov[min(j + 1, len(node_cov) - 1)],
                                         obs) for j in range(max(1, len(node_cov) - 1))]

    def _whiten(self, x: np.ndarray) -> np.ndarray:
        """``L^{-1} x`` for rows ``x`` (w, 110), ``L L^T = C`` (the fixed covariance)."""
        return linalg.solve_triangular(self._chol, x.T, lower=True).T

    def model(self, u: np.ndarray) -> np.ndarray:
        """Model coefficients ``m(theta)`` (w, 110), BP then RP, at unit-box rows ``u``."""
        bp, rp = self.forward(self.to_physical(np.atleast_2d(u)))
        return np.concatenate([bp, rp], axis=1)

    def whitened_model(self, u: np.ndarray) -> np.ndarray:
        """Whitened model coefficients ``L^{-1} m(theta)`` (w, 110) (fixed covariance)."""
        return self._whiten(self.model(u))

    def __call__(self, u: np.ndarray) -> np.ndarray:
        u = np.atleast_2d(u)
        if not self.teff_dependent:
            m = self.whitened_model(u)
            return _scale_marginal(np.sum(m * m, axis=1), m @ self._y, self.scale_prior)
        m = self.model(u)
        teff = self.to_physical(u)[:, P.INDEX["teff"]]
        nodes = self._nodes
        if nodes.size == 1:
            j, t = np.zeros(u.shape[0], int), np.zeros(u.shape[0])
        else:
            tc = np.clip(teff, nodes[0], nodes[-1])
            j = np.clip(np.searchsorted(nodes, tc, side="right") - 1, 0, nodes.size - 2)
            t = (tc - nodes[j]) / (nodes[j + 1] - nodes[j])
        out = np.empty(u.shape[0])
        for k in np.unique(j):
            sel = j == k
            w_mat, y_w, lam, logdet_a = self._intervals[k]
            mw = m[sel] @ w_mat.T                                   # (n, 110)
            g = 1.0 / (1.0 + t[sel, None] * lam[None, :])           # (n, 110)
            a = np.sum(g * mw * mw, axis=1)
            b = np.sum(g * mw * y_w[None, :], axis=1)
            c = np.sum(g * y_w[None, :] ** 2, axis=1)
            logdet = logdet_a - np.sum(np.log(g), axis=1)
            out[sel] = -0.5 * logdet - 0.5 * c + _scale_marginal(a, b, self.scale_prior)
        return out

    def best_scale(self, u: np.ndarray) -> np.ndarray:
        """Maximum-likelihood flux scale ``s`` (w,) of the model at unit-box points ``u``
        (fixed covariance)."""
        m = self.whitened_model(u)
        return (m @ self._y) / np.sum(m * m, axis=1)


def maximise(log_like: Callable[[np.ndarray], np.ndarray], ndim: int, seed: int = 0,
             n_scan: int = 2048, maxiter: int = 150) -> np.ndarray:
    """The unit-box point (ndim,) of highest ``log_like`` (vectorised over rows (w, ndim)):
    ``n_scan`` uniform draws, the best ``15 ndim`` of them seeding
    ``scipy.optimize.differential_evolution`` (vectorised, ``maxiter`` generations, then a
    bounded L-BFGS-B polish). ~2 s for the XP likelihood."""
    from scipy.optimize import differential_evolution, minimize

    rng = np.random.default_rng([seed, 77])
    u = rng.uniform(size=(n_scan, ndim))

    def neg(points: np.ndarray) -> np.ndarray:
        v = -np.asarray(log_like(np.clip(points, 0.0, 1.0)), np.float64)
        return np.where(np.isfinite(v), v, 1e300)

    lp = neg(u)
    pop = u[np.argsort(lp)[:15 * ndim]]
    res = differential_evolution(lambda pt: neg(np.asarray(pt).T), [(0.0, 1.0)] * ndim,
                                 init=pop, maxiter=maxiter, tol=1e-10,
                                 seed=int(rng.integers(2**31)), polish=False, vectorized=True,
                                 updating="deferred")
    best = np.clip(np.asarray(res.x, np.float64), 0.0, 1.0)
    pol = minimize(lambda x: float(neg(x[None])[0]), best, method="L-BFGS-B",
                   bounds=[(0.0, 1.0)] * ndim, options={"maxiter": 200})
    return np.asarray(pol.x if pol.fun <= res.fun else best, np.float64)


def _interval(cov_lo: np.ndarray, cov_hi: np.ndarray, obs: np.ndarray):
    """Per node interval: ``(W (110, 110), W y (110,), lam (110,), log det cov_lo)`` with
    ``cov(t) = cov_lo + t (cov_hi - cov_lo) = W^{-1} diag(1 + t lam) W^{-T}``."""
    chol = _cholesky(cov_lo)
    linv = linalg.solve_triangular(chol, np.eye(chol.shape[0]), lower=True)
    k = linv @ (cov_hi - cov_lo) @ linv.T
    lam, vec = np.linalg.eigh(0.5 * (k + k.T))
    w_mat = vec.T @ linv
    return w_mat, w_mat @ obs, lam, 2.0 * float(np.sum(np.log(np.diag(chol))))


def _cholesky(cov: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor; if round-off makes ``cov`` indefinite, retry with a diagonal
    jitter of 1e-12, 1e-10, ... x its mean diagonal (raises ``LinAlgError`` past 1e-6)."""
    try:
        return linalg.cholesky(cov, lower=True)
    except linalg.LinAlgError:
        scale = float(np.mean(np.diag(cov)))
        for eps in (1e-12, 1e-10, 1e-8, 1e-6):
            try:
                return linalg.cholesky(cov + eps * scale * np.eye(cov.shape[0]), lower=True)
            except linalg.LinAlgError:
                continue
        raise


def builtin_forward(meta: dict) -> Forward:
    """The built-in forward model (SED -> XP coefficients) with a grid's stored settings
    (:func:`cvae_pms.physics.sed.sed_function`). A grid without them gets the defaults
    (``AccretionSettings()``, G23, R_V 3.1, its ``reference_distance_pc`` or 10 pc): always
    confirm with :func:`check_forward`. Per-star nuisance draws (``draw_nuisance``) have no
    single forward model: refused (:class:`ReferenceModelError`).
    """
    from cvae_pms.physics.photosphere import table_wavelength_nm
    from cvae_pms.physics.sed import ForwardModelUnavailable, sed_function
    from cvae_pms.xp.instrument import sed_to_coefficients

    meta = dict(meta or {})
    if not meta.get("forward_model"):
        meta["forward_model"] = {}
    try:
        sed = sed_function(meta)
    except ForwardModelUnavailable as exc:
        raise ReferenceModelError(str(exc)) from exc
    wl = table_wavelength_nm()

    def forward(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return sed_to_coefficients(sed(theta), wl)

    return forward


def check_forward(forward: Forward,
                  theta: np.ndarray, bp: np.ndarray, rp: np.ndarray, what: str = "grid",
                  rtol: float = 1e-4) -> None:
    """Raise :class:`ReferenceModelError` unless ``forward(theta)`` reproduces the grid's
    coefficients ``bp``/``rp`` (n, 55) up to one flux scale per row (``rtol`` in norm)."""
    if theta.shape[0] == 0:
        return
    m = np.concatenate(forward(theta), axis=1)
    c = np.concatenate([bp, rp], axis=1)
    s = np.sum(m * c, axis=1) / np.sum(m * m, axis=1)
    err = np.linalg.norm(c - s[:, None] * m, axis=1) / np.linalg.norm(c, axis=1)
    if not np.all(err < rtol):
        k = int(np.argmax(err))
        raise ReferenceModelError(
            f"{what}: the built-in forward model does not reproduce the grid coefficients "
            f"(row {k}: relative difference {err[k]:.2g} > {rtol:g}); the grid was made with "
            "another model or settings")
