"""Training of the CVAE: config, data split, noise inside the step, annealing, checkpoints.

``train(grid, config, out)`` reads a noiseless grid, splits it by seed (``split.npz``), and
trains with a fresh noise draw for every spectrum in every batch, inside the compiled step:
brightness G ~ U(g_min, g_max) and transits ~ U{transits_min..transits_max}; coefficients
scaled to G; coefficient noise ``c + L z`` from :mod:`cvae_pms.xp.noise`; correlated
model-error flux noise; then :mod:`cvae_pms.features`. Random numbers are stateless, keyed
on (seed, epoch, step), so ``--resume`` after a kill gives the same weights as an
uninterrupted run. Checkpoints (weights, optimizer, epoch, early-stopping state) are written
every epoch; a non-finite loss stops training with a checkpoint and a message.
"""
from __future__ import annotations

import copy
import csv
import json
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cvae_pms import params as P
from cvae_pms.errors import CvaePmsError
from cvae_pms.simulator import TrainingLuminosity, TrainingNoise, unit_teff

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
HISTORY_COLUMNS = ("epoch", "beta", "H", "KL", "L", "val_H", "val_KL", "lr", "time_s",
                   "samples_per_s")
#: Shipped recipes (package data, so ``--config cpu-quick`` works after any install).
RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


class TrainingError(CvaePmsError):
    """Training cannot start or continue (bad config, bad grid, non-finite loss ...)."""


# ------------------------------------------------------------------------------ config
def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
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
    known = _flatten(DEFAULT_CONFIG)

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

    for key, value in _flatten(user).items():
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


# ------------------------------------------------------------------------------ data
@dataclass
class GridRows:
    """Noiseless training rows: coefficients (n, 55) float32, G mag (n,), unit params (n, 7)."""

    bp: np.ndarray
    rp: np.ndarray
    g: np.ndarray
    x: np.ndarray

    def take(self, idx: np.ndarray) -> "GridRows":
        return GridRows(self.bp[idx], self.rp[idx], self.g[idx], self.x[idx])

    @property
    def teff(self) -> np.ndarray:
        """(n,) true T_eff [K] (for the T_eff-dependent model-error draw)."""
        return unit_teff(self.x)

    def __len__(self) -> int:
        return len(self.g)


def read_grid_rows(grid) -> GridRows:
    """All rows of an open grid as :class:`GridRows` (G from :func:`cvae_pms.xp.photometry.g_mag`)."""
    from cvae_pms.model.cvae import unit_targets
    from cvae_pms.xp.photometry import g_mag
    bp, rp = grid.coefficients()
    g = np.asarray(g_mag(bp, rp), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(g))
    if bad.size:
        raise TrainingError(f"{grid.path}: G magnitude not finite for {bad.size} rows "
                            f"(first rows {bad[:5].tolist()}): zero or negative flux?")
    return GridRows(bp.astype(np.float32), rp.astype(np.float32), g.astype(np.float32),
                    unit_targets(grid.params))


# ------------------------------------------------------------------------------ outputs
def write_history(path: Path, rows: list[dict]) -> None:
    """History CSV with :data:`HISTORY_COLUMNS` (atomic)."""
    import io
    from cvae_pms.atomic import write_text_atomic
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in HISTORY_COLUMNS})
    write_text_atomic(path, buf.getvalue())


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items()}
                for r in csv.DictReader(f)]


def plot_history(path: Path, rows: list[dict], annealing: dict) -> None:
    """Loss figure: H, KL, L (train) and val_H vs epoch, annealing window shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cvae_pms.atomic import write_bytes_atomic
    ep = [r["epoch"] for r in rows]
    from cvae_pms.plots import plain_text
    with plain_text():
        png = _draw_history(plt, ep, rows, annealing)
    write_bytes_atomic(path, png)


def _draw_history(plt, ep: list[int], rows: list[dict], annealing: dict) -> bytes:
    import io
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("H", "-"), ("KL", "-"), ("L", "-"), ("val_H", "--")):
        ax.plot(ep, [r[key] for r in rows], style, label=key)
    ax.axvspan(annealing["start"], annealing["end"], color="0.9", label="KL annealing")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss [nats per spectrum]")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


# ------------------------------------------------------------------------------ loop
@dataclass
class TrainResult:
    """What :func:`train` did."""

    run_dir: Path
    epochs_run: int
    stop_reason: str
    history: list[dict] = field(default_factory=list)
    samples_per_s: float = 0.0
    wall_s: float = 0.0
    device: str = "CPU"
    ood_threshold: float | None = None
    ood_note: str = ""


def _tb_scalar(tag: str, value: float, step: int) -> None:
    """Write a TensorBoard scalar with the core op (the tensorboard package is optional)."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2
    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step,
                     metadata=meta.SerializeToString())


