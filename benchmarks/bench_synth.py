"""Benchmark ``cvae-pms grid synth``: wall time, spectra/s, time share per stage, peak memory.

Runs the real command in a subprocess (so the peak RSS is that of the command alone) and writes
the figures as JSON. Goal on the 2-core reference machine: N = 160,000 in <= 5 min, <= 4 GB.

Usage::

    python benchmarks/bench_synth.py [--n 160000] [--chunk 5000] [--out-dir DIR] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 300.0
GOAL_GB = 4.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=160_000)
    ap.add_argument("--chunk", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=None, help="where the grid goes (deleted after)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.out_dir) as tmp:
        grid = Path(tmp) / "bench.h5"
        cmd = [sys.executable, "-c", "from cvae_pms.cli import main; main()",
               "grid", "synth", "--n", str(args.n), "--chunk", str(args.chunk),
               "--seed", str(args.seed), "--out", str(grid), "--quiet"]
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"grid synth failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        size_mb = grid.stat().st_size / 1e6
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: kB
    shares = {k: float(v) / 100 for k, v in re.findall(r"(\w+) (\d+) %", proc.stdout)}
    result = {
        "n": args.n, "chunk": args.chunk, "wall_s": round(wall, 2),
        "spectra_per_s": round(args.n / wall, 1), "stage_share": shares,
        "peak_rss_gb": round(peak_kb / 1e6, 3), "grid_file_mb": round(size_mb, 1),
        "goal_met": wall <= GOAL_S and peak_kb / 1e6 <= GOAL_GB,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "command_output": proc.stdout.strip().splitlines(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
