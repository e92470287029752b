""":func:`train`: one training call, as a sequence of named steps.

1. :func:`prepare_run`: resolve the config; on ``--resume`` find the newest intact checkpoint
   (or restart a run that has none from scratch) and take the stored config.
2. :func:`parse_annealing` and :func:`~cvae_pms.training.loop.select_device`: the schedule,
   the device (and TensorFlow distribution strategy).
3. :func:`~cvae_pms.training.data.load_training_data`: grid rows and their split.
4. :func:`~cvae_pms.training.inputs.build_inputs`: noise path, feature standardisation and
   the fixed validation features.
5. :func:`~cvae_pms.training.state.build_state`, then :func:`restore_or_record`: networks,
   optimizer and checkpoint; restored on resume, else the run dir's static files written
   (and, with ``training.init_from``, :func:`~cvae_pms.training.warmstart.warm_start`).
6. :class:`~cvae_pms.training.loop.FitLoop`: the epochs (annealing, early stopping,
   checkpoints).
7. :func:`finish` (history figure, result) and :func:`build_ood` (``RUN/ood.npz``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .checkpoints import checkpoint_files, newest_intact_checkpoint, restart_from_scratch
from .config import (RESUMABLE_KEYS, TrainingError, check_resume_config, fill_stored_defaults,
                     flatten_config, load_config)
from .history import plot_history, read_history


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


def train(grid_path: str | Path, config: str | Path, out: str | Path, *, resume: bool = False,
          overrides: tuple[str, ...] | list[str] = (), mixed_precision: bool = False,
          noise_model=None, log: Callable[[str], None] = print,
          ood: bool | dict = True) -> TrainResult:
    """Train a CVAE on a grid file and write the model dir ``out`` (see :mod:`cvae_pms.model.rundir`).

    At the end the out-of-distribution index ``out/ood.npz`` is built from the training grid
    (:func:`cvae_pms.training.ood_index.build_ood_index`; ``ood``: False to skip it, a dict for that
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
            build_ood(result, {} if ood is True else dict(ood))
        return result


def _train(grid_path: str | Path, config: str | Path, out: str | Path, *, resume: bool,
           overrides: tuple[str, ...] | list[str], mixed_precision: bool, noise_model,
           log: Callable[[str], None]) -> TrainResult:
    """:func:`train` with the output checked and locked."""
    from cvae_pms.xp.noise import NoiseModel

    from .data import load_training_data
    from .inputs import build_inputs, load_model_error, plan_batches
    from .loop import FitLoop, make_steps, select_device
    from .state import build_state

    t_start = time.time()
    plan = prepare_run(out, config, overrides, resume=resume, log=log)
    cfg, run = plan.cfg, plan.run
    annealing, prior_warmup = parse_annealing(cfg)
    device, strategy = select_device(mixed_precision, log)
    data = load_training_data(grid_path, cfg, run, resume=plan.resume, scratch=plan.scratch)
    noise_model = noise_model or NoiseModel.default()
    model_error = load_model_error(run, cfg["noise"], noise_model, resume=plan.resume)
    batching = plan_batches(cfg["training"], len(data.train_rows), grid_path)
    init = None
    if not plan.resume and cfg["training"]["init_from"]:
        from .warmstart import resolve_init, warm_start
        init = resolve_init(str(cfg["training"]["init_from"]))
    inputs = build_inputs(cfg, run, data, noise_model, model_error, grid_path,
                          resume=plan.resume, spec_dir=init)
    state = build_state(cfg, inputs.spec, inputs.whiten, strategy, run,
                        total_steps=batching.total_steps, mixed_precision=mixed_precision,
                        resume=plan.resume or init is not None)
    history = restore_or_record(plan, state, data, inputs, noise_model, model_error, log)
    if init is not None:
        warm_start(state, init, run, log)
    steps = make_steps(state, inputs, batching, strategy, prior_warmup=prior_warmup,
                       mixed_precision=mixed_precision,
                       jit_compile=bool(cfg["training"]["jit_compile"]))
    loop = FitLoop(run=run, cfg=cfg, data=data, inputs=inputs, state=state, batching=batching,
                   annealing=annealing, steps=steps, log=log)
    outcome = loop.fit(history)
    return finish(plan, outcome, mixed_precision=mixed_precision, device=device,
                  t_start=t_start)


# ------------------------------------------------------------------------------ steps
@dataclass
class RunPlan:
    """Where a call starts: the run dir, the config it trains with, and how it starts."""

    run: Path
    cfg: dict
    toml_text: str
    resume: bool            # continue from the checkpoint ``latest``
    scratch: bool           # a --resume of a run without a checkpoint, started again
    latest: str | None


def prepare_run(out: str | Path, config: str | Path, overrides, *, resume: bool,
                log: Callable[[str], None]) -> RunPlan:
    """Resolve the config and decide how the run dir ``out`` starts (new, resumed from its
    newest intact checkpoint, or, without one, from scratch with its saved config)."""
    run = Path(out)
    cfg, toml_text = load_config(config, overrides)
    latest, scratch = None, False
    if resume:
        if not run.is_dir():
            raise TrainingError(f"{run}: nothing to resume (no such model dir); start without "
                                f"--resume")
        latest = newest_intact_checkpoint(run, log)
        if latest is None:
            cfg, toml_text = restart_from_scratch(run, cfg, toml_text, log)
            resume, scratch = False, True
    if resume:
        cfg, toml_text = _stored_config(run, cfg)
    elif not scratch and run.exists() and any(run.iterdir()):
        hint = ("it stopped before its first checkpoint: --resume starts it again with its "
                "saved config" if not checkpoint_files(run / "checkpoints")
                and (run / "config.json").is_file() else "use --resume to continue it")
        raise TrainingError(f"{run}: output dir exists and is not empty ({hint}); or choose "
                            f"another --out")
    return RunPlan(run=run, cfg=cfg, toml_text=toml_text, resume=resume, scratch=scratch,
                   latest=latest)


def _stored_config(run: Path, cfg: dict) -> tuple[dict, str]:
    """The config a resumed run continues with: its stored one, with the
    :data:`~cvae_pms.training.config.RESUMABLE_KEYS` taken from ``cfg``."""
    if not (run / "config.json").is_file():
        raise TrainingError(f"{run}: nothing to resume (no config.json); start without --resume")
    stored = json.loads((run / "config.json").read_text())
    fill_stored_defaults(stored)  # older run dirs
    check_resume_config(stored, cfg, run)
    stored_flat = flatten_config(cfg)
    for key in RESUMABLE_KEYS:
        section, name = key.split(".")
        stored[section][name] = stored_flat[key]
    return stored, (run / "config.toml").read_text()


def parse_annealing(cfg: dict):
    """(:class:`cvae_pms.model.cvae.Annealing`, prior_warmup) from the config; the noise
    ranges are checked here too."""
    from cvae_pms.model.cvae import Annealing
    ncfg = cfg["noise"]
    ann_cfg = dict(cfg["annealing"])
    prior_warmup = bool(ann_cfg.pop("prior_warmup"))
    try:
        annealing = Annealing(**ann_cfg)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"annealing config: {exc}") from exc
    if not (ncfg["g_min"] < ncfg["g_max"] and 1 <= ncfg["transits_min"] <= ncfg["transits_max"]):
        raise TrainingError(f"noise config: need g_min < g_max and 1 <= transits_min <= "
                            f"transits_max, got {ncfg}")
    return annealing, prior_warmup


