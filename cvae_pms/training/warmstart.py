"""Warm start: a new run whose networks start from a trained model dir's weights
(``[training] init_from``), e.g. a second, longer stage of the shipped default model.

The run keeps its own optimizer, learning-rate schedule and annealing (a fine-tuning recipe
sets ``annealing.start = end = 0``: the full KL weight from the first step). So that the
weights see the inputs they were trained on, and the evaluation rows stay unseen, the init
model must share this run's network configuration, feature standardisation and
train/val/test split; any difference is refused with the file that differs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from .config import TrainingError

#: Relative tolerance on the feature standardisation (mean/std recomputed from the same
#: seeded noise draws agree to float32 rounding).
STANDARDISATION_RTOL = 1e-5


def resolve_init(init_from: str) -> Path:
    """The model dir named by ``init_from`` (a path or an installed model's name)."""
    from cvae_pms.models import ModelNotFoundError, is_model_dir, resolve
    try:
        path = resolve(init_from)
    except ModelNotFoundError as exc:
        raise TrainingError(f"training.init_from: {exc}") from exc
    if not is_model_dir(path):
        raise TrainingError(f"training.init_from: {path} is not a trained model dir (needs "
                            f"network.json and model.weights.h5)")
    return path


def check_compatible(init: Path, run: Path, log: Callable[[str], None] = print) -> None:
    """Refuse an init model whose network, split or feature standardisation differ from the
    new run dir ``run`` (its static files are already written).

    The grids' content hashes may differ: the same ``grid synth`` command gives floating-point
    differences on another CPU (AVX-512 vs AVX2 paths), so the hash is reported, not
    required; a different grid changes the standardisation (mean/std of noisy features
    drawn with the same seeds), which is refused."""
    from cvae_pms.model.rundir import read_npz
    for name in ("network.json",):
        a, b = json.loads((init / name).read_text()), json.loads((run / name).read_text())
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise TrainingError(f"training.init_from: {init / name} differs from this run's "
                                f"network ({', '.join(keys)}); use the init model's [model]")
    split_a, split_b = read_npz(init / "split.npz", init), read_npz(run / "split.npz", run)
    if set(split_a) != set(split_b) or any(not np.array_equal(split_a[k], split_b[k])
                                           for k in split_a):
        raise TrainingError(f"training.init_from: {init / 'split.npz'} is not this run's "
                            f"train/val/test split (set training.seed, val_fraction and "
                            f"test_fraction as the init model had them)")
    feat_a, feat_b = read_npz(init / "features.npz", init), read_npz(run / "features.npz", run)
    for k in sorted(set(feat_a) | set(feat_b)):
        if k not in feat_a or k not in feat_b or feat_a[k].shape != feat_b[k].shape or not \
                np.allclose(feat_a[k], feat_b[k], rtol=STANDARDISATION_RTOL, atol=0):
            raise TrainingError(f"training.init_from: {init / 'features.npz'} ({k}) differs "
                                f"from this run's feature standardisation (same grid, seed, "
                                f"noise ranges and standardisation_rows needed)")
    grid_a = json.loads((init / "grid.json").read_text()).get("content_hash")
    grid_b = json.loads((run / "grid.json").read_text()).get("content_hash")
    if grid_a != grid_b:
        log(f"warm start: {init} was trained on grid {str(grid_a)[:12]}..., this run's is "
            f"{str(grid_b)[:12]}...; same split and feature standardisation (rtol "
            f"{STANDARDISATION_RTOL:g}), so the same design regenerated")


def warm_start(state, init_from: str, run: Path, log: Callable[[str], None]) -> Path:
    """Load the weights of the model dir ``init_from`` into ``state.net`` after
    :func:`check_compatible`; returns the init model dir."""
    from cvae_pms.model.rundir import WEIGHTS, load_weights_checked
    init = resolve_init(init_from)
    check_compatible(init, run, log)
    load_weights_checked(state.net, init / WEIGHTS, init / "network.json")
    log(f"warm start: weights of {init}")
    return init
