"""Cross-check posterior summaries against a literature table.

The literature table (CSV, ECSV, VOTable or FITS, read with astropy) is joined to the
posterior summary by Gaia DR3 ``source_id`` or by position (nearest posterior source within a
radius, astropy ``SkyCoord.match_to_catalog_sky``). Literature columns are mapped to our
parameter names (columns already named ``teff``, ``logg``, ... map themselves) and converted:

- accretion rate: ``mdot_linear=True`` reads Msun/yr and takes log10 (errors:
  ``sigma_log = sigma / (Mdot ln 10)``); non-positive rates are skipped;
- extinction: literature A_V (Johnson V, ~551 nm) becomes A0 (Gaia, monochromatic at
  541.4 nm) as ``A0 = av_to_a0 * A_V``; the default :data:`AV_TO_A0` = 1.02 is
  A(541.4 nm) / A(551 nm) of the Gordon et al. (2023) law at R_V = 3.1 (1.022; F19 gives
  1.024). ``lit_extinction='a0'`` when the table already gives A0.

Per source and parameter: residual = ours (posterior median) - literature;
``z = residual / sqrt(sigma_post^2 + sigma_lit^2)`` with ``sigma_post = (p84 - p16) / 2``
(``sigma_lit = 0`` when the table has no error); whether the literature value lies in our
68 % (p16..p84) and 95 % (p2.5..p97.5) intervals. Missing literature values (masked, NaN,
empty) are skipped per parameter. Literature rows without a usable posterior are kept in
the ``unmatched`` table with the reason, never dropped silently.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import MaskedColumn, Table

from cvae_pms import params
from cvae_pms.errors import CvaePmsError
from cvae_pms.io.tables import table_format

from . import metrics

#: A0 / A_V for the G23 extinction law at R_V = 3.1 (A at 541.4 nm over A at 551 nm).
AV_TO_A0 = 1.02
#: Default match radius for RA/Dec matching, arcsec.
RADIUS_ARCSEC = 1.0
#: Posterior status bit meaning "failed, no samples" (see ``cvae_pms.posterior_file``).
_FAILED = 1

_RA_NAMES = ("ra", "raj2000", "ra_icrs", "_ra", "radeg")
_DEC_NAMES = ("dec", "dej2000", "de_icrs", "dec_icrs", "_de", "dedeg")
_ERROR_PATTERNS = ("e_{c}", "{c}_err", "{c}_error", "e{c}", "sigma_{c}", "{c}_sigma",
                   "err_{c}", "{c}_unc")


class CrosscheckError(CvaePmsError):
    """A table cannot be read or joined (message names the file and column/row)."""


def read_table(path: str | Path, what: str = "table") -> Table:
    """Read a CSV/ECSV/VOTable/FITS table with astropy (format from the suffix)."""
    path = Path(path)
    if not path.is_file():
        raise CrosscheckError(f"{path}: {what} not found")
    fmt = table_format(path)
    try:
        return Table.read(path, format=fmt) if fmt else Table.read(path)
    except Exception as exc:  # astropy raises many kinds for unreadable tables
        raise CrosscheckError(f"{path}: cannot read {what} ({exc})") from exc


def read_posterior_summary(path: str | Path, positions: str | Path | None = None) -> Table:
    """Posterior summary table from a posterior file (.h5) or its summary (.ecsv/.csv).

    ``positions`` (a table with ``source_id``, ``ra``, ``dec`` in degrees) adds coordinates
    by source_id when the summary has none.
    """
    from cvae_pms.posterior_file import (PosteriorFileError, read_posterior, read_summary,
                                         summary_table)

    path = Path(path)
    try:
        if path.suffix.lower() in (".h5", ".hdf5"):
            post = summary_table(read_posterior(path, samples=False))
        else:
            post = read_summary(path)
    except PosteriorFileError as exc:
        raise CrosscheckError(str(exc)) from exc
    if "source_id" not in post.colnames:
        raise CrosscheckError(f"{path}: posterior summary has no source_id column")
    if f"{params.NAMES[0]}_median" not in post.colnames:
        raise CrosscheckError(f"{path}: not a cvae-pms posterior summary "
                              f"(no {params.NAMES[0]}_median column)")
    if positions is not None:
        pos = read_table(positions, "positions table")
        ra, dec = _find_column(pos, _RA_NAMES), _find_column(pos, _DEC_NAMES)
        if "source_id" not in pos.colnames or ra is None or dec is None:
            raise CrosscheckError(f"{positions}: positions table needs source_id, ra and dec "
                                  f"columns (has {pos.colnames})")
        lookup = {int(s): k for k, s in enumerate(np.asarray(pos["source_id"]))}
        idx = np.array([lookup.get(int(s), -1) for s in post["source_id"]])
        for col, src in (("ra", ra), ("dec", dec)):
            vals = _float_column(pos, src)
            post[col] = np.where(idx >= 0, vals[np.maximum(idx, 0)], np.nan)
    return post


def _find_column(t: Table, candidates: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in t.colnames}
    return next((lower[c] for c in candidates if c in lower), None)


def _float_column(t: Table, name: str) -> np.ndarray:
    """A column as float64 with masked, empty or non-numeric entries as NaN."""
    col = t[name]
    if isinstance(col, MaskedColumn) or getattr(col, "mask", None) is not None:
        mask = np.asarray(getattr(col, "mask", np.zeros(len(col), bool)), dtype=bool)
    else:
        mask = np.zeros(len(col), bool)
    if col.dtype.kind in "fiu":
        out = np.asarray(col, dtype=np.float64).copy()
    else:
        out = np.array([_to_float(v) for v in np.asarray(col)], dtype=np.float64)
    out[np.broadcast_to(mask, out.shape)] = np.nan
    return out


def _to_float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return np.nan


def parse_mapping(items: list[str] | tuple[str, ...], option: str = "--map") -> dict[str, str]:
    """``['Teff=teff', ...]`` -> ``{'Teff': 'teff'}``; the right side must be a parameter."""
    out = {}
    for item in items:
        if "=" not in item:
            raise CrosscheckError(f"{option} {item!r}: expected LITCOLUMN=PARAMETER")
        lit, ours = (s.strip() for s in item.split("=", 1))
        if ours not in params.NAMES:
            raise CrosscheckError(f"{option} {item!r}: {ours!r} is not one of "
                                  f"{', '.join(params.NAMES)}")
        out[lit] = ours
    return out


def _mapped_columns(lit: Table, mapping: dict[str, str], option: str,
                    path: str) -> dict[str, str]:
    """Our parameter name -> literature column for the explicit ``option`` mapping; every
    named column must exist."""
    out: dict[str, str] = {}
    for col, name in mapping.items():
        if col not in lit.colnames:
            raise CrosscheckError(f"{path}: column {col!r} (from {option}) not in the table; "
                                  f"columns are {lit.colnames}")
        out[name] = col
    return out


def value_columns(lit: Table, mapping: dict[str, str], path: str = "literature") -> dict[str, str]:
    """Our parameter name -> literature column: explicit ``mapping`` first, then columns
    named exactly like a parameter."""
    out = _mapped_columns(lit, mapping, "--map", path)
    for name in params.NAMES:
        if name not in out and name in lit.colnames:
            out[name] = name
    return out


def error_columns(lit: Table, values: dict[str, str], mapping: dict[str, str],
                  path: str = "literature") -> dict[str, str]:
    """Our parameter name -> literature error column: explicit ``mapping`` (error column =
    parameter) first, then the usual names next to the value column (``e_X``, ``X_err``...)."""
    out = _mapped_columns(lit, mapping, "--error-map", path)
    lower = {c.lower(): c for c in lit.colnames}
    for name, col in values.items():
        if name in out:
            continue
        for pattern in _ERROR_PATTERNS:
            cand = pattern.format(c=col).lower()
            if cand in lower:
                out[name] = lower[cand]
                break
    return out


def literature_values(lit: Table, values: dict[str, str], errors: dict[str, str],
                      mdot_linear: bool = False, av_to_a0: float = AV_TO_A0,
                      lit_extinction: str = "av") -> tuple[np.ndarray, np.ndarray]:
    """Literature values and errors ``(n, 7)`` in our units; NaN where absent or unusable."""
    if lit_extinction not in ("av", "a0"):
        raise CrosscheckError(f"literature extinction must be 'av' or 'a0', got {lit_extinction!r}")
    n = len(lit)
    val = np.full((n, params.N_PARAMS), np.nan)
    err = np.full((n, params.N_PARAMS), np.nan)
    for name, col in values.items():
        k = params.INDEX[name]
        val[:, k] = _float_column(lit, col)
        if name in errors:
            err[:, k] = np.abs(_float_column(lit, errors[name]))
    k = params.INDEX["log_mdot"]
    if mdot_linear and "log_mdot" in values:
        rate = val[:, k].copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            val[:, k] = np.where(rate > 0, np.log10(rate), np.nan)
            err[:, k] = np.where(rate > 0, err[:, k] / (rate * np.log(10.0)), np.nan)
    k = params.INDEX["a0"]
    if lit_extinction == "av" and "a0" in values:
        val[:, k] *= av_to_a0
        err[:, k] *= av_to_a0
    return val, err


def literature_ids(lit: Table, column: str, path: str = "literature") -> np.ndarray:
    """Gaia source_ids (int64, -1 when unreadable) from an integer or text column
    (text such as ``'Gaia DR3 4345775217221821312'``: the last run of digits)."""
    if column not in lit.colnames:
        raise CrosscheckError(f"{path}: no id column {column!r} for --match source_id; "
                              f"columns are {lit.colnames}")
    col = lit[column]
    mask = np.asarray(getattr(col, "mask", np.zeros(len(col), bool)), dtype=bool)
    out = np.full(len(col), -1, dtype=np.int64)
    for i, v in enumerate(np.asarray(col)):
        if mask[i] if mask.ndim else False:
            continue
        if isinstance(v, (int, np.integer)):
            out[i] = int(v)
            continue
        digits = re.findall(r"\d+", str(v))
        if digits:
            out[i] = int(digits[-1])
    return out


def match_source_id(post: Table, lit_ids: np.ndarray) -> np.ndarray:
    """Index into ``post`` for each literature id (-1 when absent)."""
    lookup = {int(s): k for k, s in enumerate(np.asarray(post["source_id"]))}
    return np.array([lookup.get(int(s), -1) if s >= 0 else -1 for s in lit_ids], dtype=np.int64)


def match_radec(post: Table, lit: Table, radius_arcsec: float = RADIUS_ARCSEC,
                lit_path: str = "literature", post_path: str = "posterior"
                ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest posterior source within ``radius_arcsec`` of each literature row.

    Returns the index into ``post`` (-1 when none within the radius or no position) and the
    separation in arcsec (NaN when no position).
    """
    ra_l, dec_l = _find_column(lit, _RA_NAMES), _find_column(lit, _DEC_NAMES)
    if ra_l is None or dec_l is None:
        raise CrosscheckError(f"{lit_path}: --match radec needs ra/dec columns (degrees); "
                              f"columns are {lit.colnames}")
    if "ra" not in post.colnames or "dec" not in post.colnames:
        raise CrosscheckError(f"{post_path}: the posterior summary has no ra/dec columns: "
                              "give --positions TABLE (source_id, ra, dec)")
    lra, ldec = _float_column(lit, ra_l), _float_column(lit, dec_l)
    pra, pdec = _float_column(post, "ra"), _float_column(post, "dec")
    idx = np.full(len(lit), -1, dtype=np.int64)
    sep = np.full(len(lit), np.nan)
    ok_l = np.isfinite(lra) & np.isfinite(ldec)
    ok_p = np.flatnonzero(np.isfinite(pra) & np.isfinite(pdec))
    if ok_l.any() and ok_p.size:
        cat = SkyCoord(pra[ok_p] * u.deg, pdec[ok_p] * u.deg)
        src = SkyCoord(lra[ok_l] * u.deg, ldec[ok_l] * u.deg)
        j, d2, _ = src.match_to_catalog_sky(cat)
        s = d2.to_value(u.arcsec)
        sep[ok_l] = s
        idx[ok_l] = np.where(s <= radius_arcsec, ok_p[j], -1)
    return idx, sep