def restore_or_record(plan: RunPlan, state, data, inputs, noise_model, model_error,
                      log: Callable[[str], None]) -> list[dict]:
    """Resume: restore the checkpoint and return the history before its epoch. New run:
    write the run dir's static files (config, network, features, split, noise) and return []."""
    from cvae_pms.features import FEATURE_VERSION
    from cvae_pms.model import rundir
    run = plan.run
    if plan.resume:
        state.restore(plan.latest)
        epoch = state.epoch
        history = [r for r in read_history(run / "history.csv") if r["epoch"] < epoch]
        log(f"resuming {run} at epoch {epoch}")
        return history
    run.mkdir(parents=True, exist_ok=True)
    rundir.save_static(run, network=state.net_cfg.to_dict(), config=plan.cfg,
                       config_toml=plan.toml_text, spec=inputs.spec, grid_info=data.grid_info,
                       noise={**noise_model.to_dict(), "training": plan.cfg["noise"],
                              "feature_version": FEATURE_VERSION},
                       split=data.split)
    model_error.save(run / "model_error.npz")
    return []


def finish(plan: RunPlan, outcome, *, mixed_precision: bool, device: str,
           t_start: float) -> TrainResult:
    """Loss figure, mixed-precision policy back to float32, and the :class:`TrainResult`."""
    history = outcome.history
    if history:
        plot_history(plan.run / "loss.png", history, plan.cfg["annealing"])
    if mixed_precision:
        import keras
        keras.mixed_precision.set_global_policy("float32")
    rate = outcome.n_trained / outcome.t_train if outcome.t_train else 0.0
    return TrainResult(run_dir=plan.run,
                       epochs_run=len(history) - (outcome.start_epoch if plan.resume else 0),
                       stop_reason=outcome.stop_reason, history=history, samples_per_s=rate,
                       wall_s=time.time() - t_start, device=device)


def build_ood(result: TrainResult, kwargs: dict) -> None:
    """Build ``RUN/ood.npz`` after training when the weights changed or the index is missing
    or stale; a failure is recorded in ``result.ood_note`` (training itself succeeded)."""
    from cvae_pms.model.rundir import WEIGHTS, model_hash
    from cvae_pms.ood import OOD_FILE, OODError, load_ood_index, rebuild_hint
    from .ood_index import build_ood_index

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
