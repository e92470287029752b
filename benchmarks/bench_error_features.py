"""Does a trained model read the noise-free spectrum off the error features?

Simulates the held-out stars that ``cvae-pms evaluate RUN --g-mag G --n N --seed SEED`` uses,
twice with the same noise draws: with the archive-like errors (the noise model at the noisy
coefficients, what training and ``simulate`` use) and with errors computed at the noise-free
coefficients (``errors_from="true"``, which no real archive has). A model that learned to decode
the errors scores much better on the second than on the first; an honest one scores about the
same. Reports robust scatter and 68 % coverage per parameter for both.

    python benchmarks/bench_error_features.py RUN --grid grids/grid20k.h5 \\
        [--g 15 12] [--n 500] --out benchmarks/out/error_features.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--grid", required=True)
    ap.add_argument("--g", type=float, nargs="+", default=[15.0, 12.0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    from cvae_pms import params
    from cvae_pms.diagnostics import accuracy
    from cvae_pms.evaluate import GSetting, draw_observations, select_rows
    from cvae_pms.grid.gridfile import open_grid
    from cvae_pms.model.rundir import load_run

    run = load_run(a.run)
    with open_grid(a.grid) as grid:
        rows = run.split()["test"]
        idx = select_rows(rows, a.n, a.seed)
        theta, bp0, rp0 = grid.read(idx)
    out = {"run": str(Path(a.run).resolve()), "n": int(idx.size), "by_g": {}}
    for i, g_mag in enumerate(a.g):
        res = {}
        for errors_from in ("observed", "true"):
            obs = draw_observations(bp0, rp0, GSetting(g_mag, g_mag), (15, 80), a.seed, i,
                                    errors_from=errors_from)
            y, _ = run.features(obs.bp, obs.rp, obs.bp_cov, obs.rp_cov)
            s = run.sample_features(y, n_samples=a.samples, seed=a.seed + i).astype(np.float64)
            acc = accuracy.accuracy(s, theta)
            res[errors_from] = {name: {"robust_scatter": float(acc["scatter"][k]),
                                       "coverage68": float(acc["coverage68"][k])}
                                for k, name in enumerate(params.NAMES)}
        out["by_g"][f"{g_mag:g}"] = res
        print(f"G = {g_mag:g}: robust scatter / 68 % coverage, archive-like errors vs errors "
              f"at the noise-free spectrum")
        for name in params.NAMES:
            o, t = res["observed"][name], res["true"][name]
            print(f"  {name:9s} {o['robust_scatter']:9.3f} / {o['coverage68']:.2f}   "
                  f"{t['robust_scatter']:9.3f} / {t['coverage68']:.2f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
