"""``cvae-pms infer``: posterior samples for Gaia XP sources (streaming, flags, plots, Dask)."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import click


def _sigterm_to_exit(signum, frame) -> None:
    raise SystemExit(f"terminated by signal {signum}; completed sources kept (use --resume)")


def split_model_and_inputs(model: str | None, args: tuple[Path, ...]) -> tuple[Path, tuple[Path, ...]]:
    """(model dir, input files) from ``--model`` and the positional arguments.

    With ``--model`` every argument is an input. Without it, a first argument that is a model
    dir or an installed model's name is the model (the form ``infer RUN FILES``); otherwise
    the installed default model is used.
    """
    from cvae_pms import models as shipped

    if model is not None:
        return shipped.resolve(model), args
    if len(args) > 1 and (shipped.is_model_dir(args[0]) or str(args[0]) in shipped.installed()):
        return shipped.resolve(args[0]), args[1:]
    if len(args) == 1 and Path(args[0]).is_dir() and shipped.is_model_dir(args[0]):
        raise click.UsageError(f"{args[0]} is a model dir: name the XP files to infer after it")
    return shipped.resolve(None), args


@click.command("infer")
@click.argument("args", nargs=-1, required=True, type=click.Path(path_type=Path),
                metavar="[RUN] FILES...")
@click.option("--model", "model", default=None,
              help="Model: a model dir or an installed name (default, see 'cvae-pms models'); "
                   "[default: a leading model-dir argument RUN, else 'default'].")
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="Posterior HDF5 file to write (with --dask: the stem of one file per input) "
                   "[default: posteriors.h5 in the current folder].")
@click.option("--samples", default=1000, show_default=True, help="Posterior samples per source.")
@click.option("--summary", type=click.Path(path_type=Path), default=None,
              help="Summary table (.ecsv, .csv or .fits).")
@click.option("--batch", default=256, show_default=True, help="Sources per chunk.")
@click.option("--seed", default=0, show_default=True, help="Global seed (per-source keys).")
@click.option("--plots", type=click.Path(path_type=Path), default=None,
              help="Folder for per-source corner plots.")
@click.option("--max-plots", default=20, show_default=True, help="At most this many plots.")
@click.option("--truth", type=click.Path(path_type=Path), default=None,
              help="Truth table (source_id + parameter columns) for truth lines in plots.")
@click.option("--resume", is_flag=True,
              help="Continue the newest partial results of OUT made with the same settings "
                   "(OUT.partial, OUT.tmp-PID of a killed run, or OUT itself to add inputs).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing OUT / summary (and discard partial results).")
@click.option("--dask", "dask_spec", default=None,
              help="local:N (LocalCluster, N workers) or a scheduler address tcp://host:port.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--astrometry", type=click.Path(path_type=Path), default=None,
              help="Table (CSV/ECSV/FITS/VOTable) with source_id, parallax, parallax_error [mas], "
                   "joined on source_id; else the inputs' parallax columns are used.")
@click.option("--parallax-zero-point", type=float, default=None,
              help="[mas] ADDED to every parallax (DR3: +0.017); default: the model's "
                   "luminosity.zero_point_mas.")
@click.option("--min-parallax-over-error", type=float, default=5.0, show_default=True,
              help="Below this parallax/error a source gets the spectrum-only posterior.")
@click.option("--prior", "prior", type=click.Path(path_type=Path), default=None,
              help="User prior (TOML, see cvae_pms.priors): samples are importance-reweighted "
                   "and resampled; 'ess' per source, flag low_ess.")
@click.option("--keep-raw", is_flag=True,
              help="With --prior: also keep the samples under the training prior (samples_raw).")
@click.option("--gof/--no-gof", "gof", default=True, show_default=True,
              help="Posterior predictive goodness of fit per source (gof_chi2_red, gof_p, "
                   "flag poor_fit); not computed for models trained on ingested grids.")
@click.option("--gof-draws", type=int, default=None,
              help="Posterior samples re-synthesised per source for the check [default: 32].")
@click.option("--poor-fit-threshold", type=float, default=None,
              help="Flag poor_fit above this gof_chi2_red [default: the shipped threshold "
                   "calibrated on real APOGEE x XP stars].")
def infer(args: tuple[Path, ...], model: str | None, out: Path | None, samples: int, summary: Path | None,
          batch: int, seed: int, plots: Path | None, max_plots: int, truth: Path | None,
          resume: bool, dask_spec: str | None, quiet: bool, astrometry: Path | None,
          parallax_zero_point: float | None, min_parallax_over_error: float,
          prior: Path | None, keep_raw: bool, overwrite: bool, gof: bool,
          gof_draws: int | None, poor_fit_threshold: float | None) -> None:
    """Draw posterior samples for every source in the XP files FILES.

    The model is --model, or a leading model dir RUN (``infer RUN FILES``), or the installed
    'default' model when neither is given (``cvae-pms infer my_xp.csv``).

    Writes OUT (samples, status flags, messages per source) and optionally a summary
    table and corner plots. Exit 1 when the model or an input cannot be used, an output exists
    (without --overwrite or --resume) or is being written by another process, or when an
    input has no usable source (its failures are still recorded in OUT).
    """
    import time

    from cvae_pms.infer import infer as run_infer

    run, inputs = split_model_and_inputs(model, args)
    out = Path("posteriors.h5") if out is None else out

    command_line = ["cvae-pms", "infer", *sys.argv[2:]] if len(sys.argv) > 1 else ["cvae-pms"]
    # The one set of infer() options, for the single process and for every Dask task alike.
    infer_kwargs = dict(n_samples=samples, seed=seed, batch=batch, summary=summary,
                        resume=resume, plots=plots, max_plots=max_plots, truth=truth,
                        progress=not quiet, command_line=command_line,
                        log=lambda s: click.echo(s, err=True), astrometry=astrometry,
                        parallax_zero_point=parallax_zero_point,
                        min_parallax_over_error=min_parallax_over_error, prior=prior,
                        keep_raw=keep_raw, overwrite=overwrite, gof=gof, gof_draws=gof_draws,
                        poor_fit_threshold=poor_fit_threshold)
    if dask_spec is not None:
        from cvae_pms.scaleout import dask_client, infer_dask, merged_result, plan_dask

        t0 = time.time()
        plan_dask(inputs, out, **infer_kwargs)     # fail before a cluster is started
        with dask_client(dask_spec) as client:
            _, infos = infer_dask(client, run, inputs, out, **infer_kwargs)
        for info in infos:
            click.echo(f"{info['part']}: {info['n_sources']} sources, {info['n_failed']} failed, "
                       f"{info['n_ood']} OOD")
        res = merged_result(infos, out, summary)
        res.seconds = time.time() - t0
    else:
        previous = signal.signal(signal.SIGTERM, _sigterm_to_exit)
        try:
            res = run_infer(run, inputs, out, **infer_kwargs)
        except KeyboardInterrupt:
            partial = out.with_name(out.name + ".partial")
            raise click.ClickException(
                f"interrupted; completed sources kept in {partial}: rerun with --resume"
                if partial.is_file() else "interrupted before any source was completed")
        finally:
            signal.signal(signal.SIGTERM, previous)
    rate = res.n_sources / res.seconds if res.seconds > 0 else float("nan")
    if res.n_no_parallax:
        click.echo(f"{res.n_no_parallax} sources without a usable parallax: spectrum-only "
                   f"(flag no_parallax)")
    if res.n_duplicates:
        click.echo(f"{res.n_duplicates} rows share their source_id with another row of the "
                   f"same input (flag duplicate_source_id)")
    if res.gof_note:
        click.echo(res.gof_note)
    elif res.n_poor_fit:
        click.echo(f"{res.n_poor_fit} sources the forward model does not reproduce at their "
                   f"posterior (flag poor_fit)")
    if res.n_low_ess:
        click.echo(f"{res.n_low_ess} sources with a low effective sample size under the "
                   f"prior (flag low_ess)")
    click.echo(f"{res.out}: {res.n_sources} sources ({res.n_failed} failed, {res.n_ood} OOD"
               + (f", {res.n_skipped} already done" if res.n_skipped else "")
               + f") in {res.seconds:.1f} s ({rate:.1f} sources/s)")
    if res.summary:
        click.echo(f"summary: {res.summary}")
    if res.plots:
        click.echo(f"{len(res.plots)} corner plots in {plots}")
    unusable = res.unusable_files
    if unusable:
        raise click.ClickException("no usable source in: " + "; ".join(
            f"{k} ({v})" for k, v in unusable.items()))
