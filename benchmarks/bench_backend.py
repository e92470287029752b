#!/usr/bin/env python
"""Benchmark one Keras backend (TensorFlow or JAX, CPU or GPU): training, sampling, end to end.

Usage::

    python benchmarks/bench_backend.py [--backend jax] [--run RUN] [--grid GRID]
        [--train-batches 1024,8192,32768] [--train-steps 20] [--sample-batches 256,2048]
        [--samples 1000] [--e2e 100000] [--full-epochs 0] [--out OUT.json]

- training: ``cvae_pms.training.train`` on ``--grid`` (default: a 20,000-row stand-in grid of
  ``tests/helpers_infer.py``) with the ``gpu-full`` architecture for 2 epochs of
  ``--train-steps`` steps at each batch size (rows x 1 noise draw); samples/s of the second
  epoch (after compilation), noise path inside the step as in real training;
- sampling: the keyed sampler (:class:`cvae_pms.model.sampler.KeyedSampler`) of ``--run``
  (default: the shipped model) at S = ``--samples`` on precomputed features, sources/s for
  each source batch, after one warm-up call;
- end to end: ``cvae_pms.infer.infer`` on a FITS archive file of ``--e2e`` sources (the
  2,000 real Gaia sources of ``../shared/data``'s FITS file repeated with new ids), model
  loaded beforehand, and its time split (reading, features, sampling, writing) from
  ``cProfile`` cumulative times;
- ``--full-epochs N``: train ``gpu-full`` for N epochs on ``--grid`` and report the wall time.

Results (with the backend, the devices, the model and the commit) are printed and written as
JSON. The backend is chosen before Keras is imported (``--backend`` or ``KERAS_BACKEND``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
SHARED_FITS = (ROOT.parent / "shared" / "data" / "real_xp" / "xp_spectral_lines"
               / "xp_continuous_combined_chunk0.fits")


def devices() -> str:
    import keras
    if keras.backend.backend() == "jax":
        import jax
        return ", ".join(sorted({f"{d.platform}:{d.device_kind}" for d in jax.devices()}))
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    return f"{len(gpus)} GPU(s)" if gpus else "CPU"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def bench_training(grid: Path, work: Path, batches: list[int], steps: int) -> list[dict]:
    """Samples/s of the second of two ``steps``-step epochs at each batch size."""
    import helpers_infer as h
    from cvae_pms.training import train
    out = []
    for b in batches:
        run = work / f"train_b{b}"
        res = train(grid, "gpu-full", run, overrides=(
            "training.epochs=2", f"training.steps_per_epoch={steps}", f"training.batch_size={b}",
            "training.noise_copies=1", "training.val_max_rows=1024"),
            noise_model=h.noise_model(), log=lambda s: None, ood=False)
        row = res.history[-1]
        out.append({"batch": b, "steps": steps, "samples_per_s": row["samples_per_s"],
                    "first_epoch_s": res.history[0]["time_s"]})
        print(json.dumps(out[-1]), flush=True)
    return out


def bench_sampling(run, batches: list[int], samples: int, n_sources: int) -> list[dict]:
    """Sources/s of the keyed sampler at S = ``samples`` for each source batch."""
    import numpy as np

    from cvae_pms.model.sampler import KeyedSampler
    rng = np.random.default_rng(0)
    y = rng.normal(size=(n_sources, run.net.config.y_dim)).astype(np.float32)
    keys = np.arange(n_sources, dtype=np.int64)
    out = []
    for b in batches:
        s = KeyedSampler(run.net, samples, batch=b)
        s.sample_unit(y[:b], keys[:b])                       # compile
        n = max(b, (min(n_sources, 8 * b) // b) * b)
        t0 = time.perf_counter()
        s.sample_unit(y[:n], keys[:n])
        dt = time.perf_counter() - t0
        out.append({"batch": b, "sources": n, "samples": samples, "sources_per_s": n / dt})
        print(json.dumps(out[-1]), flush=True)
    return out


def archive_fits(path: Path, n: int) -> Path:
    """A FITS archive file of ``n`` sources: the 2,000 real Gaia DR3 sources of
    ``xp_continuous_combined_chunk0.fits`` (coefficients and errors) repeated with new ids."""
    import numpy as np
    from astropy.table import Table
    if not SHARED_FITS.is_file():
        raise SystemExit(f"end to end needs {SHARED_FITS} (../shared beside the project); "
                         f"or --e2e 0")
    t = Table.read(SHARED_FITS)
    t = t[np.arange(n) % len(t)]
    t["source_id"] = np.arange(n, dtype=np.int64) + 1
    t.write(path, overwrite=True)
    return path


#: (label, function names whose cumulative time is that part) for the end-to-end split.
PARTS = (("reading", ("iter_xp",)), ("features", ("numpy_with_luminosity", "numpy")),
         ("sampling", ("sample_unit",)), ("writing", ("write_rows", "append", "write_summary")))


def bench_end_to_end(run_dir: str, model, fits: Path, samples: int, work: Path) -> dict:
    """Sources/s of one ``infer`` on ``fits`` and the cProfile split of its wall time."""
    import cProfile
    import pstats

    from cvae_pms.infer import infer
    infer(run_dir, [fits], work / "warm.h5", n_samples=samples, model=model, progress=False,
          gof=False)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    res = infer(run_dir, [fits], work / "e2e.h5", n_samples=samples, model=model,
                progress=False, gof=False)
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats
    split = {}
    for label, names in PARTS:
        cum = [ct for (f, _, fn), (_, _, _, ct, _) in stats.items()
               if fn in names and "cvae_pms" in f]
        split[label + "_s"] = round(max(cum), 3) if cum else None
    return {"sources": res.n_sources, "samples": samples, "wall_s": wall,
            "sources_per_s": res.n_sources / wall, "split": split,
            "file_mb": (work / "e2e.h5").stat().st_size / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default=None, choices=("tensorflow", "jax"))
    ap.add_argument("--run", default="default")
    ap.add_argument("--grid", type=Path, default=None)
    ap.add_argument("--train-batches", default="1024,8192")
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--sample-batches", default="256,2048")
    ap.add_argument("--sample-sources", type=int, default=8192)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--e2e", type=int, default=100_000)
    ap.add_argument("--full-epochs", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "bench_backend.json")
    a = ap.parse_args()

    from cvae_pms import backend
    backend.select(a.backend)
    import keras

    from cvae_pms.inference.model import load_model
    from cvae_pms.models import resolve as resolve_model
    ints = lambda s: [int(v) for v in s.split(",") if v.strip()]   # noqa: E731
    run_dir = str(resolve_model(a.run))
    result = {"date": time.strftime("%Y-%m-%d"), "commit": commit(),
              "backend": keras.backend.backend(), "devices": devices(),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
              "model": run_dir, "args": {k: str(v) for k, v in vars(a).items()}}
    print(json.dumps(result), flush=True)
    with tempfile.TemporaryDirectory(dir=a.work) as tmp:
        tmp = Path(tmp)
        grid = a.grid
        if grid is None and (ints(a.train_batches) or a.full_epochs):
            import helpers_infer as h
            grid = h.make_grid(tmp / "standin.h5", n=max(20_000, 2 * max(ints(a.train_batches) or [0])))
        if ints(a.train_batches):
            result["training"] = bench_training(grid, tmp, ints(a.train_batches), a.train_steps)
        model = load_model(run_dir)
        if ints(a.sample_batches):
            result["sampling"] = bench_sampling(model.run, ints(a.sample_batches), a.samples,
                                                a.sample_sources)
        if a.e2e:
            t0 = time.perf_counter()
            fits = archive_fits(tmp / "archive.fits", a.e2e)
            result["e2e_file_write_s"] = time.perf_counter() - t0
            result["end_to_end"] = bench_end_to_end(run_dir, model, fits, a.samples, tmp)
            print(json.dumps(result["end_to_end"]), flush=True)
        if a.full_epochs:
            import helpers_infer as h
            from cvae_pms.training import train
            t0 = time.perf_counter()
            res = train(grid, "gpu-full", tmp / "full", overrides=(
                f"training.epochs={a.full_epochs}",), noise_model=h.noise_model(),
                log=lambda s: print(s, flush=True), ood=False)
            result["full_training"] = {"epochs": len(res.history),
                                       "wall_s": time.perf_counter() - t0,
                                       "samples_per_s": res.samples_per_s}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
