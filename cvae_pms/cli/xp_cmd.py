"""``cvae-pms xp``: inspect Gaia XP archive files and turn them into sampled flux."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np


@click.group("xp")
def xp() -> None:
    """Gaia DR3 XP files (CSV, ECSV, FITS, VOTable, Avro): coefficients or sampled spectra."""


def _fmt_mag(value: float) -> str:
    return f"{value:7.3f}" if np.isfinite(value) else "      -"


@xp.command("info")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--chunk-size", default=10000, show_default=True, help="Sources read at a time.")
def info(files: tuple[Path, ...], chunk_size: int) -> None:
    """Print one line per source of each FILE: bands, coefficients, G_BP, G_RP, flags.

    Sources that cannot be used (a band missing, too few coefficients, NaN values) are
    listed with the reason. Exits 1 when a file is not a readable XP table; a file whose
    sources are all flagged is reported with a warning but is not an error for ``info``.
    Sampled spectra (xp_sampled_mean_spectrum, gaiaxpy.calibrate output, the APOGEE x XP
    library) show 'flux' as bands, '-' for the coefficient counts and correlations, and
    G_BP / G_RP from the flux; library rows (source_id = FITS row) add their apogee_id.
    """
    from cvae_pms.xp.archive import XPReadError, iter_xp
    from cvae_pms.xp.photometry import (g_bp_mag, g_bp_mag_from_flux, g_rp_mag,
                                        g_rp_mag_from_flux)

    click.echo(f"{'file':<28} {'source_id':>20} {'bands':<6} {'n_bp':>4} {'n_rp':>4} "
               f"{'G_BP':>7} {'G_RP':>7} {'corr':<4} error")
    failures: list[str] = []
    warnings: list[str] = []
    n_total = n_ok = 0
    for path in files:
        n_file = ok_file = 0
        reasons: dict[str, int] = {}
        try:
            for batch in iter_xp(path, chunk_size=chunk_size):
                if batch.sampled:
                    _info_sampled(path, batch, g_bp_mag_from_flux(batch.flux),
                                  g_rp_mag_from_flux(batch.flux), reasons)
                    n_file += len(batch)
                    ok_file += int(batch.ok.sum())
                    continue
                gbp, grp = g_bp_mag(batch.bp_coefficients), g_rp_mag(batch.rp_coefficients)
                for i in range(len(batch)):
                    bands = "+".join(b.upper() for b, n in (("bp", batch.bp_n_parameters[i]),
                                                           ("rp", batch.rp_n_parameters[i])) if n)
                    click.echo(f"{path.name[:28]:<28} {batch.source_id[i]:>20d} {bands or '-':<6} "
                               f"{batch.bp_n_parameters[i]:>4d} {batch.rp_n_parameters[i]:>4d} "
                               f"{_fmt_mag(gbp[i])} {_fmt_mag(grp[i])} "
                               f"{'yes' if batch.correlations_present[i] else 'no':<4} "
                               f"{batch.error[i] or 'ok'}")
                    if batch.error[i]:
                        reasons[batch.error[i]] = reasons.get(batch.error[i], 0) + 1
                n_file += len(batch)
                ok_file += int(batch.ok.sum())
        except XPReadError as exc:
            failures.append(str(exc))
            continue
        n_total += n_file
        n_ok += ok_file
        if ok_file == 0:
            common = max(reasons, key=reasons.get)
            warnings.append(f"warning: {path}: no usable source among {n_file} (e.g. {common!r})")
    click.echo(f"{len(files)} file(s), {n_total} source(s): {n_ok} usable, {n_total - n_ok} flagged")
    for line in warnings:
        click.echo(line, err=True)
    if failures:
        raise click.ClickException("\n".join(failures))


def _info_sampled(path: Path, batch, gbp: np.ndarray, grp: np.ndarray,
                  reasons: dict[str, int]) -> None:
    """``xp info`` lines of a sampled batch."""
    names = batch.extra.get("apogee_id")
    for i in range(len(batch)):
        status = batch.error[i] or "ok"
        if names is not None:
            status += f" apogee_id={names[i]}"
        click.echo(f"{path.name[:28]:<28} {batch.source_id[i]:>20d} {'flux':<6} {'-':>4} {'-':>4} "
                   f"{_fmt_mag(gbp[i])} {_fmt_mag(grp[i])} {'-':<4} {status}")
        if batch.error[i]:
            reasons[batch.error[i]] = reasons.get(batch.error[i], 0) + 1


@xp.command("sample")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Output HDF5 file (flux, flux_error on 336..1020 nm).")
@click.option("--chunk-size", default=10000, show_default=True, help="Sources processed at a time.")
def sample(file: Path, out: Path, chunk_size: int) -> None:
    """Write the calibrated sampled flux of every source in FILE to an HDF5 file.

    Datasets: source_id (n,), wavelength_nm (343,), flux and flux_error (n, 343) in
    W m^-2 nm^-1 (NaN for flagged sources), error (n,) ('' when usable). A FILE that is
    already sampled (xp_sampled_mean_spectrum, gaiaxpy.calibrate output, APOGEE library) is
    passed through unchanged (converted to W m^-2 nm^-1), and the command says so.
    """
    from cvae_pms.xp.archive import XPReadError
    from cvae_pms.xp.sampled_write import write_sampled_flux

    if not out.parent.is_dir():
        raise click.ClickException(f"{out}: output directory {out.parent} does not exist")
    try:
        summary = write_sampled_flux(file, out, chunk_size=chunk_size)
    except XPReadError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{out}: {summary['n_sources']} source(s), {summary['n_ok']} usable, "
               f"{summary['n_sources'] - summary['n_ok']} flagged"
               + (" (input already sampled: flux and flux_error passed through)"
                  if summary.get("passed_through") else ""))