def _lr_schedule(tcfg: dict, total_steps: int):
    import keras
    lr, final = tcfg["learning_rate"], tcfg["lr_final"]
    kind = tcfg["lr_schedule"]
    if kind == "constant":
        return lr
    if kind == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, max(total_steps, 1), alpha=final / lr)
    if kind == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(lr, max(total_steps, 1), final / lr)
    raise TrainingError(f"training.lr_schedule must be constant, cosine or exponential, "
                        f"got {kind!r}")


def _check_resume_config(stored: dict, new: dict, run: Path) -> None:
    a, b = _flatten(stored), _flatten(new)
    diff = [k for k in b if k not in RESUMABLE_KEYS and a.get(k) != b[k]]
    if diff:
        raise TrainingError(f"{run}: --resume with a different config: "
                            + ", ".join(f"{k} stored {a.get(k)!r} vs {b[k]!r}" for k in diff))


#: Files and folders a training run writes into its model dir (a dir holding only these,
#: and no checkpoint, is a run that stopped before its first epoch ended).
RUN_PRODUCTS = ("network.json", "config.json", "config.toml", "params.json", "features.json",
                "features.npz", "grid.json", "noise.json", "split.npz", "model.weights.h5",
                "history.csv", "loss.png", "ood.npz", "checkpoints", "tensorboard")


def checkpoint_prefixes(ckpt_dir: Path) -> list[str]:
    """Checkpoint prefixes ``ckpt_dir/ckpt-N`` found on disk, newest (largest N) first."""
    found = []
    for idx in Path(ckpt_dir).glob("ckpt-*.index"):
        try:
            found.append((int(idx.name[len("ckpt-"):-len(".index")]), str(idx)[:-len(".index")]))
        except ValueError:
            continue
    return [p for _, p in sorted(found, reverse=True)]


def checkpoint_intact(prefix: str) -> str | None:
    """None when every tensor of the checkpoint ``prefix`` reads back, else why not."""
    import tensorflow as tf
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as exc:  # noqa: BLE001 - DataLossError, IndexError, OutOfRange ...
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


def _newest_intact_checkpoint(run: Path, log: Callable[[str], None]) -> str | None:
    """The newest readable checkpoint of ``run``; damaged newer ones are removed (said in the
    log) and the checkpoint state file rewritten to list the intact ones."""
    import tensorflow as tf
    ckpt_dir = run / "checkpoints"
    prefixes = checkpoint_prefixes(ckpt_dir)
    for k, prefix in enumerate(prefixes):
        why = checkpoint_intact(prefix)
        if why is None:
            if k:
                keep = sorted(prefixes[k:], key=lambda p: int(p.rsplit("-", 1)[1]))
                times = [Path(p + ".index").stat().st_mtime for p in keep]
                tf.compat.v1.train.update_checkpoint_state(
                    str(ckpt_dir), Path(prefix).name,
                    all_model_checkpoint_paths=[Path(p).name for p in keep],
                    all_model_checkpoint_timestamps=times,
                    last_preserved_timestamp=min(times) - 1.0)
            return prefix
        log(f"{prefix}: damaged checkpoint ({why}); "
            + ("falling back to the previous one" if k + 1 < len(prefixes) else
               "no older checkpoint"))
        for f in ckpt_dir.glob(Path(prefix).name + ".*"):
            f.unlink()
    return None


