"""The Gaia XP noise model: coefficient covariance of a mean spectrum, and noise draws.

A mean spectrum is the least-squares fit of the 55 internal bases to ``N_transits`` windows of
60 samples. With ``Phi`` the bases at the sample positions (each sample spread over ``n_dither``
sub-pixel positions, as the real transits are; without dithering the fit is badly conditioned),
``n_u = c . Phi`` the internal flux (e-/s per sample) and, per transit,
``Var_u = [n_u t + B t + RON^2 + (f_floor n_u t)^2] / t^2``
(t = 4.4167 s exposure per sample, RON read noise in e-, B background in e-/s/sample and f_floor a
per-transit fractional calibration floor), the coefficient covariance is
``Cov(c) = (Phi W Phi^T)^-1`` with ``W = N_transits / (n_dither Var_u)`` for independent samples.

Independent samples predict high-order coefficient errors 3-10x above the real ones, and hence
per-pixel flux errors ~2x too large (the calibrated design matrices weight high orders ~100x).
Real epoch spectra are resampled before averaging, which correlates neighbouring samples: the
noise of a transit's 60 samples is modelled as AR(1) with correlation ``sample_correlation``,
i.e. ``W`` becomes ``N_transits / n_dither * Var^-1/2 K^-1 Var^-1/2`` with ``K_ij = rho^|i-j|``.
B, f_floor and rho are fitted per band on 2000 real DR3 spectra by ``scripts/fit_noise_model.py``
(results and residuals in ``cvae_pms/data/xp_noise_model.json``).

Draws ``c + L z`` use ``L = L_F^{-T}`` with ``L_F = chol(Phi W Phi^T)``: the same distribution as
``chol(Cov) z`` (``L L^T = Cov``) without inverting first, which keeps float64 Cholesky stable.

The forward-model error is a separate term in flux space, defined once in
:mod:`cvae_pms.xp.model_error`; this model only carries the parameters of its parametric form
(``model_error_fraction`` per pixel, Gaussian-correlated over ``model_error_corr_nm``: about one
line-spread sigma), used by :meth:`~cvae_pms.xp.model_error.ModelError.from_config`.

One definition of the formulas: the numpy functions call the ``keras.ops`` ones (float64 inside,
any backend; under JAX with x64 on, :func:`cvae_pms.backend.select`).
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cvae_pms.errors import CvaePmsError

from .instrument import BANDS, internal_bases, window_samples

#: Package data file with the fitted constants.
DEFAULT_FILE = "xp_noise_model.json"
#: G magnitudes [mag] where the noise model applies: Gaia's range (bright limit ~3, faint limit
#: ~21). Outside it the model (photon, background and read noise, a flux floor; no gating or
#: saturation) means nothing, and far outside it the draws overflow (empty coefficient cells).
G_RANGE = (3.0, 21.0)
_CHUNK = 4096


class NoiseModelError(CvaePmsError, ValueError):
    """Bad input to the XP noise model, or an unreadable noise-model file."""


@dataclass(frozen=True)
class NoiseModel:
    """Constants of the XP noise model (per band where a pair: (BP, RP)).

    The field defaults are the fit's starting values; :meth:`default` is the fitted model.

    Attributes:
        exposure_s: integration time per sample and transit, s.
        read_noise_e: read-out noise per sample, electrons.
        background_e_s: sky + stray-light background per sample, e-/s, (BP, RP); fitted.
        floor_fraction: per-transit fractional flux floor, independent per sample, (BP, RP); fitted.
        sample_correlation: AR(1) correlation of the noise of neighbouring samples within one
            transit, (BP, RP); fitted (epoch spectra are resampled onto the mean pseudo-wavelength
            scale before averaging, which correlates neighbours and lowers high-order errors).
        n_dither: sub-pixel positions each window sample is spread over (4: condition number of
            Phi Phi^T 3.6, vs 230 without dithering; 10 changes the errors by < 0.5 % at 2.5x
            the cost).
        model_error_fraction: fractional per-pixel flux error of the forward model.
        model_error_corr_nm: Gaussian correlation length of that error in wavelength, nm.
        fit: provenance of the fitted values (data file, assumed transits, residuals, date).
    """

    exposure_s: float = 4.4167
    read_noise_e: float = 4.5
    background_e_s: tuple[float, float] = (40.0, 40.0)
    floor_fraction: tuple[float, float] = (0.026, 0.010)
    sample_correlation: tuple[float, float] = (0.0, 0.0)
    n_dither: int = 4
    model_error_fraction: float = 0.005
    model_error_corr_nm: float = 15.0
    fit: dict = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def default(cls) -> "NoiseModel":
        """The fitted model shipped as ``cvae_pms/data/xp_noise_model.json``."""
        return _default_model()

    @classmethod
    def from_file(cls, path: str | Path) -> "NoiseModel":
        """Read a noise model JSON file (as written by :meth:`to_dict` / the fit script)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise NoiseModelError(f"{path}: cannot read noise model ({exc})") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "noise model") -> "NoiseModel":
        """Build from a dictionary; unknown keys are an error."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise NoiseModelError(f"{source}: unknown keys {sorted(unknown)}")
        kw = dict(data)
        for key in ("background_e_s", "floor_fraction", "sample_correlation"):
            if key in kw:
                kw[key] = tuple(float(v) for v in kw[key])
                if len(kw[key]) != 2:
                    raise NoiseModelError(f"{source}: {key} needs two values (BP, RP)")
        model = cls(**kw)
        if min(model.background_e_s + model.floor_fraction + model.sample_correlation) < 0 \
                or max(model.sample_correlation) >= 1 or model.n_dither < 1:
            raise NoiseModelError(f"{source}: background/floor must be >= 0, sample_correlation "
                                  "in [0, 1) and n_dither >= 1")
        return model

    @property
    def g_range(self) -> tuple[float, float]:
        """(bright, faint) G [mag] where the model applies (:data:`G_RANGE`)."""
        return G_RANGE

    @property
    def fitted_g_range(self) -> tuple[float, float] | None:
        """(bright, faint) G [mag] of the real spectra the constants were fitted on (the
        residual bins of ``fit``), None when the provenance does not say."""
        bins = [b for b in (self.fit.get("residuals_all_sources") or {}).get("g_bins", [])
                if b.get("n", 0) > 0]
        if not bins:
            return None
        return float(min(b["g_lo"] for b in bins)), float(max(b["g_hi"] for b in bins))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary of every constant (and the fit provenance)."""
        d = asdict(self)
        d["background_e_s"] = list(self.background_e_s)
        d["floor_fraction"] = list(self.floor_fraction)
        d["sample_correlation"] = list(self.sample_correlation)
        return d


