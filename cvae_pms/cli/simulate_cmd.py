"""``cvae-pms simulate``: mock Gaia XP observations from a grid or a parameter table."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("simulate")
@click.option("--grid", "grid_path", type=click.Path(path_type=Path), help="Grid file (.h5).")
@click.option("--n", "n", type=int, default=None, help="Number of sources (default: all rows).")
@click.option("--rows", type=click.Choice(["test", "all"]), default="test", show_default=True,
              help="Grid rows to draw from: the training test split, or all rows.")
@click.option("--split-seed", type=int, default=1, show_default=True,
              help="Training seed that defines the test split (with --rows test).")
@click.option("--run", "run_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Trained model dir: draw rows from its own held-out test split "
                   "(RUN/split.npz; the grid hash is checked). Overrides --rows/--split-seed.")
@click.option("--params", "params_path", type=click.Path(path_type=Path),
              help="CSV/ECSV table with the seven parameter columns (forward model at 10 pc).")
@click.option("--g-mag", default="12:17", show_default=True, help="G magnitude, a value or LO:HI.")
@click.option("--transits", default="15:80", show_default=True,
              help="Number of transits, a value or LO:HI (integers).")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="Observation file (.csv or .ecsv, Gaia archive layout).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--parallax-error-frac", type=float, default=0.05, show_default=True,
              help="Fractional parallax error.")
@click.option("--model-error/--no-model-error", default=True, show_default=True,
              help="Add the noise model's forward-model error (as in training) to the "
                   "coefficients; the written covariances never include it.")
def simulate(grid_path: Path | None, n: int | None, rows: str, split_seed: int,
             run_dir: Path | None, params_path: Path | None, g_mag: str, transits: str, out_path: Path, seed: int,
             parallax_error_frac: float, model_error: bool) -> None:
    """Write mock XP observations (noise from the XP noise model), a truth table and the
    settings (<stem>_simulate.json)."""
    from cvae_pms.simulate import parse_range
    from cvae_pms.simulator import SimulateError
    from cvae_pms.simulate import simulate as run

    try:
        g_range = parse_range(g_mag, "--g-mag")
        t_range = parse_range(transits, "--transits", integer=True)
        report = run(out_path, g_range, t_range, seed=seed, grid_path=grid_path, n=n, rows=rows,
                     params_path=params_path, parallax_error_frac=parallax_error_frac,
                     split_seed=split_seed, model_error=model_error,
                     run_dir=run_dir)
    except SimulateError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in report.warnings:
        click.echo(f"warning: {line}", err=True)
    for line in report.lines():
        click.echo(line)
