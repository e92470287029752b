"""The grid file: an HDF5 file of parameter vectors and their Gaia XP coefficients.

Layout (format version 1, spec in ``grids/README.md``):

- ``params`` (N, 7) float64, physical units, attributes ``names``, ``units``, ``low``, ``high``;
- ``bp_coefficients``, ``rp_coefficients`` (N, 55) float64;
- optional ``sampled_flux`` (N, 343) float64, W m^-2 nm^-1 on 336..1020 nm, step 2 nm;
- group ``meta`` with attributes (format_version, creator, created_utc, param_table,
  forward_model, random_seed, reference_distance_pc, source, content_hash, ...).

Files are written under a temporary sibling (:func:`cvae_pms.atomic.temporary_sibling`) and
renamed at the end, so ``path`` never holds a half-written grid.

Example
-------
>>> import numpy as np, tempfile, os
>>> from cvae_pms.grid.gridfile import write_grid, open_grid
>>> p = np.array([[4000.0, 4.0, 0.0, -8.0, 0.01, 0.6, 1.0]])
>>> path = os.path.join(tempfile.mkdtemp(), "g.h5")
>>> content_hash = write_grid(path, p, np.ones((1, 55)), np.ones((1, 55)), meta={"source": "doc"})
>>> len(content_hash)
64
>>> with open_grid(path) as g:
...     g.n, g.meta["source"]
(1, 'doc')
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cvae_pms import params as P
from cvae_pms.atomic import temporary_sibling
from cvae_pms.errors import CvaePmsError

FORMAT_VERSION = 1
N_COEFF = 55
N_FLUX = 343
#: Wavelengths of ``sampled_flux`` [nm].
FLUX_WAVELENGTH_NM = np.arange(336.0, 1020.0 + 1.0, 2.0)
#: Numeric datasets, in the order they enter the content hash.
DATASETS = ("params", "bp_coefficients", "rp_coefficients", "sampled_flux")
WIDTHS = {"params": P.N_PARAMS, "bp_coefficients": N_COEFF, "rp_coefficients": N_COEFF,
          "sampled_flux": N_FLUX}
#: Meta attributes that are left out of the content hash.
UNHASHED_META = ("created_utc", "creator", "content_hash", "json_keys")
#: Meta attributes always stored as JSON strings.
JSON_META = ("param_table", "forward_model", "ingest")
_CHUNK_ROWS = 4096
_MAX_REPORTED_ROWS = 5


class GridError(CvaePmsError):
    """A grid file is missing, unreadable or inconsistent (the message names the file/rows)."""


def _version_string() -> str:
    try:
        from importlib.metadata import version
        return version("cvae-pms")
    except Exception:  # package metadata absent (source tree without install)
        return "unknown"


def _plain(value: Any) -> Any:
    """Convert numpy scalars/arrays and NaN into JSON-friendly Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return "NaN" if math.isnan(value) else value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, bytes):
        return value.decode()
    return value


def canonical_meta_json(meta: dict) -> str:
    """Canonical JSON of the meta that enters the content hash (sorted keys, no timestamps)."""
    kept = {k: v for k, v in meta.items() if k not in UNHASHED_META}
    return json.dumps(_plain(kept), sort_keys=True, separators=(",", ":"))


class _ContentHasher:
    """sha256 over each numeric dataset's little-endian float64 bytes (streamed), then meta."""

    def __init__(self) -> None:
        self._parts = {name: hashlib.sha256() for name in DATASETS}
        self._rows = dict.fromkeys(DATASETS, 0)

    def update(self, name: str, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype="<f8")
        self._parts[name].update(block.tobytes())
        self._rows[name] += block.shape[0]

    def hexdigest(self, meta: dict, present: tuple[str, ...]) -> str:
        total = hashlib.sha256()
        for name in DATASETS:
            if name in present:
                total.update(f"{name}:{self._rows[name]}x{WIDTHS[name]}:".encode())
                total.update(self._parts[name].digest())
        total.update(canonical_meta_json(meta).encode())
        return total.hexdigest()


