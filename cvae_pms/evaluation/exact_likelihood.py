"""What ``evaluate`` compares with the exact likelihood of the built-in forward model: the
Fisher (Cramer-Rao) forecast of the scatter the data allow (``information_limit``), and
reference posteriors (dynesty or emcee) for a few sources with the Jensen-Shannon divergences
of the CVAE from them (``reference``)."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from cvae_pms import params
from cvae_pms.diagnostics import figures

from .config import EvaluateConfig, EvaluationError, GSetting


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
