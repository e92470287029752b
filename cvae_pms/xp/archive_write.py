"""Write XP spectra in the Gaia archive layout (.csv/.ecsv), streamed and atomic."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cvae_pms.atomic import atomic_path

from .batch import BANDS, XPBatch, XPReadError, xp_format
from .covariance import N_COEFFICIENTS, errors_and_correlations

#: Sources formatted and written per chunk by :func:`write_xp_table`.
WRITE_CHUNK = 256


def _format_rows(values: np.ndarray, bracket: bool = True) -> list[str]:
    """(m, k) floats -> archive cells '[v0,v1,...]' (repr precision); '' for all-NaN rows."""
    out = []
    for row in values:
        if np.isnan(row).all():
            out.append("")
        else:
            out.append("[" + ",".join(repr(float(v)) for v in row) + "]")
    return out


def write_xp_table(path: str | os.PathLike, data: XPBatch | Mapping[str, Any]) -> Path:
    """Write XP spectra in the Gaia archive layout (.csv or .ecsv by extension), atomically.

    Columns: ``source_id, bp/rp_n_parameters, bp/rp_standard_deviation, bp/rp_coefficients,
    bp/rp_coefficient_errors, bp/rp_coefficient_correlations`` then the extra columns. Errors are
    ``sqrt(diag(cov))`` and correlations the strict lower triangle of the correlation matrix in
    Gaia order. Both :func:`read_xp` and ``gaiaxpy.calibrate`` read the result.

    Args:
        path: output file ending in .csv or .ecsv; written to a temporary sibling, then renamed.
        data: an :class:`XPBatch` (only usable sources are written), or a mapping with
            ``source_id`` (n,), ``bp_coefficients``/``rp_coefficients`` (n, 55),
            ``bp_covariance``/``rp_covariance`` (n, 55, 55), optional
            ``bp_standard_deviation``/``rp_standard_deviation`` (n,) (1.0 when absent) and
            ``extra`` (dict name -> (n,) array). A band row of NaN is written as missing.

    Returns:
        The path written.
    """
    import pandas as pd

    path = Path(path)
    fmt = xp_format(path)
    if fmt not in ("csv", "ecsv"):
        raise XPReadError(f"{path}: write_xp_table writes .csv or .ecsv, not {fmt}")
    if not path.parent.is_dir():
        raise XPReadError(f"{path}: output directory {path.parent} does not exist")
    if isinstance(data, XPBatch):
        batch = data.select(data.ok)
        cols: dict[str, Any] = {"source_id": batch.source_id, "extra": dict(batch.extra)}
        for band in BANDS:
            cols[f"{band}_coefficients"] = getattr(batch, f"{band}_coefficients")
            cols[f"{band}_covariance"] = getattr(batch, f"{band}_covariance")
            cols[f"{band}_standard_deviation"] = cols["extra"].pop(f"{band}_standard_deviation", None)
    else:
        cols = dict(data)
    sid = np.asarray(cols["source_id"], dtype=np.int64)
    n = len(sid)
    bands = {}
    for band in BANDS:
        std = cols.get(f"{band}_standard_deviation")
        bands[band] = (
            np.asarray(cols[f"{band}_coefficients"], dtype=np.float64).reshape(n, N_COEFFICIENTS),
            np.asarray(cols[f"{band}_covariance"], dtype=np.float64).reshape(
                n, N_COEFFICIENTS, N_COEFFICIENTS),
            np.ones(n) if std is None else np.where(np.isfinite(np.asarray(std, float)), std, 1.0))
    # extra columns: decided once for the whole table (an all-NaN float column is left out)
    extra = {name: np.asarray(v) for name, v in (cols.get("extra") or {}).items()
             if not (np.asarray(v).dtype.kind == "f" and np.isnan(np.asarray(v)).all())}

    def frame(sl: slice) -> Any:
        """The archive rows of sources ``sl`` as a DataFrame (text cells built per chunk)."""
        m = len(sid[sl])
        out: dict[str, Any] = {"source_id": sid[sl]}
        body: dict[str, Any] = {}
        for band in BANDS:
            coeff, cov, std = (a[sl] for a in bands[band])
            missing = np.isnan(coeff).any(axis=1) | np.isnan(cov).reshape(m, -1).any(axis=1)
            errors, corr = errors_and_correlations(np.where(missing[:, None, None], np.nan, cov))
            out[f"{band}_n_parameters"] = pd.array(
                [None if miss else N_COEFFICIENTS for miss in missing], dtype="Int64")
            body[f"{band}_standard_deviation"] = np.where(missing, np.nan, std)
            body[f"{band}_coefficients"] = _format_rows(np.where(missing[:, None], np.nan, coeff))
            body[f"{band}_coefficient_errors"] = _format_rows(errors)
            body[f"{band}_coefficient_correlations"] = _format_rows(corr)
        out.update(body)
        out.update({name: values[sl] for name, values in extra.items()})
        return pd.DataFrame(out)

    # Streamed in chunks of WRITE_CHUNK sources: the text of a row with correlations is ~50 kB,
    # so building all rows at once took ~2.5 GB for 2000 sources.
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        for k, lo in enumerate(range(0, max(n, 1), WRITE_CHUNK)):
            table = frame(slice(lo, lo + WRITE_CHUNK))
            if k == 0 and fmt == "ecsv":
                fh.write(_ecsv_header(table))
            table.to_csv(fh, index=False, header=k == 0, float_format="%.17g")
    return path


def _ecsv_header(table: Any) -> str:
    """ECSV 1.0 header with ',' delimiter; array columns as strings with a float64 subtype."""
    lines = ["# %ECSV 1.0", "# ---", "# delimiter: ','", "# datatype:"]
    for name in table.columns:
        kind = table[name].dtype.kind
        if name.endswith(("_coefficients", "_coefficient_errors", "_coefficient_correlations")):
            lines += [f"# - {{name: {name}, datatype: string, subtype: 'float64[null]'}}"]
        elif name == "source_id" or kind in "iu" or str(table[name].dtype) == "Int64":
            lines += [f"# - {{name: {name}, datatype: int64}}"]
        elif kind == "f":
            lines += [f"# - {{name: {name}, datatype: float64}}"]
        else:
            lines += [f"# - {{name: {name}, datatype: string}}"]
    lines.append("# schema: astropy-2.0")
    return "\n".join(lines) + "\n"
