#!/usr/bin/env python
"""Benchmark ``cvae-pms infer``: sources/s (model only and end to end) and peak memory.

Usage::

    python benchmarks/bench_infer.py [--run RUN] [--n 2000] [--samples 1000]
        [--rss 10000,30000] [--widths] [--out benchmarks/out/bench_infer.json]

- model only: :func:`cvae_pms.infer.sample_sources` on precomputed features, S samples each;
- end to end: an archive CSV of ``--n`` simulated sources -> posterior file + summary table
  (reading, features, sampling, OOD, flags, compressed HDF5 writes), model already loaded;
- peak RSS [MiB, 2^20 bytes]: a child process streams ``N`` sources at S samples each: the one
  ``--n``-source CSV given ``N // --n`` times as inputs, so ``--rss 100000`` with the default
  ``--n 2000`` is one 2000-source file streamed 50 times (2000 distinct spectra, each read,
  featurised, sampled and written 50 times), not 100,000 different stars; run for each N in
  ``--rss`` to get the memory slope in N;
- ``--profile``: the end-to-end pass once more under :mod:`cProfile`; the functions with the
  largest own time (and the share of the wall time) go into the JSON as ``profile``;
- ``--widths`` (needs a trained ``--run`` whose grid exists): median 68 % widths of T_eff and
  A0 for the same test-split stars at G = 12 and 17 (the fainter must be wider).

Without ``--run`` a model of the ``cpu-quick`` architecture is trained for one epoch on the
analytic stand-in grid of ``tests/helpers_infer.py`` (speed depends on the architecture, not on
the weights). Results are printed and written as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import helpers_infer as h  # noqa: E402

from cvae_pms import params  # noqa: E402


def quick_arch_run(work: Path) -> Path:
    """cpu-quick architecture, 1 epoch on a 3000-row stand-in grid (for timing only)."""
    from cvae_pms.training import train

    run = work / "run_cpu_quick_arch"
    if (run / "ood.npz").is_file():
        return run
    grid = h.make_grid(work / "standin_grid.h5", n=3000)
    train(grid, "cpu-quick", run, overrides=("training.epochs=1",), noise_model=h.noise_model(),
          log=lambda s: None)   # builds RUN/ood.npz at the end
    return run


def simulated_csv(path: Path, n: int, seed: int = 0) -> Path:
    """Archive CSV of n stand-in stars at G uniform in 12-17."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(0.1, 0.9, (n, 7))
    u[:, 6] *= 0.3
    return h.write_observations(path, params.from_unit(u), rng.uniform(12, 17, n), seed=seed)


