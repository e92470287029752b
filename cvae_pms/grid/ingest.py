"""Ingest a user's grid table (CSV, ECSV, FITS, Parquet, VOTable or HDF5) into a grid file.

The input holds the seven parameters (:data:`cvae_pms.params.NAMES`, renamed with
``column_map``) and, per row, either XP coefficients -- archive-style array columns
``bp_coefficients``/``rp_coefficients`` ('(c0, c1, ...)' or '[...]' strings, or real array
columns) or one column each ``bp_coeff_0..54``/``rp_coeff_0..54`` -- or sampled flux
[W m^-2 nm^-1] on 336..1020 nm step 2 nm (``flux_0..flux_342`` or an array column ``flux``),
which is converted with :func:`cvae_pms.xp.flux_fit.flux_to_coefficients`.

Tables are streamed in chunks by the readers of :mod:`cvae_pms.grid.ingest_sources` (ECSV
and VOTable are read whole by astropy: fine below ~1e6 rows). Rows are numbered from 0, the
first data row (header excluded).
Bad rows (NaN/inf, outside the parameter bounds, non-positive Mdot with ``mdot_linear``,
duplicate parameter vectors) fail the ingest with counts and row numbers, or are dropped and
counted with ``drop_invalid``. Nothing is left at ``out_path`` on failure.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvae_pms import params as P
from cvae_pms.grid.format import FORMAT_VERSION, N_COEFF, N_FLUX, package_version
from cvae_pms.grid.grid_writer import GridWriter
from cvae_pms.grid.ingest_sources import Hdf5Source, IngestError, TableSource, open_source

__all__ = ["IngestError", "IngestReport", "MAP_TARGETS", "check_map_targets", "ingest_table"]

_COL_RE = re.compile(r"^(bp_coeff|rp_coeff|flux)_(\d+)$")
_SHOWN = 5


@dataclass
class IngestReport:
    """What :func:`ingest_table` did."""

    input_path: str
    out_path: str
    input_format: str
    spectra: str  # 'coefficients' or 'sampled_flux'
    rows_read: int = 0
    rows_written: int = 0
    rows_dropped: dict[str, int] = field(default_factory=dict)
    content_hash: str = ""
    flux_fit: dict | None = None

    def lines(self) -> list[str]:
        """Human-readable summary, one line per fact."""
        out = [f"input:   {self.input_path} ({self.input_format}, {self.spectra})",
               f"output:  {self.out_path}",
               f"rows read {self.rows_read}, written {self.rows_written}, "
               f"dropped {sum(self.rows_dropped.values())}"]
        out += [f"  dropped {n}: {why}" for why, n in self.rows_dropped.items()]
        if self.flux_fit:
            f = self.flux_fit
            out.append(f"flux -> coefficients (ridge alpha {f['ridge_alpha']:g}): relative "
                       f"residual median {f['rel_residual_median']:.2e}, p90 "
                       f"{f['rel_residual_p90']:.2e}, max {f['rel_residual_max']:.2e}")
        out.append(f"content hash {self.content_hash}")
        return out


def _rows(rows: np.ndarray | list[int]) -> str:
    rows = list(rows)
    return ", ".join(str(int(r)) for r in rows[:_SHOWN]) + (", ..." if len(rows) > _SHOWN else "")


def _column_list(cols: list[str], limit: int = 30) -> str:
    """Column names for a message, with runs like ``bp_coeff_0..bp_coeff_54`` collapsed."""
    runs: list[list] = []  # [prefix, first, last] or [name, None, None]
    for c in cols:
        m = re.match(r"^(.*?)(\d+)$", c)
        if m and runs and runs[-1][0] == m.group(1) and runs[-1][2] == int(m.group(2)) - 1:
            runs[-1][2] += 1
        elif m:
            runs.append([m.group(1), int(m.group(2)), int(m.group(2))])
        else:
            runs.append([c, None, None])
    names = [r[0] if r[1] is None else (f"{r[0]}{r[1]}" if r[1] == r[2]
                                        else f"{r[0]}{r[1]}..{r[0]}{r[2]}") for r in runs]
    more = f", ... ({len(cols)} columns)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ------------------------------------------------------------------------------- conversion
def _numeric(values: np.ndarray, name: str, start: int, path: Path) -> np.ndarray:
    """A 1-D column as float64; non-numeric cells are an error naming the row."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise IngestError(f"{path}: column {name!r} holds arrays, expected one number per row")
    if values.dtype.kind in "fiub":
        return values.astype(np.float64)
    import pandas as pd
    num = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    blank = pd.isna(pd.Series(values)).to_numpy() | (pd.Series(values).astype(str).str.strip()
                                                      == "").to_numpy()
    bad = np.flatnonzero(np.isnan(num) & ~blank)
    if bad.size:
        raise IngestError(f"{path}: column {name!r}, rows {_rows(bad + start)}: "
                          f"{values[bad[0]]!r} is not a number")
    return num


