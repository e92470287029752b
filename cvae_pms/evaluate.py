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
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from astropy.table import Table

from cvae_pms import params
from cvae_pms.diagnostics import accuracy, figures, pp, sbc, tarp
from cvae_pms.diagnostics.result_files import write_json, write_table
from cvae_pms.errors import CvaePmsError
from cvae_pms.xp.model_error import run_model_error


class EvaluationError(CvaePmsError):
    """Evaluation cannot run: bad option, incompatible run/grid (message says which)."""


@dataclass(frozen=True)
class GSetting:
    """One brightness setting: a fixed G (``low == high``) or a range drawn uniformly."""

    low: float
    high: float

    @property
    def is_range(self) -> bool:
        return self.high > self.low

    @property
    def label(self) -> str:
        """File-name safe label: ``15`` or ``12-17``."""
        return f"{self.low:g}-{self.high:g}" if self.is_range else f"{self.low:g}"


def parse_range(text: str, what: str, integer: bool = False) -> tuple[float, float]:
    """``'15'`` -> (15, 15); ``'12:17'`` -> (12, 17); checks order (and integers)."""
    try:
        parts = [float(p) for p in str(text).split(":")]
    except ValueError as exc:
        raise EvaluationError(f"{what} {text!r}: expected a number or LOW:HIGH") from exc
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(np.isfinite(parts)) or parts[0] > parts[1]:
        raise EvaluationError(f"{what} {text!r}: expected a number or LOW:HIGH with LOW <= HIGH")
    if integer and (parts[0] != int(parts[0]) or parts[1] != int(parts[1]) or parts[0] < 1):
        raise EvaluationError(f"{what} {text!r}: expected positive integers")
    return parts[0], parts[1]


def parse_g_mags(values: Sequence[str]) -> list[GSetting]:
    """G settings from repeated/comma-separated options: ``['12,15', '13:17']``."""
    out: list[GSetting] = []
    for v in values:
        for item in str(v).split(","):
            if item.strip():
                lo, hi = parse_range(item.strip(), "--g-mag")
                if not 3.0 <= lo <= hi <= 21.0:
                    raise EvaluationError(f"--g-mag {item!r}: G must lie within 3..21 mag")
                out.append(GSetting(lo, hi))
    if not out:
        raise EvaluationError("--g-mag: give at least one G magnitude")
    return list(dict.fromkeys(out))


@dataclass
class EvaluateConfig:
    """Everything ``evaluate`` needs; every default visible here."""

    run_dir: Path
    grid: Path
    out: Path
    g_settings: list[GSetting]
    rows: str = "test"                 # "test": the run's held-out rows; "all": every row
    n: int = 500                       # sources (random subset of the rows, seeded)
    transits: tuple[int, int] = (15, 80)
    samples: int = 1000
    seed: int = 0
    batch: int = 64
    parallax_error_frac: float = 0.05  # luminosity models: fractional error of the parallaxes
    reference: int = 0                 # sources with exact-likelihood reference posteriors
    reference_sampler: str = "dynesty"  # "dynesty" (nested sampling, calibrated) or "emcee"
    emcee_max_steps: int = 30000
    nlive: int = 250                   # dynesty live points
    fisher: bool = True                # Fisher (Cramer-Rao) forecast of the accuracy limit
    baseline: bool = True
    baseline_rows: int = 20000         # noisy training rows for the baseline
    baseline_max_iter: int = 300
    sbc_bins: int = 20
    magnitude_bin_width: float = 1.0
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ helpers
def _simulate(bp0: np.ndarray, rp0: np.ndarray, g: np.ndarray, n_transits: np.ndarray,
              rng: np.random.Generator, errors_from: str = "observed", teff=None,
              model_error=None):
    """:class:`cvae_pms.simulator.Observations` at G ``g`` (n,); the model error drawn at
    ``teff`` (n,) [K] from ``model_error`` (default: the shipped term)."""
    from cvae_pms.simulator import SimulateError, simulate_observations
    try:
        return simulate_observations(bp0, rp0, g, n_transits, rng, errors_from=errors_from,
                                     teff=teff, model_error_term=model_error)
    except SimulateError as exc:
        raise EvaluationError(f"simulating observations: {exc}") from exc


