"""Gaia XP: archive readers/writer, coefficient covariance, sampled flux and photometry.

Public entry points::

    from cvae_pms.xp import read_xp, iter_xp, write_xp_table, XPBatch, XPReadError
    from cvae_pms.xp import SampledBatch          # what iter_xp yields for sampled spectra
    from cvae_pms.xp import sampled_flux, sampled_flux_error, SAMPLING_NM
    from cvae_pms.xp import g_mag, g_bp_mag, g_rp_mag, scale_to_g, g_mag_from_flux
"""
from __future__ import annotations

from .archive import XPBatch, XPReadError, iter_xp, read_xp, write_xp_table
from .covariance import band_covariance, is_positive_definite
from .photometry import g_bp_mag, g_mag, g_mag_from_flux, g_rp_mag, scale_to_g
from .sampled import SampledBatch
from .sampling import (SAMPLING_NM, calibration_matrices, design_matrices, merge_weights,
                       sampled_flux, sampled_flux_covariance, sampled_flux_error)

__all__ = ["XPBatch", "SampledBatch", "XPReadError", "iter_xp", "read_xp", "write_xp_table",
           "band_covariance", "is_positive_definite", "g_bp_mag", "g_mag", "g_mag_from_flux",
           "g_rp_mag", "scale_to_g", "SAMPLING_NM", "calibration_matrices", "design_matrices",
           "merge_weights", "sampled_flux", "sampled_flux_covariance", "sampled_flux_error"]
