"""The one path from an XP observation to the network input (training and inference).

Input: BP/RP coefficients (n, 55) and their covariances (n, 55, 55) in the archive's units.
Steps (all in TensorFlow, float32; numpy callers go through :meth:`Featuriser.numpy`):

1. Per-source scale ``s = |c_BP,0| + |c_RP,0|`` (the zero-order coefficients track the total
   flux): coefficients are divided by ``s`` and covariances by ``s^2`` so every later number
   is O(1) in float32 (calibrated fluxes are ~1e-17 W m^-2 nm^-1, their variances would
   underflow float32).
2. Calibrated sampled flux on 336-1020 nm (343 pixels, 2 nm) with the design matrices of
   :func:`cvae_pms.xp.sampling.calibration_matrices` (merge weights included), and its
   per-pixel variance ``diag(A^T C A)`` of the propagated coefficient covariance plus the
   noise model's model-error variance ``(f_me(lambda) * flux)^2``.
3. Normalisation by the mean flux over the whole 336-1020 nm range. Why: it is an integral
   over all pixels, dominated by the bright, well-measured red half for cool or reddened
   stars and never near zero for a real source, while the blue pixels of such stars can be
   ~0 or negative (dividing by a blue norm or taking logs there would explode); unlike a
   red-half-only norm it keeps hot, blue stars at O(1) too.
4. Features: ``flux / norm`` (343) and the relative noise level
   ``log10(sigma / norm)`` clipped to :data:`RELNOISE_CLIP` (343), then standardised with
   the training-set mean/std stored in the model dir (:class:`FeatureSpec`).
5. Also returned: ``log10(norm)`` in W m^-2 nm^-1 (the observed flux level).
6. Optional luminosity channel (``FeatureSpec.luminosity``; models trained with
   ``[luminosity] enabled = true``): three more inputs after the 686, the standardised
   log10 absolute flux level at 10 pc from ``log10(norm)`` and the parallax
   (:func:`cvae_pms.astrometry.luminosity_channel`), its standardised error, and a flag
   (1 present, 0 missing; value and error inputs are 0 when missing). Spectrum-only specs
   (``luminosity = False``, the default and every spec saved before the channel existed)
   give exactly the 686 features of before.
7. Sampled input (``xp_sampled_mean_spectrum``, ``gaiaxpy.calibrate`` output, the APOGEE x XP
   library): :meth:`Featuriser.sampled_features` / :meth:`Featuriser.numpy_sampled` start at
   step 2 with the given flux and ``flux_error^2 + model_error_variance(flux)`` (flux and error
   divided in float64 by the per-source unit ``mean |flux|`` first, as step 1 does for
   coefficients). The archive's flux error is ``sqrt(diag(A^T C A))``, so the features equal
   those of the coefficients to float32 rounding and one model serves both inputs.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from keras import ops

from cvae_pms import backend
from cvae_pms.backend import Tensor
from cvae_pms.errors import CvaePmsError

#: Bump when anything in the feature computation changes (models refuse other versions).
FEATURE_VERSION = 1
N_COEFF = 55
_LN10 = math.log(10.0)
N_PIXELS = 343
N_FEATURES = 2 * N_PIXELS
#: Luminosity inputs appended when enabled: value, error, flag.
N_LUMINOSITY = 3
#: Clip of log10(sigma / norm) (relative per-pixel noise): 1e-5 .. 10.
RELNOISE_CLIP = (-5.0, 1.0)


class FeatureError(CvaePmsError, ValueError):
    """A feature specification is missing, malformed or was made with another version."""


def default_matrices() -> tuple[np.ndarray, np.ndarray]:
    """gaiaxpy's calibration design matrices (55, 343) for BP and RP, merge weights included."""
    from cvae_pms.xp.sampling import calibration_matrices
    a_bp, a_rp = calibration_matrices()
    return np.asarray(a_bp, dtype=np.float64), np.asarray(a_rp, dtype=np.float64)


def matrices_digest(a_bp: np.ndarray, a_rp: np.ndarray) -> str:
    """sha256 of the design matrices (as float32, little-endian), stored with models."""
    h = hashlib.sha256()
    for a in (a_bp, a_rp):
        h.update(np.ascontiguousarray(a, dtype="<f4").tobytes())
    return h.hexdigest()