def _restart_from_scratch(run: Path, cfg: dict, toml_text: str,
                          log: Callable[[str], None]) -> tuple[dict, str]:
    """``--resume`` of a run without an (intact) checkpoint: clear its training products and
    return the config to start again with (the saved one, else the given one)."""
    stray = [p.name for p in run.iterdir() if p.name not in RUN_PRODUCTS
             and ".tmp-" not in p.name and not p.name.startswith("tmp-")]
    if not (run / "config.json").is_file() and stray:
        raise TrainingError(f"{run}: nothing to resume (no config.json, no checkpoint, and "
                            f"files a training run does not write: {', '.join(sorted(stray)[:5])})"
                            f"; start without --resume in another --out")
    try:
        stored = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        stored = None
    try:
        stored_toml = (run / "config.toml").read_text()
    except OSError:
        stored_toml = toml_text
    if stored is not None:
        _fill_stored_defaults(stored)
        _check_resume_config(stored, cfg, run)
        for key in RESUMABLE_KEYS:
            section, name = key.split(".")
            stored[section][name] = _flatten(cfg)[key]
        cfg, toml_text = stored, stored_toml
        log(f"{run}: no checkpoint yet (stopped before the end of its first epoch): starting "
            f"from scratch with its saved config")
    else:
        log(f"{run}: no checkpoint and no saved config yet: starting from scratch with the "
            f"given config")
    for p in run.iterdir():
        if p.name in ("checkpoints", "tensorboard"):
            import shutil
            shutil.rmtree(p)
        elif p.name in ("model.weights.h5", "history.csv", "loss.png", "ood.npz") \
                or ".tmp-" in p.name or p.name.startswith("tmp-"):
            p.unlink()
    return cfg, toml_text


def _fill_stored_defaults(stored: dict) -> None:
    """Defaults of keys that older run dirs' config.json lack."""
    stored.setdefault("luminosity", dict(DEFAULT_CONFIG["luminosity"]))
    stored.setdefault("model", {}).setdefault("whiten", 0)
    stored["model"].setdefault("whiten_floor", DEFAULT_CONFIG["model"]["whiten_floor"])


def train(grid_path: str | Path, config: str | Path, out: str | Path, *, resume: bool = False,
          overrides: tuple[str, ...] | list[str] = (), mixed_precision: bool = False,
          noise_model=None, log: Callable[[str], None] = print,
          ood: bool | dict = True) -> TrainResult:
    """Train a CVAE on a grid file and write the model dir ``out`` (see :mod:`.model.rundir`).

    At the end the out-of-distribution index ``out/ood.npz`` is built from the training grid
    (:func:`cvae_pms.ood_build.build_ood_index`; ``ood``: False to skip it, a dict for that
    function's keyword arguments); inference needs it and never rebuilds it.

    ``out`` must be creatable (or an existing writable folder) before anything else is done,
    and is locked (``<out>.lock``, :class:`cvae_pms.outputs.OutputLock`) while training.
    ``resume`` continues from the newest intact checkpoint (a damaged newer one is removed,
    said in the log); a run stopped before its first checkpoint starts again from scratch
    with its saved config.

    Args:
        grid_path: grid file (HDF5, :mod:`cvae_pms.grid.gridfile`).
        config: TOML recipe path or name in ``training/`` (e.g. ``"cpu-quick"``).
        out: model dir to create (or continue with ``resume``).
        resume: continue from the last checkpoint in ``out``.
        overrides: ``section.key=value`` strings applied on top of the recipe.
        mixed_precision: float16 compute (GPUs), float32 heads and loss.
        noise_model: :class:`cvae_pms.xp.noise.NoiseModel` (default: the shipped one).
        log: where progress lines go.

    Raises:
        TrainingError: bad config/grid/out dir, or a non-finite loss (after a checkpoint).
        OutputError: ``out`` not writable, or being written by another process.
    """
    from cvae_pms.outputs import check_output_dir, output_locks

    check_output_dir(out, what="model dir")
    with output_locks([out], log=log):
        result = _train(grid_path, config, out, resume=resume, overrides=overrides,
                        mixed_precision=mixed_precision, noise_model=noise_model, log=log)
        if ood is not False:
            _build_ood(result, {} if ood is True else dict(ood))
        return result


def _build_ood(result: TrainResult, kwargs: dict) -> None:
    """Build ``RUN/ood.npz`` after training when the weights changed or the index is missing
    or stale; a failure is recorded in ``result.ood_note`` (training itself succeeded)."""
    from cvae_pms.model.rundir import WEIGHTS, model_hash
    from cvae_pms.ood import OOD_FILE, OODError, load_ood_index, rebuild_hint
    from cvae_pms.ood_build import build_ood_index

    run = result.run_dir
    if not (run / WEIGHTS).is_file():
        return
    digest = model_hash(run)
    if not result.epochs_run and (run / OOD_FILE).is_file():
        try:
            index = load_ood_index(run / OOD_FILE)
            if index.meta.get("model_hash") == digest:
                result.ood_threshold = index.threshold
                return
        except OODError:
            pass
    try:
        index = build_ood_index(run, model_hash=digest, **kwargs)
    except OODError as exc:
        result.ood_note = (f"no OOD index built ({exc}); inference refuses this model until "
                           f"'{rebuild_hint(run)}' succeeds")
        return
    result.ood_threshold = index.threshold


