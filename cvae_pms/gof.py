"""Posterior predictive goodness of fit per source: does the forward model reproduce the spectrum?

For ``K`` posterior samples ``theta_k`` of a source (default :data:`N_DRAWS`, taken evenly
through its ``S`` samples) the forward model the training grid was made with
(:func:`cvae_pms.physics.sed.sed_function`) gives the noise-free calibrated flux ``m_k``
(343 pixels, :data:`cvae_pms.xp.sampling.SAMPLING_NM`). With the flux scale fitted (the
distance is unknown) the discrepancy of the observed flux ``f`` is::

    T_k = sum_i (f_i - s_k m_k,i)^2 / v_i,   s_k = sum_i f_i m_k,i / v_i / sum_i m_k,i^2 / v_i

with ``v_i`` the per-pixel variance the network's features use: the observation's
(``diag(A^T C A)`` of the coefficient covariance, or ``flux_error^2`` for sampled input) plus
the run's forward-model error (:class:`cvae_pms.xp.model_error.ModelError`) at the posterior
median T_eff, ``(sigma_me,i |f_i|)^2``.

Reported per source:

- ``gof_chi2_red``: the median over the draws of ``T_k / (343 - 1)``: about 1 when the model
  and the error budget describe the spectrum, >> 1 when they do not.
- ``gof_p``: the posterior predictive p-value ``mean_k P(T_rep > T_k)``. Pixels are correlated
  (343 pixels carry 110 coefficients; the model error is correlated over tens of nm), so
  ``T`` is not chi^2 with 342 degrees of freedom: the null distribution is moment-matched
  (Satterthwaite) to ``a chi^2_nu`` with ``a nu = 342`` and
  ``a^2 nu = ||V^-1/2 Sigma V^-1/2||_F^2 (342 / 343)``, ``Sigma`` the full covariance (the
  coefficient covariance propagated to flux + the model-error covariance; for sampled input
  the flux errors are taken as uncorrelated, which makes ``gof_p`` too small at faint G where
  photon noise dominates). Computed from low-rank factors, never a 343 x 343 inverse.

The ``poor_fit`` flag is set where ``gof_chi2_red`` exceeds the threshold of
``cvae_pms/data/gof_threshold.json`` (written by ``scripts/calibrate_gof_threshold.py``: the
quantile of ``gof_chi2_red`` on the calibration part of the real APOGEE x XP stars at which
~1.5 % are flagged); a model dir's own ``RUN/gof_threshold.json`` (the same script with
``--out RUN/gof_threshold.json``) takes precedence, and ``infer --poor-fit-threshold`` over both.

Runs trained on an ingested grid have no forward model: no check (NaN, reason in ``message``).
A grid with per-star R_V draws is checked with R_V profiled (each draw's discrepancy minimised
over :data:`N_PROFILE` R_V values across the range); per-star slab draws are checked with the
slab at its fixed values.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import stats

from cvae_pms import params
from cvae_pms.errors import CvaePmsError

#: Posterior draws re-synthesised per source.
N_DRAWS = 32
#: Sources per block of the vectorised computation (bounds the memory of the model fluxes).
BLOCK = 64
#: Model-error factors kept per T_eff node in the degrees-of-freedom computation (they hold
#: ~95 % of the variance; the rest joins the independent part, the per-pixel variance and so
#: the statistic itself are unchanged).
ME_RANK = 12
THRESHOLD_FILE = "gof_threshold.json"


class GofError(CvaePmsError):
    """The goodness-of-fit check cannot be set up (unreadable threshold file, bad option)."""


@dataclass
class GofResult:
    """Per source (n,): ``chi2_red`` (median reduced discrepancy), ``p_value`` (posterior
    predictive), ``dof`` (moment-matched degrees of freedom of the null); NaN where not
    computed (failed sources)."""

    chi2_red: np.ndarray
    p_value: np.ndarray
    dof: np.ndarray


@functools.lru_cache(maxsize=1)
def _flux_operator() -> np.ndarray:
    from cvae_pms.realdata.fit import calibrated_flux_operator
    return calibrated_flux_operator()


@functools.lru_cache(maxsize=1)
def _calibration32() -> np.ndarray:
    """(110, 343) float32 coefficients -> calibrated flux (merge weights included), BP rows
    first: for propagating covariance factors."""
    from cvae_pms.xp.sampling import calibration_matrices
    return np.vstack(calibration_matrices()).astype(np.float32)


def default_threshold() -> dict:
    """The shipped ``poor_fit`` threshold and its provenance (``gof_threshold.json``)."""
    return _read_threshold(resources.files("cvae_pms") / "data" / THRESHOLD_FILE)


def _read_threshold(ref) -> dict:
    try:
        doc = json.loads(ref.read_text())
        float(doc["chi2_red"])
        return doc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GofError(f"{ref}: cannot read the poor_fit threshold ({exc}); run "
                       "scripts/calibrate_gof_threshold.py") from exc


#: R_V values profiled over for grids that draw R_V per star.
N_PROFILE = 4


def _nuisance_settings(meta: dict) -> list[dict]:
    """Grid metas with one fixed R_V each: ``[meta]`` for fixed-R_V grids, else
    :data:`N_PROFILE` values evenly across ``extinction.r_v_range``."""
    from cvae_pms.physics.sed import recorded_forward_model
    fm = recorded_forward_model(meta)
    ext = fm.get("extinction") if fm is not None else None
    if not isinstance(ext, dict) or not ext.get("r_v_range"):
        return [meta]
    lo, hi = (float(v) for v in ext["r_v_range"])
    out = []
    for r_v in np.linspace(lo, hi, N_PROFILE):
        e = {k: v for k, v in ext.items() if k != "r_v_range"}
        e["r_v"] = float(r_v)
        out.append({**meta, "forward_model": {**fm, "extinction": e}})
    return out


class PredictiveCheck:
    """The check for one model: ``sed`` (theta (n, 7) -> SED (n, m) on the PHOENIX table
    wavelengths, any fixed distance; or a list of them, one per nuisance setting, over which
    the discrepancy of each draw is minimised), its ``model_error`` term, ``n_draws`` and the
    ``threshold`` on ``gof_chi2_red`` for ``poor_fit``."""

    def __init__(self, sed, model_error, n_draws: int = N_DRAWS,
                 threshold: float | None = None) -> None:
        if n_draws < 1:
            raise GofError(f"goodness of fit: n_draws must be >= 1, got {n_draws}")
        self.seds = list(sed) if isinstance(sed, (list, tuple)) else [sed]
        self.model_error = model_error
        self.n_draws = int(n_draws)
        self.threshold = (float(default_threshold()["chi2_red"]) if threshold is None
                          else float(threshold))
        if not self.threshold > 0:
            raise GofError(f"poor_fit threshold must be > 0, got {self.threshold}")

    @property
    def sed(self):
        """The forward model (the first nuisance setting when several are profiled)."""
        return self.seds[0]

    @classmethod
    def for_run(cls, run, n_draws: int = N_DRAWS, threshold: float | None = None
                ) -> tuple["PredictiveCheck | None", str]:
        """The check for a loaded model dir, or (None, why not) for runs whose grid has no
        built-in forward model (ingested grids). Grids that draw R_V per star are checked
        with R_V profiled over :data:`N_PROFILE` values across their range (the slab at its
        fixed values). The threshold: ``threshold``, else ``RUN/gof_threshold.json`` (a
        per-model calibration), else the shipped one."""
        from cvae_pms.xp.model_error import run_model_error
        from cvae_pms.physics.sed import (ForwardModelUnavailable, recorded_forward_model,
                                          sed_function)
        meta = run.grid_info.get("meta", {}) if isinstance(run.grid_info, dict) else {}
        if "accretion" not in (recorded_forward_model(meta) or {}):
            return None, ("goodness of fit not computed: the training grid records no built-in "
                          "forward model (ingested grid?)")
        try:
            seds = [sed_function(m, nuisance="fixed") for m in _nuisance_settings(meta)]
        except ForwardModelUnavailable as exc:
            return None, f"goodness of fit not computed: {exc}"
        own = Path(run.path) / THRESHOLD_FILE
        if threshold is None and own.is_file():
            threshold = float(_read_threshold(own)["chi2_red"])
        return cls(seds, run_model_error(run), n_draws, threshold), ""

    def draws(self, samples: np.ndarray) -> np.ndarray:
        """Indices (K,) of the samples used: ``K = min(n_draws, S)`` evenly spaced."""
        s = samples.shape[1]
        k = min(self.n_draws, s)
        return np.unique(np.linspace(0, s - 1, k).round().astype(int))

    def coefficients(self, samples: np.ndarray, bp: np.ndarray, rp: np.ndarray,
                     bp_cov: np.ndarray, rp_cov: np.ndarray) -> GofResult:
        """The check for coefficient input: samples (n, S, 7) physical; bp/rp (n, 55),
        covariances (n, 55, 55) in the archive's units."""
        from cvae_pms.xp.sampling import sampled_flux
        flux = sampled_flux(np.asarray(bp, np.float64), np.asarray(rp, np.float64))
        chols = (_factor(np.asarray(bp_cov, np.float64)), _factor(np.asarray(rp_cov, np.float64)))
        return self._run(samples, flux, chols, None)

    def sampled(self, samples: np.ndarray, flux: np.ndarray, flux_error: np.ndarray
                ) -> GofResult:
        """The check for sampled input: flux and flux_error (n, 343) [W m^-2 nm^-1] (errors
        taken as uncorrelated)."""
        flux = np.asarray(flux, np.float64)
        return self._run(samples, flux, None, np.asarray(flux_error, np.float64) ** 2)

    # ------------------------------------------------------------------ internals
    def _run(self, samples, flux, chols, noise_var) -> GofResult:
        samples = np.asarray(samples, np.float64)
        n = samples.shape[0]
        out = GofResult(np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan))
        good = np.flatnonzero(np.isfinite(samples).all(axis=(1, 2)) & np.isfinite(flux).all(axis=1))
        if good.size == 0:
            return out
        pick = self.draws(samples)
        op = _flux_operator()
        me = self.model_error
        teff = np.median(samples[:, :, params.NAMES.index("teff")], axis=1)
        for i in range(0, good.size, BLOCK):
            idx = good[i:i + BLOCK]
            b, k = idx.size, pick.size
            theta = samples[idx][:, pick].reshape(b * k, params.N_PARAMS)
            theta = np.clip(theta, params.BOUNDS[:, 0], params.BOUNDS[:, 1])
            models = [(sed(theta) @ op).reshape(b, k, -1) for sed in self.seds]  # (b, K, 343)
            f = flux[idx]
            absf = np.abs(f)
            me_fac, me_var = _model_error_factors(me, teff[idx], absf, ME_RANK)
            low = me_fac.astype(np.float32) if chols is None else np.concatenate(
                [_noise_factors(chols, idx), me_fac.astype(np.float32)], axis=2)  # (b, 343, R)
            diag = me_var + (0.0 if noise_var is None else noise_var[idx])   # (b, 343)
            lowsq = np.einsum("bpr,bpr->bp", low, low).astype(np.float64)
            v = lowsq + diag                                                  # total variance
            v = np.where(v > 0, v, np.inf)
            inv = 1.0 / v
            ff = np.sum(f * f * inv, axis=1)[:, None]
            t = np.full((b, k), np.inf)
            for model in models:      # nuisance settings: the best-fitting one per draw
                cross = np.matmul(model, (f * inv)[:, :, None])[..., 0]      # (b, K)
                norm = np.matmul(model * model, inv[:, :, None])[..., 0]
                s = cross / np.maximum(norm, 1e-300)
                # T = sum f^2/v - 2 s sum f m/v + s^2 sum m^2/v, at the best s.
                t = np.minimum(t, np.maximum(ff - s * cross, 0.0))
            npix = f.shape[1]
            # ||V^-1/2 Sigma V^-1/2||_F^2 with Sigma = L L^T + diag(d) (float32 gram):
            lw = low * np.sqrt(inv).astype(np.float32)[:, :, None]           # V^-1/2 L
            gram = np.matmul(np.swapaxes(lw, 1, 2), lw)
            di = diag * inv
            frob = (np.einsum("brs,brs->b", gram, gram).astype(np.float64)
                    + 2.0 * np.sum(di * lowsq * inv, axis=1) + np.sum(di ** 2, axis=1))
            # Moment matching: a nu = npix - 1 and a^2 nu = frob (npix - 1) / npix.
            mean = npix - 1.0
            a_ = frob / npix
            nu = mean / a_
            out.chi2_red[idx] = np.median(t, axis=1) / mean
            out.p_value[idx] = np.mean(stats.chi2.sf(t / a_[:, None], nu[:, None]), axis=1)
            out.dof[idx] = nu
        return out

    def poor_fit(self, result: GofResult) -> np.ndarray:
        """Boolean (n,): ``gof_chi2_red`` above the threshold (False where not computed)."""
        with np.errstate(invalid="ignore"):
            return np.asarray(result.chi2_red > self.threshold)


