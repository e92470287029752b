#!/usr/bin/env python
"""Misspecification benchmark: spectra made with other physics than the training grid's.

    python benchmarks/bench_misspecified.py RUN [--n 400] [--g-mag 12:15] [--samples 500]
        [--out benchmarks/out/misspecified.json]

``RUN`` is a model trained on a built-in grid. For each test set ``--n`` stars are drawn
uniformly in the parameter box (seeded), their SEDs made with the run's forward model with one
choice changed (:data:`SETS`), projected to XP coefficients, observed at G uniform in
``--g-mag`` with the XP noise and the model-error term (as ``evaluate`` does), and inferred
with the posterior predictive check on. Per set: robust scatter and 68 % coverage of T_eff
and A0 (all stars, and the stars not flagged ``poor_fit``), and the fraction flagged
``poor_fit`` / ``ood``. The in-distribution set uses the run's own forward model.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from cvae_pms.diagnostics.metrics import robust_scatter

from cvae_pms import params as P

#: name -> (what is changed, forward-model meta edits, smooth distortion rms of the SED).
SETS = {
    "in distribution": ({}, 0.0),
    "F19 law, R_V 3.1": ({"law": "F19"}, 0.0),
    "G23, R_V 2.5": ({"r_v": 2.5}, 0.0),
    "G23, R_V 5.5": ({"r_v": 5.5}, 0.0),
    "slab T 6000 K": ({"t_slab_k": 6000.0}, 0.0),
    "slab T 14000 K, tau 0.05": ({"t_slab_k": 14000.0, "tau_300": 0.05}, 0.0),
    "1 % smooth distortion": ({}, 0.01),
    "3 % smooth distortion": ({}, 0.03),
    "5 % smooth distortion": ({}, 0.05),
}


def edited_meta(meta: dict, edits: dict) -> dict:
    """The run's grid meta with extinction (``law``, ``r_v``) or slab (``t_slab_k``,
    ``tau_300``) settings replaced."""
    from cvae_pms.physics.sed import recorded_forward_model
    fm = json.loads(json.dumps(recorded_forward_model(meta)))     # a deep copy to edit
    for key in ("law", "r_v"):
        if key in edits:
            fm["extinction"][key] = edits[key]
    for key in ("t_slab_k", "tau_300"):
        if key in edits:
            fm["accretion"][key] = edits[key]
    return {**meta, "forward_model": fm}


def distortion(wl_nm: np.ndarray, n: int, rms: float, rng: np.random.Generator) -> np.ndarray:
    """(n, m) multiplicative factors ``1 + d``: ``d`` a random Legendre series of degree 2-6
    over 330-1050 nm (smooth on ~100 nm scales), scaled to ``rms`` over 400-1000 nm."""
    from numpy.polynomial import legendre
    x = np.clip((wl_nm - 690.0) / 360.0, -1, 1)
    coef = np.zeros((n, 7))
    coef[:, 2:] = rng.standard_normal((n, 5))
    d = np.stack([legendre.legval(x, c) for c in coef])
    band = (wl_nm >= 400) & (wl_nm <= 1000)
    d *= rms / np.sqrt(np.mean(d[:, band] ** 2, axis=1, keepdims=True))
    return 1.0 + d


def observe(meta: dict, edits: dict, rms: float, theta: np.ndarray, g_range, seed: int,
            model_error):
    """Noisy XP observations (an XPBatch) of ``theta`` under the edited forward model."""
    from cvae_pms.evaluate import GSetting, draw_observations
    from cvae_pms.physics.photosphere import table_wavelength_nm
    from cvae_pms.physics.sed import sed_function
    from cvae_pms.xp.archive import XPBatch
    from cvae_pms.xp.instrument import sed_to_coefficients
    wl = table_wavelength_nm()
    sed = sed_function(edited_meta(meta, edits), nuisance="fixed")(theta)
    if rms > 0:
        sed = sed * distortion(wl, len(theta), rms, np.random.default_rng([seed, 7]))
    bp0, rp0 = sed_to_coefficients(sed, wl)
    obs = draw_observations(bp0, rp0, GSetting(*g_range), (15, 80), seed, 0,
                            teff=theta[:, P.INDEX["teff"]], model_error=model_error)
    n = len(theta)
    return XPBatch(np.arange(1, n + 1, dtype=np.int64), obs.bp, obs.rp, obs.bp_cov, obs.rp_cov,
                   np.full(n, 55), np.full(n, 55), np.ones(n, bool),
                   np.array([""] * n, dtype=object), {}, "bench_misspecified")


def scores(samples: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict:
    out = {"n": int(mask.sum())}
    for name in ("teff", "a0", "logg", "mh"):
        j = P.INDEX[name]
        s, t = samples[mask, :, j], truth[mask, j]
        if not len(t):
            out[name] = None
            continue
        q16, med, q84 = np.percentile(s, [16, 50, 84], axis=1)
        d = med - t
        out[name] = {"bias": float(np.median(d)),
                     "robust_scatter": float(robust_scatter(d, 0.0)),
                     "coverage68": float(np.mean((t >= q16) & (t <= q84)))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--g-mag", default="12:15")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--sets", default="all", help="comma-separated subset of the set names")
    ap.add_argument("--out", default="benchmarks/out/misspecified.json")
    a = ap.parse_args()
    from cvae_pms import posterior_file as pf
    from cvae_pms.evaluate import parse_range, run_model_error
    from cvae_pms.infer import infer_batch, load_model

    t0 = time.time()
    model = load_model(a.run)
    check, note = model.predictive_check()
    if check is None:
        raise SystemExit(f"{a.run}: {note}")
    meta = model.run.grid_info["meta"]
    me = run_model_error(model.run)
    g_range = parse_range(a.g_mag, "--g-mag")
    theta = P.from_unit(np.random.default_rng(a.seed).uniform(size=(a.n, P.N_PARAMS)))
    names = list(SETS) if a.sets == "all" else [s.strip() for s in a.sets.split(",")]
    res = {}
    for name in names:
        edits, rms = SETS[name]
        batch = observe(meta, edits, rms, theta, g_range, a.seed, me)
        chunk = infer_batch(model, batch, a.samples, a.seed, gof=check)
        ok = (chunk.status & pf.FLAG_FAILED) == 0
        flagged = (chunk.status & pf.FLAG_POOR_FIT) > 0
        res[name] = {"edits": edits, "distortion_rms": rms,
                     "poor_fit_fraction": float(flagged[ok].mean()),
                     "ood_fraction": float(((chunk.status & pf.FLAG_OOD) > 0)[ok].mean()),
                     "gof_chi2_red_median": float(np.nanmedian(chunk.gof_chi2_red)),
                     "all": scores(chunk.samples, theta, ok),
                     "unflagged": scores(chunk.samples, theta, ok & ~flagged)}
        r = res[name]
        print(f"{name:28s} poor_fit {r['poor_fit_fraction']:.3f} ood {r['ood_fraction']:.3f} "
              f"chi2 {r['gof_chi2_red_median']:.2f} | T_eff {r['all']['teff']['robust_scatter']:.0f} K "
              f"cov {r['all']['teff']['coverage68']:.2f} (unflagged "
              f"{r['unflagged']['teff']['coverage68'] if r['unflagged']['teff'] else float('nan'):.2f})"
              f" | A0 {r['all']['a0']['robust_scatter']:.3f} cov {r['all']['a0']['coverage68']:.2f}"
              f" (unflagged {r['unflagged']['a0']['coverage68'] if r['unflagged']['a0'] else float('nan'):.2f})",
              flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    recipe = (Path(a.run) / "config.toml").read_text().splitlines()[0].lstrip("# ").split(":")[0]
    doc = {"run": str(Path(a.run).resolve()), "config": recipe, "code_commit": commit,
           "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}",
           "n": a.n, "g_mag": a.g_mag, "samples": a.samples, "seed": a.seed,
           "gof_threshold": check.threshold, "seconds": round(time.time() - t0, 1), "sets": res}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {a.out} ({doc['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
