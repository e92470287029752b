"""Copy a trained model dir into the package (cvae_pms/models/NAME/) with its provenance.

    python scripts/ship_model.py runs/default default --eval benchmarks/out/eval_default \
        --apogee benchmarks/out/real_apogee_default.json --code-commit c2d800b

Keeps the files inference and evaluation read (models.SHIPPED_FILES; no checkpoints), and
writes provenance.json: recipe, grid (command, content hash, forward-model version), code
commit, training (epochs, seconds, samples/s, hardware, last losses), the evaluation table
(evaluate's metrics.json, per G and parameter) and the real-star benchmark summary when given.
A warm-started run (``training.init_from``) gets its init model's provenance as the earlier
stage (``training.stages``, total ``training.seconds``) when that model dir has one.
The folder is written beside the target and renamed into place.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import shutil
import tempfile
from pathlib import Path

from cvae_pms import models


def _training(run: Path, hardware: str) -> dict:
    rows = list(csv.DictReader(open(run / "history.csv")))
    last = rows[-1]
    return {"epochs": len(rows), "seconds": round(float(last["time_s"])),
            "samples_per_s": round(float(last["samples_per_s"])), "hardware": hardware,
            "last_epoch": {k: float(last[k]) for k in ("H", "KL", "val_H", "val_KL")}}


def _stages(run: Path, this: dict, recipe: str | None) -> dict:
    """``this`` stage's training, with the init model's stages before it (warm start)."""
    init = json.loads((run / "config.json").read_text())["training"].get("init_from") or ""
    prov = Path(init) / models.PROVENANCE if init else None
    if prov is None or not prov.is_file():
        return this
    before = json.loads(prov.read_text())
    earlier = before["training"].get("stages") or [
        {"recipe": before.get("recipe"), "code_commit": before.get("code_commit"),
         **before["training"]}]
    stages = earlier + [{"recipe": recipe, "init_from": init, **this}]
    return {**this, "seconds": sum(int(st["seconds"]) for st in stages),
            "epochs": sum(int(st["epochs"]) for st in stages), "stages": stages}


def _evaluation(eval_dir: Path) -> dict:
    m = json.loads((eval_dir / "metrics.json").read_text())
    return {"command": m.get("command"), "metrics": m}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("name")
    ap.add_argument("--eval", dest="eval_dir", type=Path, required=True,
                    help="cvae-pms evaluate --out folder of this run (metrics.json)")
    ap.add_argument("--apogee", type=Path, default=None,
                    help="bench_real_apogee.py summary JSON of this run")
    ap.add_argument("--code-commit", required=True, help="commit the run was trained with")
    ap.add_argument("--grid-command", required=True, help="the grid synth command line")
    ap.add_argument("--hardware", default=f"{platform.machine()} CPU, 2 cores, no GPU")
    ap.add_argument("--recipe", default=None,
                    help="recipe name (default: the first line of the run's config.toml, "
                         "which is the base recipe's for a recipe with base =)")
    args = ap.parse_args(argv)
    if not models.is_model_dir(args.run):
        raise SystemExit(f"{args.run}: not a model dir")
    grid = json.loads((args.run / "grid.json").read_text())
    meta = grid.get("meta", {})
    config_toml = (args.run / "config.toml").read_text()
    prov = {
        "name": args.name,
        "recipe": args.recipe or config_toml.splitlines()[0].lstrip("# ").split(":")[0],
        "grid": {"command": args.grid_command, "content_hash": grid["content_hash"],
                 "n": grid["n"],
                 "forward_model_version": meta.get("forward_model", {}).get(
                     "forward_model_version"),
                 "photosphere_correction": meta.get("forward_model", {}).get(
                     "photosphere_correction")},
        "code_commit": args.code_commit,
        "training": _stages(args.run, _training(args.run, args.hardware), args.recipe),
        "evaluation": _evaluation(args.eval_dir),
        "real_apogee": json.loads(args.apogee.read_text()) if args.apogee else None,
        "shipped_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    target = models.SHIPPED_DIR / args.name
    tmp = Path(tempfile.mkdtemp(prefix=f".{args.name}.tmp-", dir=models.SHIPPED_DIR))
    for f in models.SHIPPED_FILES:
        if (args.run / f).is_file():
            shutil.copy2(args.run / f, tmp / f)
    (tmp / models.PROVENANCE).write_text(json.dumps(prov, indent=1, default=str) + "\n")
    if target.exists():
        shutil.rmtree(target)
    tmp.chmod(0o755)  # mkdtemp makes it private; package data must be readable
    tmp.rename(target)
    size = sum(p.stat().st_size for p in target.iterdir()) / 2**20
    print(f"{target}: {len(list(target.iterdir()))} files, {size:.1f} MiB")


if __name__ == "__main__":
    main()
