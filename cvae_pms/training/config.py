"""Training recipes: defaults, TOML recipes (with ``base =``), ``--set`` overrides, the
train/val/test split, and the checks a config must pass before (or on resuming) training.

Light on purpose: numpy and the standard library only (no TensorFlow), so
:mod:`cvae_pms.simulate` can reuse the defaults and the split.
"""
from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import numpy as np

from cvae_pms.errors import CvaePmsError

#: Every default of a training config (``training/*.toml`` override these).
DEFAULT_CONFIG: dict = {
    "model": {
        "trunk": [512, 512, 256], "conv_filters": [], "conv_kernel": 5, "latent": 10,
        "components": 16, "r1_hidden": [256], "q_hidden": [256], "r2_hidden": [256, 256],
        "activation": "swish", "prior_mean_init_std": 1.0, "logvar_bias_init": -1.0,
        "whiten": 0, "whiten_floor": 1e-4,
    },
    "annealing": {"start": 50, "end": 150, "shape": "log", "truncation_ramp": True,
                  "prior_warmup": True},
    "training": {
        "seed": 1, "epochs": 3800, "batch_size": 512, "learning_rate": 1e-3,
        "lr_schedule": "cosine", "lr_final": 3e-5, "global_clipnorm": 1.0,
        "val_fraction": 0.1, "test_fraction": 0.1, "val_max_rows": 4096,
        "early_stopping_patience": 20, "steps_per_epoch": 0, "standardisation_rows": 8192,
        "jit_compile": False, "checkpoints_kept": 2, "noise_copies": 1,
        # model dir (path or installed name) whose weights start this run: cvae_pms.training.warmstart
        "init_from": "",
    },
    # model_error: "empirical" (measured on real stars, T_eff dependent; the default) or
    # "parametric" (the noise model's fixed model_error_fraction / model_error_corr_nm).
    "noise": {"g_min": 9.0, "g_max": 17.65, "transits_min": 15, "transits_max": 80,
              "model_error": "empirical"},
    # Luminosity channel (parallax + flux level, see cvae_pms.astrometry); off = spectrum-only.
    "luminosity": {"enabled": False, "frac_error_min": 0.01, "frac_error_max": 0.3,
                   "drop_fraction": 0.2, "min_parallax_over_error": 5.0,
                   "zero_point_mas": 0.0},
}
#: Keys that may differ between the stored config and a ``--resume`` call.
RESUMABLE_KEYS = ("training.epochs", "training.early_stopping_patience")
#: Shipped recipes (package data, so ``--config cpu-quick`` works after any install).
RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"


class TrainingError(CvaePmsError):
    """Training cannot start or continue (bad config, bad grid, non-finite loss ...)."""


