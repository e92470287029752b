"""The posterior file (HDF5): per-source samples, status flags, messages; and its summary table.

Layout (``FORMAT_VERSION`` 1), ``n`` sources, ``S`` samples, 7 parameters in the order of
:data:`cvae_pms.params.NAMES`, physical units:

=================  ===============  =====================================================
dataset            shape, dtype     content
=================  ===============  =====================================================
``source_id``      (n,) int64       Gaia DR3 source_id
``samples``        (n, S, 7) f4     posterior samples; NaN for failed sources
                                    (one source per chunk, shuffle + gzip level 1)
``quantiles``      (n, 7, 5) f4     2.5, 16, 50, 84, 97.5 percentiles of ``samples``
``status``         (n,) uint16      bit flags, see :data:`STATUS_FLAGS`
``message``        (n,) utf-8       '' when all is well, else the reason(s)
``input_file``     (n,) utf-8       absolute path of the input file the source came from
``input_row``      (n,) int64       row of the source in that file (0-based; -1 unknown):
                                    with ``input_file`` the key of a resume
``ood_distance``   (n,) f4          mean distance to the k nearest training spectra in
                                    standardised feature space (NaN when failed)
``bound_params``   (n,) uint8       bit i set: parameter ``NAMES[i]`` piles at a bound
                                    (from the raw samples, before any prior reweighting)
``ess``            (n,) f4          only with ``infer --prior``: effective sample size of
                                    the importance weights (0 for failed sources)
``samples_raw``    (n, S, 7) f4     only with ``--prior --keep-raw``: the samples under the
                                    training prior (``samples`` then holds the resampled ones)
``gof_chi2_red``   (n,) f4          only with the goodness-of-fit check (``infer --gof``, the
                                    default): posterior predictive reduced chi^2
                                    (:mod:`cvae_pms.gof`); NaN where not computed
``gof_p``          (n,) f4          its posterior predictive p-value (NaN likewise)
=================  ===============  =====================================================

File attributes: ``format_version``, ``parameter_names``, ``parameter_units``,
``parameter_bounds`` (7, 2), ``quantile_levels``, ``status_flags`` (JSON), ``n_samples``,
``seed``, ``run_dir``, ``model_hash``, ``command_line``, ``cvae_pms_version``,
``ood_threshold``, ``ood_k``, ``prior`` (JSON of the user prior, '' without),
``luminosity`` (model uses parallaxes), ``parallax_zero_point_mas``,
``min_parallax_over_error``, ``astrometry`` (side table path or ''), ``gof_draws`` (0: no
check), ``gof_threshold`` (``poor_fit`` threshold on ``gof_chi2_red``), ``gof_note`` (why the
check was not computed, or ''), ``n_complete`` (rows
completely written: a reader or a resume
trusts only these).

The writer appends chunk by chunk to resizable datasets, so memory stays flat in ``n``.

The pieces: :mod:`cvae_pms.io.posterior_format` (version, flags, the compatibility check),
:mod:`cvae_pms.io.posterior_writer`, :mod:`cvae_pms.io.posterior_reader` and
:mod:`cvae_pms.io.posterior_summary` (the summary table); this module re-exports their public
names, so ``from cvae_pms.posterior_file import PosteriorWriter, read_posterior`` keeps working.
"""
from __future__ import annotations

from cvae_pms.io.posterior_format import (FLAG_AT_BOUND, FLAG_DIAGONAL_COV, FLAG_DUPLICATE_SOURCE_ID,
                                       FLAG_FAILED, FLAG_G_OUTSIDE_TRAINING, FLAG_LOW_ESS,
                                       FLAG_NO_PARALLAX, FLAG_OOD, FLAG_POOR_FIT,
                                       FLAG_SAMPLED_INPUT, FORMAT_VERSION, QUANTILE_LEVELS,
                                       STATUS_FLAGS, PosteriorFileError, bound_names,
                                       check_compatible, flag_names, posterior_quantiles)
from cvae_pms.io.posterior_reader import (Posterior, completed_keys, completed_rows, iter_posterior,
                                       read_posterior)
from cvae_pms.io.posterior_summary import read_summary, summary_table, write_summary
from cvae_pms.io.posterior_writer import PosteriorChunk, PosteriorWriter

__all__ = ["FLAG_AT_BOUND", "FLAG_DIAGONAL_COV", "FLAG_DUPLICATE_SOURCE_ID", "FLAG_FAILED",
           "FLAG_G_OUTSIDE_TRAINING", "FLAG_LOW_ESS", "FLAG_NO_PARALLAX", "FLAG_OOD",
           "FLAG_POOR_FIT", "FLAG_SAMPLED_INPUT", "FORMAT_VERSION", "QUANTILE_LEVELS",
           "STATUS_FLAGS", "Posterior", "PosteriorChunk", "PosteriorFileError", "PosteriorWriter",
           "bound_names", "check_compatible", "completed_keys", "completed_rows", "flag_names",
           "iter_posterior", "posterior_quantiles", "read_posterior", "read_summary",
           "summary_table", "write_summary"]