def network_input(run, bp: np.ndarray, rp: np.ndarray, bp_cov: np.ndarray, rp_cov: np.ndarray,
                  flux_factor: np.ndarray, reference_distance_pc: float | None,
                  parallax_error_frac: float, rng: np.random.Generator) -> np.ndarray:
    """The run's network input (n, y_dim) for simulated observations.

    A luminosity model also gets parallaxes, drawn as ``simulate`` draws them
    (:func:`cvae_pms.astrometry.draw_parallax`: the grid's ``reference_distance_pc`` and the
    observations' ``flux_factor`` (n,), Gaussian error ``parallax_error_frac`` x parallax from
    ``rng``), so it is scored on what it was trained for, not its spectrum-only fallback.
    """
    if not run.spec.luminosity:
        return run.features(bp, rp, bp_cov, rp_cov)[0]
    from cvae_pms.astrometry import draw_parallax
    if reference_distance_pc is None:
        raise EvaluationError("the run has a luminosity channel but the grid has no reference "
                              "distance (normalised fluxes): no parallaxes can be simulated")
    _, plx, err = draw_parallax(flux_factor, reference_distance_pc, parallax_error_frac, rng)
    return run.featuriser.numpy_with_luminosity(bp, rp, bp_cov, rp_cov, plx, err)[0]


@dataclass(frozen=True)
class HeldOutObservations:
    """Simulated observations of n held-out sources: G [mag] (n,), integer transits (n,),
    noisy coefficients ``bp``/``rp`` (n, 55) and their covariances (n, 55, 55), archive units,
    and the factor (n,) each grid flux was scaled by to reach its G."""

    g: np.ndarray
    n_transits: np.ndarray
    bp: np.ndarray
    rp: np.ndarray
    bp_cov: np.ndarray
    rp_cov: np.ndarray
    flux_factor: np.ndarray


def select_rows(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The grid rows ``evaluate`` scores: ``min(n, rows.size)`` of ``rows`` drawn without
    replacement by numpy stream ``[seed, 1]`` (``seed`` = ``--seed``), sorted."""
    rng = np.random.default_rng([seed, 1])
    return np.sort(rng.choice(rows, size=min(n, rows.size), replace=False))


def draw_observations(bp0: np.ndarray, rp0: np.ndarray, setting: GSetting,
                      transits: tuple[int, int], seed: int, index: int = 0,
                      errors_from: str = "observed", teff=None,
                      model_error=None) -> HeldOutObservations:
    """Observe noise-free coefficients ``bp0, rp0`` (n, 55) as ``evaluate`` does for its
    ``index``-th G setting: numpy stream ``[seed, 100 + index]`` (``seed`` = ``--seed``) draws
    G [mag] (``setting.low``, or uniform in the range), integer transits uniform in
    ``transits`` (inclusive), then the noise and model error of
    :func:`cvae_pms.simulator.simulate_observations` (``errors_from``, ``teff`` [K] (n,) and
    the ``model_error`` term as there)."""
    n = len(bp0)
    rng = np.random.default_rng([seed, 100 + index])
    g = rng.uniform(setting.low, setting.high, n) if setting.is_range else np.full(n, setting.low)
    nt = rng.integers(int(transits[0]), int(transits[1]) + 1, n)
    o = _simulate(bp0, rp0, g, nt, rng, errors_from, teff, model_error)
    return HeldOutObservations(g, nt, o.bp, o.rp, o.bp_cov, o.rp_cov, o.flux_factor)


def evaluated_observations(bp0: np.ndarray, rp0: np.ndarray, theta: np.ndarray,
                           g_settings: Sequence[GSetting], setting: GSetting,
                           transits: tuple[int, int], seed: int,
                           model_error=None) -> HeldOutObservations:
    """The observations ``evaluate --g-mag G1,G2,... --seed SEED`` makes of the rows with true
    parameters ``theta`` (n, 7) and noise-free coefficients ``bp0, rp0`` for ``setting``: the
    :func:`draw_observations` stream of ``setting``'s position in ``g_settings`` (the
    de-duplicated ``--g-mag`` list), the model error drawn at the true T_eff from
    ``model_error`` (:func:`run_model_error` of the run). Used by ``evaluate`` itself and by
    ``benchmarks/bench_information_limit.py``, so both see the same noise draws."""
    settings = list(dict.fromkeys(g_settings))
    if setting not in settings:
        raise EvaluationError(f"G setting {setting.label} is not among --g-mag "
                              f"{','.join(s.label for s in settings)}")
    return draw_observations(bp0, rp0, setting, transits, seed, settings.index(setting),
                             teff=np.asarray(theta)[:, params.INDEX["teff"]],
                             model_error=model_error)


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


# ------------------------------------------------------------------------------ main
def evaluate(cfg: EvaluateConfig, log: Callable[[str], None] = print) -> dict:
    """Run the evaluation described by ``cfg``; writes every output into ``cfg.out`` and
    returns the content of ``metrics.json``."""
    from cvae_pms.grid.gridfile import GridError, open_grid
    from cvae_pms.model.rundir import RunDirError, load_run

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
        want = str(run.grid_info.get("content_hash", ""))
        if want and grid.content_hash != want:
            raise EvaluationError(
                f"{cfg.grid}: content hash {grid.content_hash[:12]}... differs from the grid "
                f"the run {cfg.run_dir} was trained on ({want[:12]}..., "
                f"{run.grid_info.get('path')}): its split indices would point at other rows")
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


def _limit_model(grid, theta: np.ndarray, idx: np.ndarray, cfg: EvaluateConfig,
                 log: Callable[[str], None]):
    """The built-in forward model for the Fisher forecast, or the reason (str) it cannot
    serve: it must reproduce the grid's coefficients (checked once, on up to 20 rows)."""
    from cvae_pms.diagnostics import likelihood

    try:
        forward = likelihood.builtin_forward(grid.meta)
        likelihood.check_forward(forward, theta[:20], *grid.coefficients(idx[:20]),
                                     what=str(cfg.grid))
    except likelihood.ReferenceModelError as exc:
        log(f"information limit skipped: {exc}")
        return str(exc)
    return forward


