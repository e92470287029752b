"""The observation simulator: noise-free XP coefficients -> what Gaia would record.

One home for the noise path that training, ``simulate`` and ``evaluate`` share:

- numpy (``simulate``, ``evaluate``): :func:`draw_g_transits` (G uniform in a range, integer
  transits uniform inclusive), :func:`simulate_observations` (scale to G, coefficient noise
  :func:`cvae_pms.xp.noise.draw_observation`, then the forward-model error
  :func:`draw_model_error_coefficients`) and the model-error covariance;
- ``keras.ops`` (training and the OOD index it builds; any backend): :class:`TrainingNoise`
  (the same steps, inside the compiled step, keyed random numbers of
  :mod:`cvae_pms.backend`, straight to network features) and :class:`TrainingLuminosity`
  (the parallax draw of the luminosity channel).

Inference never imports this module: a model dir carries everything it needs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvae_pms import params as P
from cvae_pms.errors import CvaePmsError
from cvae_pms.xp.noise import NoiseModel, draw_observation
from cvae_pms.xp.photometry import scale_to_g

#: Ridge strength (x the largest singular value) of the flux -> coefficient map of the model
#: error: 1e-3 keeps 94-100 % (median 99 %) of the flux-space variance at 400-1000 nm while
#: keeping the perturbation out of the directions the calibration barely constrains (with the
#: ingest ridge, 1e-4, its chi^2 in the archive-covariance metric of a G = 12 star was ~31,000;
#: with 1e-3 ~1,000).
MODEL_ERROR_RIDGE_ALPHA = 1e-3


class SimulateError(CvaePmsError, ValueError):
    """Bad simulation input (file, row, column or option named)."""


# ------------------------------------------------------------------------------ numpy
def draw_g_transits(rng: np.random.Generator, n: int, g_range: tuple[float, float],
                    transit_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """G [mag] (n,) uniform in ``g_range`` (all ``g_range[0]`` when it is one value, no
    random number drawn) then integer transit counts (n,) int64 uniform in ``transit_range``
    (inclusive), both from ``rng`` in that order."""
    lo, hi = float(g_range[0]), float(g_range[1])
    g = rng.uniform(lo, hi, size=n) if hi > lo else np.full(n, lo)
    nt = rng.integers(int(transit_range[0]), int(transit_range[1]) + 1, size=n)
    return g, nt


@dataclass
class Observations:
    """Simulated observations of n sources (coefficients in archive units)."""

    bp: np.ndarray
    rp: np.ndarray
    bp_cov: np.ndarray
    rp_cov: np.ndarray
    g_mag: np.ndarray
    n_transits: np.ndarray
    flux_factor: np.ndarray


def draw_model_error_coefficients(bp: np.ndarray, rp: np.ndarray, rng: np.random.Generator,
                                  noise_model: NoiseModel | None = None, teff=None,
                                  model_error=None) -> tuple[np.ndarray, np.ndarray]:
    """Coefficient perturbations (dbp, drp), each (n, 55), of one forward-model-error draw.

    The flux-space draw is the one training adds (:class:`TrainingNoise`):
    ``|flux| delta`` with ``delta`` from :meth:`cvae_pms.xp.model_error.ModelError.draw` at the
    stars' true ``teff`` [K] (n,) (None: the population-average term), ``model_error`` the term
    (default :meth:`~cvae_pms.xp.model_error.ModelError.default`), ``flux`` the
    calibrated flux (W m^-2 nm^-1, 343 pixels) of the given coefficients. It is mapped to
    coefficients with the ridge least-squares matrix of
    :func:`cvae_pms.xp.flux_fit.ridge_projection` (linear, so exact for the 110-dim part of the
    flux the coefficients can carry; it keeps 98-102 % of the per-pixel variance at 400-1000 nm).
    """
    from cvae_pms.xp.flux_fit import ridge_projection
    from cvae_pms.xp.sampling import sampled_flux

    from cvae_pms.xp.model_error import ModelError
    flux = sampled_flux(bp, rp)
    term = model_error or ModelError.default()
    d = term.draw(flux, teff, rng) @ ridge_projection(MODEL_ERROR_RIDGE_ALPHA).T
    return d[:, :55], d[:, 55:]


def model_error_coefficient_covariance(bp: np.ndarray, rp: np.ndarray,
                                       noise_model: NoiseModel | None = None,
                                       teff: float | None = None, model_error=None) -> np.ndarray:
    """Covariance (110, 110), BP then RP, of :func:`draw_model_error_coefficients`: ``P S P^T``.

    ``S`` (343, 343) = ``flux_i C_ij(T_eff) flux_j`` with ``C`` the fractional model-error
    covariance (:meth:`cvae_pms.xp.model_error.ModelError.covariance`; ``teff`` None: the
    node average) at the calibrated flux of ``bp``/``rp`` (55,), ``P`` the same ridge map
    (110, 343).
    """
    from cvae_pms.xp.flux_fit import ridge_projection
    from cvae_pms.xp.model_error import ModelError
    from cvae_pms.xp.sampling import sampled_flux

    proj = ridge_projection(MODEL_ERROR_RIDGE_ALPHA)
    flux = np.abs(sampled_flux(np.asarray(bp, np.float64).reshape(1, 55),
                               np.asarray(rp, np.float64).reshape(1, 55)))[0]
    term = model_error or ModelError.default()
    s = flux[:, None] * term.covariance(teff) * flux[None, :]
    cov = proj @ s @ proj.T
    return 0.5 * (cov + cov.T)


def simulate_observations(bp: np.ndarray, rp: np.ndarray, g_mag: np.ndarray | float,
                          n_transits: np.ndarray | float, rng: np.random.Generator,
                          noise_model: NoiseModel | None = None,
                          model_error: bool = True, errors_from: str = "observed",
                          teff: np.ndarray | None = None, model_error_term=None) -> Observations:
    """Scale noise-free coefficients to ``g_mag`` and draw one noisy observation per row.

    The generative model (the one training uses, :class:`TrainingNoise`): the star's true
    spectrum is the model times ``1 + delta``, a forward-model-error draw at the *noise-free*
    flux (:func:`draw_model_error_coefficients`, added in coefficient space); Gaia then records
    it with coefficient noise ``N(c', Cov(c'))``, ``c'`` the perturbed coefficients. The
    returned covariances are the coefficient-noise covariances estimated from the noisy
    coefficients, as an archive's errors are (``errors_from = "true"``: at ``c'``, for
    diagnostics only; see :func:`cvae_pms.xp.noise.ops_draw_observation`). The model-error
    term is not in them: it is what a likelihood adds
    (:class:`cvae_pms.diagnostics.likelihood.XPLikelihood`, at the model's flux).

    (Until 2026-12-05 the model error was drawn at the flux of the *noisy* observation; that
    made its amplitude follow the noise in faint pixels, so no likelihood could be exact for
    it: the chi^2 at the truth under the covariance at the observed flux had a heavy tail,
    median 122 and 90 % 182 for 110 coefficients of a cool, reddened G = 15 star.)

    Args:
        bp, rp: (n, 55) noise-free coefficients (any flux scale).
        g_mag: (n,) or scalar target G magnitudes.
        n_transits: (n,) or scalar transit counts.
        rng: numpy Generator for the noise.
        noise_model: XP noise constants (default :meth:`NoiseModel.default`).
        model_error: add the model-error perturbation (default True).
        teff: (n,) true T_eff [K] of the rows, for the T_eff-dependent model error (None: the
            population-average term).
        model_error_term: the :class:`~cvae_pms.xp.model_error.ModelError` (default: shipped).

    Returns:
        :class:`Observations` with the noisy coefficients, their covariances, G, transits and the
        flux factor applied (10^(-0.4 (G_target - G_input))).
    """
    bp = np.atleast_2d(np.asarray(bp, float))
    rp = np.atleast_2d(np.asarray(rp, float))
    n = bp.shape[0]
    g = np.broadcast_to(np.asarray(g_mag, float), (n,)).copy()
    nt = np.broadcast_to(np.asarray(n_transits, float), (n,)).copy()
    bp_s, rp_s, factor = scale_to_g(bp, rp, g)
    bad = ~np.isfinite(factor) | ~(factor > 0)
    if bad.any():
        raise SimulateError(f"row {int(np.argmax(bad))}: G magnitude of the input coefficients is "
                            "undefined (non-positive flux); cannot scale it")
    if model_error:
        d_bp, d_rp = draw_model_error_coefficients(bp_s, rp_s, rng, noise_model, teff,
                                                   model_error_term)
        bp_s, rp_s = bp_s + d_bp, rp_s + d_rp
    obs_bp, obs_rp, cov_bp, cov_rp = draw_observation(bp_s, rp_s, nt, rng, noise_model,
                                                      errors_from)
    return Observations(obs_bp, obs_rp, cov_bp, cov_rp, g, nt, np.asarray(factor, float))


# ------------------------------------------------------------------------------ keras.ops
class TrainingNoise:
    """The training noise path: noiseless coefficients -> features of a noisy observation.

    ``observe_at`` (fixed G and transits) is what the noise-parity test compares with a
    simulated observation; ``observe`` draws G ~ U(g_min, g_max) and integer transits
    ~ U{transits_min..transits_max} per row first. Written in ``keras.ops`` (any backend,
    eager or compiled: ``tf.function``, XLA, ``jax.jit``); every random number comes from
    the stream key given (:func:`cvae_pms.backend.stream_key`), the same under every backend.
    The forward-model error (:class:`cvae_pms.xp.model_error.ModelError`, from the config's
    ``noise.model_error`` unless given) is drawn at each row's true T_eff (``teff``; None:
    the population-average term).
    """

    def __init__(self, featuriser, noise_model, noise_cfg: dict, model_error=None):
        from keras import ops

        from cvae_pms.xp.model_error import ModelError
        self.feat = featuriser
        self.model = noise_model
        self.cfg = dict(noise_cfg)
        self.model_error = model_error or ModelError.from_config(self.cfg, noise_model)
        # The flux-space draw is mapped to coefficients with the ridge map that simulate
        # uses (MODEL_ERROR_RIDGE_ALPHA): an XP spectrum can carry only the part of a
        # perturbation its 110 coefficients can express. ``calibration``: coefficients
        # (110,) -> flux (343,) in W m^-2 nm^-1.
        from cvae_pms.xp.flux_fit import ridge_projection
        from cvae_pms.xp.sampling import calibration_matrices
        self.calibration = ops.convert_to_tensor(np.vstack(calibration_matrices()), "float32")
        self.me_coefficients = ops.convert_to_tensor(ridge_projection(MODEL_ERROR_RIDGE_ALPHA).T,
                                                     "float32")

    def observe_at(self, bp0, rp0, g0, g, n_transits, seed, standardise: bool = True,
                   copies: int = 1, teff=None):
        """Features (n k, 686) and log10 norm (n k,) of noisy observations at magnitude ``g``.

        ``bp0, rp0`` (n, 55) noiseless coefficients of magnitude ``g0`` (n,); ``g`` and
        ``n_transits`` (n,); ``seed`` a stream key or seed (anything
        :func:`cvae_pms.backend.stream_key` takes). With ``copies = k`` every row gets
        k independent noise draws at the same G and transits (rows repeated as
        ``ops.repeat(..., k, axis=0)``): the Fisher matrix of the noise-free spectrum and its
        Cholesky factor, which the draws need, are computed once per row. The error features
        come, as in the archive, from the noise model at each *noisy* draw (one more Fisher
        matrix and triangular solve per draw; :func:`cvae_pms.xp.noise.ops_draw_observation`
        explains why errors at the noise-free spectrum are wrong).
        """
        from keras import ops

        from cvae_pms import backend
        from cvae_pms.xp.noise import ops_draw_from_cholesky, ops_information_cholesky
        s = ops.power(10.0, -0.4 * (ops.cast(g, "float32") - ops.cast(g0, "float32")))[:, None]
        bp, rp = ops.cast(bp0, "float32") * s, ops.cast(rp0, "float32") * s
        keys = backend.split_key(seed, 3)
        # The forward-model error first, at the noise-free flux of each copy (the star's true
        # spectrum is model x (1 + delta); simulate_observations), mapped to coefficients.
        c0 = ops.repeat(ops.concatenate([bp, rp], axis=1), copies, axis=0)   # (n k, 110)
        t_rep = None if teff is None else ops.repeat(ops.reshape(teff, (-1,)), copies, axis=0)
        d = ops.cast(ops.matmul(self.model_error.ops_draw(ops.matmul(c0, self.calibration),
                                                          t_rep, keys[2]),
                                self.me_coefficients), "float64")           # (n k, 110)
        # One float64 Cholesky of each Fisher matrix of the noise-free spectrum: draws
        # L_F^{-T} z (simulate draws at the perturbed spectrum: the noise amplitude differs
        # by the model error's ~1-3 %, well below what the parity tests resolve).
        chols = ops_information_cholesky(bp, rp, n_transits, self.model)
        obs = []
        for k, (c, chol) in enumerate(zip((bp, rp), chols)):
            z = backend.normal(keys[k], (ops.shape(c)[0], copies, 55), "float64")
            noise = ops_draw_from_cholesky(chol, z)                        # (n, copies, 55)
            obs.append(ops.reshape(ops.cast(c, "float64")[:, None] + noise, (-1, 55))
                       + d[:, 55 * k:55 * (k + 1)])
        nt_obs = ops.repeat(ops.cast(ops.reshape(n_transits, (-1,)), "float64"), copies, axis=0)
        chols_obs = ops_information_cholesky(obs[0], obs[1], nt_obs, self.model)
        var = self.feat.flux_variance_from_information(obs[0], obs[1], chols_obs)
        flux, unit = self.feat.scaled_flux(obs[0], obs[1])
        var = var + self.feat.model_error_variance(flux)
        return self.feat.from_flux(flux, var, unit, standardise)

    def observe(self, bp0, rp0, g0, seed, standardise: bool = True, copies: int = 1,
                return_g: bool = False, teff=None):
        """:meth:`observe_at` with G and transits drawn per row (``return_g``: also G (n,));
        ``teff`` (n,) [K] the rows' true T_eff for the model-error draw; ``seed`` as there."""
        from keras import ops

        from cvae_pms import backend
        c = self.cfg
        keys = backend.split_key(seed, 3)
        n = ops.shape(bp0)[0]
        g = c["g_min"] + (c["g_max"] - c["g_min"]) * backend.uniform_like(keys[0], (n,))
        t_lo, t_hi = float(c["transits_min"]), float(c["transits_max"])
        nt = ops.minimum(ops.floor(t_lo + (t_hi + 1.0 - t_lo) * backend.uniform_like(keys[1], (n,))),
                         t_hi)
        out = self.observe_at(bp0, rp0, g0, g, nt, keys[2], standardise, copies, teff)
        return (*out, g) if return_g else out