def flatten_config(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = v
    return out


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def resolve_config(user: dict, overrides: tuple[str, ...] | list[str] = (),
                   source: str = "config") -> dict:
    """Defaults <- ``user`` (parsed TOML) <- ``key=value`` overrides; unknown keys raise."""
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    known = flatten_config(DEFAULT_CONFIG)

    def put(key: str, value, where: str) -> None:
        if key not in known:
            raise TrainingError(f"{where}: unknown config key {key!r} "
                                f"(known: {', '.join(sorted(known))})")
        section, name = key.split(".", 1)
        default = known[key]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(default, bool) != isinstance(value, bool) or (
                not isinstance(default, bool) and type(default) is not type(value)):
            raise TrainingError(f"{where}: {key} = {value!r} should be a "
                                f"{type(default).__name__} like the default {default!r}")
        cfg[section][name] = value

    for key, value in flatten_config(user).items():
        put(key, value, source)
    for item in overrides:
        if "=" not in item:
            raise TrainingError(f"--set {item!r}: expected key=value, e.g. training.epochs=5")
        key, text = item.split("=", 1)
        put(key.strip(), _parse_value(text.strip()), f"--set {item}")
    return cfg


def load_config(config: str | Path, overrides: tuple[str, ...] | list[str] = ()
                ) -> tuple[dict, str]:
    """Read a TOML recipe (a path, or a name in ``cvae_pms/recipes/``) -> (resolved config,
    TOML text).

    A recipe may start from another one with a top-level ``base = "cpu-quick"`` (name or
    path); its own tables then override the base's values key by key. The returned text is
    the base's text followed by the recipe's.
    """
    user, text, path = _read_recipe(config, ())
    return resolve_config(user, overrides, str(path)), text


def _read_recipe(config: str | Path, seen: tuple[Path, ...]) -> tuple[dict, str, Path]:
    path = Path(config)
    if not path.is_file() and (RECIPE_DIR / f"{config}.toml").is_file():
        path = RECIPE_DIR / f"{config}.toml"
    try:
        text = path.read_text()
        user = tomllib.loads(text)
    except FileNotFoundError as exc:
        raise TrainingError(f"{path}: training config not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TrainingError(f"{path}: not valid TOML: {exc}") from exc
    base = user.pop("base", None)
    if base is None:
        return user, text, path
    if not isinstance(base, str) or path.resolve() in seen:
        raise TrainingError(f"{path}: 'base' must name another recipe (no cycles), got {base!r}")
    merged, base_text, _ = _read_recipe(base, seen + (path.resolve(),))
    for section, table in user.items():
        if isinstance(table, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **table}
        else:
            merged[section] = table
    return merged, f"{base_text}\n# ---- {path.name} (base = {base!r})\n{text}", path


def split_indices(n: int, seed: int, val_fraction: float, test_fraction: float
                  ) -> dict[str, np.ndarray]:
    """Random train/val/test row indices (sorted) of an n-row grid, from ``seed``."""
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    if n - n_val - n_test < 1 or n_val < 1:
        raise TrainingError(f"grid of {n} rows is too small for val/test fractions "
                            f"{val_fraction}/{test_fraction}")
    perm = np.random.default_rng([seed, 20240601]).permutation(n)
    return {"val": np.sort(perm[:n_val]), "test": np.sort(perm[n_val:n_val + n_test]),
            "train": np.sort(perm[n_val + n_test:])}


def check_luminosity_config(lum_cfg: dict, reference_distance_pc: float | None,
                            grid_path) -> None:
    """Refuse ``luminosity.enabled`` on a grid without absolute fluxes, or bad ranges."""
    if not lum_cfg["enabled"]:
        return
    if reference_distance_pc is None or not reference_distance_pc > 0:
        raise TrainingError(
            f"{grid_path}: luminosity.enabled = true needs a grid with absolute fluxes "
            f"(reference_distance_pc in the grid metadata), this grid has "
            f"{reference_distance_pc!r} (normalised fluxes): train a spectrum-only model "
            f"(luminosity.enabled = false)")
    lo, hi = lum_cfg["frac_error_min"], lum_cfg["frac_error_max"]
    if not (0 < lo <= hi) or not (0 <= lum_cfg["drop_fraction"] < 1):
        raise TrainingError(f"luminosity config: need 0 < frac_error_min <= frac_error_max "
                            f"and 0 <= drop_fraction < 1, got {lum_cfg}")


# ------------------------------------------------------------------------------ resume
def check_resume_config(stored: dict, new: dict, run: Path) -> None:
    a, b = flatten_config(stored), flatten_config(new)
    diff = [k for k in b if k not in RESUMABLE_KEYS and a.get(k) != b[k]]
    if diff:
        raise TrainingError(f"{run}: --resume with a different config: "
                            + ", ".join(f"{k} stored {a.get(k)!r} vs {b[k]!r}" for k in diff))


def fill_stored_defaults(stored: dict) -> None:
    """Defaults of keys that older run dirs' config.json lack."""
    stored.setdefault("luminosity", dict(DEFAULT_CONFIG["luminosity"]))
    stored.setdefault("model", {}).setdefault("whiten", 0)
    stored["model"].setdefault("whiten_floor", DEFAULT_CONFIG["model"]["whiten_floor"])
    stored.setdefault("training", {}).setdefault("init_from", "")