def _information_limit(forward, theta: np.ndarray, obs: tuple, res: dict, setting: GSetting,
                       cfg: EvaluateConfig, log: Callable[[str], None],
                       model_error=None) -> dict:
    """Fisher (Cramer-Rao) forecast of the robust scatter the data allow for the same
    observations (:mod:`cvae_pms.diagnostics.fisher_bound`), and the CVAE's scatter over it.
    ``forward`` comes from :func:`_limit_model`; a str there (the reason) records a skip."""
    from cvae_pms.diagnostics import fisher_bound

    if isinstance(forward, str):
        return {"skipped": forward}
    bp, rp, bp_cov, rp_cov, _, samples, _, _ = obs
    good = np.isfinite(samples).all(axis=(1, 2))
    t0 = time.perf_counter()
    std = fisher_bound.observation_bounds(forward, theta[good], bp[good], rp[good],
                                          bp_cov[good], rp_cov[good], model_error=model_error)
    fs = fisher_bound.forecast_scatter(std, seed=cfg.seed)
    out = {"method": "Fisher matrix of the exact likelihood at the true parameters (flux scale "
                     "marginalised, box prior as a Gaussian of equal variance); robust scatter "
                     "of estimates with those per-star errors",
           "n_sources": int(good.sum()), "wall_s": time.perf_counter() - t0,
           "per_parameter": {}}
    for j, name in enumerate(params.NAMES):
        cvae = res["per_parameter"][name]["scatter"]
        out["per_parameter"][name] = {
            "forecast_scatter": float(fs[j]), "median_bound": float(np.median(std[:, j])),
            "cvae_over_forecast": float(cvae / fs[j]) if fs[j] > 0 else float("nan")}
    t = out["per_parameter"]["teff"]
    log(f"G {setting.label}: information limit (Fisher forecast) T_eff {t['forecast_scatter']:.0f}"
        f" K, CVAE {t['cvae_over_forecast']:.2f}x; A0 "
        f"{out['per_parameter']['a0']['forecast_scatter']:.3f} mag")
    return out