def _array(values: np.ndarray, name: str, width: int, start: int, path: Path) -> np.ndarray:
    """An array column ((n, width) numbers, '(..)'/'[..]' strings or sequences) as (n, width).

    Empty cells (a missing band) become rows of NaN.
    """
    values = np.asarray(values)
    what = "coefficients" if name != "flux" else "flux samples"
    if values.ndim == 2 and values.dtype.kind in "fiu":
        if values.shape[1] != width:
            raise IngestError(f"{path}: wrong number of {what} in {name!r}: {values.shape[1]} "
                              f"per row, expected {width}")
        return values.astype(np.float64)
    n = values.shape[0]
    out = np.full((n, width), np.nan)
    if values.dtype.kind in "US" or (values.dtype == object and n and all(
            isinstance(v, str) or v is None or (isinstance(v, float) and np.isnan(v))
            for v in values[: min(n, 20)])):
        import pandas as pd
        s = pd.Series(values, dtype=object)
        present = s.notna().to_numpy().copy()
        text = s[present].astype(str).str.strip().str.strip("()[]").str.strip()
        present[present] = (text != "").to_numpy()
        text = text[text != ""]
        counts = (text.str.count(",") + 1).to_numpy()
        wrong = np.flatnonzero(present)[counts != width]
        if wrong.size:
            got = counts[counts != width][0]
            raise IngestError(f"{path}: wrong number of {what} in {name!r}: row "
                              f"{_rows(wrong + start)} has {got}, expected {width}")
        try:
            flat = np.array(",".join(text.tolist()).split(","), dtype=np.float64)
        except ValueError as exc:
            raise IngestError(f"{path}: column {name!r}, rows {start}..{start + n - 1}: "
                              f"non-numeric entry ({exc})") from exc
        out[present] = flat.reshape(-1, width)
        return out
    for i, v in enumerate(values):
        if v is None or (np.ndim(v) == 0 and not np.isfinite(float(v))):
            continue
        v = np.asarray(v, dtype=np.float64).ravel()
        if v.size == 0:
            continue
        if v.size != width:
            raise IngestError(f"{path}: wrong number of {what} in {name!r}: row {start + i} has "
                              f"{v.size}, expected {width}")
        out[i] = v
    return out


@dataclass
class _Layout:
    params: list[str]  # source column of each of P.NAMES
    spectra: str  # 'coefficients' or 'sampled_flux'
    kind: str  # 'array' or 'columns'
    read: list[str]  # source columns to read


#: Column names a ``--map THEIRS=OURS`` may rename to (besides ``bp_coeff_N`` ...).
MAP_TARGETS = (*P.NAMES, "bp_coefficients", "rp_coefficients", "flux")


def check_map_targets(column_map: dict) -> None:
    """:class:`IngestError` naming every ``--map`` target that is not one of our names."""
    for theirs, ours in column_map.items():
        if ours not in MAP_TARGETS and not _COL_RE.match(str(ours)):
            raise IngestError(f"--map {theirs}={ours}: {ours!r} is not one of our column names "
                              f"({', '.join(MAP_TARGETS)}, bp_coeff_N, rp_coeff_N, flux_N)")


def _resolve_layout(src: TableSource, column_map: dict) -> _Layout:
    cols = src.columns
    unknown = [k for k in column_map if k not in cols]
    if unknown and not isinstance(src, Hdf5Source):
        raise IngestError(f"{src.path}: --map names column(s) {', '.join(unknown)} that the file "
                          f"does not have; columns: {_column_list(cols)}")
    renamed = {column_map.get(c, c): c for c in cols}  # our name -> source column
    missing = [n for n in P.NAMES if n not in renamed]
    if missing:
        raise IngestError(f"{src.path}: missing parameter column(s) {', '.join(missing)} "
                          f"(rename with --map THEIRS=OURS); columns: {_column_list(cols)}")
    indexed: dict[str, set[int]] = {"bp_coeff": set(), "rp_coeff": set(), "flux": set()}
    for ours in renamed:
        m = _COL_RE.match(ours)
        if m:
            indexed[m.group(1)].add(int(m.group(2)))
    pars = [renamed[n] for n in P.NAMES]
    if "bp_coefficients" in renamed and "rp_coefficients" in renamed:
        return _Layout(pars, "coefficients", "array",
                       pars + [renamed["bp_coefficients"], renamed["rp_coefficients"]])
    if indexed["bp_coeff"] or indexed["rp_coeff"]:
        for band in ("bp_coeff", "rp_coeff"):
            if indexed[band] != set(range(N_COEFF)):
                have = sorted(indexed[band])
                raise IngestError(
                    f"{src.path}: wrong number of coefficients: {len(have)} columns "
                    f"{band}_N (N = {have[0] if have else '-'}..{have[-1] if have else '-'}), "
                    f"expected {band}_0..{band}_{N_COEFF - 1}")
        read = [renamed[f"{b}_{i}"] for b in ("bp_coeff", "rp_coeff") for i in range(N_COEFF)]
        return _Layout(pars, "coefficients", "columns", pars + read)
    if "flux" in renamed:
        return _Layout(pars, "sampled_flux", "array", pars + [renamed["flux"]])
    if indexed["flux"]:
        if indexed["flux"] != set(range(N_FLUX)):
            raise IngestError(f"{src.path}: {len(indexed['flux'])} flux_N columns, expected "
                              f"flux_0..flux_{N_FLUX - 1} (336..1020 nm, step 2 nm)")
        return _Layout(pars, "sampled_flux", "columns",
                       pars + [renamed[f"flux_{i}"] for i in range(N_FLUX)])
    raise IngestError(f"{src.path}: no spectra: expected bp_coefficients + rp_coefficients, "
                      f"bp_coeff_0..54 + rp_coeff_0..54, flux, or flux_0..342; "
                      f"columns: {_column_list(cols)}")