def _vm_hwm_mib() -> float:
    """Peak resident memory of this process (VmHWM, MiB). Unlike getrusage's ru_maxrss it is
    not inherited across fork + exec from the parent (which peaks writing the input CSV)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(run: str, csv: str, repeats: int, out: str, samples: int) -> None:
    """Child process: stream ``repeats`` copies of ``csv``; print peak RSS (MiB) and rate."""
    from cvae_pms.infer import infer, load_model

    model = load_model(run)
    t0 = time.time()
    res = infer(run, [csv] * repeats, out, n_samples=samples, model=model, progress=False)
    dt = time.time() - t0
    peak_mib = _vm_hwm_mib()
    print(json.dumps({"n": res.n_sources, "input_file": csv, "repeats": repeats,
                      "distinct_sources": res.n_sources // repeats, "peak_rss_mib": peak_mib,
                      "seconds": dt, "sources_per_s": res.n_sources / dt}))


def profile_end_to_end(run, csv: Path, tmp: Path, samples: int, model, top: int = 15) -> dict:
    """cProfile of one end-to-end ``infer``: wall seconds and the ``top`` functions by own
    time (``file:line(name)``, own and cumulative seconds, own share of the wall time)."""
    import cProfile
    import pstats

    from cvae_pms.infer import infer

    prof = cProfile.Profile()
    t0 = time.time()
    prof.enable()
    infer(run, [csv], tmp / "prof.h5", n_samples=samples, summary=tmp / "prof.ecsv",
          model=model, progress=False)
    prof.disable()
    wall = time.time() - t0
    stats = pstats.Stats(prof).stats            # {(file, line, name): (cc, nc, tt, ct, callers)}
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    return {"wall_s": wall, "top_own_time": [
        {"function": f"{Path(f).name}:{line}({name})", "own_s": round(tt, 3),
         "cum_s": round(ct, 3), "own_share": round(tt / wall, 3)}
        for (f, line, name), (_, _, tt, ct, _) in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--rss", default="10000,30000", help="comma list of N ('' to skip)")
    ap.add_argument("--widths", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "bench_infer.json")
    ap.add_argument("--rss-child", nargs=4, metavar=("RUN", "CSV", "REPEATS", "OUT"))
    a = ap.parse_args()
    if a.rss_child:
        rss_child(a.rss_child[0], a.rss_child[1], int(a.rss_child[2]), a.rss_child[3], a.samples)
        return

    from cvae_pms.infer import infer, load_model, sample_sources
    from cvae_pms.xp.archive import read_xp

    a.work.mkdir(parents=True, exist_ok=True)
    run = a.run or quick_arch_run(a.work)
    result = {"machine": f"{platform.processor() or platform.machine()}, "
                         f"{os.cpu_count()} CPU cores (shared with other jobs)",
              "run": str(run), "samples": a.samples}
    t0 = time.time()
    model = load_model(run)
    result["model_load_s"] = time.time() - t0
    with tempfile.TemporaryDirectory(dir=a.work) as tmp:
        tmp = Path(tmp)
        csv = simulated_csv(tmp / "obs.csv", a.n)
        batch = read_xp(csv)
        y, _ = model.run.features(batch.bp_coefficients, batch.rp_coefficients,
                                  batch.bp_covariance, batch.rp_covariance)
        sample_sources(model, y[:16], batch.source_id[:16], a.samples, 0)  # trace once
        m = min(a.n, 1000)
        t0 = time.time()
        sample_sources(model, y[:m], batch.source_id[:m], a.samples, 0)
        result["model_only_sources_per_s"] = m / (time.time() - t0)
        t0 = time.time()
        res = infer(run, [csv], tmp / "post.h5", n_samples=a.samples, summary=tmp / "post.ecsv",
                    model=model, progress=False)
        dt = time.time() - t0
        result["end_to_end"] = {"n": res.n_sources, "seconds": dt,
                                "sources_per_s": res.n_sources / dt,
                                "file_mb": (tmp / "post.h5").stat().st_size / 1e6}
        print(json.dumps(result, indent=1), flush=True)
        if a.profile:
            result["profile"] = profile_end_to_end(run, csv, tmp, a.samples, model)
        rss = []
        for n in [int(v) for v in a.rss.split(",") if v.strip()]:
            repeats = max(1, n // a.n)
            out = subprocess.run(
                [sys.executable, __file__, "--samples", str(a.samples), "--rss-child", str(run),
                 str(csv), str(repeats), str(tmp / f"rss_{n}.h5")],
                capture_output=True, text=True, check=True)
            rss.append(json.loads(out.stdout.strip().splitlines()[-1]))
            (tmp / f"rss_{n}.h5").unlink()
            print(json.dumps(rss[-1]), flush=True)
        result["peak_rss"] = rss
        if len(rss) >= 2:
            dn = rss[-1]["n"] - rss[0]["n"]
            result["rss_slope_mib_per_100k"] = (rss[-1]["peak_rss_mib"]
                                                - rss[0]["peak_rss_mib"]) / dn * 1e5
        if a.widths:
            from test_infer import wider_when_fainter

            w = wider_when_fainter(run, tmp)
            result["widths_68"] = {p: {"G12_median": float(np.median(w[12.0][p])),
                                       "G17_median": float(np.median(w[17.0][p])),
                                       "fraction_wider_at_G17": float(np.mean(w[17.0][p] > w[12.0][p]))}
                                   for p in ("teff", "a0")}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