def _reference(grid, theta: np.ndarray, idx: np.ndarray, obs: tuple,
               cvae_s_per_source: float, cfg: EvaluateConfig,
               log: Callable[[str], None]) -> dict:
    """Exact-likelihood reference posteriors (two independent runs each, ``cfg.reference_sampler``)
    for the first ``cfg.reference`` sources of the primary G setting; CVAE vs reference and
    reference vs reference (the floor) Jensen-Shannon divergences."""
    from threadpoolctl import threadpool_limits

    from cvae_pms.diagnostics import divergence, likelihood, reference_mcmc, reference_nested

    sampler = cfg.reference_sampler
    if sampler not in ("dynesty", "emcee"):
        raise EvaluationError(f"reference sampler {sampler!r}: choose dynesty or emcee")

    def run(like, seed):
        if sampler == "dynesty":
            return reference_nested.run_dynesty(like, params.N_PARAMS, seed=seed,
                                                nlive=cfg.nlive, n_keep=cfg.samples)
        return reference_mcmc.run_emcee(like, params.N_PARAMS, seed=seed,
                                        max_steps=cfg.emcee_max_steps, n_keep=cfg.samples)

    bp, rp, bp_cov, rp_cov, _, samples, g, nt = obs
    n = min(cfg.reference, theta.shape[0])
    try:
        forward = likelihood.builtin_forward(grid.meta)
        likelihood.check_forward(forward, theta[:n], *grid.coefficients(idx[:n]),
                                     what=str(cfg.grid))
    except likelihood.ReferenceModelError as exc:
        log(f"reference skipped: {exc}")
        return {"skipped": str(exc), "sampler": sampler}
    per_source = []
    js_cvae, js_floor, js2_cvae, js2_floor = [], [], [], []
    for i in range(n):
        if not np.isfinite(samples[i]).all():
            per_source.append({"row": int(idx[i]), "skipped": "CVAE sampling failed"})
            continue
        like = likelihood.XPLikelihood(forward, bp[i], rp[i], bp_cov[i], rp_cov[i],
                                       to_physical=params.from_unit, teff_dependent=True,
                                       model_error_at="best_fit", seed=cfg.seed + i)
        with threadpool_limits(1):
            chains = [run(like, cfg.seed * 1000 + 2 * i + c) for c in (0, 1)]
        a, b = chains[0].samples_unit, chains[1].samples_unit
        rng = np.random.default_rng([cfg.seed, 3, i])
        cv = params.to_unit(samples[i])
        cv = cv[rng.choice(cv.shape[0], size=min(cv.shape[0], b.shape[0]), replace=False)]
        jc, jf = divergence.js_divergence_1d(cv, a), divergence.js_divergence_1d(b, a)
        j2c, j2f = divergence.js_divergence_2d(cv, a), divergence.js_divergence_2d(b, a)
        js_cvae.append(jc)
        js_floor.append(jf)
        js2_cvae.append(j2c)
        js2_floor.append(j2f)
        sd = np.std(a, axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            width_ratio = np.std(cv, axis=0) / sd
            shift = (np.median(cv, axis=0) - np.median(a, axis=0)) / sd
        per_source.append({
            "row": int(idx[i]), "g_mag": float(g[i]), "n_transits": int(nt[i]),
            "chains": [c.summary() for c in chains],
            "js_cvae_bits": dict(zip(params.NAMES, jc.tolist())),
            "js_floor_bits": dict(zip(params.NAMES, jf.tolist())),
            "js2_cvae_max_bits": float(np.nanmax(j2c)),
            "js2_floor_max_bits": float(np.nanmax(j2f)),
            "width_ratio_cvae_over_reference": dict(zip(params.NAMES, width_ratio.tolist())),
            "shift_in_reference_sigma": dict(zip(params.NAMES, shift.tolist())),
            # Likelihood sanity check: the truth's quantile in the exact posterior (uniform
            # over many sources when the likelihood matches the simulation).
            "truth_quantile_in_reference": dict(zip(params.NAMES, np.mean(
                a < params.to_unit(theta[i])[None, :], axis=0).tolist())),
        })
        log(f"{sampler} source {i + 1}/{n} (row {idx[i]}): {chains[0].wall_s:.1f} s per run; "
            f"JS CVAE max {np.max(jc):.3f} bits, floor max {np.max(jf):.3f}")
    lik = ("Gaussian in the 110 coefficients with the source covariance plus the T_eff-dependent "
           "model-error covariance at the best-fit model flux; flux scale marginalised "
           "analytically (uniform prior, s > 0)")
    desc = ({"nlive": cfg.nlive, "bound": "single ellipsoid", "sample": "rwalk (25 steps)",
             "dlogz": reference_nested.DLOGZ} if sampler == "dynesty" else
            {"walkers": reference_mcmc.N_WALKERS, "moves": "0.8 DEMove + 0.2 DESnookerMove",
             "convergence": "steps > 50 tau_max and tau stable to 1 %",
             "max_steps": cfg.emcee_max_steps})
    out: dict = {"n_sources": len(js_cvae), "sampler": sampler, "per_source": per_source,
                 "likelihood": lik, "sampler_settings": desc}
    if js_cvae:
        jc, jf = np.array(js_cvae), np.array(js_floor)
        j2c, j2f = np.array(js2_cvae), np.array(js2_floor)
        walls = np.array([c["wall_s"] for s in per_source if "chains" in s for c in s["chains"]])
        out["summary"] = {
            name: {"js_cvae_median_bits": float(np.median(jc[:, k])),
                   "js_cvae_max_bits": float(np.max(jc[:, k])),
                   "js_floor_median_bits": float(np.median(jf[:, k])),
                   "js_floor_max_bits": float(np.max(jf[:, k]))}
            for k, name in enumerate(params.NAMES)}
        out["js2_median_bits"] = {
            f"{params.NAMES[a]}-{params.NAMES[b]}": {"cvae": float(np.median(j2c[:, a, b])),
                                                     "floor": float(np.median(j2f[:, a, b]))}
            for a in range(params.N_PARAMS) for b in range(a + 1, params.N_PARAMS)}
        if sampler == "emcee":
            out["converged_fraction"] = float(np.mean(
                [c["converged"] for s in per_source if "chains" in s for c in s["chains"]]))
        out["reference_s_per_run_median"] = float(np.median(walls))
        out["cvae_s_per_source"] = cvae_s_per_source
        out["speed_ratio_reference_over_cvae"] = float(np.median(walls) / cvae_s_per_source)
        figures.js_figure(jc, jf, cfg.out / f"js_{cfg.g_settings[0].label}.png",
                          f"CVAE vs {sampler}, G = {cfg.g_settings[0].label}")
    return out