def _train(grid_path: str | Path, config: str | Path, out: str | Path, *, resume: bool,
           overrides: tuple[str, ...] | list[str], mixed_precision: bool, noise_model,
           log: Callable[[str], None]) -> TrainResult:
    """:func:`train` with the output checked and locked."""
    import keras
    import tensorflow as tf
    from cvae_pms.features import FEATURE_VERSION, N_FEATURES, Featuriser, FeatureSpec
    from cvae_pms.grid.gridfile import GridError, open_grid
    from cvae_pms.model import rundir
    from cvae_pms.model.cvae import Annealing, cvae_terms, training_loss
    from cvae_pms.model.networks import NetworkConfig, build_networks, whitening_matrix
    from cvae_pms.xp.noise import NoiseModel

    t_start = time.time()
    run = Path(out)
    cfg, toml_text = load_config(config, overrides)
    latest, scratch = None, False
    if resume:
        if not run.is_dir():
            raise TrainingError(f"{run}: nothing to resume (no such model dir); start without "
                                f"--resume")
        latest = _newest_intact_checkpoint(run, log)
        if latest is None:
            cfg, toml_text = _restart_from_scratch(run, cfg, toml_text, log)
            resume, scratch = False, True
    if resume:
        if not (run / "config.json").is_file():
            raise TrainingError(f"{run}: nothing to resume (no config.json); start without --resume")
        stored = json.loads((run / "config.json").read_text())
        _fill_stored_defaults(stored)  # older run dirs
        _check_resume_config(stored, cfg, run)
        stored_flat = _flatten(cfg)
        for key in RESUMABLE_KEYS:
            section, name = key.split(".")
            stored[section][name] = stored_flat[key]
        cfg = stored
        toml_text = (run / "config.toml").read_text()
    elif not scratch and run.exists() and any(run.iterdir()):
        hint = ("it stopped before its first checkpoint: --resume starts it again with its "
                "saved config" if not checkpoint_prefixes(run / "checkpoints")
                and (run / "config.json").is_file() else "use --resume to continue it")
        raise TrainingError(f"{run}: output dir exists and is not empty ({hint}); or choose "
                            f"another --out")
    tcfg, ncfg = cfg["training"], cfg["noise"]
    seed = int(tcfg["seed"])
    ann_cfg = dict(cfg["annealing"])
    prior_warmup = bool(ann_cfg.pop("prior_warmup"))
    try:
        annealing = Annealing(**ann_cfg)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"annealing config: {exc}") from exc
    if not (ncfg["g_min"] < ncfg["g_max"] and 1 <= ncfg["transits_min"] <= ncfg["transits_max"]):
        raise TrainingError(f"noise config: need g_min < g_max and 1 <= transits_min <= "
                            f"transits_max, got {ncfg}")

    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU(s)" if gpus else "CPU only (no GPU visible to TensorFlow)"
    log(f"training on {device}")
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
        log("mixed precision: float16 compute, float32 heads and loss")

    try:
        with open_grid(grid_path) as grid:
            rows = read_grid_rows(grid)
            grid_info = {"path": str(Path(grid_path).resolve()), "content_hash": grid.content_hash,
                         "n": grid.n, "meta": grid.meta}
            d_ref = grid.reference_distance_pc
    except GridError as exc:
        raise TrainingError(str(exc)) from exc
    if resume or (scratch and (run / "grid.json").is_file()):
        stored_grid = rundir._read_json(run / "grid.json", run)
        if stored_grid.get("content_hash") != grid_info["content_hash"]:
            raise TrainingError(f"{run}: --resume with another grid than {grid_info['path']} "
                                f"(content hash differs)")
    if resume:
        split = rundir.read_npz(run / "split.npz", run)
    else:
        split = split_indices(len(rows), seed, tcfg["val_fraction"], tcfg["test_fraction"])
    lcfg = cfg["luminosity"]
    check_luminosity_config(lcfg, d_ref, grid_path)
    train_rows = rows.take(split["train"])
    val_rows = rows.take(split["val"][:tcfg["val_max_rows"]])
    noise_model = noise_model or NoiseModel.default()
    from cvae_pms.xp.model_error import ModelError, ModelErrorError
    try:
        model_error = (ModelError.from_file(run / "model_error.npz")
                       if resume and (run / "model_error.npz").is_file()
                       else ModelError.from_config(ncfg, noise_model))
    except ModelErrorError as exc:
        raise TrainingError(str(exc)) from exc
    copies = int(tcfg["noise_copies"])
    if copies < 1 or tcfg["batch_size"] % copies:
        raise TrainingError(f"training.noise_copies = {copies} must be >= 1 and divide "
                            f"training.batch_size = {tcfg['batch_size']}")
    bs = int(tcfg["batch_size"]) // copies   # grid rows per step; each gets `copies` draws
    if len(train_rows) < bs:
        raise TrainingError(f"{grid_path}: {len(train_rows)} training rows < {bs} rows per "
                            f"batch; use a smaller training.batch_size")
    steps = tcfg["steps_per_epoch"] or len(train_rows) // bs
    total_steps = steps * tcfg["epochs"]

    # Feature map; the standardisation comes from noisy training draws (or the run dir).
    keras.utils.set_random_seed(seed)
    if resume:
        spec = FeatureSpec.load(run)
        feat = Featuriser(spec)
    else:
        spec = FeatureSpec(model_error_frac=model_error.reference_fraction,
                           luminosity=bool(lcfg["enabled"]))
        feat = Featuriser(spec)
    noise = TrainingNoise(feat, noise_model, ncfg, model_error)
    lum = TrainingLuminosity(feat, lcfg, d_ref) if lcfg["enabled"] else None
    if not resume:
        k = min(len(train_rows), tcfg["standardisation_rows"])
        raw, raw_lum = [], []
        for i in range(0, k, 1024):
            sl = slice(i, min(i + 1024, k))
            s_i = tf.constant([seed, 2**31 - 2 - i], tf.int64)
            y, lg, g = noise.observe(train_rows.bp[sl], train_rows.rp[sl], train_rows.g[sl],
                                     s_i, standardise=False, return_g=True,
                                     teff=train_rows.teff[sl].astype(np.float32))
            raw.append(y.numpy())
            if lum is not None:
                value, error, present = lum.raw(lg, train_rows.g[sl], g,
                                                tf.random.experimental.stateless_fold_in(s_i, 7))
                raw_lum.append(np.stack([value.numpy(), error.numpy()], 1)[present.numpy()])
        raw = np.concatenate(raw)
        if not np.isfinite(raw).all():
            raise TrainingError(f"{grid_path}: non-finite features from training rows "
                                f"(bad coefficients?)")
        mean, std = raw.mean(0), raw.std(0)
        if lum is not None:
            raw_lum = np.concatenate(raw_lum)
            if len(raw_lum) < 2:
                raise TrainingError(f"{grid_path}: no usable simulated parallax in "
                                    f"{k} standardisation rows (luminosity config {lcfg})")
            mean = np.concatenate([mean, raw_lum.mean(0), [0.0]])
            std = np.concatenate([std, raw_lum.std(0), [1.0]])
        feat.set_standardisation(mean, std)
        if cfg["model"]["whiten"]:
            whiten = whitening_matrix((raw - mean[:raw.shape[1]]) / feat.spec.std[:raw.shape[1]],
                                      int(cfg["model"]["whiten"]),
                                      float(cfg["model"]["whiten_floor"]))

    def _val_block(i: int) -> np.ndarray:
        s_i = tf.constant([seed, 2**31 - 3 - i], tf.int64)
        sl = slice(i, i + 1024)
        y, lg, g = noise.observe(val_rows.bp[sl], val_rows.rp[sl], val_rows.g[sl], s_i,
                                 return_g=True, teff=val_rows.teff[sl].astype(np.float32))
        if lum is not None:
            y = tf.concat([y, lum.inputs(lg, val_rows.g[sl], g,
                                         tf.random.experimental.stateless_fold_in(s_i, 7))], 1)
        return y.numpy()

    val_y = np.concatenate([_val_block(i) for i in range(0, len(val_rows), 1024)])

    with strategy.scope():
        net_cfg = NetworkConfig.from_dict({
            **cfg["model"], "y_dim": spec.y_dim, "x_dim": P.N_PARAMS,
            "whiten_dim": N_FEATURES if cfg["model"]["whiten"] else 0})
        net = build_networks(net_cfg, seed=seed)
        if net.whiten_layer is not None and not resume:   # resume: restored with the weights
            net.whiten_layer.kernel.assign(whiten)
        opt = keras.optimizers.Adam(_lr_schedule(tcfg, total_steps),
                                    global_clipnorm=tcfg["global_clipnorm"])
        if mixed_precision:
            opt = keras.optimizers.LossScaleOptimizer(opt)
        opt.build(net.trainable_variables)
        beta = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="beta")
        t_low = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="trunc_low")
        t_high = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="trunc_high")
    epoch_var = tf.Variable(0, dtype=tf.int64, name="epoch")
    best_val = tf.Variable(np.inf, dtype=tf.float64, name="best_val_L")
    bad_epochs = tf.Variable(0, dtype=tf.int64, name="bad_epochs")
    ckpt = tf.train.Checkpoint(net=net, optimizer=opt, epoch=epoch_var, best_val=best_val,
                               bad_epochs=bad_epochs)
    manager = tf.train.CheckpointManager(ckpt, str(run / "checkpoints"),
                                         max_to_keep=tcfg["checkpoints_kept"])
    history: list[dict] = []
    if resume:
        ckpt.read(latest).expect_partial()
        history = [r for r in read_history(run / "history.csv")
                   if r["epoch"] < int(epoch_var.numpy())]
        log(f"resuming {run} at epoch {int(epoch_var.numpy())}")
    else:
        run.mkdir(parents=True, exist_ok=True)
        rundir.save_static(run, network=net_cfg.to_dict(), config=cfg, config_toml=toml_text,
                           spec=spec, grid_info=grid_info,
                           noise={**noise_model.to_dict(), "training": ncfg,
                                  "feature_version": FEATURE_VERSION},
                           split=split)
        model_error.save(run / "model_error.npz")

    n_rep = strategy.num_replicas_in_sync

    def replica_step(bp0, rp0, g0, x, seed_t):
        rid = tf.distribute.get_replica_context().replica_id_in_sync_group
        s = tf.random.experimental.stateless_fold_in(seed_t, tf.cast(rid, tf.int64))
        s_noise, s_z = tf.unstack(tf.random.experimental.stateless_split(s, 2))
        y, lg, g = noise.observe(bp0, rp0, g0, s_noise, copies=copies, return_g=True,
                                 teff=unit_teff(x))
        if lum is not None:
            y = tf.concat([y, lum.inputs(lg, g0, g, tf.random.experimental.stateless_fold_in(
                s_noise, 7), copies)], axis=1)
        x = tf.repeat(x, copies, axis=0)
        with tf.GradientTape() as tape:
            h_loss, kl, prior_fit = cvae_terms(net, y, x, s_z, t_low, t_high,
                                               with_prior_fit=True)
            loss = h_loss + beta * kl
            objective = training_loss(h_loss, kl, prior_fit, beta, prior_warmup)
            scaled = objective / n_rep
            if mixed_precision:
                scaled = opt.scale_loss(scaled)
        grads = tape.gradient(scaled, net.trainable_variables)
        opt.apply_gradients(zip(grads, net.trainable_variables))
        return tf.stack([h_loss, kl, loss]) / n_rep

    @tf.function(jit_compile=bool(tcfg["jit_compile"]))
    def train_step(bp0, rp0, g0, x, seed_t):
        per = strategy.run(replica_step, args=(bp0, rp0, g0, x, seed_t))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per, axis=None)

    @tf.function
    def val_step(y, x, seed_t):
        return tf.stack(cvae_terms(net, y, x, seed_t, t_low, t_high))

    writer = tf.summary.create_file_writer(str(run / "tensorboard"))
    start_epoch = int(epoch_var.numpy())
    stop_reason = "finished"
    t_train = 0.0
    n_trained = 0
    for epoch in range(start_epoch, tcfg["epochs"]):
        t0 = time.time()
        beta.assign(annealing.beta(epoch))
        lo, hi = annealing.truncation_bounds(epoch)
        t_low.assign(lo)
        t_high.assign(hi)
        perm = np.random.default_rng([seed, epoch]).permutation(len(train_rows))
        perm = np.resize(perm, steps * bs)  # wraps around when steps_per_epoch > one pass
        ds = tf.data.Dataset.from_tensor_slices((train_rows.bp[perm], train_rows.rp[perm],
                                                 train_rows.g[perm], train_rows.x[perm]))
        ds = strategy.experimental_distribute_dataset(
            ds.batch(bs, drop_remainder=True).prefetch(2))
        sums = np.zeros(3)
        for step, (bp0, rp0, g0, x) in enumerate(ds):
            seed_t = tf.constant([seed, epoch * 1_000_000 + step], tf.int64)
            vals = train_step(bp0, rp0, g0, x, seed_t).numpy()
            if not np.isfinite(vals).all():
                bad_dir = run / "checkpoints" / "nonfinite"
                path = ckpt.write(str(bad_dir / "ckpt"))
                last = manager.latest_checkpoint or "none (failed in the first epoch)"
                raise TrainingError(
                    f"{run}: non-finite loss at epoch {epoch} step {step} (H={vals[0]:.4g}, "
                    f"KL={vals[1]:.4g}, beta={float(beta.numpy()):.3g}); state saved to {path}; "
                    f"last good checkpoint: {last}. Lower training.learning_rate or "
                    f"training.global_clipnorm and restart, or --resume from the last good one.")
            sums += vals
        dt = time.time() - t0
        t_train += dt
        n_trained += steps * bs * copies
        tr = sums / steps
        vs = np.zeros(2)
        nb = 0
        for i in range(0, len(val_y), bs):
            w = len(val_y[i:i + bs])
            vs += w * val_step(tf.constant(val_y[i:i + bs]), tf.constant(val_rows.x[i:i + bs]),
                               tf.constant([seed, 2**31 - 5 - i], tf.int64)).numpy()
            nb += w
        vs /= nb
        lr = opt.learning_rate
        lr = float(lr(opt.iterations) if callable(lr) else np.asarray(lr))
        row = {"epoch": epoch, "beta": float(beta.numpy()), "H": tr[0], "KL": tr[1], "L": tr[2],
               "val_H": vs[0], "val_KL": vs[1], "lr": lr,
               "time_s": (history[-1]["time_s"] if history else 0.0) + time.time() - t0,
               "samples_per_s": steps * bs * copies / dt}
        history.append(row)
        with writer.as_default(step=epoch):
            for k in HISTORY_COLUMNS[1:]:
                _tb_scalar(k, row[k], epoch)
        log(f"epoch {epoch:4d} beta {row['beta']:.3f} H {tr[0]:9.3f} KL {tr[1]:8.3f} "
            f"L {tr[2]:9.3f} val_H {vs[0]:9.3f} lr {lr:.2e} {row['samples_per_s']:.0f} samples/s")
        # Model weights: every epoch until annealing ends, then the best val_L = val_H + val_KL
        # only (the objective at beta = 1: val_H alone is lowest right after annealing, when KL is
        # still large, and stopped runs there before the learning rate had decayed).
        stop = False
        if epoch >= annealing.end:
            if vs[0] + vs[1] < best_val.numpy():
                best_val.assign(vs[0] + vs[1])
                bad_epochs.assign(0)
                rundir.save_weights(net, run)
            else:
                bad_epochs.assign_add(1)
                stop = int(bad_epochs.numpy()) >= tcfg["early_stopping_patience"]
        else:
            rundir.save_weights(net, run)
        epoch_var.assign(epoch + 1)
        manager.save(checkpoint_number=epoch + 1)
        write_history(run / "history.csv", history)
        if stop:
            stop_reason = (f"early stopping: val_L = val_H + val_KL did not improve for "
                           f"{tcfg['early_stopping_patience']} epochs")
            log(stop_reason)
            break
    writer.flush()
    if history:
        plot_history(run / "loss.png", history, cfg["annealing"])
    if mixed_precision:
        keras.mixed_precision.set_global_policy("float32")
    rate = n_trained / t_train if t_train else 0.0
    return TrainResult(run_dir=run, epochs_run=len(history) - (start_epoch if resume else 0),
                       stop_reason=stop_reason, history=history, samples_per_s=rate,
                       wall_s=time.time() - t_start, device=device)
