"""Benchmark: CVAE training throughput (samples/s) and posterior sampling speed (sources/s).

Usage::

    python benchmarks/bench_train.py --grid GRID [--config cpu-quick] [--steps 30]
                                     [--run RUN] [--sources 512] [--samples 1000]

Training: two epochs of ``--steps`` steps each in a temporary model dir; the second epoch
(after tracing) gives samples/s, noise drawn inside the step as in real training.
Sampling: ``Run.sample_features`` on ``--sources`` noisy test-split spectra at S samples each
(features computed beforehand; timing after one warm-up batch). ``--run`` uses a trained
model dir; otherwise the model of the training benchmark (speed does not depend on training).
Results are printed and written to ``benchmarks/out/bench_train.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", required=True)
    ap.add_argument("--config", default="cpu-quick")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--run", default=None)
    ap.add_argument("--sources", type=int, default=512)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--g", type=float, default=15.0)
    args = ap.parse_args()

    import numpy as np
    import tensorflow as tf
    from cvae_pms.grid.gridfile import open_grid
    from cvae_pms.model.rundir import load_run
    from cvae_pms.training import train
    from cvae_pms.xp.noise import draw_observation
    from cvae_pms.xp.photometry import scale_to_g

    out: dict = {"cpu_count": os.cpu_count(), "gpus": len(tf.config.list_physical_devices("GPU"))}
    with tempfile.TemporaryDirectory() as tmp:
        res = train(args.grid, args.config, Path(tmp) / "run",
                    overrides=[f"training.steps_per_epoch={args.steps}", "training.epochs=2",
                               "training.standardisation_rows=2048",
                               "training.val_max_rows=512"], log=lambda s: None)
        out["train_samples_per_s"] = res.history[-1]["samples_per_s"]
        out["train_config"] = str(args.config)
        run = load_run(args.run or res.run_dir)
        with open_grid(run.grid_info["path"] if args.run else args.grid) as grid:
            idx = np.arange(min(args.sources, grid.n))
            _, bp, rp = grid.read(idx)
        bp, rp, _ = scale_to_g(bp, rp, args.g)
        obs = draw_observation(bp, rp, 40, np.random.default_rng(0))
        t0 = time.perf_counter()
        y, _ = run.features(*obs)
        out["features_sources_per_s"] = len(idx) / (time.perf_counter() - t0)
        run.sample_features(y[:args.batch], n_samples=args.samples, batch=args.batch)
        t0 = time.perf_counter()
        s = run.sample_features(y, n_samples=args.samples, batch=args.batch)
        dt = time.perf_counter() - t0
        out.update(sampler_sources_per_s=len(idx) / dt, samples_per_source=args.samples,
                   sampler_batch=args.batch, n_sources=len(idx), sample_shape=list(s.shape))
    print(json.dumps(out, indent=1))
    d = Path(__file__).resolve().parent / "out"
    d.mkdir(exist_ok=True)
    (d / "bench_train.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