class TrainingLuminosity:
    """The training draw of the luminosity channel (``[luminosity]`` config, grid ``d_ref``).

    ``inputs`` turns the noisy log10 norm of a draw of :meth:`TrainingNoise.observe` and the
    G it was scaled to into the 3 luminosity inputs, with a parallax drawn by
    :func:`cvae_pms.astrometry.ops_draw_parallax` and the channel computed exactly as at
    inference (:func:`cvae_pms.astrometry.ops_luminosity_channel`).
    """

    def __init__(self, featuriser, lum_cfg: dict, reference_distance_pc: float):
        self.feat = featuriser
        self.cfg = dict(lum_cfg)
        self.d_ref = float(reference_distance_pc)

    def raw(self, log10_norm, g0, g, seed, copies: int = 1):
        """(value, error, present) (n copies,) of rows scaled from ``g0`` to ``g`` (n,);
        ``seed`` a stream key or seed (:func:`cvae_pms.backend.stream_key`)."""
        from keras import ops

        from cvae_pms.astrometry import ops_draw_parallax, ops_luminosity_channel
        c = self.cfg
        plx, err = ops_draw_parallax(ops.repeat(g0, copies, axis=0), ops.repeat(g, copies, axis=0),
                                     self.d_ref, (c["frac_error_min"], c["frac_error_max"]),
                                     c["drop_fraction"], seed)
        return ops_luminosity_channel(log10_norm, plx, err, c["min_parallax_over_error"])

    def inputs(self, log10_norm, g0, g, seed, copies: int = 1):
        """The 3 standardised luminosity inputs (n copies, 3)."""
        return self.feat.luminosity_inputs(*self.raw(log10_norm, g0, g, seed, copies))


def unit_teff(x):
    """T_eff [K] from [0, 1]-scaled parameters (n, 7) (numpy arrays or tensors alike)."""
    i = P.INDEX["teff"]
    return float(P.LOW[i]) + x[:, i] * float(P.HIGH[i] - P.LOW[i])