@dataclass
class CrosscheckResult:
    """``per_source``: one row per matched literature source; ``per_parameter``: the
    statistics per parameter present; ``unmatched``: literature rows without a posterior."""

    per_source: Table
    per_parameter: dict
    unmatched: Table
    parameters: tuple[str, ...]


def crosscheck(post: Table, lit: Table, match: str = "source_id", id_column: str = "source_id",
               radius_arcsec: float = RADIUS_ARCSEC, value_map: dict[str, str] | None = None,
               error_map: dict[str, str] | None = None, mdot_linear: bool = False,
               av_to_a0: float = AV_TO_A0, lit_extinction: str = "av",
               lit_path: str = "literature", post_path: str = "posterior") -> CrosscheckResult:
    """Join ``post`` (posterior summary) and ``lit`` and compute residuals and z-scores."""
    values = value_columns(lit, value_map or {}, lit_path)
    if not values:
        raise CrosscheckError(f"{lit_path}: no literature column maps to a parameter; use "
                              f"--map COLUMN=PARAMETER (parameters: {', '.join(params.NAMES)})")
    errors = error_columns(lit, values, error_map or {}, lit_path)
    lval, lerr = literature_values(lit, values, errors, mdot_linear, av_to_a0, lit_extinction)
    if match == "source_id":
        ids = literature_ids(lit, id_column, lit_path)
        idx = match_source_id(post, ids)
        sep = np.full(len(lit), np.nan)
        no_match = "no posterior with this source_id"
    elif match == "radec":
        idx, sep = match_radec(post, lit, radius_arcsec, lit_path, post_path)
        id_col = id_column if id_column in lit.colnames else None
        ids = literature_ids(lit, id_col, lit_path) if id_col else np.full(len(lit), -1)
        no_match = f"no posterior source within {radius_arcsec:g} arcsec"
    else:
        raise CrosscheckError(f"--match must be source_id or radec, got {match!r}")
    status = np.asarray(post["status"]) if "status" in post.colnames else np.zeros(len(post), int)
    failed = (idx >= 0) & (status[np.maximum(idx, 0)] & _FAILED).astype(bool)
    good = (idx >= 0) & ~failed
    names = tuple(n for n in params.NAMES if n in values)

    messages = _column_or(post, "message", "")
    reasons = np.array([no_match if i < 0 else f"posterior failed: {messages[i]}"
                        for i in idx], dtype=str)
    unmatched = Table()
    unmatched["lit_row"] = np.flatnonzero(~good)
    unmatched["lit_source_id"] = ids[~good]
    if match == "radec":
        unmatched["nearest_sep_arcsec"] = sep[~good]
    unmatched["reason"] = reasons[~good].astype(str)

    rows = np.flatnonzero(good)
    j = idx[rows]
    out = Table()
    out["lit_row"] = rows
    out["source_id"] = np.asarray(post["source_id"])[j]
    if match == "radec":
        out["sep_arcsec"] = sep[rows]
    per_param: dict[str, dict] = {}
    for name in names:
        k = params.INDEX[name]
        med = _float_column(post, f"{name}_median")[j]
        p16, p84 = _float_column(post, f"{name}_p16")[j], _float_column(post, f"{name}_p84")[j]
        lo95 = _float_column(post, f"{name}_p2.5")[j]
        hi95 = _float_column(post, f"{name}_p97.5")[j]
        lv, le = lval[rows, k], lerr[rows, k]
        resid = med - lv
        sig = np.sqrt(((p84 - p16) / 2.0) ** 2 + np.nan_to_num(le) ** 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(sig > 0, resid / sig, np.nan)
        have = np.isfinite(lv) & np.isfinite(med)
        in68 = (lv >= p16) & (lv <= p84)
        in95 = (lv >= lo95) & (lv <= hi95)
        out[f"{name}_lit"] = lv
        out[f"{name}_lit_err"] = le
        out[f"{name}_median"] = med
        out[f"{name}_p16"] = p16
        out[f"{name}_p84"] = p84
        out[f"{name}_residual"] = np.where(have, resid, np.nan)
        out[f"{name}_z"] = np.where(have, z, np.nan)
        out[f"{name}_in68"] = have & in68
        out[f"{name}_in95"] = have & in95
        unit = params.PARAMS[k].unit or None
        for col in ("lit", "lit_err", "median", "p16", "p84", "residual"):
            out[f"{name}_{col}"].unit = unit
        per_param[name] = _parameter_stats(name, resid[have], z[have], in68[have], in95[have],
                                           lv[have], values[name], errors.get(name))
    return CrosscheckResult(per_source=out, per_parameter=per_param, unmatched=unmatched,
                            parameters=names)


def _column_or(t: Table, name: str, default) -> np.ndarray:
    return np.asarray(t[name]) if name in t.colnames else np.full(len(t), default)


def _parameter_stats(name: str, resid: np.ndarray, z: np.ndarray, in68: np.ndarray,
                     in95: np.ndarray, lit: np.ndarray, column: str,
                     error_column: str | None) -> dict:
    """Summary statistics of one parameter over the sources that have a literature value."""
    n = int(resid.size)
    out: dict = {"n": n, "literature_column": column, "literature_error_column": error_column}
    if n == 0:
        return out
    r = resid[:, None]
    zf = z[np.isfinite(z)]
    k = params.INDEX[name]
    out.update({
        "n_outside_box": int(np.sum((lit < params.LOW[k]) | (lit > params.HIGH[k]))),
        "median_residual": float(np.median(resid)),
        "mean_residual": float(np.mean(resid)),
        "robust_scatter": float(metrics.robust_scatter(r, np.zeros_like(r))[0]),
        "rms": float(metrics.rms(r, np.zeros_like(r))[0]),
        "median_z": float(np.median(zf)) if zf.size else None,
        "std_z": float(np.std(zf)) if zf.size > 1 else None,
        "frac_abs_z_lt_1": float(np.mean(np.abs(zf) < 1)) if zf.size else None,
        "frac_abs_z_lt_2": float(np.mean(np.abs(zf) < 2)) if zf.size else None,
        "frac_in68": float(np.mean(in68)),
        "frac_in95": float(np.mean(in95)),
    })
    return out


def write_crosscheck(result: CrosscheckResult, out_dir: str | Path, meta: dict) -> list[Path]:
    """Write ``crosscheck.csv`` (per source), ``crosscheck.json`` (per parameter, with
    ``meta``), ``unmatched.csv`` and ``crosscheck.png`` into ``out_dir``."""
    from .figures import crosscheck_figure
    from .result_files import write_json, write_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_table(result.per_source, out / "crosscheck.csv"),
             write_table(result.unmatched, out / "unmatched.csv")]
    summary = dict(meta)
    summary.update({"n_matched": len(result.per_source), "n_unmatched": len(result.unmatched),
                    "parameters": list(result.parameters),
                    "per_parameter": result.per_parameter})
    paths.append(write_json(out / "crosscheck.json", summary))
    crosscheck_figure(result.per_source, result.parameters, out / "crosscheck.png",
                      title=f"{len(result.per_source)} matched sources")
    paths.append(out / "crosscheck.png")
    return paths


def run_crosscheck(posterior: str | Path, literature: str | Path, out_dir: str | Path,
                   positions: str | Path | None = None, **options) -> CrosscheckResult:
    """Read both tables, cross-check (``options`` as for :func:`crosscheck`) and write the
    results into ``out_dir``."""
    post = read_posterior_summary(posterior, positions)
    lit = read_table(literature, "literature table")
    result = crosscheck(post, lit, lit_path=str(literature), post_path=str(posterior), **options)
    meta = {"posterior": str(Path(posterior).resolve()),
            "literature": str(Path(literature).resolve()),
            "positions": str(Path(positions).resolve()) if positions else None,
            "n_literature": len(lit), "n_posterior": len(post),
            "options": {k: v for k, v in options.items()}}
    write_crosscheck(result, out_dir, meta)
    return result