@functools.lru_cache(maxsize=1)
def _default_model() -> NoiseModel:
    ref = resources.files("cvae_pms") / "data" / DEFAULT_FILE
    with resources.as_file(ref) as path:
        if not path.is_file():
            raise NoiseModelError(f"{path}: noise model file missing (run scripts/fit_noise_model.py)")
        return NoiseModel.from_file(path)


@functools.lru_cache(maxsize=8)
def sample_bases(band: str, n_dither: int) -> np.ndarray:
    """Internal bases at the dithered sample positions of the window: (55, 60 * n_dither)."""
    n = window_samples(band)
    offsets = (np.arange(n_dither) + 0.5) / n_dither - 0.5
    u = (np.arange(n)[:, None] + offsets[None, :]).ravel()
    phi = internal_bases(band, u)
    phi.setflags(write=False)
    return phi


# ---------------------------------------------------------------- tensor definitions (keras.ops)
def _inputs(bp, rp, n_transits):
    """bp, rp (n, 55) and n_transits (n,) (or scalar) as float64 tensors."""
    from keras import ops
    bp = ops.cast(ops.convert_to_tensor(bp), "float64")
    rp = ops.cast(ops.convert_to_tensor(rp), "float64")
    nt = ops.cast(ops.convert_to_tensor(n_transits), "float64")
    nt = ops.broadcast_to(ops.reshape(nt, (-1,)), (ops.shape(bp)[0],))
    return bp, rp, nt


