"""``cvae-pms evaluate``: accuracy and calibration of a trained run on held-out grid rows."""
from __future__ import annotations

from pathlib import Path

import click

from cvae_pms.evaluate import EvaluateConfig, EvaluationError, parse_g_mags, parse_range
from cvae_pms.evaluate import evaluate as run_evaluation


@click.command("evaluate")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--grid", "grid", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The grid file the run was trained on (its content hash is checked).")
@click.option("--test-split/--all-rows", "test_split", default=True, show_default=True,
              help="Use the run's held-out test rows (split.npz) or every grid row.")
@click.option("--n", "n", type=click.IntRange(min=1), default=500, show_default=True,
              help="Number of sources (a seeded random subset of the rows).")
@click.option("--g-mag", "g_mags", multiple=True, required=True,
              help="G magnitude(s): repeatable or '12,15,17'; a range '12:17' draws G "
                   "uniformly per source and adds 1-mag bins. The first is the primary.")
@click.option("--transits", default="15:80", show_default=True,
              help="Number of transits, integer LOW:HIGH drawn uniformly (or one value).")
@click.option("--samples", type=click.IntRange(min=2), default=1000, show_default=True,
              help="Posterior samples per source.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for everything.")
@click.option("--reference", "reference", type=click.IntRange(min=0), default=0,
              show_default=True,
              help="Sources with exact-likelihood reference posteriors (two independent runs "
                   "each; dynesty ~20 s per run on 1 core at G = 15). 0 skips.")
@click.option("--sampler", "reference_sampler", type=click.Choice(["dynesty", "emcee"]),
              default="dynesty", show_default=True,
              help="Reference sampler: dynesty nested sampling (calibrated, see the README) or "
                   "emcee (kept for comparison; under-covers at G <~ 15).")
@click.option("--nlive", type=click.IntRange(min=20), default=250, show_default=True,
              help="dynesty live points.")
@click.option("--emcee", "emcee", type=click.IntRange(min=0), default=None,
              help="Alias of --reference N --sampler emcee (older scripts).")
@click.option("--emcee-max-steps", type=click.IntRange(min=500), default=30000,
              show_default=True, help="Cap on emcee steps per chain.")
@click.option("--fisher/--no-fisher", default=True, show_default=True,
              help="Fisher (Cramer-Rao) forecast of the scatter the data allow, per G "
                   "(~0.01 s per source; built-in grids only).")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Train and score the HistGradientBoosting baseline on the same features.")
@click.option("--baseline-rows", type=click.IntRange(min=50), default=20000, show_default=True,
              help="Noisy training spectra for the baseline.")
@click.option("--parallax-error-frac", type=click.FloatRange(min=0, min_open=True), default=0.05,
              show_default=True,
              help="Luminosity models: fractional error of the simulated parallaxes (as "
                   "`simulate`); spectrum-only models ignore it.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory (metrics.json/.csv/.ecsv, figures).")
def evaluate(run_dir: Path, grid: Path, test_split: bool, n: int, g_mags: tuple[str, ...],
                 transits: str, samples: int, seed: int, reference: int,
                 reference_sampler: str, nlive: int, emcee: int | None, emcee_max_steps: int,
                 fisher: bool, baseline: bool, baseline_rows: int, parallax_error_frac: float,
                 out: Path) -> None:
    """Evaluate the trained RUN_DIR on held-out rows of its grid with simulated XP noise."""
    try:
        lo, hi = parse_range(transits, "--transits", integer=True)
        cfg = EvaluateConfig(run_dir=run_dir, grid=grid, out=out,
                             g_settings=parse_g_mags(g_mags),
                             rows="test" if test_split else "all", n=n,
                             transits=(int(lo), int(hi)), samples=samples, seed=seed,
                             reference=reference if emcee is None else emcee,
                             reference_sampler=reference_sampler if emcee is None else "emcee",
                             nlive=nlive, emcee_max_steps=emcee_max_steps, fisher=fisher,
                             baseline=baseline,
                             baseline_rows=baseline_rows,
                             parallax_error_frac=parallax_error_frac)
        result = run_evaluation(cfg, log=click.echo)
    except EvaluationError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{'G':>7s} {'parameter':10s} {'bias':>10s} {'scatter':>10s} {'cov68':>6s} "
               f"{'cov95':>6s} {'P-P p':>7s} {'limit':>10s}")
    for label, res in result["by_g_mag"].items():
        lim = res.get("information_limit", {}).get("per_parameter", {})
        for name, m in res["per_parameter"].items():
            f = lim.get(name, {}).get("forecast_scatter", float("nan"))
            click.echo(f"{label:>7s} {name:10s} {m['bias']:10.4g} {m['scatter']:10.4g} "
                       f"{m['coverage68']:6.3f} {m['coverage95']:6.3f} {m['pp_pvalue']:7.3f} "
                       f"{f:10.4g}")
    click.echo(f"TARP max deviation (G {result['primary_g']}): "
               f"{result['tarp']['max_deviation']:.3f}")
