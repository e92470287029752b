"""Mock Gaia DR3 XP observations: noise-free coefficients -> archive-layout files + truth table.

Sources come from grid rows (a seeded random subset, or the training test split) or from the
forward model run on a table of parameter vectors. Each source gets a G magnitude drawn
uniformly in a range and an integer transit count drawn uniformly in a range; its coefficients
are scaled to that G (:func:`cvae_pms.xp.photometry.scale_to_g`) and observed with the XP noise
model (:func:`cvae_pms.xp.noise.draw_observation`), then, by default, perturbed by the noise
model's forward-model error exactly as training does (:func:`draw_model_error_coefficients`:
a correlated flux-space draw of ``model_error_fraction x |flux|`` at the calibrated flux of the
noisy observation, mapped to coefficients with the ridge map of :mod:`cvae_pms.xp.flux_fit`).
The written covariances are the coefficient-noise covariances only (an archive would not know
the model error); inference adds the model-error variance itself. The output is written in
the Gaia archive layout by :func:`cvae_pms.xp.archive.write_xp_table` (readable by
``gaiaxpy.calibrate``), with ``source_id`` = 1..n, ``phot_g_mean_mag`` and
``bp/rp_n_measurements`` (= transits), a truth table ``<stem>_truth.csv`` and the settings
(seed, ranges, model error on/off, noise model) in ``<stem>_simulate.json`` beside it.

When the fluxes are absolute (a grid with a reference distance, or the forward model at 10 pc),
scaling to G moves the star to ``distance_pc = d_ref / sqrt(factor)``; the output then has
``parallax`` (true 1000 / distance_pc, mas, plus Gaussian noise of ``parallax_error_frac`` x
parallax, seeded) and ``parallax_error`` columns. For normalised grids they are left out.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvae_pms import params as P
from cvae_pms import ranges
from cvae_pms.astrometry import draw_parallax
from cvae_pms.atomic import atomic_path, write_text_atomic
from cvae_pms.io.tables import TEXT_SUFFIXES, table_format
from cvae_pms.simulator import (MODEL_ERROR_RIDGE_ALPHA, SimulateError, draw_g_transits,
                                simulate_observations)
from cvae_pms.xp.noise import NoiseModel

ROW_CHOICES = ("test", "all")
FORWARD_DISTANCE_PC = 10.0
def parse_range(text: str, what: str, integer: bool = False) -> tuple[float, float]:
    """``"12:17"`` -> (12, 17); ``"15"`` -> (15, 15) (:func:`cvae_pms.ranges.parse_range`);
    raises :class:`SimulateError`."""
    return ranges.parse_range(text, what, integer, SimulateError)


def read_params_table(path: str | os.PathLike) -> np.ndarray:
    """(n, 7) parameter vectors from a CSV/ECSV table with the seven columns of params.NAMES."""
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise SimulateError(f"{path}: parameter table not found")
    fmt = table_format(path, TEXT_SUFFIXES) or "ascii.csv"
    try:
        table = Table.read(path, format=fmt)
    except Exception as exc:  # astropy raises many types for unreadable text
        raise SimulateError(f"{path}: cannot read as {fmt}: {exc}") from exc
    missing = [n for n in P.NAMES if n not in table.colnames]
    if missing:
        raise SimulateError(f"{path}: missing columns {', '.join(missing)} "
                            f"(needs {', '.join(P.NAMES)})")
    if len(table) == 0:
        raise SimulateError(f"{path}: no rows")
    try:
        theta = np.column_stack([np.asarray(table[n], dtype=float) for n in P.NAMES])
    except (TypeError, ValueError) as exc:
        raise SimulateError(f"{path}: non-numeric parameter values ({exc})") from exc
    bad = ~np.isfinite(theta).all(axis=1)
    if bad.any():
        raise SimulateError(f"{path}: row {int(np.argmax(bad)) + 1}: missing or non-finite values")
    out = P.outside_bounds(theta)
    if out.any():
        r = int(np.argmax(out.any(axis=1)))
        names = [P.NAMES[j] for j in np.flatnonzero(out[r])]
        raise SimulateError(f"{path}: row {r + 1}: {', '.join(names)} outside the parameter box "
                            f"({', '.join(f'{n} {P.LOW[P.NAMES.index(n)]:g}..{P.HIGH[P.NAMES.index(n)]:g}' for n in names)})")
    return theta


def _forward(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from cvae_pms.physics.photosphere import table_wavelength_nm
    from cvae_pms.physics.sed import sed_flux
    from cvae_pms.xp.instrument import sed_to_coefficients

    wl = table_wavelength_nm()
    return sed_to_coefficients(sed_flux(theta, wl, FORWARD_DISTANCE_PC), wl)


def _run_model_error(run_dir):
    """The model-error term a run was trained with (``RUN/model_error.npz``), else None."""
    from cvae_pms.xp.model_error import ModelError
    if run_dir is not None and (Path(run_dir) / "model_error.npz").is_file():
        return ModelError.from_file(Path(run_dir) / "model_error.npz")
    return None


def run_test_rows(run_dir: str | os.PathLike, grid) -> np.ndarray:
    """Held-out test rows of a trained model dir (``RUN/split.npz``), checked against ``grid``.

    Raises SimulateError when the run was trained on another grid (content hash differs).
    """
    import json

    run_dir = Path(run_dir)
    split, info = run_dir / "split.npz", run_dir / "grid.json"
    if not split.is_file():
        raise SimulateError(f"{run_dir}: no split.npz (not a cvae-pms model dir?)")
    from cvae_pms.model.rundir import RunDirError, check_training_grid, read_npz

    if info.is_file():
        check_training_grid(run_dir, json.loads(info.read_text()), grid, SimulateError)
    try:
        return np.asarray(read_npz(split, run_dir)["test"], dtype=np.int64)
    except (RunDirError, KeyError) as exc:
        raise SimulateError(f"{split}: no readable test rows ({exc})") from exc


def _grid_rows(grid, rows: str, n: int | None, rng: np.random.Generator, split_seed: int,
               run_dir: str | os.PathLike | None = None) -> np.ndarray:
    if run_dir is not None:
        pool = run_test_rows(run_dir, grid)
    elif rows == "test":
        from cvae_pms.training.config import DEFAULT_CONFIG, split_indices

        t = DEFAULT_CONFIG["training"]
        pool = split_indices(grid.n, split_seed, t["val_fraction"], t["test_fraction"])["test"]
    elif rows == "all":
        pool = np.arange(grid.n)
    else:
        raise SimulateError(f"--rows must be one of {', '.join(ROW_CHOICES)}, got {rows!r}")
    if n is None or n >= pool.size:
        return pool
    return np.sort(rng.choice(pool, size=n, replace=False))


def _row_source(rows: str, run_dir) -> str:
    """In words, where :func:`_grid_rows` takes its rows from."""
    if run_dir is not None:
        return f"the test split of {run_dir}"
    return "the test split" if rows == "test" else "the grid"


def check_g_range(g_range: tuple[float, float], noise_model: NoiseModel) -> None:
    """:class:`SimulateError` unless ``g_range`` lies inside the noise model's G range."""
    lo, hi = noise_model.g_range
    if g_range[0] < lo or g_range[1] > hi:
        fitted = noise_model.fitted_g_range
        raise SimulateError(
            f"--g-mag {g_range[0]:g}:{g_range[1]:g} is outside the noise model's G range "
            f"{lo:g}..{hi:g}" + (f" (its constants were fitted on G {fitted[0]:g}..{fitted[1]:g})"
                                 if fitted else ""))