class _Problems:
    """Per-reason counts and first row numbers of rejected rows."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.rows: dict[str, list[int]] = {}

    def add(self, reason: str, rows: np.ndarray) -> None:
        if rows.size:
            self.count[reason] = self.count.get(reason, 0) + int(rows.size)
            kept = self.rows.setdefault(reason, [])
            kept.extend(rows[: _SHOWN + 1 - len(kept)].tolist() if len(kept) <= _SHOWN else [])

    def text(self) -> str:
        return "; ".join(f"{n} rows {why} (rows {_rows(self.rows[why])})"
                         for why, n in self.count.items())


def _check_rows(params: np.ndarray, spectra: dict[str, np.ndarray], mdot_nonpos: np.ndarray,
                seen: set[bytes], start: int, problems: _Problems) -> np.ndarray:
    """Mark invalid rows (each counted under its first reason); returns the keep mask."""
    n = params.shape[0]
    bad = np.zeros(n, dtype=bool)

    def mark(reason: str, mask: np.ndarray) -> None:
        new = mask & ~bad
        problems.add(reason, np.flatnonzero(new) + start)
        bad[:] |= new

    mark("with Mdot <= 0 (--mdot-linear needs Mdot > 0 in Msun/yr)", mdot_nonpos)
    mark("with NaN/inf parameters", ~np.isfinite(params).all(axis=1))
    for name, block in spectra.items():
        mark(f"with NaN/inf or missing {name}", ~np.isfinite(block).all(axis=1))
    out = P.outside_bounds(params)
    for j, par in enumerate(P.PARAMS):
        mark(f"outside the bounds of {par.name} [{par.low:g}, {par.high:g}]", out[:, j])
    keys = np.ascontiguousarray(params + 0.0).view(np.dtype((np.void, 8 * P.N_PARAMS))).ravel()
    dup = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(~bad):
        k = keys[i].tobytes()
        if k in seen:
            dup[i] = True
        else:
            seen.add(k)
    mark("duplicating an earlier parameter vector", dup)
    return ~bad


def ingest_table(input_path: str | os.PathLike, out_path: str | os.PathLike, *,
                 column_map: dict | None = None, mdot_linear: bool = False,
                 drop_invalid: bool = False, hdf5_datasets: dict | None = None,
                 reference_distance_pc: float | None = None,
                 chunk_size: int = 20000, overwrite: bool = False) -> IngestReport:
    """Convert a user table into a grid file.

    Args:
        input_path: CSV/ECSV/FITS/Parquet/VOTable table, or HDF5 with ``hdf5_datasets``.
        out_path: grid file to write (its directory must exist).
        column_map: {their column name: our name}, e.g. {"Teff": "teff"}.
        mdot_linear: the log_mdot column holds Mdot [Msun/yr]; stored as log10.
        drop_invalid: drop and count bad rows instead of failing.
        hdf5_datasets: {"params", "bp", "rp", "flux": dataset name, "param_columns": [names]}.
        reference_distance_pc: distance [pc] at which the fluxes are absolute; None = normalised.
        chunk_size: rows per streamed chunk.
        overwrite: replace an existing ``out_path`` (else it is refused).

    Returns:
        IngestReport with row counts, drop reasons, the content hash and flux-fit statistics.

    Raises:
        IngestError / GridError naming the file, column and rows (or the ``--map`` target that
        is not one of our column names); no output file is left.
    """
    from cvae_pms.outputs import OutputError, check_output_file

    in_path, out = Path(input_path), Path(out_path)
    column_map = dict(column_map or {})
    if not out.parent.is_dir():
        raise IngestError(f"{out}: output directory {out.parent} does not exist")
    if in_path.exists() and out.exists() and in_path.resolve() == out.resolve():
        raise IngestError(f"{out}: the output would overwrite the input")
    try:
        check_output_file(out, overwrite=overwrite, what="output grid")
    except OutputError as exc:
        raise IngestError(str(exc)) from exc
    check_map_targets(column_map)
    src = open_source(in_path, hdf5_datasets, column_map)
    try:
        layout = _resolve_layout(src, column_map)
        report = IngestReport(str(in_path), str(out), src.fmt, layout.spectra)
        with_flux = layout.spectra == "sampled_flux"
        meta = {
            "creator": f"cvae-pms {package_version()} grid ingest",
            "source": in_path.name,
            "forward_model": {},
            "random_seed": -1,
            "reference_distance_pc": (float("nan") if reference_distance_pc is None
                                      else float(reference_distance_pc)),
        }
        problems, seen, residuals = _Problems(), set(), []
        with GridWriter(out, meta, with_sampled_flux=with_flux) as writer:
            for start, chunk in src.chunks(layout.read, chunk_size):
                k = len(next(iter(chunk.values()))) if chunk else 0
                report.rows_read += k
                params = np.column_stack([_numeric(chunk[c], n, start, in_path)
                                          for c, n in zip(layout.params, P.NAMES)])
                nonpos = np.zeros(k, dtype=bool)
                if mdot_linear:
                    m = params[:, P.INDEX["log_mdot"]]
                    with np.errstate(invalid="ignore", divide="ignore"):
                        nonpos = np.isfinite(m) & (m <= 0)
                        params[:, P.INDEX["log_mdot"]] = np.log10(np.where(nonpos, np.nan, m))
                spectra = _spectra(chunk, layout, start, in_path)
                keep = _check_rows(params, spectra, nonpos, seen, start, problems)
                if problems.count and not drop_invalid:
                    continue  # keep scanning to report every bad row, write nothing more
                if not keep.any():
                    continue
                if with_flux:
                    flux = spectra["flux"][keep]
                    from cvae_pms.xp.flux_fit import flux_to_coefficients
                    bp, rp, rel = flux_to_coefficients(flux)
                    residuals.append(rel)
                    writer.append(params[keep], bp, rp, flux)
                else:
                    writer.append(params[keep], spectra["bp_coefficients"][keep],
                                  spectra["rp_coefficients"][keep])
            if report.rows_read == 0:
                raise IngestError(f"{in_path}: the table has no data rows")
            if problems.count and not drop_invalid:
                raise IngestError(f"{in_path}: {sum(problems.count.values())} of "
                                  f"{report.rows_read} rows are invalid: {problems.text()} "
                                  f"(fix them, or drop them with --drop-invalid)")
            if writer.n == 0:
                raise IngestError(f"{in_path}: all {report.rows_read} rows are invalid: "
                                  f"{problems.text()}")
            report.rows_dropped = dict(problems.count)
            report.rows_written = writer.n
            if residuals:
                from cvae_pms.xp.flux_fit import RIDGE_ALPHA
                rel = np.concatenate(residuals)
                q50, q90, q99 = np.nanpercentile(rel, [50, 90, 99])
                report.flux_fit = {"ridge_alpha": RIDGE_ALPHA,
                                   "rel_residual_median": float(q50),
                                   "rel_residual_p90": float(q90),
                                   "rel_residual_p99": float(q99),
                                   "rel_residual_max": float(np.nanmax(rel))}
            writer.meta["ingest"] = {
                "input_format": src.fmt, "spectra": layout.spectra,
                "column_map": column_map, "mdot_linear": mdot_linear,
                "drop_invalid": drop_invalid, "hdf5_datasets": hdf5_datasets or {},
                "rows_read": report.rows_read, "rows_dropped": report.rows_dropped,
                "flux_fit": report.flux_fit or {},
                "format_version": FORMAT_VERSION,
            }
        report.content_hash = writer.content_hash or ""
        return report
    finally:
        src.close()


def _spectra(chunk: dict, layout: _Layout, start: int, path: Path) -> dict[str, np.ndarray]:
    if layout.kind == "array":
        names = (["bp_coefficients", "rp_coefficients"] if layout.spectra == "coefficients"
                 else ["flux"])
        cols = layout.read[P.N_PARAMS:]
        return {n: _array(chunk[c], n, N_FLUX if n == "flux" else N_COEFF, start, path)
                for n, c in zip(names, cols)}
    cols = layout.read[P.N_PARAMS:]

    def block(sub: list[str]) -> np.ndarray:
        return np.column_stack([_numeric(chunk[c], c, start, path) for c in sub])
    if layout.spectra == "coefficients":
        return {"bp_coefficients": block(cols[:N_COEFF]), "rp_coefficients": block(cols[N_COEFF:])}
    return {"flux": block(cols)}
