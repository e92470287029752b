"""Evaluate a trained CVAE on held-out grid rows with simulated Gaia noise.

For each requested brightness (a fixed G, or a G range drawn uniformly per source), the
test rows' noiseless coefficients are scaled to G and given XP noise with
:func:`cvae_pms.simulator.simulate_observations` (integer transits uniform in a range); the
CVAE samples their posteriors through the same path as real data (``Run.features`` ->
sampler). Then, numbers first (``metrics.json``, ``metrics.csv``/``.ecsv``,
``baseline_vs_cvae.csv``), figures from the numbers:

- accuracy of the posterior medians, 68/95 % coverage (:mod:`.diagnostics.accuracy`);
- 1-D P-P with KS p-values (:mod:`.diagnostics.pp`), SBC ranks (:mod:`.diagnostics.sbc`),
  TARP expected coverage (:mod:`.diagnostics.tarp`);
- optional: a HistGradientBoosting baseline on the same features
  (:mod:`.diagnostics.baseline`), and exact-likelihood reference posteriors (dynesty nested sampling, or emcee) for a few sources
  compared by Jensen-Shannon divergence (:mod:`.diagnostics.reference_mcmc`,
  :mod:`.diagnostics.divergence`).

The parts live in :mod:`cvae_pms.evaluation` (config, observations, metrics, baseline, exact
likelihood: information limit and reference); this module runs them (:func:`evaluate`) and
re-exports their public names.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from cvae_pms import params
from cvae_pms.diagnostics import accuracy, figures, tarp
from cvae_pms.diagnostics.result_files import write_json, write_table
from cvae_pms.evaluation.baseline import _baseline
from cvae_pms.evaluation.config import (EvaluateConfig, EvaluationError, GSetting, parse_g_mags,
                                        parse_range)
from cvae_pms.evaluation.exact_likelihood import _information_limit, _limit_model, _reference
from cvae_pms.evaluation.metrics import (_rows_to_table, _table_rows, _write_predictions,
                                         parameter_table)
from cvae_pms.evaluation.observations import (HeldOutObservations, draw_observations,
                                              evaluated_observations, network_input,
                                              select_rows)
from cvae_pms.xp.model_error import run_model_error

__all__ = ["EvaluateConfig", "EvaluationError", "GSetting", "HeldOutObservations",
           "draw_observations", "evaluate", "evaluated_observations", "network_input",
           "parameter_table", "parse_g_mags", "parse_range", "run_model_error", "select_rows"]


# ------------------------------------------------------------------------------ main
def evaluate(cfg: EvaluateConfig, log: Callable[[str], None] = print) -> dict:
    """Run the evaluation described by ``cfg``; writes every output into ``cfg.out`` and
    returns the content of ``metrics.json``."""
    from cvae_pms.grid.gridfile import GridError, open_grid
    from cvae_pms.model.rundir import RunDirError, check_training_grid, load_run

    if cfg.n < 1 or cfg.samples < 2:
        raise EvaluationError(f"--n ({cfg.n}) must be >= 1 and --samples ({cfg.samples}) >= 2")
    if cfg.rows not in ("test", "all"):
        raise EvaluationError(f"rows must be 'test' or 'all', got {cfg.rows!r}")
    if not (np.isfinite(cfg.parallax_error_frac) and cfg.parallax_error_frac > 0):
        raise EvaluationError(f"--parallax-error-frac must be > 0, got {cfg.parallax_error_frac}")
    try:
        run = load_run(cfg.run_dir)
    except RunDirError as exc:
        raise EvaluationError(str(exc)) from exc
    try:
        grid = open_grid(cfg.grid)
    except GridError as exc:
        raise EvaluationError(str(exc)) from exc
    with grid:
        note = check_training_grid(cfg.run_dir, run.grid_info, grid, EvaluationError,
                                   ": its split indices would point at other rows")
        if note:
            log(note)
        split = run.split()
        rows = split["test"] if cfg.rows == "test" else np.arange(grid.n)
        if rows.size == 0:
            raise EvaluationError(f"{cfg.run_dir}: the run has no test rows (split.npz)")
        idx = select_rows(rows, cfg.n, cfg.seed)
        theta, bp0, rp0 = grid.read(idx)
        cfg.out.mkdir(parents=True, exist_ok=True)
        log(f"evaluating {cfg.run_dir} on {idx.size} {cfg.rows} rows of {cfg.grid} "
            f"at G {', '.join(s.label for s in cfg.g_settings)}")
        result: dict = {
            "run_dir": str(Path(cfg.run_dir).resolve()), "grid": str(Path(cfg.grid).resolve()),
            "grid_hash": grid.content_hash, "seed": cfg.seed, "rows": cfg.rows,
            "n_sources": int(idx.size), "n_samples": cfg.samples,
            "transits": list(cfg.transits), "g_settings": [s.label for s in cfg.g_settings],
            "primary_g": cfg.g_settings[0].label, "by_g_mag": {},
            "luminosity": _luminosity_record(run, grid, cfg),
        }
        table_rows: list[dict] = []
        observations: dict[str, tuple] = {}
        limit_model = _limit_model(grid, theta, idx, cfg, log) if cfg.fisher else None
        for i, setting in enumerate(cfg.g_settings):
            res, obs = _evaluate_setting(run, idx, theta, bp0, rp0, setting, cfg, i, log,
                                         grid.reference_distance_pc)
            if cfg.fisher:
                res["information_limit"] = _information_limit(limit_model, theta, obs, res,
                                                              setting, cfg, log,
                                                              run_model_error(run))
            result["by_g_mag"][setting.label] = res
            observations[setting.label] = obs
            table_rows += _table_rows(setting.label, setting, "all", int(idx.size),
                                      res["per_parameter"])
            for b in res.get("magnitude_bins", []):
                if "per_parameter" in b:
                    table_rows += _table_rows(setting.label, setting,
                                              f"{b['g_low']:g}-{b['g_high']:g}",
                                              b["n_sources"], b["per_parameter"])
        primary = result["by_g_mag"][cfg.g_settings[0].label]
        for key in ("per_parameter", "tarp", "calibration_score", "timing"):
            result[key] = primary[key]
        if cfg.baseline:
            result["baseline"] = _baseline(run, grid, split, theta, observations, result, cfg,
                                           log)
        if cfg.reference > 0:
            result["reference"] = _reference(grid, theta, idx,
                                             observations[cfg.g_settings[0].label],
                                             primary["timing"]["cvae_s_per_source"], cfg, log)
    write_table(_rows_to_table(table_rows), cfg.out / "metrics.csv")
    write_table(_rows_to_table(table_rows), cfg.out / "metrics.ecsv")
    write_json(cfg.out / "metrics.json", result)
    log(f"wrote {cfg.out}/metrics.json, metrics.csv, metrics.ecsv and figures")
    return result


def _evaluate_setting(run, idx: np.ndarray, theta: np.ndarray, bp0: np.ndarray,
                      rp0: np.ndarray, setting: GSetting, cfg: EvaluateConfig, i: int,
                      log: Callable[[str], None], reference_distance_pc: float | None = None
                      ) -> tuple[dict, tuple]:
    """Simulate, sample and score one G setting; draws its figures."""
    t0 = time.perf_counter()
    ob = evaluated_observations(bp0, rp0, theta, cfg.g_settings, setting, cfg.transits,
                                cfg.seed, model_error=run_model_error(run))
    g, nt, bp, rp, bp_cov, rp_cov = ob.g, ob.n_transits, ob.bp, ob.rp, ob.bp_cov, ob.rp_cov
    # The sampler of `infer` (one stateless key per source): source_id = grid row, seed =
    # --seed + the G's position, so `infer` on the same observation with that source_id and
    # seed gives the same samples. Warm-up: trace the compiled functions outside the timing.
    from cvae_pms.infer import keyed_samples

    def inputs(sl):
        return network_input(run, bp[sl], rp[sl], bp_cov[sl], rp_cov[sl], ob.flux_factor[sl],
                             reference_distance_pc, cfg.parallax_error_frac,
                             np.random.default_rng([cfg.seed, 200 + i]))
    keyed_samples(run, inputs(slice(0, 1)), idx[:1], cfg.samples, cfg.seed + i)
    t1 = time.perf_counter()
    y = inputs(slice(None))
    samples = keyed_samples(run, y, idx, cfg.samples, cfg.seed + i).astype(np.float64)
    t2 = time.perf_counter()
    good = np.isfinite(samples).all(axis=(1, 2))
    if not good.any():
        raise EvaluationError(f"G {setting.label}: the sampler returned no finite samples")
    s, t = samples[good], theta[good]
    per_param, ppr, sbr = parameter_table(s, t, cfg.sbc_bins)
    tr = tarp.run_tarp(params.to_unit(s), params.to_unit(t), seed=cfg.seed)
    acc = accuracy.accuracy(s, t)
    med = np.median(s, axis=1)
    lo, hi = np.percentile(s, [16, 84], axis=1)
    lab = setting.label
    _write_predictions(cfg.out / f"predictions_{lab}.csv", idx[good], t, s, g[good],
                       nt[good], ppr.quantiles)
    title = f"G = {lab}, {int(good.sum())} sources"
    figures.accuracy_figure(t, med, lo, hi, cfg.out / f"accuracy_{lab}.png", title)
    figures.residuals_figure(t, med, acc["scatter"], cfg.out / f"residuals_{lab}.png", title)
    figures.pp_figure(ppr, cfg.out / f"pp_{lab}.png", f"P-P, {title}")
    figures.sbc_figure(sbr, cfg.out / f"sbc_{lab}.png", f"SBC ranks, {title}")
    figures.tarp_figure(tr, cfg.out / f"tarp_{lab}.png", f"TARP, {title}")
    res = {
        "g_low": setting.low, "g_high": setting.high, "n_sources": int(good.sum()),
        "n_failed": int((~good).sum()), "per_parameter": per_param,
        "calibration_score": float(np.max(ppr.max_deviation)),
        "tarp": tr.to_dict(), "pp": ppr.to_dict(params.NAMES), "sbc": sbr.to_dict(params.NAMES),
        "timing": {"simulate_s": t1 - t0, "features_and_sampling_s": t2 - t1,
                   "cvae_s_per_source": (t2 - t1) / theta.shape[0],
                   "cvae_sources_per_s": theta.shape[0] / max(t2 - t1, 1e-9)},
    }
    if setting.is_range:
        edges = np.arange(np.floor(setting.low), np.ceil(setting.high) + 1e-9,
                          cfg.magnitude_bin_width)
        edges = np.clip(edges, setting.low, setting.high)
        edges = np.unique(np.concatenate([[setting.low], edges, [setting.high]]))
        bins = accuracy.magnitude_bins(s, t, g[good], edges)
        for b in bins:
            if "per_parameter" in b:
                sel = (g[good] >= b["g_low"]) & (g[good] <= b["g_high"])
                b["per_parameter"] = parameter_table(s[sel], t[sel], cfg.sbc_bins)[0]
        res["magnitude_bins"] = bins
    worst = max(per_param, key=lambda n: per_param[n]["pp_max_deviation"])
    log(f"G {lab}: {int(good.sum())} sources, {res['timing']['cvae_sources_per_s']:.0f} "
        f"sources/s; TARP max dev {tr.max_deviation:.3f}; worst P-P {worst} "
        f"(max dev {per_param[worst]['pp_max_deviation']:.3f})")
    return res, (bp, rp, bp_cov, rp_cov, y, samples, g, nt)


def _luminosity_record(run, grid, cfg: EvaluateConfig) -> dict:
    """What ``metrics.json`` says about the luminosity channel of the scored model."""
    if not run.spec.luminosity:
        return {"channel": False}
    if grid.reference_distance_pc is None:
        raise EvaluationError(f"{cfg.run_dir} has a luminosity channel but {cfg.grid} has no "
                              "reference distance (normalised fluxes): no parallaxes to simulate")
    return {"channel": True, "parallax_error_frac": float(cfg.parallax_error_frac),
            "reference_distance_pc": grid.reference_distance_pc,
            "note": "CVAE and baseline get simulated parallaxes (every source); the Fisher "
                    "limit and the reference posteriors use the spectrum only"}
