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
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
from astropy.table import Table

from cvae_pms import params
from cvae_pms.atomic import atomic_path
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

_STR = h5py.string_dtype("utf-8")


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


@dataclass
class PosteriorChunk:
    """Rows to append to a posterior file (all arrays share the first dimension n)."""

    source_id: np.ndarray
    samples: np.ndarray
    status: np.ndarray
    message: Sequence[str]
    input_file: Sequence[str]
    ood_distance: np.ndarray
    bound_params: np.ndarray
    quantiles: np.ndarray | None = None
    ess: np.ndarray | None = None
    samples_raw: np.ndarray | None = None
    input_row: np.ndarray | None = None
    gof_chi2_red: np.ndarray | None = None
    gof_p: np.ndarray | None = None

    def __len__(self) -> int:
        return int(np.asarray(self.source_id).shape[0])


class PosteriorWriter:
    """Append posterior rows to a new (or resumed) HDF5 file; flushes after every chunk.

    Use as a context manager. ``attrs`` become file attributes (JSON-encoded when not a
    scalar, string or numeric array). With ``resume=True`` an existing file is opened,
    truncated to its ``n_complete`` rows and appended to; ``expect`` (attribute -> value)
    must then match the file's attributes (e.g. the model hash and seed). ``ess``,
    ``samples_raw`` and ``gof`` (``gof_chi2_red`` + ``gof_p``) create those optional datasets
    (a resumed file keeps the ones it has); the chunks appended must then carry them.
    """

    def __init__(self, path: str | os.PathLike, n_samples: int, attrs: dict | None = None,
                 resume: bool = False, expect: dict | None = None,
                 compression_level: int = 1, ess: bool = False,
                 samples_raw: bool = False, gof: bool = False) -> None:
        self.path = Path(path)
        self.n_samples = int(n_samples)
        if resume:
            self._f = h5py.File(self.path, "r+")
            try:
                check_compatible(self._f, self.path, n_samples=n_samples, expect=expect)
            except PosteriorFileError:
                self._f.close()
                raise
            n = int(self._f.attrs.get("n_complete", 0))
            self.datasets = _ROW_DATASETS + tuple(k for k in _OPTIONAL + _OPTIONAL_INT
                                                  if k in self._f)
            for name in self.datasets:
                self._f[name].resize(n, axis=0)
            self.n = n
        else:
            self._f = h5py.File(self.path, "w")
            self._create(compression_level)
            level = compression_level
            for name in ("ess",) * ess + ("gof_chi2_red", "gof_p") * gof:
                self._f.create_dataset(name, (0,), np.float32, maxshape=(None,), chunks=(4096,))
            if samples_raw:
                s = self.n_samples
                self._f.create_dataset("samples_raw", (0, s, params.N_PARAMS), np.float32,
                                       maxshape=(None, s, params.N_PARAMS),
                                       chunks=(1, s, params.N_PARAMS), compression="gzip",
                                       compression_opts=level, shuffle=True)
            self.datasets = _ROW_DATASETS + tuple(k for k in _OPTIONAL + _OPTIONAL_INT
                                                  if k in self._f)
            self.n = 0
        for key, value in (attrs or {}).items():
            self._f.attrs[key] = _attr_value(value)
        self._f.attrs["n_complete"] = self.n
        self._f.flush()

    def _create(self, level: int) -> None:
        f, s = self._f, self.n_samples
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["parameter_names"] = list(params.NAMES)
        f.attrs["parameter_units"] = [p.unit for p in params.PARAMS]
        f.attrs["parameter_bounds"] = params.BOUNDS
        f.attrs["quantile_levels"] = QUANTILE_LEVELS
        f.attrs["status_flags"] = json.dumps(
            {str(bit): {"name": n, "meaning": m} for bit, (n, m) in STATUS_FLAGS.items()})
        f.attrs["n_samples"] = s
        f.create_dataset("source_id", (0,), np.int64, maxshape=(None,), chunks=(4096,))
        f.create_dataset("samples", (0, s, params.N_PARAMS), np.float32,
                         maxshape=(None, s, params.N_PARAMS), chunks=(1, s, params.N_PARAMS),
                         compression="gzip", compression_opts=level, shuffle=True)
        f.create_dataset("quantiles", (0, params.N_PARAMS, QUANTILE_LEVELS.size), np.float32,
                         maxshape=(None, params.N_PARAMS, QUANTILE_LEVELS.size),
                         chunks=(1024, params.N_PARAMS, QUANTILE_LEVELS.size))
        f.create_dataset("status", (0,), np.uint16, maxshape=(None,), chunks=(4096,))
        f.create_dataset("message", (0,), _STR, maxshape=(None,), chunks=(1024,))
        f.create_dataset("input_file", (0,), _STR, maxshape=(None,), chunks=(1024,))
        f.create_dataset("input_row", (0,), np.int64, maxshape=(None,), chunks=(4096,))
        f.create_dataset("ood_distance", (0,), np.float32, maxshape=(None,), chunks=(4096,))
        f.create_dataset("bound_params", (0,), np.uint8, maxshape=(None,), chunks=(4096,))

    def append(self, chunk: PosteriorChunk) -> None:
        """Write ``chunk`` after the existing rows, then mark them complete and flush."""
        m = len(chunk)
        if m == 0:
            return
        samples = np.asarray(chunk.samples, dtype=np.float32)
        if samples.shape != (m, self.n_samples, params.N_PARAMS):
            raise PosteriorFileError(
                f"{self.path}: samples of shape {samples.shape}, expected "
                f"({m}, {self.n_samples}, {params.N_PARAMS})")
        quantiles = chunk.quantiles if chunk.quantiles is not None else posterior_quantiles(samples)
        values = {
            "source_id": np.asarray(chunk.source_id, dtype=np.int64),
            "samples": samples,
            "quantiles": np.asarray(quantiles, dtype=np.float32),
            "status": np.asarray(chunk.status, dtype=np.uint16),
            "message": np.asarray([str(s) for s in chunk.message], dtype=object),
            "input_file": np.asarray([str(s) for s in chunk.input_file], dtype=object),
            "ood_distance": np.asarray(chunk.ood_distance, dtype=np.float32),
            "bound_params": np.asarray(chunk.bound_params, dtype=np.uint8),
        }
        for name in _OPTIONAL:
            if name in self.datasets:
                v = getattr(chunk, name)
                if v is None:
                    raise PosteriorFileError(f"{self.path}: the file has a '{name}' dataset, "
                                             f"the chunk to append carries none")
                values[name] = np.asarray(v, dtype=np.float32)
        if "input_row" in self.datasets:
            rows = chunk.input_row
            values["input_row"] = (np.full(m, -1, np.int64) if rows is None
                                   else np.asarray(rows, dtype=np.int64))
        n0, n1 = self.n, self.n + m
        for name in self.datasets:
            ds = self._f[name]
            ds.resize(n1, axis=0)
            ds[n0:n1] = values[name]
        self.n = n1
        self._f.attrs["n_complete"] = n1
        self._f.flush()

    def set_flag(self, rows: np.ndarray, bit: int) -> None:
        """Set status ``bit`` on the (already written) rows ``rows`` and flush."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if rows.size == 0:
            return
        ds = self._f["status"]
        for i in range(0, rows.size, 65536):
            block = rows[i:i + 65536]
            ds[block] = ds[block] | np.uint16(bit)
        self._f.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> "PosteriorWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_ROW_DATASETS = ("source_id", "samples", "quantiles", "status", "message", "input_file",
                 "ood_distance", "bound_params")
#: Row datasets only some files have (``infer --prior``, ``--keep-raw``, ``--gof``).
_OPTIONAL = ("ess", "samples_raw", "gof_chi2_red", "gof_p")
#: Integer row datasets that files of older versions lack (written -1 when a chunk has none).
_OPTIONAL_INT = ("input_row",)


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


@dataclass
class Posterior:
    """Contents of a posterior file (or of a slice of its rows)."""

    source_id: np.ndarray
    samples: np.ndarray | None
    quantiles: np.ndarray
    status: np.ndarray
    message: np.ndarray
    input_file: np.ndarray
    ood_distance: np.ndarray
    bound_params: np.ndarray
    attrs: dict = field(default_factory=dict)
    ess: np.ndarray | None = None
    samples_raw: np.ndarray | None = None
    input_row: np.ndarray | None = None
    gof_chi2_red: np.ndarray | None = None
    gof_p: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.source_id.shape[0])


def _open(path: str | os.PathLike) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise PosteriorFileError(f"{path}: no such posterior file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise PosteriorFileError(f"{path}: not an HDF5 file ({exc})") from exc
    try:
        check_compatible(f, path)
    except Exception:
        f.close()
        raise
    return f


def _attrs(f: h5py.File) -> dict:
    out = {}
    for k, v in f.attrs.items():
        out[k] = v.decode() if isinstance(v, bytes) else v
    return out


def _rows(f: h5py.File, sl: slice, with_samples: bool) -> Posterior:
    return Posterior(
        source_id=f["source_id"][sl],
        samples=f["samples"][sl] if with_samples else None,
        quantiles=f["quantiles"][sl],
        status=f["status"][sl],
        message=f["message"].asstr()[sl],
        input_file=f["input_file"].asstr()[sl],
        ood_distance=f["ood_distance"][sl],
        bound_params=f["bound_params"][sl],
        attrs=_attrs(f),
        ess=f["ess"][sl] if "ess" in f else None,
        samples_raw=f["samples_raw"][sl] if with_samples and "samples_raw" in f else None,
        input_row=f["input_row"][sl] if "input_row" in f else None,
        gof_chi2_red=f["gof_chi2_red"][sl] if "gof_chi2_red" in f else None,
        gof_p=f["gof_p"][sl] if "gof_p" in f else None,
    )


def read_posterior(path: str | os.PathLike, samples: bool = True) -> Posterior:
    """Read all completed rows of a posterior file (``samples=False`` skips the big array)."""
    with _open(path) as f:
        return _rows(f, slice(0, int(f.attrs["n_complete"])), samples)


def iter_posterior(path: str | os.PathLike, chunk_size: int = 4096,
                   samples: bool = True) -> Iterator[Posterior]:
    """Stream the completed rows of a posterior file in chunks of ``chunk_size`` sources."""
    with _open(path) as f:
        n = int(f.attrs["n_complete"])
        for i in range(0, n, chunk_size):
            yield _rows(f, slice(i, min(i + chunk_size, n)), samples)


def completed_rows(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(input_file (n,) str, source_id (n,) int64, input_row (n,) int64 or None for files
    without it) of every completed row, in file order: what a resume skips."""
    with _open(path) as f:
        n = int(f.attrs["n_complete"])
        files = f["input_file"].asstr()[:n].astype(str)
        ids = f["source_id"][:n]
        rows = f["input_row"][:n] if "input_row" in f else None
    return files, ids, rows


def completed_keys(path: str | os.PathLike) -> set[tuple[str, int]]:
    """(input_file, source_id) of every completed row: the work a resume may skip."""
    with _open(path) as f:
        n = int(f.attrs["n_complete"])
        files = f["input_file"].asstr()[:n]
        ids = f["source_id"][:n]
    return {(str(a), int(b)) for a, b in zip(files, ids)}


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
    suffix = path.suffix.lower()
    formats = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".fits": "fits"}
    if suffix not in formats:
        raise PosteriorFileError(f"{path}: summary format must be .ecsv, .csv or .fits")
    if not path.parent.is_dir():
        raise PosteriorFileError(f"{path}: directory {path.parent} does not exist")
    with atomic_path(path) as tmp:
        table.write(tmp, format=formats[suffix], overwrite=True)
    return path


def read_summary(path: str | os.PathLike) -> Table:
    """Read a summary table written by :func:`write_summary`."""
    path = Path(path)
    fmt = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".fits": "fits"}.get(path.suffix.lower())
    if fmt is None or not path.is_file():
        raise PosteriorFileError(f"{path}: not a summary table (.ecsv, .csv or .fits)")
    return Table.read(path, format=fmt)
