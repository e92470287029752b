"""The ``cvae-pms`` command line: a thin click shell over the package modules.

Each command group lives in its own module in this package; :data:`COMMANDS` lists them.
"""
from __future__ import annotations

import importlib
import os

import click

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: (module in cvae_pms.cli, attribute) of every registered command or group.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("grid_cmd", "grid"),
    ("xp_cmd", "xp"),
    ("crosscheck_cmd", "crosscheck"),
    ("train_cmd", "train"),
    ("infer_cmd", "infer"),
    ("evaluate_cmd", "evaluate"),
    ("simulate_cmd", "simulate"),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cvae-pms")
def main() -> None:
    """cvae-pms: posteriors of T Tauri star parameters from Gaia XP spectra."""


for _module, _attr in COMMANDS:
    main.add_command(getattr(importlib.import_module(f"{__name__}.{_module}"), _attr))
