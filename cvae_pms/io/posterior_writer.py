"""Writing a posterior file: :class:`PosteriorChunk` (rows to append) and
:class:`PosteriorWriter` (new or resumed file, chunk by chunk, flushed after each).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from cvae_pms import params
from cvae_pms.io.posterior_format import (FORMAT_VERSION, QUANTILE_LEVELS, STATUS_FLAGS,
                                       PosteriorFileError, _attr_value, check_compatible,
                                       posterior_quantiles)

_STR = h5py.string_dtype("utf-8")


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
