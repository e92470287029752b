"""The numbers ``evaluate`` reports: per-parameter accuracy and calibration (P-P, SBC), the
rows of ``metrics.csv``/``.ecsv`` and the per-source ``predictions_<G>.csv``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table

from cvae_pms import params
from cvae_pms.diagnostics import accuracy, pp, sbc
from cvae_pms.diagnostics.result_files import write_table

from .config import GSetting


def parameter_table(samples: np.ndarray, truth: np.ndarray, sbc_bins: int = 20
                    ) -> tuple[dict[str, dict[str, float]], pp.PPResult, sbc.SBCResult]:
    """Per-parameter accuracy + calibration numbers of samples ``(n, S, 7)`` vs truth."""
    acc = accuracy.by_parameter(accuracy.accuracy(samples, truth))
    ppr = pp.run_pp(samples, truth)
    sbr = sbc.check_sbc(sbc.sbc_ranks(samples, truth), samples.shape[1], sbc_bins)
    for k, name in enumerate(params.NAMES):
        acc[name].update({"pp_pvalue": float(ppr.pvalue[k]),
                          "pp_max_deviation": float(ppr.max_deviation[k]),
                          "sbc_pvalue": float(sbr.pvalue[k])})
    return acc, ppr, sbr


def _table_rows(label: str, setting: GSetting, bin_label: str, n: int,
                per_param: dict[str, dict[str, float]]) -> list[dict]:
    rows = []
    for p in params.PARAMS:
        row = {"g": label, "g_low": setting.low, "g_high": setting.high, "g_bin": bin_label,
               "parameter": p.name, "unit": p.unit, "n_sources": n}
        row.update(per_param[p.name])
        rows.append(row)
    return rows


def _rows_to_table(rows: list[dict]) -> Table:
    names = list(rows[0].keys())
    for r in rows:
        for k in r:
            if k not in names:
                names.append(k)
    return Table(rows=[[r.get(k, np.nan) for k in names] for r in rows], names=names)


def _write_predictions(path: Path, grid_row: np.ndarray, truth: np.ndarray, samples: np.ndarray,
                       g: np.ndarray, nt: np.ndarray, quantile_of_truth: np.ndarray) -> None:
    """Per-source numbers behind the accuracy/residual figures: truth, posterior median and
    percentiles, the truth's posterior quantile (P-P), G and transits."""
    q = np.percentile(samples, [2.5, 16, 50, 84, 97.5], axis=1)
    t = Table()
    t["grid_row"] = grid_row
    t["g_mag"] = g
    t["n_transits"] = nt
    for k, p in enumerate(params.PARAMS):
        t[f"{p.name}_true"] = truth[:, k]
        for j, col in enumerate(("p2.5", "p16", "median", "p84", "p97.5")):
            t[f"{p.name}_{col}"] = q[j, :, k]
        t[f"{p.name}_truth_quantile"] = quantile_of_truth[:, k]
    write_table(t, path)