@dataclass
class SimulateReport:
    """Paths written and a short summary."""

    observations: Path
    truth: Path
    settings: Path
    n: int
    with_parallax: bool
    model_error: bool = True
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"wrote {self.observations} ({self.n} sources"
                + (", with parallax" if self.with_parallax else ", no parallax (normalised fluxes)")
                + (", with model error)" if self.model_error else ", no model error)"),
                f"wrote {self.truth}", f"wrote {self.settings}"]


def simulate(out: str | os.PathLike, g_range: tuple[float, float], transit_range: tuple[float, float],
             seed: int = 0, grid_path: str | os.PathLike | None = None, n: int | None = None,
             rows: str = "test", params_path: str | os.PathLike | None = None,
             parallax_error_frac: float = 0.05, split_seed: int = 1,
             noise_model: NoiseModel | None = None, model_error: bool = True,
             run_dir: str | os.PathLike | None = None) -> SimulateReport:
    """Simulate observations: write ``out`` (.csv/.ecsv), ``<stem>_truth.csv`` and the settings
    ``<stem>_simulate.json``.

    Args:
        out: observation file in the Gaia archive layout.
        g_range: (lo, hi) G magnitudes, uniform.
        transit_range: (lo, hi) integer transit counts, uniform inclusive.
        seed: seed of row choice, G, transits, noise and parallax noise.
        grid_path / n / rows: take rows of a grid (n random rows of ``rows``: ``test`` = the
            training test split for training seed ``split_seed``, or ``all``).
        run_dir: a trained model dir: take the rows from its own held-out test split
            (``RUN/split.npz``; overrides ``rows``/``split_seed``).
        params_path: or a CSV/ECSV parameter table run through the forward model at 10 pc.
        parallax_error_frac: fractional parallax error.
        noise_model: XP noise constants (default the shipped fit); ``g_range`` must lie in
            its G range (:attr:`~cvae_pms.xp.noise.NoiseModel.g_range`).
        model_error: add the forward-model-error perturbation as training does (default True).

    ``n`` larger than the rows available simulates all of them, with a line in the report's
    ``warnings``.
    """
    from astropy.table import Table

    from cvae_pms.grid.gridfile import GridError, open_grid
    from cvae_pms.xp.archive import XPReadError, write_xp_table

    out = Path(out)
    if (grid_path is None) == (params_path is None):
        raise SimulateError("give exactly one of --grid or --params")
    if out.suffix.lower() not in (".csv", ".ecsv"):
        raise SimulateError(f"{out}: output must end in .csv or .ecsv")
    if not out.parent.is_dir():
        raise SimulateError(f"{out}: output directory {out.parent} does not exist")
    if n is not None and n < 1:
        raise SimulateError(f"--n must be >= 1, got {n}")
    if not (math.isfinite(parallax_error_frac) and parallax_error_frac >= 0):
        raise SimulateError(f"--parallax-error-frac must be >= 0, got {parallax_error_frac}")
    noise_model = noise_model or NoiseModel.default()
    check_g_range(g_range, noise_model)
    warnings: list[str] = []
    rng = np.random.default_rng([seed, 7])
    if grid_path is not None:
        try:
            with open_grid(grid_path) as grid:
                idx = _grid_rows(grid, rows, n, rng, split_seed, run_dir)
                if idx.size == 0:
                    raise SimulateError(f"{grid_path}: no rows to simulate ({rows})")
                if n is not None and n > idx.size:
                    warnings.append(f"--n {n} is larger than the {idx.size} rows of "
                                    f"{_row_source(rows, run_dir)}: simulating {idx.size}")
                theta, bp, rp = grid.read(idx)
                d_ref = grid.reference_distance_pc
        except GridError as exc:
            raise SimulateError(str(exc)) from exc
    else:
        theta = read_params_table(params_path)
        if n is not None and n > theta.shape[0]:
            warnings.append(f"--n {n} is larger than the {theta.shape[0]} rows of "
                            f"{params_path}: simulating {theta.shape[0]}")
        if n is not None:
            theta = theta[:n]
        idx = np.full(theta.shape[0], -1)
        bp, rp = _forward(theta)
        d_ref = FORWARD_DISTANCE_PC
    m = theta.shape[0]
    g, nt = draw_g_transits(rng, m, g_range, transit_range)
    obs = simulate_observations(bp, rp, g, nt.astype(float), rng, noise_model, model_error=model_error,
                                teff=theta[:, P.INDEX["teff"]],
                                model_error_term=_run_model_error(run_dir))
    source_id = np.arange(1, m + 1, dtype=np.int64)
    extra: dict[str, np.ndarray] = {"phot_g_mean_mag": obs.g_mag,
                                    "bp_n_measurements": obs.n_transits.astype(np.int64),
                                    "rp_n_measurements": obs.n_transits.astype(np.int64)}
    truth = Table()
    truth["source_id"] = source_id
    for j, name in enumerate(P.NAMES):
        truth[name] = theta[:, j]
    truth["g_mag"] = obs.g_mag
    truth["n_transits"] = obs.n_transits.astype(np.int64)
    with_parallax = d_ref is not None
    if with_parallax:
        plx, extra["parallax"], extra["parallax_error"] = draw_parallax(
            obs.flux_factor, d_ref, parallax_error_frac, rng)
        truth["distance_pc"] = 1000.0 / plx
        truth["parallax_true_mas"] = plx
    else:
        truth["distance_pc"] = np.full(m, np.nan)
    truth["grid_row"] = np.asarray(idx, dtype=np.int64)
    try:
        write_xp_table(out, {"source_id": source_id, "bp_coefficients": obs.bp,
                             "rp_coefficients": obs.rp, "bp_covariance": obs.bp_cov,
                             "rp_covariance": obs.rp_cov, "extra": extra})
    except XPReadError as exc:
        raise SimulateError(str(exc)) from exc
    truth_path = out.with_name(f"{out.stem}_truth.csv")
    with atomic_path(truth_path) as tmp:
        truth.write(tmp, format="ascii.csv", overwrite=True)
    settings = {"observations": str(out), "truth": str(truth_path), "n_sources": int(m),
                "seed": int(seed), "g_mag_range": [float(v) for v in g_range],
                "transit_range": [int(v) for v in transit_range],
                "grid": None if grid_path is None else str(grid_path), "rows": rows,
                "run": None if run_dir is None else str(run_dir),
                "split_seed": int(split_seed),
                "params": None if params_path is None else str(params_path),
                "parallax_error_frac": float(parallax_error_frac), "with_parallax": with_parallax,
                "model_error": bool(model_error),
                "model_error_ridge_alpha": MODEL_ERROR_RIDGE_ALPHA,
                "noise_model": noise_model.to_dict(),
                "covariance_written": "coefficient noise only (model error not included)"}
    settings_path = out.with_name(f"{out.stem}_simulate.json")
    write_text_atomic(settings_path, json.dumps(settings, indent=1) + "\n")
    return SimulateReport(out, truth_path, settings_path, m, with_parallax, model_error,
                          warnings)


__all__ = ["SimulateReport", "simulate", "parse_range", "read_params_table", "check_g_range",
           "ROW_CHOICES"]
