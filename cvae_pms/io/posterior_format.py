"""The posterior file's format (layout in :mod:`cvae_pms.posterior_file`): version, quantile
levels, status flags and their names, :class:`PosteriorFileError` and the compatibility check.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from cvae_pms import params
from cvae_pms.errors import CvaePmsError

FORMAT_VERSION = 1

#: Percentile levels stored in ``quantiles`` and reported in the summary table.
QUANTILE_LEVELS = np.array([2.5, 16.0, 50.0, 84.0, 97.5])
_Q_COLUMNS = ("p2.5", "p16", "median", "p84", "p97.5")

FLAG_FAILED = 1
FLAG_OOD = 2
FLAG_AT_BOUND = 4
FLAG_DIAGONAL_COV = 8
FLAG_G_OUTSIDE_TRAINING = 16
FLAG_LOW_ESS = 32
FLAG_NO_PARALLAX = 64
FLAG_SAMPLED_INPUT = 128
FLAG_DUPLICATE_SOURCE_ID = 256
FLAG_POOR_FIT = 512

#: bit -> (name, meaning); also stored as JSON in the file attribute ``status_flags``.
STATUS_FLAGS: dict[int, tuple[str, str]] = {
    FLAG_FAILED: ("failed", "no samples (NaN-filled); the reason is in 'message'"),
    FLAG_OOD: ("ood", "feature vector farther from the training spectra than the run's "
                      "OOD threshold (99th percentile of in-distribution test spectra)"),
    FLAG_AT_BOUND: ("at_bound", "for some parameter (see 'bound_params') more than 20 % of "
                                "the samples lie within 1 % of a box edge where the training "
                                "prior is not piled"),
    FLAG_DIAGONAL_COV: ("diagonal_covariance", "coefficient input without coefficient "
                                               "correlations: covariance built from the "
                                               "errors alone (never set for sampled input)"),
    FLAG_G_OUTSIDE_TRAINING: ("g_outside_training", "estimated G magnitude outside the "
                                                    "brightness range the model was trained on"),
    FLAG_LOW_ESS: ("low_ess", "with --prior: effective sample size of the importance weights "
                              "below the prior's ess_min (see 'ess'; zero: the prior vanishes "
                              "at every sample, samples NaN)"),
    FLAG_NO_PARALLAX: ("no_parallax", "luminosity model: parallax missing, non-positive, NaN or "
                                      "below min_parallax_over_error; spectrum-only posterior"),
    FLAG_SAMPLED_INPUT: ("sampled_input", "input was a sampled spectrum (flux + per-pixel "
                                          "error, e.g. xp_sampled_mean_spectrum or "
                                          "gaiaxpy.calibrate output), not XP coefficients"),
    FLAG_DUPLICATE_SOURCE_ID: ("duplicate_source_id", "the source_id occurs in more than one "
                                                      "row of the same input file (every such "
                                                      "row is flagged; 'input_row' tells them "
                                                      "apart)"),
    FLAG_POOR_FIT: ("poor_fit", "posterior predictive check: the forward model at the posterior "
                                "samples does not reproduce the spectrum (gof_chi2_red above "
                                "the gof_threshold attribute; see cvae_pms.gof)"),
}


class PosteriorFileError(CvaePmsError):
    """A posterior file is missing, malformed, or incompatible with the requested use."""


def flag_names(status: int) -> list[str]:
    """Names of the bits set in one ``status`` value, e.g. ``['ood', 'at_bound']``."""
    return [name for bit, (name, _) in STATUS_FLAGS.items() if int(status) & bit]


def bound_names(bits: int) -> str:
    """Comma-separated parameter names whose bit is set in a ``bound_params`` value."""
    return ",".join(n for i, n in enumerate(params.NAMES) if int(bits) >> i & 1)


def posterior_quantiles(samples: np.ndarray) -> np.ndarray:
    """Percentiles (n, 7, 5) at :data:`QUANTILE_LEVELS` of samples (n, S, 7); NaN rows stay NaN."""
    samples = np.asarray(samples, dtype=np.float32)
    out = np.full((samples.shape[0], samples.shape[2], QUANTILE_LEVELS.size), np.nan,
                  dtype=np.float32)
    good = np.isfinite(samples).all(axis=(1, 2))
    if good.any():
        q = np.percentile(samples[good], QUANTILE_LEVELS, axis=1)  # (5, m, 7)
        out[good] = np.transpose(q, (1, 2, 0))
    return out


def _attr_value(value):
    if isinstance(value, (str, bytes, int, float, np.integer, np.floating, np.ndarray)):
        return value
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return json.dumps(value)


def check_compatible(f: h5py.File, path: Path, n_samples: int | None = None,
                     expect: dict | None = None) -> None:
    """Raise :class:`PosteriorFileError` unless ``f`` is a posterior file of this format,
    parameter table, sample count and (``expect``) attribute values."""
    if int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
        raise PosteriorFileError(f"{path}: not a cvae-pms posterior file of format "
                                 f"{FORMAT_VERSION}")
    if list(f.attrs["parameter_names"]) != list(params.NAMES):
        raise PosteriorFileError(f"{path}: parameters {list(f.attrs['parameter_names'])} != "
                                 f"{list(params.NAMES)}")
    if n_samples is not None and int(f.attrs["n_samples"]) != n_samples:
        raise PosteriorFileError(f"{path}: holds {int(f.attrs['n_samples'])} samples per "
                                 f"source, this run asks for {n_samples}")
    for key, value in (expect or {}).items():
        have = f.attrs.get(key)
        if have is None or str(have) != str(_attr_value(value)):
            raise PosteriorFileError(f"{path}: attribute {key} is {have!r}, expected {value!r}")
