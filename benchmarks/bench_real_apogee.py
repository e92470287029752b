"""Real-data benchmark: a trained model on real Gaia DR3 XP spectra with APOGEE DR17 labels.

Stars: our test part of the APOGEE x XP library (``crc32(apogee_id) % 4 == 1``; the reserved
part 0 is never read), labels inside the parameter box, spectra finite. They are field stars,
nearly all non-accreting, so only T_eff, log g and [M/H] have references. Per T_eff bin
(3000-4000, 4000-4500, 4500-5500, 5500-7000 K) and per G bin: bias (median of posterior median
- APOGEE), robust scatter (1.4826 MAD of that difference) and the 68 % / 95 % coverage of the
APOGEE value by the central posterior intervals (label errors ignored: APOGEE's own T_eff
errors of ~50-100 K for M dwarfs make coverage look slightly worse than it is).
The posterior predictive check (:mod:`cvae_pms.gof`) runs on every star: the fraction flagged
``poor_fit`` and whether the flagged stars are those with the worst label residuals.
``--twins``: the same table for simulated twins of the stars (:func:`twin_samples`), so the
sim-to-real gap and the model's own limits on this population can be told apart.
Also: 18 Sco (the Gaia FGK benchmark solar twin in ``../shared``, coefficient input) and, on
the calibration parts (% 4 in 2, 3), the A0 the model infers against the A0 fitted with the
forward model at the APOGEE labels (:func:`cvae_pms.realdata.fit.fit_photosphere`).

    python benchmarks/bench_real_apogee.py runs/cal-quick --out benchmarks/out/real_cal.json \\
        --figure benchmarks/out/real_cal.png
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

from cvae_pms.diagnostics.metrics import robust_scatter

from cvae_pms import params as P

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_xp"
SCO_FILE = SHARED / "gaiaxpy_samples" / "18Sco-XP-spectra.csv"
SCO_LABELS = {"teff": 5810.0, "logg": 4.44, "mh": 0.03}
TEFF_BINS = ((3000, 4000), (4000, 4500), (4500, 5500), (5500, 7000))
G_BINS = ((5, 11), (11, 12.5), (12.5, 14), (14, 16))
LOGG_SPLIT = 3.8
A0_BINS = ((-1.0, 0.2), (0.2, 0.7), (0.7, 10.0))
TWIN_G = 12.0          # G of the simulated twins (the real stars: median G ~12.7)
LABELS = (("teff", "teff"), ("logg", "logg"), ("mh", "fe_h"))


def sampled_samples(run, flux: np.ndarray, flux_error: np.ndarray, n_samples: int, seed: int,
                    source_id: np.ndarray, gof: bool = False, prior=None):
    """Posterior samples (n, S, 7) of sampled spectra (flux, error [W m^-2 nm^-1] (n, 343))
    through the one inference path (:func:`cvae_pms.infer.infer_batch` on a
    :class:`~cvae_pms.xp.sampled.SampledBatch`), keyed on ``source_id`` as ``infer`` is.
    ``gof``: also run the model's posterior predictive check and return
    ``(samples, gof_chi2_red, gof_p, status)``. ``prior``: a :class:`cvae_pms.priors.Prior`
    the samples are reweighted to, as ``infer --prior`` does."""
    from cvae_pms.infer import infer_batch, load_model
    from cvae_pms.xp.sampled import SampledBatch
    model = load_model(run)
    check = model.predictive_check()[0] if gof else None
    out, chi, pv, st = [], [], [], []
    for lo in range(0, len(source_id), 2048):
        sl = slice(lo, lo + 2048)
        batch = SampledBatch(np.asarray(source_id[sl], np.int64), flux[sl], flux_error[sl],
                             np.array([""] * len(flux[sl]), dtype=object), {}, "apogee-library")
        chunk = infer_batch(model, batch, n_samples, seed, gof=check, prior=prior)
        out.append(chunk.samples)
        if gof:
            chi.append(chunk.gof_chi2_red), pv.append(chunk.gof_p), st.append(chunk.status)
    if not gof:
        return np.concatenate(out)
    return np.concatenate(out), np.concatenate(chi), np.concatenate(pv), np.concatenate(st)


def gof_report(samples: np.ndarray, chi2: np.ndarray, status: np.ndarray, labels: dict) -> dict:
    """Fraction flagged ``poor_fit`` and whether the flagged stars are the ones with the worst
    label residuals: per parameter the median |posterior median - APOGEE| of flagged and
    unflagged stars, the flagged fraction among the 5 % worst residuals, and the Spearman
    correlation of ``gof_chi2_red`` with |residual|."""
    from scipy.stats import spearmanr
    from cvae_pms.posterior_file import FLAG_POOR_FIT
    ok = np.isfinite(chi2)
    flagged = (status & FLAG_POOR_FIT) > 0
    med = np.median(samples, axis=1)
    out = {"n": int(ok.sum()), "flagged_fraction": float(flagged[ok].mean()),
           "chi2_red_p16_50_84_99": np.percentile(chi2[ok], [16, 50, 84, 99]).round(3).tolist()}
    for ours, theirs in LABELS:
        r = np.abs(med[:, P.INDEX[ours]] - labels[theirs])
        worst = ok & (r >= np.quantile(r[ok], 0.95))
        out[ours] = {"median_abs_resid_flagged": float(np.median(r[ok & flagged]))
                     if (ok & flagged).any() else float("nan"),
                     "median_abs_resid_unflagged": float(np.median(r[ok & ~flagged])),
                     "flagged_fraction_in_worst5pct": float(flagged[worst].mean()),
                     "spearman_chi2_vs_abs_resid": float(spearmanr(chi2[ok], r[ok])[0])}
    return out


def metrics(med: np.ndarray, lo68, hi68, lo95, hi95, truth: np.ndarray) -> dict:
    d = med - truth
    return {"n": int(d.size), "bias": float(np.median(d)),
            "robust_scatter": float(robust_scatter(d, 0.0)),
            "coverage68": float(np.mean((truth >= lo68) & (truth <= hi68))),
            "coverage95": float(np.mean((truth >= lo95) & (truth <= hi95)))}


def table(samples: np.ndarray, labels: dict, mask_sets: dict) -> dict:
    q = np.percentile(samples, [2.5, 16, 50, 84, 97.5], axis=1)      # (5, n, 7)
    out = {}
    for name, m in mask_sets.items():
        out[name] = {}
        for ours, theirs in LABELS:
            j = P.INDEX[ours]
            t = labels[theirs]
            out[name][ours] = metrics(q[2, m, j], q[1, m, j], q[3, m, j], q[0, m, j],
                                      q[4, m, j], t[m])
    return out


def twin_samples(run, lab: dict, a0_fit: np.ndarray, n_samples: int, seed: int,
                 g_mag: float = TWIN_G) -> np.ndarray:
    """Posterior samples (n, S, 7) of simulated twins of the real stars: the built-in forward
    model at each star's APOGEE T_eff, log g, [M/H] and fitted A0 (clipped at 0), no accretion
    (log Mdot at the box floor, ff = 0), M = 1 Msun, observed at G = ``g_mag`` with the noise
    and model-error term of training (``cvae-pms simulate --params``, then ``infer``'s
    sampler). Real minus twin separates the sim-to-real gap from the model's own limits on
    this population (the A0 = 0 edge, the network's precision)."""
    import tempfile
    from astropy.table import Table
    from cvae_pms.infer import infer_batch, load_model
    from cvae_pms.simulate import simulate
    from cvae_pms.xp.archive import read_xp
    n = len(a0_fit)
    lo = dict(zip(P.NAMES, P.LOW))
    with tempfile.TemporaryDirectory() as tmp:
        Table({"teff": lab["teff"], "logg": lab["logg"], "mh": lab["fe_h"],
               "log_mdot": np.full(n, lo["log_mdot"]), "ff": np.zeros(n),
               "mass": np.ones(n), "a0": np.clip(a0_fit, 0.0, None)}).write(
                   f"{tmp}/twins.csv")
        simulate(f"{tmp}/obs.csv", (g_mag, g_mag), (15, 80), seed=seed + 1,
                 params_path=f"{tmp}/twins.csv", run_dir=None)
        batch = read_xp(f"{tmp}/obs.csv")
        return infer_batch(load_model(run), batch, n_samples, seed).samples


def sco(run, n_samples: int, seed: int) -> dict | None:
    if not SCO_FILE.is_file():
        return None
    from cvae_pms.infer import infer_batch, load_model
    from cvae_pms.xp.archive import read_xp
    batch = read_xp(SCO_FILE)
    res = infer_batch(load_model(run), batch, n_samples, seed)
    s = res.samples[0]
    out = {"flags": int(res.status[0])}
    for name, lit in SCO_LABELS.items():
        q = np.percentile(s[:, P.INDEX[name]], [2.5, 16, 50, 84, 97.5])
        out[name] = {"literature": lit, "quantiles_2.5_16_50_84_97.5": q.round(3).tolist(),
                     "inside95": bool(q[0] <= lit <= q[4]), "inside68": bool(q[1] <= lit <= q[3])}
    a0 = np.percentile(s[:, P.INDEX["a0"]], [16, 50, 84])
    out["a0_p16_50_84"] = a0.round(3).tolist()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="trained model dir")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--a0-stars", type=int, default=1000,
                    help="calibration-part stars for the A0 comparison (0: skip)")
    ap.add_argument("--out", default="benchmarks/out/real_apogee.json")
    ap.add_argument("--figure", default=None, help="predicted vs APOGEE figure (.png)")
    ap.add_argument("--twins", action="store_true",
                    help="also score simulated twins of the test stars (labels, fitted A0, no "
                         "accretion, G 12): the model's own limit on this population")
    ap.add_argument("--prior", default=None,
                    help="reweight to this prior (name or TOML path), as infer --prior does")
    args = ap.parse_args()
    from cvae_pms.realdata import apogee
    from cvae_pms.realdata.calibrate import usable

    t0 = time.time()
    run = args.run
    lib = apogee.read_library(parts=(apogee.TEST_PART,), in_box_only=True, download=True)
    lib = lib.select(usable(lib))
    lab = lib.labels
    prior = None
    if args.prior:
        from cvae_pms.priors import load_prior
        prior = load_prior(args.prior)
    samples, chi2, _, status = sampled_samples(run, lib.flux, lib.flux_error, args.samples,
                                               args.seed, lib.row, gof=True, prior=prior)
    t_inf = time.time() - t0
    g = lab["gaiaedr3_phot_g_mean_mag"]
    masks = {"all": np.ones(len(lib), bool)}
    for lo, hi in TEFF_BINS:
        masks[f"teff {lo}-{hi}"] = (lab["teff"] >= lo) & (lab["teff"] < hi)
    for lo, hi in G_BINS:
        masks[f"G {lo}-{hi}"] = (g >= lo) & (g < hi)
    for lo, hi in TEFF_BINS[1:]:   # giants vs dwarfs (PMS stars lie between, log g 3.5-4.5)
        t_bin = (lab["teff"] >= lo) & (lab["teff"] < hi)
        masks[f"teff {lo}-{hi} log g < {LOGG_SPLIT}"] = t_bin & (lab["logg"] < LOGG_SPLIT)
        masks[f"teff {lo}-{hi} log g >= {LOGG_SPLIT}"] = t_bin & (lab["logg"] >= LOGG_SPLIT)
    # Extinction: the A0 of the no-accretion model fitted at the APOGEE labels, and |b|; a
    # prior edge at A0 = 0 biases T_eff up for the least reddened stars (hotter + redder).
    from cvae_pms.realdata.fit import fit_photosphere
    grid_meta = json.loads((Path(args.run) / "grid.json").read_text()).get("meta") or {}
    corr = (grid_meta.get("forward_model") or {}).get("photosphere_correction")
    a0_fit = fit_photosphere(lib.flux, lib.flux_error, lab["teff"], lab["logg"], lab["fe_h"],
                             correction=corr).a0
    abs_b = np.abs(lib.galactic_latitude_deg())
    for lo, hi in A0_BINS:
        masks[f"A0 fit {lo}-{hi}"] = (a0_fit >= lo) & (a0_fit < hi)
    masks["|b| > 40"] = abs_b > 40
    masks["|b| < 10"] = abs_b < 10
    ok = np.isfinite(samples).all(axis=(1, 2))
    masks = {k: m & ok for k, m in masks.items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    cfg = json.loads((Path(args.run) / "config.json").read_text())
    grid = json.loads((Path(args.run) / "grid.json").read_text())
    fm = (grid.get("meta") or {}).get("forward_model") or {}
    result = {"run": str(Path(args.run).resolve()), "code_commit": commit,
              "date": time.strftime("%Y-%m-%d"), "machine": "2-core x86_64 CPU",
              "grid_photosphere_correction": fm.get("photosphere_correction"),
              "model_error": cfg.get("noise", {}).get("model_error", "parametric"),
              "n_stars": int(ok.sum()), "n_failed": int((~ok).sum()), "samples": args.samples,
              "prior": args.prior, "inference_s": round(t_inf, 1),
              "bins": table(samples, lab, masks),
              "a0_inferred_minus_fit_test": {
                  name: float(np.median(np.median(samples[m][:, :, P.INDEX["a0"]], axis=1)
                                        - a0_fit[m])) for name, m in masks.items() if m.any()},
              "gof": gof_report(samples, chi2, status, lab),
              "twins": (table(twin_samples(run, lab, a0_fit, args.samples, args.seed),
                              lab, masks) if args.twins else None),
              "18sco": sco(run, args.samples, args.seed)}
    if args.a0_stars:
        from cvae_pms.realdata.fit import fit_photosphere
        cal = apogee.read_library(parts=apogee.CALIBRATION_PARTS, in_box_only=True)
        cal = cal.select(usable(cal))
        pick = np.sort(np.random.default_rng(args.seed).choice(len(cal), min(args.a0_stars,
                                                                          len(cal)), False))
        cal = cal.select(pick)
        cl = cal.labels
        fit = fit_photosphere(cal.flux, cal.flux_error, cl["teff"], cl["logg"], cl["fe_h"],
                              correction=result["grid_photosphere_correction"])
        s_cal = sampled_samples(run, cal.flux, cal.flux_error, args.samples, args.seed, cal.row)
        a0_med = np.median(s_cal[:, :, P.INDEX["a0"]], axis=1)
        d = a0_med - fit.a0
        result["a0_inferred_minus_fit"] = {
            "n": int(d.size), "median": float(np.median(d)),
            "robust_scatter": float(robust_scatter(d, 0.0)),
            "a0_fit_p16_50_84": np.percentile(fit.a0, [16, 50, 84]).round(3).tolist(),
            "a0_inferred_p16_50_84": np.percentile(a0_med, [16, 50, 84]).round(3).tolist()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{result['n_stars']} stars, run {args.run} (commit {commit}), "
          f"{result['grid_photosphere_correction']} / {result['model_error']} model error")
    print("| bin | n | T_eff bias / scatter / cov68 / cov95 | log g | [M/H] |")
    print("| --- | --- | --- | --- | --- |")
    for name, row in result["bins"].items():
        cells = [f"{row[p]['bias']:+.{d}f} / {row[p]['robust_scatter']:.{d}f} / "
                 f"{row[p]['coverage68']:.2f} / {row[p]['coverage95']:.2f}"
                 for p, d in (("teff", 0), ("logg", 2), ("mh", 2))]
        print(f"| {name} | {row['teff']['n']} | " + " | ".join(cells) + " |")
    if result["twins"]:
        print(f"simulated twins (G {TWIN_G:g}):")
        for name, row in result["twins"].items():
            cells = [f"{row[p]['bias']:+.{d}f} / {row[p]['robust_scatter']:.{d}f} / "
                     f"{row[p]['coverage68']:.2f} / {row[p]['coverage95']:.2f}"
                     for p, d in (("teff", 0), ("logg", 2), ("mh", 2))]
            print(f"| twin {name} | {row['teff']['n']} | " + " | ".join(cells) + " |")
    print("goodness of fit:", json.dumps(result["gof"]))
    print("18 Sco:", json.dumps(result["18sco"]))
    if "a0_inferred_minus_fit" in result:
        print("A0 inferred - fit:", json.dumps(result["a0_inferred_minus_fit"]))
    if args.figure:
        figure(samples[ok], {k: v[ok] for k, v in lab.items()}, args.figure, result)
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")


def figure(samples: np.ndarray, lab: dict, path: str, result: dict) -> None:
    from cvae_pms.plots import plain_text
    with plain_text():
        _figure(samples, lab, path, result)


def _figure(samples: np.ndarray, lab: dict, path: str, result: dict) -> None:
    import matplotlib.pyplot as plt
    med = np.median(samples, axis=1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, (ours, theirs) in zip(axes, LABELS):
        j = P.INDEX[ours]
        sc = ax.scatter(lab[theirs], med[:, j], c=lab["gaiaedr3_phot_g_mean_mag"], s=3,
                        cmap="viridis", vmin=8, vmax=15)
        lo, hi = P.LOW[j], P.HIGH[j]
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set_xlim(lo, hi), ax.set_ylim(lo, hi)
        ax.set_xlabel(f"APOGEE {ours}"), ax.set_ylabel(f"posterior median {ours}")
    fig.colorbar(sc, ax=axes, label="G [mag]")
    fig.suptitle(f"{Path(result['run']).name}: {result['n_stars']} APOGEE test-part stars "
                 f"(commit {result['code_commit']})")
    from cvae_pms.atomic import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
