"""Spectrum-only vs luminosity-aware (parallax) CVAE on the same held-out test stars.

Trains ``cpu-quick`` and ``cpu-quick-lum`` on one grid with the same seed (``--set`` overrides
apply to both, e.g. a shorter run on a shared CPU), simulates test-split stars with
``--parallax-error-frac`` (default 5 %) at each G, runs ``infer`` with both models (and the
luminosity model once more with every parallax refused: the spectrum-only fallback), and
reports per parameter and G: the scatter of the posterior median about the truth (RMS and
1.4826 MAD), the median 68 % width and the 68 % coverage.

    python benchmarks/bench_luminosity.py --grid GRID.h5 --out benchmarks/out/lum \\
        [--g 12 15 17] [--n 300] [--set training.epochs=20 --set annealing.start=2 ...]

Writes ``OUT/bench_luminosity.json`` (all numbers) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from cvae_pms.diagnostics.metrics import robust_scatter


def _metrics(summary_path: Path, truth_path: Path) -> dict:
    from astropy.table import Table, join

    from cvae_pms import params
    s = Table.read(summary_path, format="ascii.ecsv")
    t = Table.read(truth_path, format="ascii.csv")
    t = t[["source_id", *params.NAMES]]
    for name in params.NAMES:
        t.rename_column(name, f"true_{name}")
    m = join(s, t, keys="source_id")
    ok = (np.asarray(m["status"]) & 1) == 0
    out = {"n": int(ok.sum())}
    for name in params.NAMES:
        med = np.asarray(m[f"{name}_median"], float)[ok]
        lo = np.asarray(m[f"{name}_p16"], float)[ok]
        hi = np.asarray(m[f"{name}_p84"], float)[ok]
        true = np.asarray(m[f"true_{name}"], float)[ok]
        r = med - true
        out[name] = {"rms": float(np.sqrt(np.mean(r ** 2))),
                     "mad_sigma": float(robust_scatter(r, 0.0)),
                     "width68_median": float(np.median(hi - lo)),
                     "coverage68": float(np.mean((true >= lo) & (true <= hi)))}
    flags = np.asarray(m["status"])
    out["n_no_parallax"] = int(((flags & 64) > 0).sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", required=True, help="grid with absolute fluxes (built-in synth)")
    ap.add_argument("--out", default="benchmarks/out/lum")
    ap.add_argument("--g", type=float, nargs="+", default=[12.0, 15.0, 17.0])
    ap.add_argument("--n", type=int, default=300, help="test stars per G")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--parallax-error-frac", type=float, default=0.05)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="training override applied to both recipes (repeatable)")
    ap.add_argument("--reuse", action="store_true", help="reuse trained runs in OUT")
    a = ap.parse_args()

    from cvae_pms.infer import infer
    from cvae_pms.simulate import simulate
    from cvae_pms.training import train

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"grid": str(Path(a.grid).resolve()), "overrides": a.overrides,
                    "cpu_count": os.cpu_count(), "parallax_error_frac": a.parallax_error_frac,
                    "n_per_g": a.n, "samples": a.samples, "train_s": {}, "by_g": {}}
    runs = {}
    for recipe in ("cpu-quick", "cpu-quick-lum"):
        run = out / f"run_{recipe}"
        if not (a.reuse and (run / "model.weights.h5").is_file()):
            t0 = time.time()
            res = train(a.grid, recipe, run, overrides=a.overrides, log=lambda s: None)
            result["train_s"][recipe] = {"wall_s": time.time() - t0,
                                         "epochs": res.epochs_run, "stop": res.stop_reason}
            print(f"trained {recipe}: {res.epochs_run} epochs in {time.time() - t0:.0f} s",
                  flush=True)
        runs[recipe] = run
    for g in a.g:
        obs = out / f"obs_g{g:g}.csv"
        simulate(obs, (g, g), (15, 80), seed=int(g * 10), grid_path=a.grid, n=a.n,
                 parallax_error_frac=a.parallax_error_frac, run_dir=runs["cpu-quick"])
        truth = out / f"obs_g{g:g}_truth.csv"
        block = {}
        for label, recipe, kw in (("spectrum_only", "cpu-quick", {}),
                                  ("luminosity", "cpu-quick-lum", {}),
                                  ("luminosity_no_parallax", "cpu-quick-lum",
                                   {"min_parallax_over_error": 1e30})):
            summ = out / f"sum_{label}_g{g:g}.ecsv"
            infer(runs[recipe], [obs], out / f"post_{label}_g{g:g}.h5", n_samples=a.samples,
                  summary=summ, progress=False, **kw)
            block[label] = _metrics(summ, truth)
        result["by_g"][f"{g:g}"] = block
    (out / "bench_luminosity.json").write_text(json.dumps(result, indent=1))
    from cvae_pms import params
    print(f"scatter (1.4826 MAD of median - truth) | 68% width | 68% coverage; "
          f"{a.n} stars per G, parallax error {a.parallax_error_frac:.0%}")
    for g, block in result["by_g"].items():
        print(f"G = {g}")
        for name in params.NAMES:
            cells = [f"{block[k][name]['mad_sigma']:.3g} | {block[k][name]['width68_median']:.3g}"
                     f" | {block[k][name]['coverage68']:.2f}" for k in block]
            print(f"  {name:9s} " + "   ".join(f"{k}: {c}" for k, c in zip(block, cells)))
    print(f"wrote {out / 'bench_luminosity.json'}")


if __name__ == "__main__":
    main()