def _rows_text(rows: np.ndarray, offset: int = 0) -> str:
    rows = np.asarray(rows) + offset
    shown = ", ".join(str(int(r)) for r in rows[:_MAX_REPORTED_ROWS])
    return shown + (", ..." if rows.size > _MAX_REPORTED_ROWS else "")


def _default_meta() -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "creator": f"cvae-pms {_version_string()}",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "param_table": P.table_dict(),
        "forward_model": {},
        "random_seed": -1,
        "reference_distance_pc": float("nan"),
        "source": "",
    }


def _normalise_meta(meta: dict) -> dict:
    """Defaults + user meta, with dict/list values normalised through JSON (as stored)."""
    out = _default_meta()
    out.update(meta)
    out["format_version"] = FORMAT_VERSION
    for key, value in list(out.items()):
        if isinstance(value, (dict, list, tuple)):
            out[key] = json.loads(json.dumps(_plain(value)))
        elif value is None:
            out[key] = ""
    return out


def _write_meta_attrs(group: h5py.Group, meta: dict) -> None:
    json_keys = sorted(k for k, v in meta.items() if isinstance(v, (dict, list)) or k in JSON_META)
    for key, value in meta.items():
        if key in json_keys:
            group.attrs[key] = json.dumps(_plain(value), sort_keys=True)
        elif isinstance(value, bool):
            group.attrs[key] = np.bool_(value)
        elif isinstance(value, (int, np.integer)):
            group.attrs[key] = np.int64(value)
        elif isinstance(value, (float, np.floating)):
            group.attrs[key] = np.float64(value)
        else:
            group.attrs[key] = str(value)
    group.attrs["json_keys"] = json.dumps(json_keys)


def _read_meta_attrs(group: h5py.Group) -> dict:
    json_keys = set(json.loads(group.attrs.get("json_keys", "[]"))) | set(JSON_META)
    meta: dict = {}
    for key, value in group.attrs.items():
        if key == "json_keys":
            continue
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str) and key in json_keys:
            value = json.loads(value)
        elif isinstance(value, np.integer):
            value = int(value)
        elif isinstance(value, np.floating):
            value = float(value)
        elif isinstance(value, np.bool_):
            value = bool(value)
        meta[key] = value
    return meta


