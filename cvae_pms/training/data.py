"""The training data: the noiseless grid rows and their train/val/test split.

:func:`load_training_data` opens the grid, checks it (finite G, the same grid on ``--resume``,
absolute fluxes for the luminosity channel) and splits it by seed (or reads ``split.npz``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvae_pms.simulator import unit_teff

from .config import TrainingError, check_luminosity_config, split_indices

@dataclass
class GridRows:
    """Noiseless training rows: coefficients (n, 55) float32, G mag (n,), unit params (n, 7)."""

    bp: np.ndarray
    rp: np.ndarray
    g: np.ndarray
    x: np.ndarray

    def take(self, idx: np.ndarray) -> "GridRows":
        return GridRows(self.bp[idx], self.rp[idx], self.g[idx], self.x[idx])

    @property
    def teff(self) -> np.ndarray:
        """(n,) true T_eff [K] (for the T_eff-dependent model-error draw)."""
        return unit_teff(self.x)

    def __len__(self) -> int:
        return len(self.g)


def read_grid_rows(grid) -> GridRows:
    """All rows of an open grid as :class:`GridRows` (G from :func:`cvae_pms.xp.photometry.g_mag`)."""
    from cvae_pms.model.cvae import unit_targets
    from cvae_pms.xp.photometry import g_mag
    bp, rp = grid.coefficients()
    g = np.asarray(g_mag(bp, rp), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(g))
    if bad.size:
        raise TrainingError(f"{grid.path}: G magnitude not finite for {bad.size} rows "
                            f"(first rows {bad[:5].tolist()}): zero or negative flux?")
    return GridRows(bp.astype(np.float32), rp.astype(np.float32), g.astype(np.float32),
                    unit_targets(grid.params))


@dataclass
class TrainingData:
    """What training reads from the grid: the split rows and what the run dir records."""

    grid_info: dict            # path, content hash, rows, metadata (``RUN/grid.json``)
    reference_distance_pc: float | None
    split: dict[str, np.ndarray]
    train_rows: GridRows
    val_rows: GridRows         # the first ``training.val_max_rows`` validation rows


def load_training_data(grid_path: str | Path, cfg: dict, run: Path, *, resume: bool,
                       scratch: bool) -> TrainingData:
    """Read the grid, check it against the run dir, and split it (``resume``: the stored split).

    ``scratch`` (a ``--resume`` started again from scratch) checks the grid like a resume but
    draws a new split.
    """
    from cvae_pms.grid.fingerprint import grid_fingerprint
    from cvae_pms.grid.gridfile import GridError, open_grid
    from cvae_pms.model import rundir
    tcfg = cfg["training"]
    try:
        with open_grid(grid_path) as grid:
            rows = read_grid_rows(grid)
            grid_info = {"path": str(Path(grid_path).resolve()), "content_hash": grid.content_hash,
                         "n": grid.n, "meta": grid.meta}
            if not resume:      # recorded in RUN/grid.json by new runs only
                grid_info["fingerprint"] = grid_fingerprint(grid)
            d_ref = grid.reference_distance_pc
    except GridError as exc:
        raise TrainingError(str(exc)) from exc
    if resume or (scratch and (run / "grid.json").is_file()):
        stored_grid = rundir._read_json(run / "grid.json", run)
        if stored_grid.get("content_hash") != grid_info["content_hash"]:
            raise TrainingError(f"{run}: --resume with another grid than {grid_info['path']} "
                                f"(content hash differs)")
    if resume:
        split = rundir.read_npz(run / "split.npz", run)
    else:
        split = split_indices(len(rows), int(tcfg["seed"]), tcfg["val_fraction"],
                              tcfg["test_fraction"])
    check_luminosity_config(cfg["luminosity"], d_ref, grid_path)
    return TrainingData(grid_info=grid_info, reference_distance_pc=d_ref, split=split,
                        train_rows=rows.take(split["train"]),
                        val_rows=rows.take(split["val"][:tcfg["val_max_rows"]]))
