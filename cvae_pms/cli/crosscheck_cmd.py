"""``cvae-pms crosscheck``: compare posterior summaries with literature values."""
from __future__ import annotations

from pathlib import Path

import click

from cvae_pms.diagnostics.crosscheck import (AV_TO_A0, RADIUS_ARCSEC, CrosscheckError,
                                             parse_mapping, run_crosscheck)


@click.command("crosscheck")
@click.argument("posterior", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("literature", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--match", type=click.Choice(["source_id", "radec"]), default="source_id",
              show_default=True, help="Join by Gaia DR3 source_id or by position.")
@click.option("--radius", "radius_arcsec", type=click.FloatRange(min=0, min_open=True),
              default=RADIUS_ARCSEC, show_default=True, help="Match radius for radec [arcsec].")
@click.option("--id-column", default="source_id", show_default=True,
              help="Literature column with Gaia DR3 source_ids (text like 'Gaia DR3 123' works).")
@click.option("--positions", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Table with source_id, ra, dec [deg] for the posterior sources (radec match "
                   "when the summary has no ra/dec).")
@click.option("--map", "maps", multiple=True, metavar="LITCOL=PARAM",
              help="Literature value column for one of our parameters (repeatable). Columns "
                   "named like a parameter (teff, logg, mh, log_mdot, ff, mass, a0) map "
                   "themselves.")
@click.option("--error-map", "error_maps", multiple=True, metavar="LITCOL=PARAM",
              help="Literature error column for a parameter (repeatable); default: e_X, X_err, "
                   "X_error... next to the value column X.")
@click.option("--mdot-linear", is_flag=True,
              help="The column mapped to log_mdot is linear Mdot [Msun/yr]: take log10.")
@click.option("--lit-extinction", type=click.Choice(["av", "a0"]), default="av",
              show_default=True, help="What the column mapped to a0 holds: A_V or Gaia A0.")
@click.option("--av-to-a0", type=click.FloatRange(min=0, min_open=True), default=AV_TO_A0,
              show_default=True,
              help="A0 = FACTOR x A_V (G23 law, R_V 3.1: A(541.4 nm)/A(551 nm) = 1.022).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory (crosscheck.csv/.json/.png, unmatched.csv).")
def crosscheck(posterior: Path, literature: Path, match: str, radius_arcsec: float,
               id_column: str, positions: Path | None, maps: tuple[str, ...],
               error_maps: tuple[str, ...], mdot_linear: bool, lit_extinction: str,
               av_to_a0: float, out_dir: Path) -> None:
    """Compare POSTERIOR (posterior .h5 or its summary .ecsv/.csv) with LITERATURE
    (CSV/ECSV/VOTable/FITS): residuals, z-scores and interval coverage per parameter."""
    try:
        result = run_crosscheck(
            posterior, literature, out_dir, positions=positions, match=match,
            id_column=id_column, radius_arcsec=radius_arcsec,
            value_map=parse_mapping(maps, "--map"),
            error_map=parse_mapping(error_maps, "--error-map"), mdot_linear=mdot_linear,
            av_to_a0=av_to_a0, lit_extinction=lit_extinction)
    except CrosscheckError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"matched {len(result.per_source)} literature sources; "
               f"{len(result.unmatched)} without a posterior (listed in "
               f"{out_dir / 'unmatched.csv'})")
    click.echo(f"{'parameter':10s} {'n':>5s} {'median resid':>13s} {'scatter':>9s} "
               f"{'med z':>7s} {'in68':>6s} {'in95':>6s}")
    for name, s in result.per_parameter.items():
        if not s["n"]:
            click.echo(f"{name:10s} {0:5d}  (no literature values)")
            continue
        med_z = s["median_z"] if s["median_z"] is not None else float("nan")
        click.echo(f"{name:10s} {s['n']:5d} {s['median_residual']:13.4g} "
                   f"{s['robust_scatter']:9.4g} {med_z:7.2f} {s['frac_in68']:6.2f} "
                   f"{s['frac_in95']:6.2f}")
    click.echo(f"wrote {out_dir}/crosscheck.csv, crosscheck.json, crosscheck.png, unmatched.csv")