class GridWriter:
    """Stream rows into a new grid file; the file appears at ``path`` only on a clean exit.

    Args:
        path: output grid file (.h5).
        meta: meta attributes (see module doc); missing ones get defaults.
        with_sampled_flux: also store ``sampled_flux`` (N, 343) [W m^-2 nm^-1].
        expected_rows: size hint for the HDF5 chunk layout.
        compression: HDF5 filter (``"gzip"`` or None).

    ``meta`` stays editable as ``writer.meta`` until the ``with`` block ends (e.g. to add
    statistics known only after the last chunk).
    """

    def __init__(self, path: str | os.PathLike, meta: dict, with_sampled_flux: bool = False,
                 expected_rows: int | None = None, compression: str | None = "gzip") -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise GridError(f"{self.path}: output directory {self.path.parent} does not exist")
        self.meta = dict(meta)
        self.with_sampled_flux = with_sampled_flux
        self.expected_rows = expected_rows
        self.compression = compression
        self.tmp_path = temporary_sibling(self.path)
        self.n = 0
        self.content_hash: str | None = None
        self._file: h5py.File | None = None
        self._hasher = _ContentHasher()

    @property
    def _names(self) -> tuple[str, ...]:
        return DATASETS if self.with_sampled_flux else DATASETS[:3]

    def __enter__(self) -> GridWriter:
        try:
            self._file = h5py.File(self.tmp_path, "w", track_order=True)
        except OSError as exc:
            raise GridError(f"{self.path}: cannot create {self.tmp_path}: {exc}") from exc
        rows = max(1, min(_CHUNK_ROWS, self.expected_rows or _CHUNK_ROWS))
        for name in self._names:
            width = WIDTHS[name]
            self._file.create_dataset(
                name, shape=(0, width), maxshape=(None, width), dtype="<f8",
                chunks=(rows, width), track_times=False, compression=self.compression,
                shuffle=self.compression is not None)
        ds = self._file["params"]
        ds.attrs["names"] = list(P.NAMES)
        ds.attrs["units"] = [p.unit for p in P.PARAMS]
        ds.attrs["low"] = P.LOW
        ds.attrs["high"] = P.HIGH
        return self

    def append(self, params: np.ndarray, bp: np.ndarray, rp: np.ndarray,
               sampled_flux: np.ndarray | None = None) -> None:
        """Validate and append k rows: params (k,7) physical units, bp/rp (k,55), flux (k,343)."""
        if self._file is None:
            raise GridError(f"{self.path}: GridWriter.append outside its 'with' block")
        blocks = {"params": params, "bp_coefficients": bp, "rp_coefficients": rp}
        if self.with_sampled_flux:
            if sampled_flux is None:
                raise GridError(f"{self.path}: this grid stores sampled_flux; none given")
            blocks["sampled_flux"] = sampled_flux
        elif sampled_flux is not None:
            raise GridError(f"{self.path}: sampled_flux given but with_sampled_flux=False")
        k = None
        for name, block in blocks.items():
            block = np.asarray(block, dtype=np.float64)
            if block.ndim != 2 or block.shape[1] != WIDTHS[name]:
                raise GridError(f"{self.path}: {name} chunk has shape {block.shape}, "
                                f"expected (k, {WIDTHS[name]})")
            if k is None:
                k = block.shape[0]
            elif block.shape[0] != k:
                raise GridError(f"{self.path}: {name} chunk has {block.shape[0]} rows, "
                                f"params has {k}")
            bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
            if bad.size:
                raise GridError(f"{self.path}: {bad.size} rows with NaN/inf in {name} "
                                f"(rows {_rows_text(bad, self.n)})")
            blocks[name] = block
        out = P.outside_bounds(blocks["params"])
        if out.any():
            rows = np.flatnonzero(out.any(axis=1))
            which = sorted({P.NAMES[j] for j in np.flatnonzero(out.any(axis=0))})
            raise GridError(f"{self.path}: {rows.size} rows outside the parameter bounds "
                            f"(rows {_rows_text(rows, self.n)}; parameters {', '.join(which)})")
        for name, block in blocks.items():
            ds = self._file[name]
            ds.resize(self.n + k, axis=0)
            ds[self.n:self.n + k] = block
            self._hasher.update(name, block)
        self.n += k

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if self.n == 0:
                    raise GridError(f"{self.path}: no rows were written; refusing an empty grid")
                meta = _normalise_meta(self.meta)
                self.content_hash = self._hasher.hexdigest(meta, self._names)
                meta["content_hash"] = self.content_hash
                _write_meta_attrs(self._file.create_group("meta"), meta)
                self._file.close()
                self._file = None
                os.replace(self.tmp_path, self.path)
        except BaseException:
            self._discard()
            raise
        if exc_type is not None:
            self._discard()

    def _discard(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # the file is removed anyway
                pass
            self._file = None
        self.tmp_path.unlink(missing_ok=True)


def write_grid(path: str | os.PathLike, params: np.ndarray, bp: np.ndarray, rp: np.ndarray,
               meta: dict, sampled_flux: np.ndarray | None = None) -> str:
    """Write a whole grid at once (arrays as in :meth:`GridWriter.append`); returns its hash."""
    n = int(np.shape(params)[0])
    with GridWriter(path, meta, with_sampled_flux=sampled_flux is not None,
                    expected_rows=n) as writer:
        for start in range(0, n, 65536):
            sl = slice(start, start + 65536)
            writer.append(params[sl], bp[sl], rp[sl],
                          None if sampled_flux is None else sampled_flux[sl])
    return writer.content_hash


class Grid:
    """A readable grid file (see :func:`open_grid`). Close it, or use it in a ``with`` block."""

    def __init__(self, path: Path, handle: h5py.File, meta: dict, n: int) -> None:
        self.path = path
        self._h5 = handle
        self.meta = meta
        self.n = n

    def __enter__(self) -> Grid:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying HDF5 file."""
        self._h5.close()

    def __repr__(self) -> str:
        return f"Grid({str(self.path)!r}, n={self.n})"

    @property
    def has_sampled_flux(self) -> bool:
        return "sampled_flux" in self._h5

    @property
    def reference_distance_pc(self) -> float | None:
        """Distance [pc] at which the fluxes are absolute; None for normalised grids."""
        d = self.meta.get("reference_distance_pc")
        try:
            d = float(d)
        except (TypeError, ValueError):
            return None
        return None if math.isnan(d) else d

    @property
    def content_hash(self) -> str:
        return str(self.meta.get("content_hash", ""))

    def _read(self, name: str, idx: Any = None) -> np.ndarray:
        try:
            ds = self._h5[name]
            if idx is None:
                return ds[()]
            if isinstance(idx, slice):
                return ds[idx]
            idx = np.asarray(idx)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            idx = np.where(idx < 0, idx + self.n, idx).astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= self.n):
                raise GridError(f"{self.path}: row index out of range 0..{self.n - 1}")
            uniq, inverse = np.unique(idx, return_inverse=True)
            data = ds[uniq] if uniq.size else np.empty((0, ds.shape[1]), dtype=ds.dtype)
            return data[inverse.ravel()]
        except (OSError, KeyError) as exc:
            raise GridError(f"{self.path}: cannot read {name} "
                            f"(truncated or corrupt?): {exc}") from exc

    @property
    def params(self) -> np.ndarray:
        """All parameter vectors (N, 7), physical units."""
        return self._read("params")

    def coefficients(self, idx: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """BP and RP coefficients (n, 55) each, of rows ``idx`` (all rows when None)."""
        return self._read("bp_coefficients", idx), self._read("rp_coefficients", idx)

    def sampled_flux(self, idx: Any = None) -> np.ndarray:
        """Sampled flux (n, 343) [W m^-2 nm^-1] on :data:`FLUX_WAVELENGTH_NM`."""
        if not self.has_sampled_flux:
            raise GridError(f"{self.path}: this grid has no sampled_flux dataset")
        return self._read("sampled_flux", idx)

    def read(self, idx: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(params, bp, rp) of rows ``idx`` (slice, integer array or boolean mask)."""
        bp, rp = self.coefficients(idx)
        return self._read("params", idx), bp, rp

    def iter_chunks(self, chunk_size: int = 65536
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (start_row, params, bp, rp) blocks of at most ``chunk_size`` rows."""
        for start in range(0, self.n, chunk_size):
            sl = slice(start, min(start + chunk_size, self.n))
            p, bp, rp = self.read(sl)
            yield start, p, bp, rp


def open_grid(path: str | os.PathLike) -> Grid:
    """Open a grid file and check its structure and parameter table (not every value).

    Raises:
        GridError: missing file, not HDF5 / truncated / corrupt, missing datasets, shape
            mismatches, another format version, or another parameter table.
    """
    path = Path(path)
    if not path.is_file():
        raise GridError(f"{path}: grid file not found")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise GridError(f"{path} is not a readable HDF5 file (truncated or corrupt?): "
                        f"{exc}") from exc
    try:
        missing = [n for n in DATASETS[:3] if n not in h5]
        if missing or "meta" not in h5:
            raise GridError(f"{path}: not a cvae-pms grid: missing "
                            f"{', '.join(missing + ([] if 'meta' in h5 else ['meta group']))}"
                            f" (has {', '.join(h5.keys()) or 'nothing'})")
        meta = _read_meta_attrs(h5["meta"])
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise GridError(f"{path}: grid format version {version!r}; this cvae-pms reads "
                            f"version {FORMAT_VERSION}")
        n = h5["params"].shape[0]
        for name in DATASETS:
            if name not in h5:
                continue
            shape = h5[name].shape
            if len(shape) != 2 or shape != (n, WIDTHS[name]):
                raise GridError(f"{path}: dataset {name} has shape {shape}, "
                                f"expected ({n}, {WIDTHS[name]})")
        try:
            P.check_table(meta.get("param_table", {}), str(path))
        except P.ParameterTableMismatch as exc:
            raise GridError(str(exc)) from exc
    except GridError:
        h5.close()
        raise
    except (OSError, KeyError, ValueError) as exc:
        h5.close()
        raise GridError(f"{path} is not a readable HDF5 file (truncated or corrupt?): "
                        f"{exc}") from exc
    return Grid(path, h5, meta, n)


def validate_grid(path: str | os.PathLike, full: bool = True, chunk_size: int = 65536) -> None:
    """Check every value of a grid; raise :class:`GridError` naming the first problem found.

    Checks: NaN/inf in any dataset, rows outside the parameter bounds (count, first rows,
    parameters), duplicate parameter rows, and (``full``) the content hash. Streams in chunks;
    the duplicate check holds the (N, 7) parameters in memory (56 bytes per row).
    """
    with open_grid(path) as grid:
        hasher = _ContentHasher()
        names = tuple(n for n in DATASETS if n != "sampled_flux" or grid.has_sampled_flux)
        problems: list[str] = []
        bad_finite: dict[str, list[int]] = {}
        out_rows: list[np.ndarray] = []
        out_params: set[str] = set()
        for start in range(0, grid.n, chunk_size):
            sl = slice(start, min(start + chunk_size, grid.n))
            for name in names:
                block = grid._read(name, sl)
                hasher.update(name, block)
                bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
                if bad.size:
                    bad_finite.setdefault(name, []).extend((bad + start).tolist())
                if name == "params":
                    out = P.outside_bounds(block) & np.isfinite(block)
                    if out.any():
                        out_rows.append(np.flatnonzero(out.any(axis=1)) + start)
                        out_params |= {P.NAMES[j] for j in np.flatnonzero(out.any(axis=0))}
        for name, rows in bad_finite.items():
            problems.append(f"{len(rows)} rows with NaN/inf in {name} (rows "
                            f"{_rows_text(np.array(rows))})")
        if out_rows:
            rows = np.concatenate(out_rows)
            problems.append(f"{rows.size} rows outside the parameter bounds (rows "
                            f"{_rows_text(rows)}; parameters {', '.join(sorted(out_params))})")
        dup = duplicate_rows(grid.params)
        if dup.size:
            problems.append(f"{dup.size} duplicate parameter rows (rows {_rows_text(dup)})")
        if full:
            actual = hasher.hexdigest(grid.meta, names)
            if actual != grid.content_hash:
                problems.append(f"content hash mismatch: stored {grid.content_hash}, "
                                f"computed {actual} (file modified after writing?)")
        if problems:
            raise GridError(f"{grid.path}: " + "; ".join(problems))


def duplicate_rows(params: np.ndarray) -> np.ndarray:
    """Indices of rows (n, k) that repeat an earlier row exactly (sorted)."""
    a = np.ascontiguousarray(params, dtype=np.float64) + 0.0  # -0.0 -> 0.0
    keys = a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).ravel()
    _, first = np.unique(keys, return_index=True)
    mask = np.ones(a.shape[0], dtype=bool)
    mask[first] = False
    return np.flatnonzero(mask)


def grid_summary(path: str | os.PathLike) -> dict:
    """Summary for ``grid info``: count, per-parameter min/max/5/50/95 %, version, hash, meta."""
    with open_grid(path) as grid:
        p = grid.params
        per_param = {}
        for j, par in enumerate(P.PARAMS):
            col = p[:, j]
            q5, q50, q95 = (np.percentile(col, [5, 50, 95]) if col.size
                            else (math.nan,) * 3)
            per_param[par.name] = {
                "unit": par.unit, "min": float(np.min(col)), "max": float(np.max(col)),
                "q05": float(q5), "q50": float(q50), "q95": float(q95),
                "low": par.low, "high": par.high,
            }
        return {
            "path": str(grid.path),
            "count": grid.n,
            "format_version": grid.meta.get("format_version"),
            "content_hash": grid.content_hash,
            "reference_distance_pc": grid.reference_distance_pc,
            "has_sampled_flux": grid.has_sampled_flux,
            "params": per_param,
            "meta": grid.meta,
        }
