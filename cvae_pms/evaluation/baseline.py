"""The baseline ``evaluate`` compares the CVAE with: HistGradientBoosting on the same
features, trained on fresh noisy training rows (``baseline_vs_cvae.csv``)."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from cvae_pms import params
from cvae_pms.diagnostics import accuracy
from cvae_pms.diagnostics.result_files import write_table
from cvae_pms.xp.model_error import run_model_error

from .config import EvaluateConfig
from .metrics import _rows_to_table
from .observations import _simulate, network_input


def _baseline(run, grid, split: dict, theta: np.ndarray, observations: dict, result: dict,
              cfg: EvaluateConfig, log: Callable[[str], None]) -> dict:
    """HistGradientBoosting on the same features: trained on fresh noisy training rows with
    G and transits drawn as in the run's training config; scored on the same test spectra."""
    from cvae_pms.diagnostics.baseline import fit_baseline

    noise = dict(run.config.get("noise", {}))
    g_lo, g_hi = float(noise.get("g_min", 9.0)), float(noise.get("g_max", 17.65))
    t_lo = int(noise.get("transits_min", cfg.transits[0]))
    t_hi = int(noise.get("transits_max", cfg.transits[1]))
    rng = np.random.default_rng([cfg.seed, 2])
    train_rows = split["train"]
    pick = np.sort(rng.choice(train_rows, size=min(cfg.baseline_rows, train_rows.size),
                              replace=False))
    th_train, bp_t, rp_t = grid.read(pick)
    g = rng.uniform(g_lo, g_hi, pick.size)
    nt = rng.integers(t_lo, t_hi + 1, pick.size)
    t0 = time.perf_counter()
    o = _simulate(bp_t, rp_t, g, nt, rng, teff=th_train[:, params.INDEX["teff"]],
                  model_error=run_model_error(run))
    y_train = network_input(run, o.bp, o.rp, o.bp_cov, o.rp_cov, o.flux_factor,
                            grid.reference_distance_pc, cfg.parallax_error_frac, rng)
    ok = np.isfinite(y_train).all(axis=1)
    log(f"baseline: fitting 3 x 7 HistGradientBoosting models on {int(ok.sum())} noisy "
        f"training spectra (G {g_lo:g}-{g_hi:g}, transits {t_lo}-{t_hi})")
    model = fit_baseline(y_train[ok], params.to_unit(th_train[ok]), seed=cfg.seed,
                         max_iter=cfg.baseline_max_iter)
    out: dict = {"n_train": int(ok.sum()), "fit_s": model.fit_s,
                 "train_g_range": [g_lo, g_hi], "train_transits": [t_lo, t_hi],
                 "total_s": None, "by_g_mag": {}}
    rows = []
    for label, ob in observations.items():
        y = ob[4]
        good = np.isfinite(y).all(axis=1)
        pred = model.predict(y[good])
        est, p16, p84 = (params.from_unit(a) for a in (pred.estimate, pred.p16, pred.p84))
        table = accuracy.by_parameter(accuracy.point_accuracy(est, theta[good], p16, p84))
        out["by_g_mag"][label] = {"per_parameter": table}
        cvae = result["by_g_mag"][label]["per_parameter"]
        for name in params.NAMES:
            row = {"g": label, "parameter": name, "unit": params.PARAMS[params.INDEX[name]].unit}
            for m in ("bias", "scatter", "rms", "outlier_fraction", "coverage68", "width68"):
                row[f"cvae_{m}"] = cvae[name][m]
                row[f"baseline_{m}"] = table[name][m]
            row["scatter_ratio_baseline_over_cvae"] = (
                table[name]["scatter"] / cvae[name]["scatter"] if cvae[name]["scatter"] > 0
                else np.nan)
            rows.append(row)
    out["per_parameter"] = out["by_g_mag"][cfg.g_settings[0].label]["per_parameter"]
    out["total_s"] = time.perf_counter() - t0
    write_table(_rows_to_table(rows), cfg.out / "baseline_vs_cvae.csv")
    log(f"baseline: done in {out['total_s']:.0f} s; wrote {cfg.out}/baseline_vs_cvae.csv")
    return out