def _model_error_factors(me, teff: np.ndarray, absf: np.ndarray, rank: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Model-error covariance of fluxes ``absf`` (b, 343) at T_eff (b,) as low-rank factors
    (b, 343, 2 k) and an independent variance (b, 343): only the two T_eff nodes with weight
    (hat functions) enter. ``rank``: keep the first ``rank`` factors of each node (they are
    sorted by variance) and move the rest into the independent variance, which leaves the
    per-pixel total unchanged (default :data:`ME_RANK`)."""
    w = me.weights(teff, teff.size)                                   # (b, B)
    nb = w.shape[1]
    j0 = np.clip(np.argmax(w > 0, axis=1), 0, max(nb - 2, 0))
    j1 = np.minimum(j0 + 1, nb - 1)
    rows = np.arange(teff.size)
    w0, w1 = w[rows, j0], np.where(j1 != j0, w[rows, j1], 0.0)
    k = me.factors.shape[2] if rank is None else min(int(rank), me.factors.shape[2])
    rest = me.diag ** 2 + np.sum(me.factors[:, :, k:] ** 2, axis=2)          # (B, 343)
    fac = np.concatenate([np.sqrt(w0)[:, None, None] * me.factors[j0, :, :k],
                          np.sqrt(w1)[:, None, None] * me.factors[j1, :, :k]], axis=2)
    var = (w0[:, None] * rest[j0] + w1[:, None] * rest[j1]) * absf ** 2
    return fac * absf[:, :, None], var


def _noise_factors(chols: tuple[np.ndarray, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """``A^T L`` (b, 343, 110) float32 for sources ``idx``: the coefficient-covariance factors
    ``L`` (BP, RP) propagated to calibrated flux (one matrix product per band)."""
    a = _calibration32()
    b = idx.size
    out = np.empty((b, a.shape[1], 110), np.float32)
    for j, chol in enumerate(chols):
        c = chol[idx].astype(np.float32)                                 # (b, 55, 55)
        out[:, :, 55 * j:55 * (j + 1)] = np.matmul(a[55 * j:55 * (j + 1)].T[None], c)
    return out


def _factor(cov: np.ndarray) -> np.ndarray:
    """Lower factors ``L`` (n, k, k) with ``L L^T = cov``: Cholesky, or for rows where it fails
    (singular covariances) the eigen decomposition with negative eigenvalues set to 0."""
    cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
    out = np.zeros_like(cov)
    finite = np.isfinite(cov).all(axis=(1, 2))
    try:
        out[finite] = np.linalg.cholesky(cov[finite])
        return out
    except np.linalg.LinAlgError:
        pass
    for j in np.flatnonzero(finite):
        try:
            out[j] = np.linalg.cholesky(cov[j])
        except np.linalg.LinAlgError:
            val, vec = np.linalg.eigh(cov[j])
            out[j] = vec * np.sqrt(np.clip(val, 0.0, None))[None, :]
    return out
