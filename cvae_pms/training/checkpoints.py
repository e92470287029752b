"""Checkpoints of a run dir: find them, check they read back, fall back past damaged ones,
and restart a run that stopped before its first checkpoint."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .config import (RESUMABLE_KEYS, TrainingError, flatten_config, check_resume_config,
                     fill_stored_defaults)

#: Files and folders a training run writes into its model dir (a dir holding only these,
#: and no checkpoint, is a run that stopped before its first epoch ended).
RUN_PRODUCTS = ("network.json", "config.json", "config.toml", "params.json", "features.json",
                "features.npz", "grid.json", "noise.json", "split.npz", "model.weights.h5",
                "history.csv", "loss.png", "ood.npz", "checkpoints", "tensorboard")


def checkpoint_files(ckpt_dir: Path) -> list[str]:
    """Checkpoint files ``ckpt_dir/ckpt-N.npz`` found on disk, newest (largest N) first."""
    found = []
    for f in Path(ckpt_dir).glob("ckpt-*.npz"):
        try:
            found.append((int(f.name[len("ckpt-"):-len(".npz")]), str(f)))
        except ValueError:
            continue
    return [p for _, p in sorted(found, reverse=True)]


def checkpoint_intact(path: str) -> str | None:
    """None when every array of the checkpoint file ``path`` reads back (zip CRCs checked),
    else why not."""
    import numpy as np
    try:
        with np.load(path, allow_pickle=False) as f:
            names = set(f.files)
            missing = {"format", "epoch", "net_paths", "opt_paths"} - names
            if missing:
                return f"no {', '.join(sorted(missing))}"
            for name in f.files:
                f[name]
    except Exception as exc:  # noqa: BLE001 - BadZipFile, EOFError, ValueError, OSError ...
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


def newest_intact_checkpoint(run: Path, log: Callable[[str], None]) -> str | None:
    """The newest readable checkpoint file of ``run``; damaged newer ones are removed (said in
    the log)."""
    files = checkpoint_files(run / "checkpoints")
    for k, path in enumerate(files):
        why = checkpoint_intact(path)
        if why is None:
            return path
        log(f"{path}: damaged checkpoint ({why}); "
            + ("falling back to the previous one" if k + 1 < len(files) else
               "no older checkpoint"))
        Path(path).unlink()
    return None


def restart_from_scratch(run: Path, cfg: dict, toml_text: str,
                          log: Callable[[str], None]) -> tuple[dict, str]:
    """``--resume`` of a run without an (intact) checkpoint: clear its training products and
    return the config to start again with (the saved one, else the given one)."""
    stray = [p.name for p in run.iterdir() if p.name not in RUN_PRODUCTS
             and ".tmp-" not in p.name and not p.name.startswith("tmp-")]
    if not (run / "config.json").is_file() and stray:
        raise TrainingError(f"{run}: nothing to resume (no config.json, no checkpoint, and "
                            f"files a training run does not write: {', '.join(sorted(stray)[:5])})"
                            f"; start without --resume in another --out")
    try:
        stored = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        stored = None
    try:
        stored_toml = (run / "config.toml").read_text()
    except OSError:
        stored_toml = toml_text
    if stored is not None:
        fill_stored_defaults(stored)
        check_resume_config(stored, cfg, run)
        for key in RESUMABLE_KEYS:
            section, name = key.split(".")
            stored[section][name] = flatten_config(cfg)[key]
        cfg, toml_text = stored, stored_toml
        log(f"{run}: no checkpoint yet (stopped before the end of its first epoch): starting "
            f"from scratch with its saved config")
    else:
        log(f"{run}: no checkpoint and no saved config yet: starting from scratch with the "
            f"given config")
    for p in run.iterdir():
        if p.name in ("checkpoints", "tensorboard"):
            import shutil
            shutil.rmtree(p)
        elif p.name in ("model.weights.h5", "history.csv", "loss.png", "ood.npz") \
                or ".tmp-" in p.name or p.name.startswith("tmp-"):
            p.unlink()
    return cfg, toml_text
