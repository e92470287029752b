"""Building the OOD index of a model dir (training side: reads the training grid).

``train`` calls :func:`build_ood_index` at the end of a run; ``cvae-pms ood rebuild RUN
[--grid GRID]`` calls it again for a model dir whose ``ood.npz`` is missing or damaged.
Inference only reads the result (:func:`cvae_pms.ood.load_run_ood_index`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cvae_pms import params
from cvae_pms.ood import OOD_FILE, OODError, OODIndex, fit_ood_index, save_ood_index


def build_ood_index(run_dir: str | os.PathLike, n_ref: int = 4000, n_cal: int = 2000,
                    k: int = 10, seed: int = 0, run=None, model_hash: str | None = None,
                    save: bool = True, grid_path: str | os.PathLike | None = None) -> OODIndex:
    """Build the OOD index of a trained model dir and write it as ``RUN/ood.npz``.

    Draws ``n_ref`` training-split and ``n_cal`` test-split grid rows (validation rows when
    the test split is empty), observes each once with fresh noise through the training noise
    path (:class:`cvae_pms.simulator.TrainingNoise`: G and transits drawn from the run's noise
    config), and fits :func:`cvae_pms.ood.fit_ood_index` on their standardised features.
    ``grid_path``: the training grid (default: the path recorded in ``RUN/grid.json``); its
    content hash must be the recorded one.

    Raises:
        OODError: the training grid is missing or changed, or a split is empty.
    """
    from cvae_pms import backend
    from cvae_pms.grid.gridfile import GridError, open_grid
    from cvae_pms.model.rundir import check_training_grid, load_run
    from cvae_pms.model.rundir import model_hash as hash_of
    from cvae_pms.simulator import TrainingNoise
    from cvae_pms.xp.noise import NoiseModel
    from cvae_pms.xp.photometry import g_mag

    run_dir = Path(run_dir)
    run = run or load_run(run_dir)
    if model_hash is None:
        model_hash = hash_of(run_dir)
    recorded = run.grid_info.get("path", "")
    grid_path = str(grid_path) if grid_path is not None else recorded
    try:
        grid = open_grid(grid_path)
    except (GridError, OSError) as exc:
        hint = "" if grid_path != recorded else "; give the grid's new path with --grid"
        raise OODError(f"{run_dir}: cannot open the training grid {grid_path!r} to build the "
                       f"OOD index ({exc}){hint}") from exc
    rng = np.random.default_rng(seed)
    split = run.split()
    cal_rows = split.get("test", np.zeros(0, np.int64))
    if cal_rows.size == 0:
        cal_rows = split.get("val", np.zeros(0, np.int64))
    train_rows = split.get("train", np.zeros(0, np.int64))
    if train_rows.size <= k or cal_rows.size == 0:
        raise OODError(f"{run_dir}: split.npz has {train_rows.size} training and "
                       f"{cal_rows.size} test rows; the OOD index needs > {k} and > 0")
    with grid:
        check_training_grid(run_dir, run.grid_info, grid, OODError)
        prior_unit = params.to_unit(grid.params[np.sort(train_rows)])
        noise_fields = set(NoiseModel.__dataclass_fields__)
        noise_model = NoiseModel.from_dict({key: v for key, v in run.noise.items()
                                            if key in noise_fields})
        noise = TrainingNoise(run.featuriser, noise_model, run.config["noise"])
        feats = []
        for j, rows in enumerate((train_rows, cal_rows)):
            n = min(n_ref if j == 0 else n_cal, rows.size)
            pick = np.sort(rng.choice(rows, size=n, replace=False))
            bp, rp = grid.coefficients(pick)
            g0 = np.asarray(g_mag(bp, rp), dtype=np.float32)
            out = []
            for i in range(0, n, 1024):
                sl = slice(i, i + 1024)
                y, _ = noise.observe(bp[sl].astype(np.float32), rp[sl].astype(np.float32),
                                     g0[sl], (seed, 1000 * j + i // 1024))
                out.append(backend.to_numpy(y))
            feats.append(np.concatenate(out))
    index = fit_ood_index(feats[0], feats[1], k=k, prior_unit=prior_unit,
                          meta={"model_hash": model_hash, "seed": seed, "n_ref": feats[0].shape[0],
                                "n_cal": feats[1].shape[0], "grid": grid_path})
    if save:
        save_ood_index(index, run_dir / OOD_FILE)
    return index
