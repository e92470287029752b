"""Which XP table a file holds, from its column names (:func:`table_layout`), and how its
columns become the raw chunk columns the batch assembly reads (:func:`chunk_builder`)."""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np

from .batch import BANDS, EXTRA_COLUMNS, XPReadError

_PER_VALUE = {"coeff": (r"^{b}_coeff_(\d+)$",),
              "err": (r"^e_{b}_coeff_(\d+)$", r"^{b}_coeff_err_(\d+)$", r"^{b}_coeff_error_(\d+)$")}


def _per_value_columns(names: Sequence[str], band: str, kind: str) -> list[str] | None:
    """Names of one-column-per-coefficient columns (``bp_coeff_0..54``, ``e_bp_coeff_0..54``), in order."""
    for pattern in _PER_VALUE[kind]:
        rx = re.compile(pattern.format(b=band), re.IGNORECASE)
        found = {int(mt.group(1)): n for n in names if (mt := rx.match(n))}
        if found:
            return [found[k] for k in sorted(found)]
    return None


#: Layouts :func:`table_layout` tells apart.
COEFFICIENTS, SAMPLED, APOGEE_LIBRARY = "coefficients", "sampled", "apogee_library"


def shown_columns(names: Sequence[str], k: int = 12) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > k else ""
    return ", ".join(names[:k]) + more


def table_layout(names: Sequence[str], path: str) -> str:
    """What a table holds, from its column names: :data:`COEFFICIENTS` (``source_id`` and per
    band ``b_coefficients`` or ``b_coeff_0..54``; wins when a table also has flux columns: the
    coefficients carry the correlations) or :data:`SAMPLED` (``source_id``, ``flux``,
    ``flux_error``). Anything else raises :class:`XPReadError` naming the file and its columns;
    so do the APOGEE library's columns (``apogee_id`` + ``medflux``: that file is read only
    through :mod:`cvae_pms.realdata.apogee`, see :func:`iter_xp`)."""
    lower = {n.lower() for n in names}
    if "apogee_id" in lower and "medflux" in lower:
        raise XPReadError(f"{path}: looks like the APOGEE x XP library (apogee_id, medflux) but "
                          "is not its FITS file; it is read only from FITS through "
                          "cvae_pms.realdata.apogee (columns: " + shown_columns(names) + ")")
    if "source_id" not in lower:
        raise XPReadError(f"{path}: not an XP table: no 'source_id' column (columns: "
                          f"{shown_columns(names)})")
    has = {band: f"{band}_coefficients" in lower
           or _per_value_columns(names, band, "coeff") is not None for band in BANDS}
    if all(has.values()):
        return COEFFICIENTS
    if "flux" in lower:
        if "xp" in lower:
            raise XPReadError(f"{path}: gaiaxpy.convert output (internally calibrated BP and RP "
                              "spectra in e-/s, column 'xp'), not absolute sampled flux: use "
                              "gaiaxpy.calibrate, or the coefficient file itself (columns: "
                              f"{shown_columns(names)})")
        if "flux_error" not in lower:
            raise XPReadError(f"{path}: sampled spectra without a 'flux_error' column (the "
                              f"per-pixel errors are needed; columns: {shown_columns(names)})")
        return SAMPLED
    for band in BANDS:
        if not has[band] and any(has.values()):
            raise XPReadError(f"{path}: not an XP table: no '{band}_coefficients' or "
                              f"'{band}_coeff_0..54' columns (columns: {shown_columns(names)})")
    raise XPReadError(f"{path}: not an XP table: neither XP coefficients ('bp_coefficients' + "
                      "'rp_coefficients', or 'bp_coeff_0..54' + 'rp_coeff_0..54') nor sampled "
                      f"spectra ('flux' + 'flux_error'); columns found: {shown_columns(names)}")


def _columns_from_table(get, names: Sequence[str], m: int) -> dict[str, Any]:
    """Build raw chunk columns from a column getter ``get(name) -> sequence of m cells``."""
    by_lower = {n.lower(): n for n in names}
    cols: dict[str, Any] = {"source_id": get(by_lower["source_id"])}
    for band in BANDS:
        per_coeff = _per_value_columns(names, band, "coeff")
        if f"{band}_coefficients" in by_lower:
            for key in ("coefficients", "coefficient_errors", "coefficient_correlations"):
                name = by_lower.get(f"{band}_{key}")
                if name is not None:
                    cols[f"{band}_{key}"] = get(name)
            if f"{band}_coefficient_errors" not in cols:
                cols[f"{band}_coefficient_errors"] = [None] * m
        else:
            cols[f"{band}_coefficients"] = np.column_stack([np.ma.filled(np.ma.asarray(get(n), float), np.nan)
                                                            for n in per_coeff])
            per_err = _per_value_columns(names, band, "err")
            cols[f"{band}_coefficient_errors"] = (
                np.column_stack([np.ma.filled(np.ma.asarray(get(n), float), np.nan) for n in per_err])
                if per_err else [None] * m)
        name = by_lower.get(f"{band}_n_parameters")
        if name is not None:
            cols[f"{band}_n_parameters"] = get(name)
    for extra in EXTRA_COLUMNS:
        name = by_lower.get(extra)
        if name is not None:
            cols[extra] = get(name)
    return cols


Chunk = tuple[str, dict[str, Any]]   # (layout, raw columns) yielded by the format readers


def chunk_builder(names: Sequence[str], path: str, conventions: Callable[[], dict[str, float]]
                  ) -> tuple[str, Callable[[Callable[[str], Any], int], dict[str, Any]]]:
    """(layout, build(get, m) -> raw chunk columns) for a table with columns ``names``.

    ``conventions()`` (unit factors, after the sampling-grid check) is asked once, and only
    for sampled tables."""
    layout = table_layout(names, path)
    if layout == COEFFICIENTS:
        return layout, lambda get, m: _columns_from_table(get, names, m)
    from .sampled import sampled_columns
    conv = conventions()
    return layout, lambda get, m: sampled_columns(get, names, conv)


