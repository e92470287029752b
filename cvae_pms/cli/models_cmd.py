"""``cvae-pms models``: the trained models installed with the package."""
from __future__ import annotations

import click


@click.command("models")
def models() -> None:
    """List the installed models (cvae_pms/models/): name, recipe, grid, training, status.

    `cvae-pms infer FILES` uses 'default'; name another with --model NAME|PATH.
    """
    from cvae_pms import models as shipped

    found = shipped.installed()
    if not found:
        click.echo(f"no models installed in {shipped.SHIPPED_DIR}")
        return
    for name, path in found.items():
        prov = shipped.provenance(path)
        train = prov.get("training", {})
        grid = prov.get("grid", {})
        mark = " (default)" if name == shipped.DEFAULT else ""
        click.echo(f"{name}{mark}: {path}")
        click.echo(f"  recipe {prov.get('recipe', '?')}; grid {grid.get('command', '?')} "
                   f"(hash {str(grid.get('content_hash', '?'))[:12]}, forward model "
                   f"v{grid.get('forward_model_version', '?')}); code {prov.get('code_commit', '?')}")
        click.echo(f"  trained {train.get('epochs', '?')} epochs in {train.get('seconds', '?')} s "
                   f"on {train.get('hardware', '?')}; status: {shipped.usable(path)}")
