"""``cvae-pms ood rebuild``: (re)build the out-of-distribution index of a model dir."""
from __future__ import annotations

from pathlib import Path

import click


@click.group("ood")
def ood() -> None:
    """The out-of-distribution index RUN/ood.npz (built by train, read by infer)."""


@ood.command("rebuild")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--grid", "grid_path", type=click.Path(dir_okay=False), default=None,
              help="The training grid (default: the path recorded in RUN/grid.json; its "
                   "content hash must match).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the rows and noise draws (train uses 0).")
def rebuild(run_dir: str, grid_path: str | None, seed: int) -> None:
    """Rebuild RUN/ood.npz from the training grid, as train does at the end of a run."""
    from cvae_pms.model.rundir import load_run
    from cvae_pms.training.ood_index import build_ood_index

    index = build_ood_index(run_dir, seed=seed, run=load_run(run_dir), grid_path=grid_path)
    click.echo(f"OOD index: {Path(run_dir) / 'ood.npz'} (threshold {index.threshold:.3g}, "
               f"~1 % of held-out spectra flagged)")
