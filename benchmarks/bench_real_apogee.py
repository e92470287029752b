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

from cvae_pms import params as P

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_xp"
SCO_FILE = SHARED / "gaiaxpy_samples" / "18Sco-XP-spectra.csv"
SCO_LABELS = {"teff": 5810.0, "logg": 4.44, "mh": 0.03}
TEFF_BINS = ((3000, 4000), (4000, 4500), (4500, 5500), (5500, 7000))
G_BINS = ((5, 11), (11, 12.5), (12.5, 14), (14, 16))
LOGG_SPLIT = 3.8
LABELS = (("teff", "teff"), ("logg", "logg"), ("mh", "fe_h"))


def sampled_samples(run, flux: np.ndarray, flux_error: np.ndarray, n_samples: int, seed: int,
                    source_id: np.ndarray, gof: bool = False):
    """Posterior samples (n, S, 7) of sampled spectra (flux, error [W m^-2 nm^-1] (n, 343))
    through the one inference path (:func:`cvae_pms.infer.infer_batch` on a
    :class:`~cvae_pms.xp.sampled.SampledBatch`), keyed on ``source_id`` as ``infer`` is.
    ``gof``: also run the model's posterior predictive check and return
    ``(samples, gof_chi2_red, gof_p, status)``."""
    from cvae_pms.infer import infer_batch, load_model
    from cvae_pms.xp.sampled import SampledBatch
    model = load_model(run)
    check = model.predictive_check()[0] if gof else None
    out, chi, pv, st = [], [], [], []
    for lo in range(0, len(source_id), 2048):
        sl = slice(lo, lo + 2048)
        batch = SampledBatch(np.asarray(source_id[sl], np.int64), flux[sl], flux_error[sl],
                             np.array([""] * len(flux[sl]), dtype=object), {}, "apogee-library")
        chunk = infer_batch(model, batch, n_samples, seed, gof=check)
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
            "robust_scatter": float(1.4826 * np.median(np.abs(d - np.median(d)))),
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
    args = ap.parse_args()
    from cvae_pms.realdata import apogee
    from cvae_pms.realdata.calibrate import usable

    t0 = time.time()
    run = args.run
    lib = apogee.read_library(parts=(apogee.TEST_PART,), in_box_only=True, download=True)
    lib = lib.select(usable(lib))
    lab = lib.labels
    samples, chi2, _, status = sampled_samples(run, lib.flux, lib.flux_error, args.samples,
                                               args.seed, lib.row, gof=True)
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
              "inference_s": round(t_inf, 1), "bins": table(samples, lab, masks),
              "gof": gof_report(samples, chi2, status, lab),
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
            "robust_scatter": float(1.4826 * np.median(np.abs(d - np.median(d)))),
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
