"""``cvae-pms grid``: inspect, validate and ingest grid files."""
from __future__ import annotations

from pathlib import Path

import click

from cvae_pms import params as P


@click.group("grid")
def grid() -> None:
    """Grid files (HDF5): parameter vectors and their Gaia XP coefficients."""


@grid.command("info")
@click.argument("grid_path", metavar="GRID", type=click.Path(path_type=Path))
@click.option("--validate", is_flag=True,
              help="Also check every value (NaN/inf, bounds, duplicates, content hash).")
def info(grid_path: Path, validate: bool) -> None:
    """Print the summary of GRID: row count, parameter ranges, version, hash, meta."""
    from cvae_pms.grid.gridfile import GridError, grid_summary, validate_grid

    try:
        s = grid_summary(grid_path)
    except GridError as exc:
        raise click.ClickException(str(exc)) from exc
    meta = s["meta"]
    dist = s["reference_distance_pc"]
    click.echo(f"grid {s['path']}")
    click.echo(f"  rows {s['count']}   format version {s['format_version']}   "
               f"sampled_flux {'yes' if s['has_sampled_flux'] else 'no'}")
    click.echo(f"  content hash {s['content_hash']}")
    click.echo(f"  creator {meta.get('creator', '')}   created {meta.get('created_utc', '')}")
    click.echo(f"  source {meta.get('source', '') or '-'}   random seed "
               f"{meta.get('random_seed', -1)}   reference distance "
               f"{'not absolute (normalised fluxes)' if dist is None else f'{dist:g} pc'}")
    fm = meta.get("forward_model") or {}
    if fm:
        click.echo(f"  forward model: {', '.join(f'{k}={v}' for k, v in sorted(fm.items()))}")
    ing = meta.get("ingest") or {}
    if ing:
        click.echo(f"  ingested from {ing.get('input_format')} ({ing.get('spectra')}); "
                   f"rows read {ing.get('rows_read')}, dropped "
                   f"{sum((ing.get('rows_dropped') or {}).values())}")
        if ing.get("flux_fit"):
            f = ing["flux_fit"]
            click.echo(f"  flux -> coefficients relative residual: median "
                       f"{f['rel_residual_median']:.2e}, p90 {f['rel_residual_p90']:.2e}")
    click.echo(f"  {'parameter':<10} {'unit':<6} {'min':>11} {'5%':>11} {'50%':>11} "
               f"{'95%':>11} {'max':>11}   bounds")
    for par in P.PARAMS:
        q = s["params"][par.name]
        click.echo(f"  {par.name:<10} {par.unit or '-':<6} {q['min']:>11.4g} {q['q05']:>11.4g} "
                   f"{q['q50']:>11.4g} {q['q95']:>11.4g} {q['max']:>11.4g}   "
                   f"[{par.low:g}, {par.high:g}]")
    if validate:
        try:
            validate_grid(grid_path)
        except GridError as exc:
            raise click.ClickException(f"validation failed: {exc}") from exc
        click.echo("validation: OK (finite, in bounds, no duplicates, content hash matches)")


def _parse_map(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        theirs, sep, ours = item.partition("=")
        if not sep or not theirs.strip() or not ours.strip():
            raise click.BadParameter(f"{item!r}: expected THEIRS=OURS, e.g. logMacc=log_mdot",
                                     param_hint="--map")
        out[theirs.strip()] = ours.strip()
    return out


@grid.command("ingest")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path),
              help="Grid file to write (.h5); its directory must exist.")
@click.option("--map", "maps", multiple=True, metavar="THEIRS=OURS",
              help=f"Rename an input column (repeatable). Ours: {', '.join(P.NAMES)}, "
                   "bp_coefficients, rp_coefficients, flux, bp_coeff_N, rp_coeff_N, flux_N.")
@click.option("--mdot-linear", is_flag=True,
              help="The log_mdot column holds Mdot in Msun/yr (stored as log10; must be > 0).")
@click.option("--drop-invalid", is_flag=True,
              help="Drop and count NaN/inf, out-of-bounds and duplicate rows instead of failing.")
@click.option("--reference-distance-pc", type=float, default=None,
              help="The fluxes are absolute at this distance [pc] (default: normalised).")
@click.option("--hdf5-params", default=None, metavar="DATASET",
              help="HDF5 input: dataset of parameters (N, 7) in our order.")
@click.option("--hdf5-param-columns", default=None, metavar="a,b,...",
              help="HDF5 input: names of the parameter dataset's columns, in its order.")
@click.option("--hdf5-bp", default=None, metavar="DATASET", help="HDF5 input: BP (N, 55).")
@click.option("--hdf5-rp", default=None, metavar="DATASET", help="HDF5 input: RP (N, 55).")
@click.option("--hdf5-flux", default=None, metavar="DATASET",
              help="HDF5 input: sampled flux (N, 343) [W m^-2 nm^-1], 336..1020 nm step 2.")
@click.option("--chunk-size", default=20000, show_default=True, type=click.IntRange(1),
              help="Rows per streamed chunk.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out grid file.")
def ingest(input_path: Path, out_path: Path, maps: tuple[str, ...], mdot_linear: bool,
           drop_invalid: bool, reference_distance_pc: float | None, hdf5_params: str | None,
           hdf5_param_columns: str | None, hdf5_bp: str | None, hdf5_rp: str | None,
           hdf5_flux: str | None, chunk_size: int, overwrite: bool) -> None:
    """Convert a user grid table INPUT (CSV, ECSV, FITS, Parquet, VOTable, HDF5) to a grid."""
    from cvae_pms.grid.gridfile import GridError
    from cvae_pms.grid.ingest import ingest_table

    if not out_path.parent.is_dir():
        raise click.ClickException(f"{out_path}: output directory {out_path.parent} "
                                   f"does not exist")
    hdf5 = None
    if any((hdf5_params, hdf5_bp, hdf5_rp, hdf5_flux, hdf5_param_columns)):
        hdf5 = {"params": hdf5_params, "bp": hdf5_bp, "rp": hdf5_rp, "flux": hdf5_flux,
                "param_columns": ([c.strip() for c in hdf5_param_columns.split(",")]
                                  if hdf5_param_columns else None)}
        if not hdf5_params or not ((hdf5_bp and hdf5_rp) or hdf5_flux):
            raise click.UsageError("HDF5 input needs --hdf5-params and either --hdf5-bp with "
                                   "--hdf5-rp, or --hdf5-flux")
    try:
        report = ingest_table(input_path, out_path, column_map=_parse_map(maps),
                              mdot_linear=mdot_linear, drop_invalid=drop_invalid,
                              hdf5_datasets=hdf5, reference_distance_pc=reference_distance_pc,
                              chunk_size=chunk_size, overwrite=overwrite)
    except GridError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in report.lines():
        click.echo(line)


from .synth_cmd import plot, synth  # noqa: E402  (helper D: grid synth / grid plot)

grid.add_command(synth)
grid.add_command(plot)
