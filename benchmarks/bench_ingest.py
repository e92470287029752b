"""Benchmark ``cvae-pms grid ingest`` on a 160,000-row archive-style CSV.

Writes the CSV (seven parameters inside the box, ``bp_coefficients``/``rp_coefficients`` as
'(c0, c1, ...)' strings with sane, decaying random coefficients) into a temporary folder, runs
the CLI in a subprocess and reports wall time and the subprocess's peak RSS. Sizes are
MiB (2^20 bytes; ru_maxrss is in KiB on Linux).

    python benchmarks/bench_ingest.py [--rows 160000] [--seed 0] [--keep DIR]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cvae_pms import params as P


def write_csv(path: Path, rows: int, seed: int, chunk: int = 10000) -> None:
    """Write ``rows`` synthetic grid rows as an archive-style CSV (streamed, atomic)."""
    rng = np.random.default_rng(seed)
    fmt = '"(' + ", ".join(["%.17g"] * 55) + ')"'
    decay = np.exp(-np.arange(55) / 8.0)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(",".join(P.NAMES) + ",bp_coefficients,rp_coefficients\n")
        for start in range(0, rows, chunk):
            k = min(chunk, rows - start)
            p = P.from_unit(rng.random((k, P.N_PARAMS)))
            c0 = 10.0 ** rng.uniform(3.0, 5.0, size=(k, 1))
            bands = []
            for _ in range(2):
                c = c0 * 0.3 * rng.normal(size=(k, 55)) * decay
                c[:, 0] = c0[:, 0]
                bands.append(c)
            lines = [",".join(repr(float(v)) for v in p[i]) + "," + fmt % tuple(bands[0][i])
                     + "," + fmt % tuple(bands[1][i]) for i in range(k)]
            fh.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=160_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="work in DIR and keep the files")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        csv, out = work / "grid.csv", work / "grid.h5"
        t0 = time.perf_counter()
        write_csv(csv, args.rows, args.seed)
        t_write = time.perf_counter() - t0
        exe = shutil.which("cvae-pms") or str(Path(sys.executable).with_name("cvae-pms"))
        t0 = time.perf_counter()
        proc = subprocess.run([exe, "grid", "ingest", str(csv), "--out", str(out)],
                              capture_output=True, text=True)
        t_ingest = time.perf_counter() - t0
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        if proc.returncode != 0:
            sys.exit(f"ingest failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        print(proc.stdout.strip())
        print(f"RESULT bench_ingest rows={args.rows} csv_mib={csv.stat().st_size / 2**20:.0f} "
              f"grid_mib={out.stat().st_size / 2**20:.0f} csv_write_s={t_write:.1f} "
              f"ingest_s={t_ingest:.1f} rows_per_s={args.rows / t_ingest:.0f} "
              f"peak_rss_mib={peak_mib:.0f} cpus={os.cpu_count()} "
              f"machine={platform.machine()} date={dt.date.today().isoformat()}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
