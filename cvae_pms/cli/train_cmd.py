"""``cvae-pms train``: train the CVAE on a grid file with a recipe from ``training/``."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("train")
@click.option("--grid", "grid_path", required=True, type=click.Path(dir_okay=False),
              help="Grid file (HDF5) to train on.")
@click.option("--config", "config", required=True,
              help="Training recipe: a TOML path or a name in training/ (e.g. cpu-quick).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Model dir to create (weights, config, history, checkpoints).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set training.epochs=5 (repeatable).")
@click.option("--mixed-precision", is_flag=True, help="float16 compute (for GPUs).")
def train(grid_path: str, config: str, out: str, resume: bool, overrides: tuple[str, ...],
          mixed_precision: bool) -> None:
    """Train a CVAE: fresh XP noise every batch, KL annealing, a checkpoint every epoch."""
    from cvae_pms.features import FeatureError
    from cvae_pms.model.rundir import RunDirError
    from cvae_pms.training import TrainingError, train as run_training
    from cvae_pms.xp.noise import NoiseModelError

    try:
        result = run_training(grid_path, config, out, resume=resume, overrides=overrides,
                              mixed_precision=mixed_precision, log=click.echo)
    except (TrainingError, FeatureError, RunDirError, NoiseModelError) as exc:
        raise click.ClickException(str(exc)) from exc
    if result.ood_note:
        click.echo(f"warning: {result.ood_note}", err=True)
    elif result.ood_threshold is not None:
        click.echo(f"OOD index: {Path(out) / 'ood.npz'} (threshold {result.ood_threshold:.3g}, "
                   f"~1 % of held-out spectra flagged)")
    last = result.history[-1] if result.history else {}
    click.echo(f"{result.stop_reason}; {len(result.history)} epochs in {out} "
               f"(this call: {result.epochs_run} epochs, {result.wall_s:.0f} s, "
               f"{result.samples_per_s:.0f} training samples/s on {result.device})")
    if last:
        click.echo(f"last epoch {last['epoch']}: H {last['H']:.3f} KL {last['KL']:.3f} "
                   f"val_H {last['val_H']:.3f}")
