#!/usr/bin/env python
"""Benchmark (issue 15): ``kill -9`` of ``cvae-pms infer`` at random moments, then ``--resume``.

Usage::

    python benchmarks/bench_kill_resume.py RUN [--n 2000] [--kills 5] [--seed 0]
        [--samples 200] [--batch 64] [--keep DIR]

1. ``cvae-pms simulate`` writes ``--n`` sources from the grid RUN was trained on (``--rows
   all``; several files with different seeds when the grid has fewer rows);
2. an uninterrupted ``cvae-pms infer`` gives the reference posterior file;
3. ``--kills`` times an ``infer`` (with ``--resume`` after the first) is started and killed
   with SIGKILL at a seeded random moment of the work it has left: once its progress bar
   passes a fraction, uniform in (0.05, 0.95), of the rows left, plus a uniform fraction of
   the time per chunk (so the kill lands anywhere in a chunk's features, sampling or write);
4. a last ``--resume`` completes the run.

Checks (exit 1 on failure): exactly ``--n`` rows, one per (input file, input row); source_id,
status and samples bit-identical to the reference; no ``OUT.tmp-*``, ``OUT.partial`` or
``OUT.lock`` left. Prints one line per kill and a ``RESULT`` line.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cli(args: list, env: dict, **kw) -> subprocess.Popen:
    """Start ``cvae-pms ARGS`` (this checkout's package) as a child process."""
    return subprocess.Popen([sys.executable, "-c", "from cvae_pms.cli import main; main()",
                             *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def kill_at_progress(proc: subprocess.Popen, target: int, batch: int,
                     extra: float) -> tuple[str, int, float]:
    """SIGKILL ``proc`` ``extra`` x (seconds per chunk) after its tqdm bar (``infer: N src``)
    shows >= ``target`` rows. Returns (what happened, rows shown, seconds since the call)."""
    t0, shown, tail, first = time.perf_counter(), 0, "", None
    fd = proc.stdout.fileno()
    while True:
        chunk = os.read(fd, 4096).decode(errors="replace")
        if not chunk:                                  # exited on its own
            return f"finished first (exit {proc.wait()})", shown, time.perf_counter() - t0
        tail = (tail + chunk)[-400:]
        counts = re.findall(r"infer: (\d+)src", tail)
        shown = int(counts[-1]) if counts else shown
        if shown and first is None:
            first = (time.perf_counter(), shown)
        if shown >= target:
            chunks = max(1.0, (shown - first[1]) / batch)
            time.sleep(extra * (time.perf_counter() - first[0]) / chunks)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return "killed", shown, time.perf_counter() - t0


def run_ok(args: list, env: dict) -> str:
    proc = cli(args, env)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"cvae-pms {' '.join(map(str, args[:2]))} failed ({proc.returncode}):\n{out}")
    return out


def rows_done(out: Path) -> int:
    """Completed rows of the newest resume candidate of ``out`` (0 when none is readable)."""
    from cvae_pms.resume import candidates, complete_rows

    return max([complete_rows(c) for c in candidates(out)] + [0])


def by_input_row(path: Path):
    """Posterior arrays of ``path`` sorted by (input file, input row)."""
    from cvae_pms import posterior_file as pf

    post = pf.read_posterior(path)
    order = np.lexsort((post.input_row, np.asarray(post.input_file)))
    keys = [(str(f), int(r)) for f, r in zip(np.asarray(post.input_file)[order],
                                              post.input_row[order])]
    return keys, post.source_id[order], post.status[order], post.samples[order]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("run", type=Path, help="trained model dir (its grid must exist)")
    ap.add_argument("--n", type=int, default=2000, help="sources")
    ap.add_argument("--kills", type=int, default=5, help="kill -9 moments")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--samples", type=int, default=200, help="posterior samples per source")
    ap.add_argument("--batch", type=int, default=64, help="sources per chunk")
    ap.add_argument("--keep", type=Path, default=None, help="work in DIR and keep the files")
    args = ap.parse_args()

    from cvae_pms.grid.gridfile import open_grid

    grid_path = Path(json.loads((args.run / "grid.json").read_text())["path"])
    if not grid_path.is_file():
        sys.exit(f"{grid_path}: the grid {args.run} was trained on is not there")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_kill_resume_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        with open_grid(grid_path) as g:
            n_grid = g.n
        inputs, left, k = [], args.n, 0
        while left > 0:
            m = min(left, n_grid)
            path = work / f"obs{k}.csv"
            run_ok(["simulate", "--grid", grid_path, "--rows", "all", "--n", m, "--seed", k,
                    "--out", path], env)
            inputs.append(path)
            left, k = left - m, k + 1
        common = ["--samples", args.samples, "--batch", args.batch]
        ref, out = work / "ref.h5", work / "post.h5"
        t0 = time.perf_counter()
        run_ok(["infer", args.run, *inputs, "--out", ref, *common, "--quiet"], env)
        t_ref = time.perf_counter() - t0
        print(f"{args.n} sources in {len(inputs)} file(s), S = {args.samples}, batch "
              f"{args.batch}: uninterrupted infer {t_ref:.1f} s")

        rng = np.random.default_rng(args.seed)
        fractions = rng.uniform(0.05, 0.95, args.kills)
        for i, frac in enumerate(fractions):
            before = rows_done(out)
            proc = cli(["infer", args.run, *inputs, "--out", out, *common]
                       + (["--resume"] if i else []), env)
            target = max(1, int(frac * (args.n - before)))
            note, shown, wait = kill_at_progress(proc, target, args.batch, rng.uniform())
            proc.stdout.close()
            left_files = sorted(p.name for p in work.glob("post.h5*"))
            print(f"kill {i + 1}: at {frac:.2f} of the {args.n - before} rows left ({shown} "
                  f"new rows shown, {wait:.1f} s) {note}; rows done {before} -> "
                  f"{rows_done(out)}; files {', '.join(left_files) or '-'}")
        t0 = time.perf_counter()
        final = run_ok(["infer", args.run, *inputs, "--out", out, *common, "--resume",
                        "--quiet"], env)
        t_final = time.perf_counter() - t0
        print("final --resume: " + final.strip().splitlines()[-1]
              + f" [{t_final:.1f} s]")

        keys, sid, status, samples = by_input_row(out)
        want_keys, want_sid, want_status, want_samples = by_input_row(ref)
        strays = sorted(p.name for p in work.iterdir() if p.name.startswith("post.h5")
                        and p.name != "post.h5")
        checks = {
            f"exactly {args.n} rows": len(keys) == args.n,
            "one row per (input, row)": len(set(keys)) == len(keys) and keys == want_keys,
            "source_id and status identical": (np.array_equal(sid, want_sid)
                                               and np.array_equal(status, want_status)),
            "samples bit-identical": np.array_equal(samples, want_samples, equal_nan=True),
            "no stray files": not strays,
        }
        for name, ok in checks.items():
            print(f"  {'ok  ' if ok else 'FAIL'} {name}")
        if strays:
            print(f"  stray: {', '.join(strays)}")
        passed = all(checks.values())
        print(f"RESULT bench_kill_resume n={args.n} kills={args.kills} seed={args.seed} "
              f"samples={args.samples} rows={len(keys)} identical="
              f"{int(checks['samples bit-identical'])} strays={len(strays)} "
              f"t_ref_s={t_ref:.1f} passed={int(passed)}")
        return 0 if passed else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
