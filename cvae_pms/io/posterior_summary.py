"""The summary table of a posterior file (one row per source): :func:`summary_table`,
:func:`write_summary`, :func:`read_summary`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
from astropy.table import Table

from cvae_pms import params
from cvae_pms.atomic import atomic_path
from cvae_pms.io.posterior_format import (_Q_COLUMNS, QUANTILE_LEVELS, STATUS_FLAGS,
                                       PosteriorFileError, bound_names, flag_names)
from cvae_pms.io.posterior_reader import Posterior
from cvae_pms.io.tables import SUMMARY_SUFFIXES, table_format


def summary_table(posteriors: Iterator[Posterior] | Posterior) -> Table:
    """The summary table of posterior rows: one row per source.

    Columns: ``source_id``; per parameter ``<name>_median``, ``_p16``, ``_p84``, ``_p2.5``,
    ``_p97.5`` (physical units) and ``<name>_width68`` (p84 - p16); ``status`` (bit flags),
    ``flags`` (their names), ``at_bound`` (parameter names), ``ood_distance``, ``ess``,
    ``gof_chi2_red``, ``gof_p`` (only when the file has them), ``message``, ``input_file``, ``input_row`` (when the file
    has it). Column units and descriptions
    come from :mod:`cvae_pms.params`.
    """
    parts = [posteriors] if isinstance(posteriors, Posterior) else list(posteriors)
    if parts:
        sid = np.concatenate([p.source_id for p in parts])
        q = np.concatenate([p.quantiles for p in parts]).astype(np.float64)
        status = np.concatenate([p.status for p in parts])
        ood = np.concatenate([p.ood_distance for p in parts])
        bound = np.concatenate([p.bound_params for p in parts])
        msg = np.concatenate([p.message for p in parts]).astype(str)
        inp = np.concatenate([p.input_file for p in parts]).astype(str)
    else:
        sid = np.zeros(0, np.int64)
        q = np.zeros((0, params.N_PARAMS, QUANTILE_LEVELS.size))
        status, ood, bound = np.zeros(0, np.uint16), np.zeros(0, np.float32), np.zeros(0, np.uint8)
        msg = inp = np.zeros(0, dtype=str)
    t = Table()
    t["source_id"] = sid
    order = (2, 1, 3, 0, 4)  # median, p16, p84, p2.5, p97.5
    for j, p in enumerate(params.PARAMS):
        for k in order:
            t[f"{p.name}_{_Q_COLUMNS[k]}"] = q[:, j, k]
            t[f"{p.name}_{_Q_COLUMNS[k]}"].unit = p.unit or None
            t[f"{p.name}_{_Q_COLUMNS[k]}"].description = (
                f"{p.description}: {QUANTILE_LEVELS[k]:g} percentile of the posterior")
        t[f"{p.name}_width68"] = q[:, j, 3] - q[:, j, 1]
        t[f"{p.name}_width68"].unit = p.unit or None
        t[f"{p.name}_width68"].description = f"{p.description}: p84 - p16"
    t["status"] = status.astype(np.int32)
    t["status"].description = "bit flags: " + "; ".join(
        f"{bit} {name}" for bit, (name, _) in STATUS_FLAGS.items())
    t["flags"] = [",".join(flag_names(s)) for s in status]
    t["at_bound"] = [bound_names(b) for b in bound]
    t["ood_distance"] = ood.astype(np.float64)
    t["ood_distance"].description = "mean distance to k nearest training spectra (features)"
    if parts and all(p.ess is not None for p in parts):
        t["ess"] = np.concatenate([p.ess for p in parts]).astype(np.float64)
        t["ess"].description = "effective sample size of the user-prior importance weights"
    if parts and all(p.gof_chi2_red is not None for p in parts):
        t["gof_chi2_red"] = np.concatenate([p.gof_chi2_red for p in parts]).astype(np.float64)
        t["gof_chi2_red"].description = ("posterior predictive reduced chi^2 of the spectrum "
                                         "(NaN: not computed)")
        t["gof_p"] = np.concatenate([p.gof_p for p in parts]).astype(np.float64)
        t["gof_p"].description = "posterior predictive p-value of gof_chi2_red"
    t["message"] = msg
    t["input_file"] = inp
    if parts and all(p.input_row is not None for p in parts):
        t["input_row"] = np.concatenate([p.input_row for p in parts]).astype(np.int64)
        t["input_row"].description = "row of the source in input_file (0-based)"
    if parts:
        t.meta.update({k: _meta_value(v) for k, v in parts[0].attrs.items()
                       if k in ("run_dir", "model_hash", "seed", "n_samples", "ood_threshold",
                                "ood_k", "cvae_pms_version", "prior", "luminosity",
                                "parallax_zero_point_mas", "min_parallax_over_error",
                                "gof_draws", "gof_threshold", "gof_note")})
    return t


def _meta_value(v):
    if isinstance(v, np.generic):
        return v.item()
    return v


def write_summary(table: Table, path: str | os.PathLike) -> Path:
    """Write a summary table atomically; format from the extension (.ecsv, .csv, .fits)."""
    path = Path(path)
    fmt = table_format(path, SUMMARY_SUFFIXES)
    if fmt is None:
        raise PosteriorFileError(f"{path}: summary format must be .ecsv, .csv or .fits")
    if not path.parent.is_dir():
        raise PosteriorFileError(f"{path}: directory {path.parent} does not exist")
    with atomic_path(path) as tmp:
        table.write(tmp, format=fmt, overwrite=True)
    return path


def read_summary(path: str | os.PathLike) -> Table:
    """Read a summary table written by :func:`write_summary`."""
    path = Path(path)
    fmt = table_format(path, SUMMARY_SUFFIXES)
    if fmt is None or not path.is_file():
        raise PosteriorFileError(f"{path}: not a summary table (.ecsv, .csv or .fits)")
    return Table.read(path, format=fmt)