@dataclass
class FeatureSpec:
    """Everything that defines the feature map besides the design matrices.

    ``mean``/``std``: standardisation of the raw features (:attr:`y_dim`,): the 686 spectral
    ones, then (``luminosity``) the luminosity value [dex], its error [dex] and the flag
    (mean 0, std 1); ``model_error_frac``: fractional per-pixel model-error sigma (343,) from
    the noise model; ``matrices_sha256``: digest of the design matrices used;
    ``luminosity``: whether the network input carries the luminosity channel.
    """

    model_error_frac: np.ndarray
    mean: np.ndarray = field(default_factory=lambda: np.zeros(N_FEATURES))
    std: np.ndarray = field(default_factory=lambda: np.ones(N_FEATURES))
    matrices_sha256: str = ""
    relnoise_clip: tuple[float, float] = RELNOISE_CLIP
    version: int = FEATURE_VERSION
    luminosity: bool = False

    def __post_init__(self) -> None:
        if self.luminosity and np.asarray(self.mean).shape == (N_FEATURES,):
            self.mean = np.concatenate([self.mean, np.zeros(N_LUMINOSITY)])
            self.std = np.concatenate([self.std, np.ones(N_LUMINOSITY)])

    @property
    def y_dim(self) -> int:
        return N_FEATURES + (N_LUMINOSITY if self.luminosity else 0)

    def save(self, directory: str | Path) -> None:
        """Write ``features.json`` (scalars) and ``features.npz`` (arrays) into ``directory``."""
        from cvae_pms.atomic import write_bytes_atomic, write_text_atomic
        d = Path(directory)
        meta = {"version": self.version, "relnoise_clip": list(self.relnoise_clip),
                "matrices_sha256": self.matrices_sha256, "n_features": self.y_dim,
                "normalisation": "mean calibrated flux over 336-1020 nm",
                "luminosity": bool(self.luminosity)}
        write_text_atomic(d / "features.json", json.dumps(meta, indent=1))
        import io
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, std=self.std, model_error_frac=self.model_error_frac)
        write_bytes_atomic(d / "features.npz", buf.getvalue())

    @classmethod
    def load(cls, directory: str | Path) -> "FeatureSpec":
        """Read a spec saved by :meth:`save`; refuses another :data:`FEATURE_VERSION`."""
        d = Path(directory)
        try:
            meta = json.loads((d / "features.json").read_text())
            arrays = np.load(d / "features.npz")
            spec = cls(model_error_frac=arrays["model_error_frac"], mean=arrays["mean"],
                       std=arrays["std"], matrices_sha256=meta["matrices_sha256"],
                       relnoise_clip=tuple(meta["relnoise_clip"]), version=meta["version"],
                       luminosity=bool(meta.get("luminosity", False)))
        except (OSError, KeyError, ValueError) as exc:
            raise FeatureError(f"{d}: cannot read the feature specification "
                               f"(features.json/features.npz): {exc}") from exc
        if spec.version != FEATURE_VERSION:
            raise FeatureError(f"{d}: model made with feature version {spec.version}, this "
                               f"cvae-pms computes version {FEATURE_VERSION}; retrain the model")
        return spec


