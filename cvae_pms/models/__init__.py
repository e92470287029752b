"""Trained models shipped with the package and the lookup of a model by name or path.

A shipped model is a model dir (``cvae-pms train --out``, without checkpoints) stored as package
data in ``cvae_pms/models/NAME/`` with a ``provenance.json``: recipe, grid hash and forward-model
version, code commit, training time and hardware, and its evaluation table. ``cvae-pms infer``
uses :data:`DEFAULT` when no model is named; ``cvae-pms models`` lists what is installed.
(``cvae_pms.model`` is the network code; this package holds trained weights.)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from cvae_pms.errors import CvaePmsError

SHIPPED_DIR = Path(__file__).resolve().parent
DEFAULT = "default"
PROVENANCE = "provenance.json"
# Files a shipped model keeps (checkpoints and TensorBoard logs stay behind).
SHIPPED_FILES = ("model.weights.h5", "network.json", "features.json", "features.npz",
                 "params.json", "config.json", "config.toml", "grid.json", "noise.json",
                 "model_error.npz", "ood.npz", "split.npz", "history.csv", "loss.png",
                 "gof_threshold.json")


class ModelNotFoundError(CvaePmsError):
    """A model named by the user is neither a model dir nor an installed model."""


def is_model_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder with the files of a trained model dir."""
    p = Path(path)
    return p.is_dir() and (p / "network.json").is_file() and (p / "model.weights.h5").is_file()


def installed() -> dict[str, Path]:
    """Installed models by name (folders of ``cvae_pms/models/`` with a provenance file)."""
    return {p.name: p for p in sorted(SHIPPED_DIR.iterdir())
            if p.is_dir() and (p / PROVENANCE).is_file()}


def resolve(model: str | os.PathLike | None = None) -> Path:
    """The model dir for a path or an installed name (None: :data:`DEFAULT`).

    A path that exists wins over a name; an unknown name or a missing path raises
    :class:`ModelNotFoundError` naming the installed models.
    """
    name = DEFAULT if model is None else model
    p = Path(name)
    if p.is_dir():
        return p
    shipped = installed()
    if str(name) in shipped:
        return shipped[str(name)]
    names = ", ".join(shipped) or "none"
    raise ModelNotFoundError(f"model {str(name)!r}: no such model dir and no installed model of "
                             f"that name (installed: {names}; see 'cvae-pms models')")


def provenance(path: str | os.PathLike) -> dict:
    """The ``provenance.json`` of a model dir ({} when it has none)."""
    f = Path(path) / PROVENANCE
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise CvaePmsError(f"{f}: unreadable provenance file: {exc}") from exc


def usable(path: str | os.PathLike) -> str:
    """'ok', or why inference refuses this model dir (e.g. an older feature version)."""
    from cvae_pms.features import FeatureError, FeatureSpec
    try:
        FeatureSpec.load(path)
    except (FeatureError, OSError) as exc:
        return f"refused: {exc}"
    return "ok"
