"""``cvae-pms grid synth`` and ``cvae-pms grid plot`` (attached to the ``grid`` group)."""
from __future__ import annotations

from pathlib import Path

import click

from cvae_pms import params as P


@click.command("synth")
@click.option("--n", "n", type=int, default=160_000, show_default=True,
              help="Number of parameter vectors.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="Output grid file (.h5); written atomically.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--design", default="sobol", show_default=True,
              help="Box sampling: sobol (scrambled) or random (uniform).")
@click.option("--distance-pc", type=float, default=10.0, show_default=True,
              help="Reference distance of the absolute fluxes, pc.")
@click.option("--chunk", type=int, default=5000, show_default=True, help="Rows per chunk.")
@click.option("--draw-nuisance", is_flag=True,
              help="Draw the slab temperature and optical depth per star (else fixed values).")
@click.option("--extinction-law", default="G23", show_default=True,
              help="G23 or F19 (R_V 3.1 unless --r-v-range).")
@click.option("--r-v-range", default=None, metavar="LOW:HIGH",
              help="Draw R_V per star uniformly in LOW:HIGH (a nuisance parameter, "
                   "marginalised in training), e.g. 2.5:5.5.")
@click.option("--nuisance-physics", is_flag=True,
              help="Marginalise the physics choices: --draw-nuisance and --r-v-range 2.5:5.5 "
                   "(unless given).")
@click.option("--photosphere-correction", default="apogee-dr17-v1", show_default=True,
              help="Empirical photosphere correction learned from real APOGEE x XP stars, or "
                   "'none' for the plain PHOENIX table.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synth(n: int, out_path: Path, seed: int, design: str, distance_pc: float, chunk: int,
          draw_nuisance: bool, extinction_law: str, r_v_range: str | None,
          nuisance_physics: bool, photosphere_correction: str, quiet: bool) -> None:
    """Sample the 7-D box and write a grid of noise-free XP coefficients."""
    from cvae_pms.grid.synth import GridError, PhysicsError, SynthError, check_options, synth_grid

    if nuisance_physics:
        draw_nuisance, r_v_range = True, r_v_range or "2.5:5.5"
    rv = None
    if r_v_range is not None:
        try:
            rv = tuple(float(v) for v in r_v_range.split(":"))
            if len(rv) != 2:
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"{r_v_range!r}: expected LOW:HIGH, e.g. 2.5:5.5",
                                     param_hint="--r-v-range") from None
    try:
        check_options(n, seed, design.lower(), distance_pc, chunk, extinction_law.upper())
        report = synth_grid(out_path, n=n, seed=seed, design=design.lower(), distance_pc=distance_pc,
                            chunk=chunk, draw_nuisance=draw_nuisance,
                            extinction_law=extinction_law.upper(), progress=not quiet,
                            photosphere_correction=photosphere_correction, r_v_range=rv)
    except (SynthError, GridError, PhysicsError) as exc:
        raise click.ClickException(str(exc)) from exc
    for line in report.lines():
        click.echo(line)


@click.command("plot")
@click.argument("grid_path", metavar="GRID", type=click.Path(path_type=Path))
@click.option("--vary", type=click.Choice(P.NAMES), default="teff", show_default=True,
              help="Parameter to step across its range.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="Figure (.png); a directory with --all.")
@click.option("--all", "all_params", is_flag=True, help="One figure per parameter into --out (a directory).")
@click.option("--steps", type=click.IntRange(2, 12), default=6, show_default=True,
              help="Values per parameter.")
def plot(grid_path: Path, vary: str, out_path: Path, all_params: bool, steps: int) -> None:
    """Calibrated XP flux vs wavelength as one parameter varies, the others at a reference."""
    from cvae_pms.grid.plots import GridError, PlotError, plot_all, plot_parameter

    try:
        if all_params:
            written = plot_all(grid_path, out_path, steps)
        else:
            written = [plot_parameter(grid_path, vary, out_path, steps)]
    except (PlotError, GridError) as exc:
        raise click.ClickException(str(exc)) from exc
    for path in written:
        click.echo(f"wrote {path} (+ {path.with_suffix('.ecsv').name})")