class Featuriser:
    """Feature map (``keras.ops``, any backend) built from a :class:`FeatureSpec` and the design matrices.

    Example:
        >>> f = Featuriser(FeatureSpec(model_error_frac=np.full(343, 0.005)))  # doctest: +SKIP
        >>> y, log10_norm = f.numpy(bp, rp, bp_cov, rp_cov)                  # doctest: +SKIP
    """

    def __init__(self, spec: FeatureSpec, matrices: tuple[np.ndarray, np.ndarray] | None = None):
        a_bp, a_rp = default_matrices() if matrices is None else matrices
        digest = matrices_digest(a_bp, a_rp)
        if spec.matrices_sha256 and spec.matrices_sha256 != digest:
            raise FeatureError("the XP calibration design matrices differ from the ones this "
                               "model was trained with (gaiaxpy configuration changed?)")
        spec.matrices_sha256 = digest
        self.spec = spec
        # Scale the matrices so that a unit zero-order coefficient gives flux ~1.
        self.a_scale = float(np.mean(np.abs(a_bp[0]) + np.abs(a_rp[0])))
        self.log10_a_scale = float(np.log10(self.a_scale))
        self.a_bp = ops.convert_to_tensor(a_bp / self.a_scale, "float32")
        self.a_rp = ops.convert_to_tensor(a_rp / self.a_scale, "float32")
        self.me_frac = ops.convert_to_tensor(spec.model_error_frac, "float32")
        self.set_standardisation(spec.mean, spec.std)
        self._numpy_fn = backend.compile_fn(self.features, static_argnames=("standardise",))

    def set_standardisation(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Set the feature mean/std (:attr:`FeatureSpec.y_dim`,) (also stored in the spec)."""
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        if mean.shape != (self.spec.y_dim,) or std.shape != mean.shape:
            raise FeatureError(f"standardisation of shape {mean.shape}/{std.shape}, expected "
                               f"({self.spec.y_dim},)")
        std = np.where(std > 1e-6, std, 1.0)
        self.spec.mean, self.spec.std = mean, std
        self.mean = ops.convert_to_tensor(mean[:N_FEATURES], "float32")
        self.std = ops.convert_to_tensor(std[:N_FEATURES], "float32")
        self.lum_mean = ops.convert_to_tensor(np.r_[mean, 0.0, 0.0][N_FEATURES:N_FEATURES + 2], "float32")
        self.lum_std = ops.convert_to_tensor(np.r_[std, 1.0, 1.0][N_FEATURES:N_FEATURES + 2], "float32")

    # -- tensor pieces (keras.ops, any backend) ---------------------------------------------------------------------
    def scaled_flux(self, bp: Tensor, rp: Tensor) -> tuple[Tensor, Tensor]:
        """Flux in per-source units (n, 343) and log10 of the unit in W m^-2 nm^-1 (n,)."""
        bp = ops.cast(bp, "float32")
        rp = ops.cast(rp, "float32")
        s = ops.abs(bp[:, 0]) + ops.abs(rp[:, 0]) + 1e-30
        flux = (bp / s[:, None]) @ self.a_bp + (rp / s[:, None]) @ self.a_rp
        return flux, ops.log(s) / _LN10 + self.log10_a_scale

    def flux_variance(self, bp: Tensor, rp: Tensor, bp_cov: Tensor, rp_cov: Tensor
                      ) -> Tensor:
        """Per-pixel variance (n, 343) of the propagated coefficient covariance, same units
        as :meth:`scaled_flux` (without the model error)."""
        bp = ops.cast(bp, "float32")
        rp = ops.cast(rp, "float32")
        s2 = ops.square(ops.abs(bp[:, 0]) + ops.abs(rp[:, 0]) + 1e-30)[:, None, None]
        out = 0.0
        for cov, a in ((bp_cov, self.a_bp), (rp_cov, self.a_rp)):
            ca = ops.einsum("nij,jp->nip", ops.cast(cov, "float32") / s2, a)
            out += ops.sum(ca * a[None], axis=1)
        return ops.maximum(out, 0.0)

    def flux_variance_from_information(self, bp: Tensor, rp: Tensor,
                                       chols: tuple[Tensor, Tensor]) -> Tensor:
        """:meth:`flux_variance` from the Cholesky factors ``L_F`` (n, 55, 55) float64 of the
        Fisher matrices instead of the covariances: ``Cov = L_F^-T L_F^-1``, so
        ``diag(A^T Cov A)`` is the column sum of ``(L_F^-1 A)^2``. ``L_F^-1`` comes from one
        float64 triangular solve; the product with ``A`` and the sum of squares (positive
        terms only, no cancellation) run in float32. Used by the training noise path."""
        from cvae_pms.xp.noise import ops_inverse_cholesky
        s = ops.abs(ops.cast(bp[:, 0], "float64")) + ops.abs(ops.cast(rp[:, 0], "float64")) + 1e-30
        out = 0.0
        for chol, a in zip(chols, (self.a_bp, self.a_rp)):
            inv = ops_inverse_cholesky(chol) / s[:, None, None]
            out += ops.sum(ops.square(ops.cast(inv, "float32") @ a), axis=1)
        return out

    def model_error_variance(self, flux: Tensor) -> Tensor:
        """Model-error variance (n, 343) of a flux in the same units."""
        return ops.square(self.me_frac * flux)

    def from_flux(self, flux: Tensor, variance: Tensor, log10_unit: Tensor,
                  standardise: bool = True) -> tuple[Tensor, Tensor]:
        """Features (n, 686) and log10 norm [W m^-2 nm^-1] (n,) from flux + total variance."""
        norm = ops.mean(flux, axis=-1)
        floor = 1e-6 * ops.max(ops.abs(flux), axis=-1) + 1e-30
        norm = ops.maximum(norm, floor)
        rel = flux / norm[:, None]
        lo, hi = self.spec.relnoise_clip
        relnoise = ops.clip(
            0.5 * ops.log(variance + 1e-30) / _LN10
            - ops.log(norm)[:, None] / _LN10, lo, hi)
        y = ops.concatenate([rel, relnoise], axis=-1)
        if standardise:
            y = (y - self.mean) / self.std
        log10_norm = ops.log(norm) / _LN10 + log10_unit
        return y, log10_norm

    def features(self, bp: Tensor, rp: Tensor, bp_cov: Tensor, rp_cov: Tensor,
                 standardise: bool = True) -> tuple[Tensor, Tensor]:
        """Features (n, 686) and log10 norm (n,) of observed coefficients + covariances."""
        flux, log10_unit = self.scaled_flux(bp, rp)
        var = self.flux_variance(bp, rp, bp_cov, rp_cov) + self.model_error_variance(flux)
        return self.from_flux(flux, var, log10_unit, standardise)

    def sampled_features(self, flux: Tensor, flux_error: Tensor, log10_unit: Tensor,
                         standardise: bool = True) -> tuple[Tensor, Tensor]:
        """Features (n, 686) and log10 norm (n,) of a *sampled* spectrum (sampled input).

        ``flux``, ``flux_error`` (n, 343): the calibrated flux and its per-pixel error in a
        per-source unit whose log10 [W m^-2 nm^-1] is ``log10_unit`` (n,) (see
        :meth:`numpy_sampled`, which picks the unit). The total variance is
        ``flux_error^2 + model_error_variance(flux)``: the archive's (and gaiaxpy's) flux error
        is ``sqrt(diag(A^T C A))`` of the coefficient covariance, so a sampled product made
        from the same coefficients gives the features of :meth:`features` (to float32
        rounding); what it cannot carry is the pixel-to-pixel correlation, which the features
        do not use.
        """
        flux = ops.cast(flux, "float32")
        var = ops.square(ops.cast(flux_error, "float32")) + self.model_error_variance(flux)
        return self.from_flux(flux, var, ops.cast(log10_unit, "float32"), standardise)

    def luminosity_inputs(self, value: Tensor, error: Tensor, present: Tensor
                          ) -> Tensor:
        """The 3 luminosity inputs (n, 3): standardised value and error (0 when missing), flag.

        ``value`` [dex], ``error`` [dex], ``present`` (bool) (n,) from
        :func:`cvae_pms.astrometry.luminosity_channel` (or its TF twin).
        """
        raw = ops.stack([ops.cast(value, "float32"), ops.cast(error, "float32")], axis=-1)
        flag = ops.cast(present, "float32")[:, None]
        return ops.concatenate([(raw - self.lum_mean) / self.lum_std * flag, flag], axis=-1)

    # -- numpy entry -------------------------------------------------------------------
    def numpy(self, bp: np.ndarray, rp: np.ndarray, bp_cov: np.ndarray, rp_cov: np.ndarray,
              standardise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`features` for numpy arrays (bp/rp (n, 55), covariances (n, 55, 55)).

        Spectral features only (n, 686); see :meth:`numpy_with_luminosity` for the full input.
        """
        args = [np.asarray(a, dtype=np.float32) for a in (bp, rp, bp_cov, rp_cov)]
        if args[0].ndim != 2 or args[0].shape[1] != N_COEFF or args[1].shape != args[0].shape:
            raise FeatureError(f"expected bp, rp of shape (n, {N_COEFF}), got "
                               f"{args[0].shape}, {args[1].shape}")
        if args[2].shape != args[0].shape + (N_COEFF,) or args[3].shape != args[2].shape:
            raise FeatureError(f"expected covariances of shape (n, {N_COEFF}, {N_COEFF}), got "
                               f"{args[2].shape}, {args[3].shape}")
        y, lg = self._numpy_fn(*args, standardise=standardise)
        return backend.to_numpy(y), backend.to_numpy(lg)

    def numpy_with_luminosity(self, bp: np.ndarray, rp: np.ndarray, bp_cov: np.ndarray,
                              rp_cov: np.ndarray, parallax_mas: np.ndarray | None = None,
                              parallax_error_mas: np.ndarray | None = None,
                              zero_point_mas: float = 0.0, min_over_error: float = 5.0
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Network input (n, y_dim), log10 norm (n,) and luminosity-present mask (n,) bool.

        For a spectrum-only spec the parallaxes are ignored (mask all False) and the input is
        the 686 features; otherwise the 3 luminosity inputs are appended (missing where the
        parallax is None/NaN/non-positive or below ``min_over_error``; see
        :func:`cvae_pms.astrometry.luminosity_channel`).
        """
        y, lg = self.numpy(bp, rp, bp_cov, rp_cov)
        return self._append_luminosity(y, lg, parallax_mas, parallax_error_mas,
                                       zero_point_mas, min_over_error)

    # -- sampled-spectrum input (numpy) --------------------------------------------------
    def numpy_sampled(self, flux: np.ndarray, flux_error: np.ndarray,
                      standardise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`sampled_features` for numpy flux and error (n, 343) in W m^-2 nm^-1.

        As the coefficient path divides by a per-source scale before float32 (fluxes are
        ~1e-17 W m^-2 nm^-1, their variances would underflow float32), both arrays are
        divided in float64 by the per-source unit ``mean_pixels |flux|`` (1 where that is 0
        or not finite) and only then cast to float32.
        """
        flux = np.asarray(flux, dtype=np.float64)
        err = np.asarray(flux_error, dtype=np.float64)
        if flux.ndim != 2 or flux.shape[1] != N_PIXELS or err.shape != flux.shape:
            raise FeatureError(f"expected flux and flux_error of shape (n, {N_PIXELS}), got "
                               f"{flux.shape}, {err.shape}")
        with np.errstate(invalid="ignore"):
            unit = np.mean(np.abs(flux), axis=1)
        unit = np.where(np.isfinite(unit) & (unit > 0), unit, 1.0)
        fn = self.__dict__.get("_sampled_fn")
        if fn is None:
            fn = self.__dict__["_sampled_fn"] = backend.compile_fn(
                self.sampled_features, static_argnames=("standardise",))
        y, lg = fn((flux / unit[:, None]).astype(np.float32),
                   (err / unit[:, None]).astype(np.float32),
                   np.log10(unit).astype(np.float32), standardise=standardise)
        return backend.to_numpy(y), backend.to_numpy(lg)

    def numpy_sampled_with_luminosity(self, flux: np.ndarray, flux_error: np.ndarray,
                                      parallax_mas: np.ndarray | None = None,
                                      parallax_error_mas: np.ndarray | None = None,
                                      zero_point_mas: float = 0.0, min_over_error: float = 5.0
                                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`numpy_with_luminosity` for sampled input (flux, flux_error (n, 343))."""
        y, lg = self.numpy_sampled(flux, flux_error)
        return self._append_luminosity(y, lg, parallax_mas, parallax_error_mas,
                                       zero_point_mas, min_over_error)

    def _append_luminosity(self, y: np.ndarray, lg: np.ndarray, parallax_mas, parallax_error_mas,
                           zero_point_mas: float, min_over_error: float
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Spectral features + log10 norm -> the network input of this spec (see
        :meth:`numpy_with_luminosity`), log10 norm and the luminosity-present mask."""
        from cvae_pms.astrometry import luminosity_channel
        n = y.shape[0]
        if not self.spec.luminosity:
            return y, lg, np.zeros(n, bool)
        nan = np.full(n, np.nan)
        plx = nan if parallax_mas is None else np.asarray(parallax_mas, np.float64)
        err = nan if parallax_error_mas is None else np.asarray(parallax_error_mas, np.float64)
        value, error, present = luminosity_channel(lg, plx, err, zero_point_mas, min_over_error)
        lum = backend.to_numpy(self.luminosity_inputs(value, error, present))
        return np.concatenate([y, lum], axis=1), lg, present
