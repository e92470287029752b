"""How well can *any* method do? Fisher forecasts and exact (emcee) posteriors on the CVAE's
own test stars.

Reproduces the observations that ``cvae-pms evaluate RUN --g-mag G1,G2,.. --n N --seed SEED``
makes of G = ``--g`` (same rows, same G and transits, same noise draws: the same seeded calls,
:func:`cvae_pms.evaluate.evaluated_observations`; pass evaluate's list as ``--g-mag`` when it
had more than one G, and ``--run`` for the run's own model-error term), runs one emcee
chain per star on the exact likelihood (:class:`cvae_pms.diagnostics.likelihood.XPLikelihood`:
source covariance + the forward-model error term, flux scale marginalised) for the first
``--k`` of them, and reports the robust scatter (1.4826 MAD) and bias of the exact posterior
medians about the truth, overall and by log Mdot: the accuracy limit the data allow. With
``--predictions`` (``predictions_G.csv`` written by that ``evaluate`` run) it scores the
CVAE's medians on exactly the same stars.

Always (cheap, ~0.01 s per star): the Fisher-matrix (Cramer-Rao) bound of every one of the
``--n`` stars at its true parameters (:mod:`cvae_pms.diagnostics.fisher_bound`: same likelihood,
box prior as a Gaussian of equal variance) and the robust scatter that estimates with those
per-star errors would show (``forecast_scatter``). ``--k 0`` skips emcee.

    python benchmarks/bench_information_limit.py --grid grids/grid20k.h5 --split-seed 1 \\
        --g 15 --k 60 --workers 2 --out benchmarks/out/limit_g15.json \\
        [--predictions demo_out/eval/predictions_15.csv]

``--split-seed``/fractions must match the training config that produced the run's split
(cpu-quick: seed 1, 0.1/0.1); ``--run RUN`` reads split.npz instead.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from cvae_pms.diagnostics.metrics import robust_scatter

MDOT_BINS = ((-11.0, -8.0), (-8.0, -6.0), (-6.0, -4.52))


def _one_star(args: tuple) -> dict:
    """emcee on one star (runs in a worker process, one BLAS thread)."""
    from threadpoolctl import threadpool_limits

    from cvae_pms import params
    from cvae_pms.diagnostics import likelihood, reference_mcmc

    meta, bp, rp, bp_cov, rp_cov, seed, max_steps = args
    forward = likelihood.builtin_forward(meta)
    like = likelihood.XPLikelihood(forward, bp, rp, bp_cov, rp_cov,
                                       to_physical=params.from_unit)
    with threadpool_limits(1):
        res = reference_mcmc.run_emcee(like, params.N_PARAMS, seed=seed, max_steps=max_steps,
                                       n_keep=2000)
    phys = params.from_unit(res.samples_unit)
    lo, med, hi = np.percentile(phys, [16, 50, 84], axis=0)
    return {"median": med.tolist(), "p16": lo.tolist(), "p84": hi.tolist(),
            "steps": res.n_steps, "converged": bool(res.converged), "wall_s": res.wall_s}


def _score(med: np.ndarray, lo: np.ndarray, hi: np.ndarray, truth: np.ndarray) -> dict:
    from cvae_pms import params
    out = {}
    for k, name in enumerate(params.NAMES):
        r = med[:, k] - truth[:, k]
        out[name] = {"bias": float(np.median(r)),
                     "robust_scatter": float(robust_scatter(r, 0.0)),
                     "coverage68": float(np.mean((truth[:, k] >= lo[:, k])
                                                 & (truth[:, k] <= hi[:, k]))),
                     "width68_median": float(np.median(hi[:, k] - lo[:, k]))}
    return out


def _mdot_masks(truth: np.ndarray):
    """(label, mask) of the log Mdot bins holding at least 3 of the stars ``truth`` (n, 7)."""
    from cvae_pms import params
    j = params.NAMES.index("log_mdot")
    for a, b in MDOT_BINS:
        sel = (truth[:, j] >= a) & (truth[:, j] < b + 1e-9)
        if sel.sum() >= 3:
            yield f"{a:g}..{b:g}", sel


def _by_mdot(med, lo, hi, truth) -> dict:
    return {label: {"n": int(sel.sum()), **_score(med[sel], lo[sel], hi[sel], truth[sel])}
            for label, sel in _mdot_masks(truth)}


def _fisher_forecast(meta: dict, obs, theta: np.ndarray) -> np.ndarray:
    """Cramer-Rao standard deviations (n, 7) in physical units for every star."""
    from cvae_pms.diagnostics import fisher_bound, likelihood
    return fisher_bound.observation_bounds(likelihood.builtin_forward(meta), theta, obs.bp,
                                           obs.rp, obs.bp_cov, obs.rp_cov)


def _forecast(std: np.ndarray) -> dict:
    from cvae_pms import params
    from cvae_pms.diagnostics.fisher_bound import forecast_scatter
    fs = forecast_scatter(std)
    return {name: {"forecast_scatter": float(fs[k]), "median_bound": float(np.median(std[:, k]))}
            for k, name in enumerate(params.NAMES)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", required=True)
    ap.add_argument("--run", default=None, help="run dir (its split.npz gives the test rows)")
    ap.add_argument("--split-seed", type=int, default=1)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--test-fraction", type=float, default=0.1)
    ap.add_argument("--g", type=float, default=15.0)
    ap.add_argument("--g-mag", action="append", default=None,
                    help="evaluate's --g-mag (e.g. 12,15,17): the noise stream of --g is the "
                         "one of its position in that list (default: --g alone, position 0)")
    ap.add_argument("--n", type=int, default=500, help="evaluate's --n (row selection)")
    ap.add_argument("--seed", type=int, default=0, help="evaluate's --seed")
    ap.add_argument("--transits", default="15,80")
    ap.add_argument("--k", type=int, default=60, help="stars given an emcee posterior")
    ap.add_argument("--max-steps", type=int, default=12000)
    ap.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    ap.add_argument("--predictions", default=None, help="evaluate's predictions_G.csv")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    from cvae_pms import params
    from cvae_pms.evaluate import (GSetting, evaluated_observations, parse_g_mags,
                                   run_model_error, select_rows)
    from cvae_pms.grid.gridfile import open_grid
    from cvae_pms.training import split_indices

    t0 = time.perf_counter()
    with open_grid(a.grid) as grid:
        if a.run:
            rows = np.load(Path(a.run) / "split.npz")["test"]
        else:
            rows = split_indices(grid.n, a.split_seed, a.val_fraction, a.test_fraction)["test"]
        idx = select_rows(rows, a.n, a.seed)
        theta, bp0, rp0 = grid.read(idx)
        meta = dict(grid.meta)
    tr = tuple(int(v) for v in a.transits.split(","))
    # the same draws as evaluate: the stream of --g's position in evaluate's --g-mag list,
    # the model error at the true T_eff from the run's own term (without --run: the shipped one)
    setting = GSetting(a.g, a.g)
    g_settings = parse_g_mags(a.g_mag) if a.g_mag else [setting]
    model_error = None
    if a.run:
        from cvae_pms.model.rundir import load_run
        model_error = run_model_error(load_run(a.run))
    obs = evaluated_observations(bp0, rp0, theta, g_settings, setting, tr, a.seed,
                                 model_error=model_error)
    k = min(a.k, theta.shape[0])
    out = {"grid": str(Path(a.grid).resolve()), "g_mag": a.g,
           "evaluate_g_mag": [s.label for s in g_settings], "transits": list(tr),
           "evaluate_seed": a.seed, "evaluate_n": a.n, "k": k, "rows": idx[:k].tolist(),
           "max_steps": a.max_steps}
    fisher_std = _fisher_forecast(meta, obs, theta)
    out["fisher"] = {"n": int(theta.shape[0]),
                     "all": _forecast(fisher_std),
                     "by_log_mdot": {label: {"n": int(m.sum()), **_forecast(fisher_std[m])}
                                     for label, m in _mdot_masks(theta)},
                     "first_k": _forecast(fisher_std[:k]) if k >= 3 else None,
                     "per_star_bound": fisher_std.tolist()}
    results = []
    if k > 0:
        jobs = [(meta, obs.bp[i], obs.rp[i], obs.bp_cov[i], obs.rp_cov[i], 7919 * (i + 1),
                 a.max_steps) for i in range(k)]
        with ProcessPoolExecutor(max_workers=a.workers) as pool:
            for i, r in enumerate(pool.map(_one_star, jobs)):
                results.append(r)
                print(f"star {i + 1}/{k} row {idx[i]}: {r['steps']} steps, {r['wall_s']:.0f} s,"
                      f" T_eff true {theta[i, 0]:.0f} exact median {r['median'][0]:.0f}",
                      flush=True)
        med = np.array([r["median"] for r in results])
        lo = np.array([r["p16"] for r in results])
        hi = np.array([r["p84"] for r in results])
        truth = theta[:k]
        out.update({
            "converged_fraction": float(np.mean([r["converged"] for r in results])),
            "emcee_wall_s_median": float(np.median([r["wall_s"] for r in results])),
            "exact": {"all": _score(med, lo, hi, truth),
                      "by_log_mdot": _by_mdot(med, lo, hi, truth)},
            "per_star": [{"row": int(idx[i]), "truth": truth[i].tolist(), **results[i]}
                         for i in range(k)]})
    if a.predictions:
        from astropy.table import Table
        p = Table.read(a.predictions, format="ascii.csv")
        by_row = {int(r): n for n, r in enumerate(p["grid_row"])}
        missing = [int(r) for r in idx if int(r) not in by_row]
        if missing:
            raise SystemExit(f"{a.predictions}: grid rows {missing[:5]} missing: not the same "
                             f"evaluate settings (--n/--seed/--split)")
        sel = [by_row[int(r)] for r in idx]
        cm, cl, ch, tt = (np.stack([np.asarray(p[f"{n}_{col}"], float)[sel]
                                    for n in params.NAMES], 1)
                          for col in ("median", "p16", "p84", "true"))
        if not np.allclose(tt, theta, rtol=1e-6, atol=1e-6):
            raise SystemExit(f"{a.predictions}: truths differ from the grid rows: not the same "
                             f"evaluate settings (--n/--seed/--split)")
        out["cvae"] = {"predictions": str(Path(a.predictions).resolve()),
                       "all_n": _score(cm, cl, ch, theta),
                       "by_log_mdot_all_n": _by_mdot(cm, cl, ch, theta)}
        if k > 0:
            out["cvae"].update(all=_score(cm[:k], cl[:k], ch[:k], theta[:k]),
                               by_log_mdot=_by_mdot(cm[:k], cl[:k], ch[:k], theta[:k]))
    out["wall_s"] = time.perf_counter() - t0
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"Fisher (Cramer-Rao) forecast of the robust scatter on all {theta.shape[0]} stars"
          + (", CVAE on the same stars" if "cvae" in out else ""))
    for name in params.NAMES:
        line = f"  {name:10s} {out['fisher']['all'][name]['forecast_scatter']:10.3f}"
        if "cvae" in out:
            line += f"  {out['cvae']['all_n'][name]['robust_scatter']:10.3f}"
        print(line)
    for b, v in out["fisher"]["by_log_mdot"].items():
        print(f"  log Mdot {b}: n {v['n']}, forecast T_eff scatter "
              f"{v['teff']['forecast_scatter']:.0f} K")
    if k > 0:
        print(f"{'parameter':10s} {'exact scatter':>14s} {'exact cov68':>12s}"
              + ("  CVAE scatter  CVAE cov68" if "cvae" in out else ""))
        for name in params.NAMES:
            e = out["exact"]["all"][name]
            line = f"{name:10s} {e['robust_scatter']:14.3f} {e['coverage68']:12.2f}"
            if "cvae" in out:
                c = out["cvae"]["all"][name]
                line += f"  {c['robust_scatter']:12.3f}  {c['coverage68']:10.2f}"
            print(line)
        for b, v in out["exact"]["by_log_mdot"].items():
            print(f"log Mdot {b}: n {v['n']}, exact T_eff scatter "
                  f"{v['teff']['robust_scatter']:.0f} K")
    print(f"wrote {a.out} in {out['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