@functools.lru_cache(maxsize=8)
def _fisher_basis(band: str, n_dither: int, rho: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precomputed pieces of the Fisher matrix of one band as a single matrix product.

    With s_p = sqrt(N / n_dither / Var_p) and whitened AR(1) bases (see
    :func:`_band_information`), ``Phi W Phi^T = sum_p alpha_p s_p^2 phi_p phi_p^T
    + sum_{p >= nd} beta_p s_p s_{p-nd} (phi_p phi_{p-nd}^T + phi_{p-nd} phi_p^T)``, where
    nd = n_dither (the same phase in the previous sample), alpha_p = [p < nd ? 1 : 1/(1-rho^2)]
    + [p < P-nd ? rho^2/(1-rho^2) : 0] and beta_p = -rho/(1-rho^2).

    Returns:
        outer: (2P - nd, 1540) upper triangles of the outer products (phi_p phi_p^T first).
        alpha: (P,) the alpha_p above.
        full_index: (55, 55) index of each full-matrix entry in the upper triangle.
    """
    phi = sample_bases(band, n_dither)
    nb, n_p = phi.shape
    iu = np.triu_indices(nb)
    same = phi[iu[0]] * phi[iu[1]]                                      # (1540, P)
    cross = (phi[iu[0], n_dither:] * phi[iu[1], :-n_dither]
             + phi[iu[1], n_dither:] * phi[iu[0], :-n_dither])          # (1540, P - nd)
    outer = np.ascontiguousarray(np.concatenate([same, cross], axis=1).T)
    p = np.arange(n_p)
    alpha = (np.where(p < n_dither, 1.0, 1.0 / (1.0 - rho**2))
             + np.where(p < n_p - n_dither, rho**2 / (1.0 - rho**2), 0.0))
    full_index = np.zeros((nb, nb), dtype=np.int32)
    full_index[iu] = np.arange(iu[0].size)
    full_index = np.maximum(full_index, full_index.T)
    for a in (outer, alpha, full_index):
        a.setflags(write=False)
    return outer, alpha, full_index


def _band_information(c, nt, band: str, k: int, model: NoiseModel):
    """Fisher matrix Phi W Phi^T (n, 55, 55) float64 of one band, with AR(1)-correlated samples.

    ``c`` (n, 55) and ``nt`` (n,) float64 tensors. For each of the ``n_dither`` sub-pixel phases
    (N / n_dither transits each) the 60 samples of a transit have variances Var_u and
    correlation rho^|i-j|. Whitening the AR(1) noise turns the bases scaled by 1/sqrt(Var_u)
    into b_0 = a_0, b_i = (a_i - rho a_{i-1}) / sqrt(1 - rho^2); ``sum_i b_i b_i^T`` is
    evaluated as one (n, 2P - nd) x (2P - nd, 1540) product with the precomputed outer
    products of :func:`_fisher_basis` (2.5x faster than the batched (55, P) x (P, 55) products
    on a CPU; equal to 1e-14 relative).
    """
    from keras import ops
    t = model.exposure_s
    rho = float(model.sample_correlation[k])
    nd = model.n_dither
    phi = ops.convert_to_tensor(sample_bases(band, nd), "float64")  # (55, 60 * n_dither)
    outer, alpha, full_index = _fisher_basis(band, nd, rho)
    n_u = ops.relu(ops.matmul(c, phi))  # (n, P) e-/s per sample
    var = (n_u * t + model.background_e_s[k] * t + model.read_noise_e**2
           + (model.floor_fraction[k] * n_u * t) ** 2) / t**2
    s2 = (nt / nd)[:, None] / var                          # s_p^2, (n, P), P ordered (sample, phase)
    weights = [s2 * ops.convert_to_tensor(alpha, "float64")]
    if rho > 0.0:
        s = ops.sqrt(s2)
        weights.append((-rho / (1.0 - rho**2)) * s[:, nd:] * s[:, :-nd])
    else:
        outer = outer[:alpha.size]
    upper = ops.matmul(ops.concatenate(weights, axis=1),
                       ops.convert_to_tensor(outer, "float64"))                # (n, 1540)
    return ops.take(upper, ops.convert_to_tensor(full_index, "int32"), axis=1)


def ops_inverse_cholesky(chol):
    """``M = L^-1`` (n, 55, 55) of lower Cholesky factors ``L`` (one triangular solve)."""
    from keras import ops
    eye = ops.zeros_like(chol) + ops.eye(55, dtype="float64")
    return ops.solve_triangular(chol, eye, lower=True)


def _covariance(chol):
    """Covariance ``(L L^T)^-1 = M^T M`` with ``M = L^-1`` (:func:`ops_inverse_cholesky`)."""
    from keras import ops
    inv = ops_inverse_cholesky(chol)
    return ops.matmul(ops.transpose(inv, (0, 2, 1)), inv)


def ops_information_cholesky(bp, rp, n_transits, model: NoiseModel | None = None):
    """Cholesky factors ``L_F`` of the Fisher matrices (bp, rp), (n, 55, 55) float64 (keras.ops).

    ``c + L_F^{-T} z`` (:func:`ops_draw_from_cholesky`) is distributed as ``N(c, Cov(c))``, and
    ``(L_F L_F^T)^-1`` is the coefficient covariance. A Fisher matrix that is not positive
    definite (non-finite input) is an error under TensorFlow outside XLA (``ops.cholesky``
    checks) and NaN factors under XLA and jax.jit.
    """
    from keras import ops
    model = model or NoiseModel.default()
    bp, rp, nt = _inputs(bp, rp, n_transits)
    return tuple(ops.cholesky(_band_information(c, nt, band, k, model))
                 for k, (band, c) in enumerate(zip(BANDS, (bp, rp))))


def ops_covariance_from_cholesky(chol):
    """Coefficient covariance (n, 55, 55) float64 from a Fisher Cholesky factor (keras.ops)."""
    return _covariance(chol)


def ops_draw_from_cholesky(chol, z):
    """Noise ``L_F^{-T} z`` (n, k, 55) for standard-normal ``z`` (n, k, 55) float64 (keras.ops).

    Each of the k draws per row has covariance ``(L_F L_F^T)^-1``; one triangular solve of
    ``L_F^T x = z`` with k right-hand sides (no second Cholesky of the covariance).
    """
    from keras import ops
    x = ops.solve_triangular(ops.transpose(chol, (0, 2, 1)), ops.transpose(z, (0, 2, 1)),
                             lower=False)
    return ops.transpose(x, (0, 2, 1))


def ops_coefficient_covariance(bp, rp, n_transits, model: NoiseModel | None = None):
    """Coefficient covariances (bp_cov, rp_cov), each (n, 55, 55) float64 (keras.ops).

    Args:
        bp, rp: (n, 55) noise-free coefficients (any float dtype; computed in float64).
        n_transits: (n,) or scalar number of transits.
        model: noise constants (default :meth:`NoiseModel.default`).
    """
    return tuple(_covariance(chol) for chol in ops_information_cholesky(bp, rp, n_transits, model))


def ops_draw_observation(bp, rp, n_transits, key, model: NoiseModel | None = None,
                         errors_from: str = "observed"):
    """One noisy observation per row, distributed as ``N(c, Cov(c))`` (keras.ops).

    The draw is ``c + L_F^{-T} z`` with ``L_F L_F^T = Phi W Phi^T``: the same distribution as
    ``c + chol(Cov) z``. The *reported* covariance (``errors_from = "observed"``, default) is
    the noise model evaluated at the noisy coefficients, as the archive's errors are estimated
    from the observed data. ``"true"`` reports ``Cov(c)`` of the noise-free spectrum instead:
    that is not what real data carry, and it hands a network the noise-free spectral shape
    through the error features (``log sigma`` is then a noise-free function of the true flux:
    a whitened CVAE trained that way scattered 58 K in T_eff at G = 15 but 432 K, with 17 %
    68 %-coverage, once the errors came from the noisy spectrum).

    Args:
        bp, rp: (n, 55) noise-free coefficients.
        n_transits: (n,) or scalar.
        key: a stream key or seed (anything :func:`cvae_pms.backend.stream_key` takes: an int,
            a (2,) int seed, a (2,) uint32 key); ``z`` (2, n, 55) float64 is
            :func:`cvae_pms.backend.normal` of it, the same numbers under every backend.
        model: noise constants (default :meth:`NoiseModel.default`).
        errors_from: ``"observed"`` or ``"true"`` (see above).

    Returns:
        (bp_obs, rp_obs) in the input dtype, (bp_cov, rp_cov) float64 (n, 55, 55).
    """
    import keras
    from keras import ops

    from cvae_pms import backend
    if errors_from not in ("observed", "true"):
        raise ValueError(f"errors_from must be 'observed' or 'true', got {errors_from!r}")
    model = model or NoiseModel.default()
    dtype = keras.backend.standardize_dtype(ops.convert_to_tensor(bp).dtype)
    bp64, rp64, nt = _inputs(bp, rp, n_transits)
    z = backend.normal(key, (2, ops.shape(bp64)[0], 55), "float64")
    obs, covs = [], []
    for k, (band, c) in enumerate(zip(BANDS, (bp64, rp64))):
        chol = ops.cholesky(_band_information(c, nt, band, k, model))
        # L_F^{-T} z has covariance (L_F L_F^T)^{-1}.
        x = ops_draw_from_cholesky(chol, z[k][:, None, :])[:, 0, :]
        obs.append(c + x)
        if errors_from == "observed":
            chol = ops.cholesky(_band_information(c + x, nt, band, k, model))
        covs.append(_covariance(chol))
    return ops.cast(obs[0], dtype), ops.cast(obs[1], dtype), covs[0], covs[1]


# ---------------------------------------------------------------- numpy front ends
def _check(bp: np.ndarray, rp: np.ndarray, n_transits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bp = np.atleast_2d(np.asarray(bp, dtype=np.float64))
    rp = np.atleast_2d(np.asarray(rp, dtype=np.float64))
    if bp.shape != rp.shape or bp.shape[1:] != (55,):
        raise NoiseModelError(f"bp {bp.shape} and rp {rp.shape} must both be (n, 55)")
    nt = np.broadcast_to(np.asarray(n_transits, dtype=np.float64).reshape(-1) if np.ndim(n_transits)
                         else np.float64(n_transits), (bp.shape[0],)).copy()
    bad = ~(np.isfinite(bp).all(1) & np.isfinite(rp).all(1))
    if bad.any():
        raise NoiseModelError(f"row {int(np.argmax(bad))}: non-finite coefficients")
    if np.any(~np.isfinite(nt) | (nt < 1)):
        raise NoiseModelError(f"row {int(np.argmax(~np.isfinite(nt) | (nt < 1)))}: n_transits must be >= 1")
    return bp, rp, nt


def coefficient_covariance(bp: np.ndarray, rp: np.ndarray, n_transits,
                           model: NoiseModel | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Coefficient covariances of mean spectra (numpy front end of the keras.ops definition).

    Args:
        bp, rp: (n, 55) noise-free coefficients (archive units).
        n_transits: (n,) or scalar number of transits used in the mean spectrum.
        model: noise constants (default :meth:`NoiseModel.default`).

    Returns:
        (bp_cov, rp_cov): (n, 55, 55) float64 each.
    """
    from cvae_pms import backend
    bp, rp, nt = _check(bp, rp, n_transits)
    model = model or NoiseModel.default()
    out_bp = np.empty((bp.shape[0], 55, 55))
    out_rp = np.empty_like(out_bp)
    for lo in range(0, bp.shape[0], _CHUNK):
        sl = slice(lo, lo + _CHUNK)
        out_bp[sl], out_rp[sl] = backend.to_numpy(
            ops_coefficient_covariance(bp[sl], rp[sl], nt[sl], model))
    return out_bp, out_rp


def draw_observation(bp: np.ndarray, rp: np.ndarray, n_transits, rng: np.random.Generator,
                     model: NoiseModel | None = None, errors_from: str = "observed"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Noisy mean-spectrum coefficients ``c + L z`` (L L^T = Cov(c)), z keyed on two integers
    drawn from ``rng`` per chunk of 4096 rows (:func:`ops_draw_observation`), and the
    covariances an archive would report: the noise model at the noisy coefficients
    (``errors_from``: see :func:`ops_draw_observation`).

    Args:
        bp, rp: (n, 55) noise-free coefficients.
        n_transits: (n,) or scalar.
        rng: numpy Generator (the draw is reproducible from it).
        model: noise constants (default :meth:`NoiseModel.default`).

    Returns:
        (bp_obs, rp_obs, bp_cov, rp_cov): (n, 55) and (n, 55, 55) float64.
    """
    from cvae_pms import backend
    bp, rp, nt = _check(bp, rp, n_transits)
    model = model or NoiseModel.default()
    out = [np.empty_like(bp), np.empty_like(rp), np.empty((bp.shape[0], 55, 55)), np.empty((bp.shape[0], 55, 55))]
    for lo in range(0, bp.shape[0], _CHUNK):
        sl = slice(lo, lo + _CHUNK)
        seed = rng.integers(0, 2**31 - 1, size=2)
        res = ops_draw_observation(bp[sl], rp[sl], nt[sl], seed, model, errors_from)
        for o, r in zip(out, backend.to_numpy(res)):
            o[sl] = r
    return out[0], out[1], out[2], out[3]
