"""Warm start: a new run whose networks start from a trained model dir's weights
(``[training] init_from``), e.g. a second, longer stage of the shipped default model.

The run keeps its own optimizer, learning-rate schedule and annealing (a fine-tuning recipe
sets ``annealing.start = end = 0``: the full KL weight from the first step). So that the
weights see the inputs they were trained on, the run takes the init model's feature
standardisation (``features.npz``); so that the evaluation rows stay unseen, the init model
must share this run's network configuration and train/val/test split; a difference is
refused with the file that differs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from .config import TrainingError

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
    """Refuse an init model whose network or train/val/test split differ from the new run
    dir ``run`` (its static files are already written; its feature standardisation is the
    init model's, :func:`cvae_pms.training.inputs.build_inputs`).

    The grids' content hashes may differ: the same ``grid synth`` command gives last-bit
    differences on another CPU (AVX-512 vs AVX2 code paths), so the hash is reported, not
    required."""
    from cvae_pms.model.rundir import read_npz
    a, b = (json.loads((d / "network.json").read_text()) for d in (init, run))
    if a != b:
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise TrainingError(f"training.init_from: {init / 'network.json'} differs from this "
                            f"run's network ({', '.join(keys)}); use the init model's [model]")
    split_a, split_b = read_npz(init / "split.npz", init), read_npz(run / "split.npz", run)
    if set(split_a) != set(split_b) or any(not np.array_equal(split_a[k], split_b[k])
                                           for k in split_a):
        raise TrainingError(f"training.init_from: {init / 'split.npz'} is not this run's "
                            f"train/val/test split (set training.seed, val_fraction and "
                            f"test_fraction as the init model had them)")
    grid_a = json.loads((init / "grid.json").read_text()).get("content_hash")
    grid_b = json.loads((run / "grid.json").read_text()).get("content_hash")
    if grid_a != grid_b:
        log(f"warm start: {init} was trained on grid {str(grid_a)[:12]}..., this run's is "
            f"{str(grid_b)[:12]}... (the same grid synth command hashes differently on "
            f"another CPU); the split (row indices) is the same")


def warm_start(state, init: Path, run: Path, log: Callable[[str], None]) -> None:
    """Load the weights of the init model dir ``init`` (:func:`resolve_init`) into
    ``state.net`` after :func:`check_compatible`."""
    from cvae_pms.model.rundir import WEIGHTS, load_weights_checked
    check_compatible(init, run, log)
    load_weights_checked(state.net, init / WEIGHTS, init / "network.json")
    log(f"warm start: weights of {init}")
